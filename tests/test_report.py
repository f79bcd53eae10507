"""report: tables name every method (or why it did not run); figures come from JSON alone."""

import json

import pytest

from smcwake.report import budget_table, metric_table, render_markdown, write_report


def run(seed, kl, *, dim2=False, collapse=False):
    record = {
        "seed": seed,
        "steps": 100,
        "likelihood_evals": 32_000 + seed,
        "simulations": 0,
        "wall_time": 1.0 + seed,
        "stopped_by": "steps",
        "metrics": {"forward_kl": kl, "c2st": 0.55, "coverage_error": 0.02},
        "curve": {
            "step": [0, 50, 100],
            "likelihood_evals": [0, 16_000, 32_000],
            "wall_time": [0, 0.5, 1.0],
            "forward_kl": [5.0, 2.0, kl],
        },
        "coverage": {"level": [0.0, 0.5, 1.0], "coverage": [0.0, 0.45, 1.0]},
    }
    if dim2:
        record["panel_samples"] = [[[0.1 * i, -0.1 * i] for i in range(5)]] * 2
    if collapse:
        record["q_at_observed"] = {"mean": 11.8, "sd": 0.9}
        record["curve"]["q_sd_at_observed"] = [10.0, 2.0, 0.9]
    return record


@pytest.fixture
def results():
    return {
        "kind": "bench",
        "task": "toy",
        "description": "A made-up task.",
        "command": "smcwake bench toy --seeds 2",
        "c2st_classifier": "an MLP",
        "seeds": [0, 1],
        "settings": {"steps": 100, "num_observations": 10, "train": {"encoder": "gaussian"}},
        "methods": {
            "smc-wake-a": {"status": "ok", "reason": None, "runs": [run(0, 0.1), run(1, 0.3)]},
            "wake": {
                "status": "ok",
                "reason": None,
                "runs": [run(0, 2.0), {"seed": 1, "failed": "FloatingPointError: nan"}],
            },
            "elbo": {
                "status": "unavailable",
                "reason": "the prior has bounded support",
                "runs": [],
            },
            "sleep": {"status": "failed", "reason": "RuntimeError: boom", "runs": []},
        },
    }


def test_metric_table_has_every_method_or_its_reason(results):
    table = metric_table(results)
    assert "| smc-wake-a | 2 | 0.2 ± 0.14 |" in table  # mean and sd over the two seeds
    assert "| wake | 1 (1 failed) | 2 |" in table
    assert "| elbo | — | not run: the prior has bounded support |" in table
    assert "| sleep | — | failed: RuntimeError: boom |" in table


def test_budget_table_and_markdown(results):
    assert "| smc-wake-a | 100 | 32,000 ± 0.71 | 0 | 1.5 ± 0.71 | steps |" in budget_table(results)
    text = render_markdown(results, ["curves.png"])
    assert "smcwake bench toy --seeds 2" in text
    assert "C2ST classifier: an MLP" in text
    assert "![curves](curves.png)" in text


def test_write_report_makes_every_figure_from_json(tmp_path, results):
    for entry in results["methods"].values():
        entry["runs"] = [
            {**r, **run(r["seed"], 0.2, dim2=True, collapse=True)} if "failed" not in r else r
            for r in entry["runs"]
        ]
    results["panel_reference"] = [[[0.0, 0.0], [0.1, 0.1], [0.2, 0.0]]] * 2
    results["collapse"] = {
        "observed": 12.0,
        "posterior": {"mean": 11.88, "sd": 0.995},
        "rows": [
            {"scale": s, "estimate": e, "exact": 10.0 / s, "posterior_score": 1.41, "ess": 5.0}
            for s, e in ((1.0, 7.4), (0.1, 2.8), (1e-7, -12.3))
        ],
    }
    results["reconstruction_targets"] = [[0.0, 1.0] * 32] * 3
    results["methods"]["smc-wake-a"]["runs"][0]["reconstructions"] = [[0.5] * 64] * 3
    (tmp_path / "results.json").write_text(json.dumps(results))
    path = write_report(tmp_path)  # reads results.json
    text = path.read_text()
    for name in ("posteriors", "curves", "coverage", "collapse", "reconstructions"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in text
    assert "Why wake collapses" in text
    assert "| 1e-07 | -12.30 |" in text


def test_write_report_without_results_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results here"):
        write_report(tmp_path)


def test_convergence_figure_reads_every_run_history(tmp_path, results):
    # fit writes history.json into each run folder; rows without the signal hold None
    for seed, kl in ((0, [3.0, None, 1.0]), (1, [2.5, None, 0.8])):
        folder = tmp_path / "runs" / "smc-wake-a" / f"seed{seed}"
        folder.mkdir(parents=True)
        history = {"step": [100, 150, 200], "bank_forward_kl": kl, "bank_ess": [0.1, None, 0.6]}
        (folder / "history.json").write_text(json.dumps({"config": {}, "history": history}))
    (tmp_path / "runs" / "wake" / "seed0").mkdir(parents=True)  # no signal: left out
    (tmp_path / "runs" / "wake" / "seed0" / "history.json").write_text(
        json.dumps({"history": {"step": [1], "bank_forward_kl": [None], "bank_ess": [None]}})
    )
    text = write_report(tmp_path, results).read_text()
    assert (tmp_path / "convergence.png").stat().st_size > 1000
    assert "(convergence.png)" in text
