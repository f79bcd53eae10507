"""bench.grid: the loop over rows x seeds, with budgets, resume, failures and task runners."""

import json

import pytest

from smcwake.bench.grid import header, run_grid, task_runner
from smcwake.bench.results import RUN_RECORD_NAME, failed_record
from smcwake.tasks import get

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce


class FakeTrainer:
    """Stands in for training: records its calls, uses ``evals`` evaluations unless capped."""

    def __init__(self, evals=None, fail=()):
        self.calls = []
        self.evals = evals or {}
        self.fail = set(fail)

    def __call__(self, row, seed, run_dir, budget):
        self.calls.append((row, seed, budget))
        if (row, seed) in self.fail:
            return failed_record(seed, RuntimeError("boom"))
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoint.pt").write_text("state")
        used = self.evals.get(row, 100) if budget is None else budget
        return {
            "seed": seed,
            "steps": 10,
            "likelihood_evals": used,
            "simulations": 0,
            "wall_time": 1.0,
            "stopped_by": "steps",
            "metrics": {"forward_kl": 0.5},
        }


@pytest.fixture
def results():
    return header(get("toy-collapse"), "bench", methods={}, seeds=[0, 1])


def test_the_first_rows_evaluations_become_the_budget_of_the_next(results, tmp_path):
    train = FakeTrainer(evals={"a": 700})
    out = run_grid(
        results, ["a", "b"], [0, 1], train, out=tmp_path, resume=False, budgets={0: None, 1: 5}
    )
    # seed 0 had no budget: row a's count becomes it; seed 1 keeps the budget it was given
    assert train.calls == [("a", 0, None), ("a", 1, 5), ("b", 0, 700), ("b", 1, 5)]
    assert out["budgets"] == {0: 700, 1: 5}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"]["b"]["runs"][0]["likelihood_evals"] == 700
    assert (tmp_path / "report.md").exists()
    assert (tmp_path / "runs" / "a" / "seed1" / RUN_RECORD_NAME).exists()
    assert not list(tmp_path.glob("runs/*/*/checkpoint.pt"))  # finished runs drop them


def test_resume_reuses_finished_runs_and_keeps_checkpoints_on_request(results, tmp_path):
    first = FakeTrainer()
    run_grid(results, ["a"], [0], first, out=tmp_path, resume=False, keep_checkpoints=True)
    assert (tmp_path / "runs" / "a" / "seed0" / "checkpoint.pt").exists()
    again = FakeTrainer()
    out = run_grid(results, ["a"], [0, 1], again, out=tmp_path, resume=True)
    assert again.calls == [("a", 1, None)]  # seed 0 was read back, not trained
    assert [r["seed"] for r in out["methods"]["a"]["runs"]] == [0, 1]
    assert "budgets" not in out  # no budgets given: none recorded


def test_unavailable_and_failed_rows_keep_their_reason(results):
    seen = []
    train = FakeTrainer(fail={("c", 0), ("c", 1), ("d", 1)})
    out = run_grid(
        results,
        ["b", "c", "d"],
        [0, 1],
        train,
        out=None,
        resume=False,
        budgets={0: None, 1: None},
        unavailable=lambda row: "no simulator" if row == "b" else None,
        on_run=lambda row, seed, record: seen.append((row, seed, "failed" in record)),
    )
    assert out["methods"]["b"] == {"status": "unavailable", "reason": "no simulator", "runs": []}
    assert out["methods"]["c"]["status"] == "failed"
    assert out["methods"]["c"]["reason"] == "RuntimeError: boom"
    assert out["methods"]["d"]["status"] == "ok"  # one seed of two failed
    # a failed run sets no budget: seed 1 takes d's count, not c's
    assert out["budgets"] == {0: 100, 1: None}
    assert seen == [("c", 0, True), ("c", 1, True), ("d", 0, False), ("d", 1, True)]


def test_tasks_name_their_own_runners():
    from smcwake.bench import digits, many_samplers

    assert task_runner(get("digits"), "bench") is digits.bench_runner
    assert task_runner(get("digits"), "fit") is digits.fit_runner
    assert task_runner(get("many-samplers"), "bench") is many_samplers.bench_runner
    assert task_runner(get("many-samplers"), "fit") is None
    assert task_runner(get("two-moons"), "bench") is None


def test_a_runner_that_cannot_be_loaded_names_the_task(monkeypatch):
    task = get("toy-collapse")
    monkeypatch.setitem(task.defaults, "runners", {"bench": "smcwake.bench:no_such_runner"})
    with pytest.raises(ValueError, match="'toy-collapse': its bench runner"):
        task_runner(task, "bench")
