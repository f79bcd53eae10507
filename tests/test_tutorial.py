"""docs/TUTORIAL.md runs: its Python blocks, in order, in one session (the block marked "a new
Python process" in a separate one), in a temporary folder.

The fast suite runs it with at most 20 training steps per ``fit`` (the code paths are the same;
``refine`` is exact whatever the encoder's quality, so its answer is checked either way); the
slow test runs the page exactly as written.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import smcwake

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "TUTORIAL.md"
NEW_PROCESS = "# a new Python process"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def shorter(block: str, most: int) -> str:
    """``steps=N`` in fit calls replaced by ``steps=min(N, most)``."""
    return re.sub(r"steps=(\d+)", lambda m: f"steps={min(int(m[1]), most)}", block)


@pytest.mark.parametrize(
    "most_steps", [20, pytest.param(None, marks=pytest.mark.slow)], ids=["short", "as-written"]
)
def test_the_tutorial_runs_and_its_answers_are_right(tmp_path, monkeypatch, most_steps):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    code = blocks()
    assert len(code) >= 8, "the tutorial lost its code blocks"
    for block in code:
        if most_steps is not None:
            block = shorter(block, most_steps)
        if block.startswith(NEW_PROCESS):
            env = {**os.environ, "PYTHONPATH": str(Path(smcwake.__file__).parents[1])}
            subprocess.run([sys.executable, "-c", block], check=True, env=env, cwd=tmp_path)
        else:
            exec(compile(block, str(TUTORIAL), "exec"), namespace)
    # what the page claims, against the exact Gamma posterior
    assert (tmp_path / "pairplot.png").stat().st_size > 0
    assert (tmp_path / "rates-posterior.pt").is_file()
    refined, exact_mean = namespace["refined"], namespace["exact_mean"]
    mean = (refined.log_weights.exp()[..., None] * refined.particles).sum(1)
    # posterior sd of a Gamma(a, b) rate is sqrt(a) / b; 4.5 standard errors of a weighted mean
    counts = namespace["x"][:5].reshape(5, 2, -1).sum(-1)
    se = torch.sqrt(2.0 + counts) / 10.5 / refined.ess.sqrt()[:, None]
    assert float(((mean - exact_mean) / se).abs().max()) < 4.5
    assert bool(refined.converged.all())
    assert bool((namespace["draws"] > 0).all())
