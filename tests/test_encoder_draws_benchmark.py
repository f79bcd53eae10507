"""benchmarks/encoder_draws.py on a tiny setting: it runs and writes its section."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_script_runs_and_writes_a_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    doc = tmp_path / "PERFORMANCE.md"
    tiny = ["--cases", "2:3:4,3:2:5", "--x-dim", "5", "--step-dims", "3", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "encoder_draws.py"), *tiny, "--out", str(doc)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = doc.read_text()
    assert "<!-- begin encoder-draws -->" in text
    assert "## Drawing from the flow encoder" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 2 |", "| 3 |"))]
    assert len(rows) == 3  # two cases of draws, one reparameterized step
    steps = rows.pop()
    assert len(steps.strip("|").split("|")) == 4
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 10
        assert float(cells[2]) > 0  # seconds
