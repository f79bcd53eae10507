"""benchmarks/training_speed.py: its exact posterior, and the script on a tiny setting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import training_speed as ts  # noqa: E402

# Observations inside the box, at its edge and beyond it on both sides (both ends of the
# truncation then lie in one tail of the Gaussian).
X = torch.tensor([[-2.2, -1.0, -0.5, 0.0, 0.3, 0.9, 1.8, 2.6, -0.05, 1.2]], dtype=torch.float64)


def truncated_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of N(x, sd^2) truncated to [-1, 1] (closed form)."""
    sd, std = ts.NOISE_SD, Normal(0.0, 1.0)
    a, b = (-1 - x) / sd, (1 - x) / sd
    mass = std.cdf(b) - std.cdf(a)
    pa, pb = std.log_prob(a).exp(), std.log_prob(b).exp()
    mean = x + sd * (pa - pb) / mass
    var = sd**2 * (1 + (a * pa - b * pb) / mass - ((pa - pb) / mass) ** 2)
    return mean, var


def test_exact_draws_have_the_truncated_normal_moments():
    n = 20_000
    z, _ = ts.exact_posterior(X, n, seed=0)
    assert z.shape == (1, n, X.shape[1])
    assert bool((z.abs() <= 1).all())
    mean, var = truncated_moments(X[0])
    # the sample mean's standard error is sqrt(var / n); 4 of them leave a false alarm
    # probability below 1e-3 over the ten coordinates
    se = (var / n).sqrt()
    assert torch.all((z[0].mean(0) - mean).abs() < 4 * se), (z[0].mean(0), mean)
    # the sample variance's standard error is about var * sqrt(2 / n) (near-Gaussian tails)
    assert torch.all((z[0].var(0) - var).abs() < 4 * var * math.sqrt(2 / n))


def test_exact_log_density_integrates_to_one():
    # per coordinate: the log density of exact_posterior, on a grid over [-1, 1]
    grid = torch.linspace(-1, 1, 20_001, dtype=torch.float64)
    for x in X[0]:
        log_p = Normal(x, ts.NOISE_SD).log_prob(grid) - ts._log_mass(x.abs()[None])
        assert float(torch.trapezoid(log_p.exp(), grid)) == pytest.approx(1.0, abs=1e-6)
    # and the joint log density of the draws is the sum of those
    z, log_p = ts.exact_posterior(X, 5, seed=1)
    each = Normal(X[:, None, :], ts.NOISE_SD).log_prob(z) - ts._log_mass(X.abs())[:, None, :]
    assert torch.allclose(log_p, each.sum(-1))


def test_forward_kl_is_zero_for_the_exact_posterior_and_positive_otherwise():
    class Exact(torch.nn.Module):
        """An 'encoder' whose log_prob is the exact posterior's."""

        def __init__(self, shift: float = 0.0) -> None:
            super().__init__()
            self.shift = shift

        def log_prob(self, z, x):
            x = x.double() + self.shift
            log = Normal(x[:, None, :], ts.NOISE_SD).log_prob(z) - ts._log_mass(x.abs())[:, None]
            return log.sum(-1)

    x = X[:, :4].clone()
    x[0, 0] = 0.2  # positive x only: _log_mass takes |x| and the shifted x stay positive
    x = x.abs()
    kl = ts.ForwardKL(x, num=2000, seed=3)
    assert kl(Exact()) == pytest.approx([0.0], abs=1e-12)
    assert kl(Exact(shift=0.1))[0] > 0.01  # a shifted q is measurably worse


def test_script_runs_and_writes_a_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    results, doc = tmp_path / "runs.jsonl", tmp_path / "RESULTS.md"
    tiny = ["--set", "steps=4", "--set", "num_particles=50", "--set", "log_every=1"]
    tiny += ["--eval-every", "2"]
    tiny += ["--set", 'encoder_options={"transforms": 1, "hidden": [8]}']
    runs = [
        ("previous defaults", []),
        ("fewer particles", ["--set", "particles_per_step=8"]),
        ("fewer particles", ["--model", "gamma-poisson"]),
    ]
    for name, extra in runs:
        done = subprocess.run(
            [sys.executable, str(BENCH / "training_speed.py"), "--results", str(results)]
            + ["run", name, *tiny, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["model"], r["name"]) for r in records] == [
        ("box-10d", "previous defaults"),
        ("box-10d", "fewer particles"),
        ("gamma-poisson", "fewer particles"),
    ]
    assert records[1]["settings"]["particles_per_step"] == 8
    assert [p["step"] for p in records[0]["curve"]] == [2, 4]
    assert all(math.isfinite(p["forward_kl"]) for p in records[0]["curve"])
    ts.main(["--results", str(results), "write", "--out", str(doc)])
    text = doc.read_text()
    assert "<!-- begin training-speed -->" in text
    assert "fewer particles" in text
    assert "**gamma-poisson**" in text


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    curve = [
        {"cpu_time": 60.0, "forward_kl": 0.10},
        {"cpu_time": 150.0, "forward_kl": 0.035},  # at the target counts
        {"cpu_time": 240.0, "forward_kl": 0.030},
    ]
    assert ts._time_to(curve) == "2.5"
    assert ts._time_to(curve, target=0.031) == "4.0"
    assert ts._time_to(curve, target=0.01) == "not reached"
    assert ts._at(curve, 3, 0) == "0.035"  # the last evaluation within 3 CPU minutes
