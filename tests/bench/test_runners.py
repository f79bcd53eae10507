"""bench.runners: run_bench matches budgets, resumes, and keeps to the record types."""

import json

import pytest

from smcwake.bench import EvalOptions, run_bench
from smcwake.bench.results import Results, RunRecord

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce

TINY_EVAL = EvalOptions(
    num_samples=200, c2st_observations=0, c2st_samples=100, mmd_samples=50, sbc_samples=49
)


def test_bench_matches_budgets_within_one_step(tmp_path):
    budget = 30_000
    results = run_bench(
        "toy-collapse",
        ["smc-wake-c", "wake", "msc", "sleep"],
        seeds=1,
        steps=1000,
        budget=budget,
        out=tmp_path,
        num_observations=8,
        overrides={"num_particles": 100, "batch_size": 8, "log_every": 1},
        eval_options=TINY_EVAL,
        progress=False,
    )
    for method in ("smc-wake-c", "wake", "msc"):
        run = results["methods"][method]["runs"][0]
        history = json.loads((tmp_path / "runs" / method / "seed0" / "history.json").read_text())
        evals = history["history"]["likelihood_evals"]
        largest_step = max(b - a for a, b in zip([0, *evals[:-1]], evals, strict=True))
        assert run["stopped_by"] == "budget", method
        assert budget <= run["likelihood_evals"] < budget + largest_step, method
    sleep = results["methods"]["sleep"]["runs"][0]
    assert budget <= sleep["simulations"] < budget + 8 * 100  # one step: 8 obs x 100 sims
    assert (tmp_path / "report.md").exists()
    assert not list(tmp_path.glob("runs/*/seed0/checkpoint.pt"))  # finished runs drop them
    # every field written is one the record types declare
    assert set(results) <= set(Results.__optional_keys__)
    for entry in results["methods"].values():
        for run in entry["runs"]:
            assert set(run) <= set(RunRecord.__optional_keys__)
    # the toy task adds its collapse table (task.defaults["bench_extras"])
    assert [row["scale"] for row in results["collapse"]["rows"]][:2] == [1.0, 0.1]


def test_default_budget_is_the_first_methods_and_resume_reuses_runs(tmp_path):
    kwargs = {
        "seeds": 1,
        "steps": 20,
        "out": tmp_path,
        "num_observations": 4,
        "overrides": {"num_particles": 50, "batch_size": 4},
        "eval_options": TINY_EVAL,
        "progress": False,
    }
    first = run_bench("toy-collapse", ["smc-wake-a", "wake"], **kwargs)
    used = first["methods"]["smc-wake-a"]["runs"][0]["likelihood_evals"]
    assert first["budgets"] == {0: used}
    again = run_bench("toy-collapse", ["smc-wake-a", "wake"], resume=True, **kwargs)
    assert again["methods"]["wake"]["runs"][0] == json.loads(
        json.dumps(first["methods"]["wake"]["runs"][0], default=lambda t: t.tolist())
    )


def test_bench_without_resume_starts_each_run_afresh(tmp_path):
    from smcwake.bench import EvalOptions, run_bench

    kwargs = dict(
        seeds=1,
        steps=4,
        out=tmp_path,
        num_observations=4,
        overrides={"num_particles": 30, "batch_size": 4},
        eval_options=EvalOptions(
            num_samples=50, c2st_observations=0, mmd_samples=20, sbc_samples=19
        ),
        progress=False,
        keep_checkpoints=True,
    )
    first = run_bench("toy-collapse", ["smc-wake-c"], **kwargs)
    again = run_bench("toy-collapse", ["smc-wake-c"], **{**kwargs, "steps": 2})
    for results, steps in ((first, 4), (again, 2)):
        run = results["methods"]["smc-wake-c"]["runs"][0]
        assert "failed" not in run
        assert run["steps"] == steps
