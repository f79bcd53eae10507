"""bench.training: one run trained, tracked and evaluated; divergence kept, not raised."""

import pytest
import torch

import smcwake
import smcwake.bench.training as training
from smcwake.bench.evaluate import EvalOptions
from smcwake.bench.results import RunRecord
from smcwake.bench.settings import config_for
from smcwake.bench.training import Checkpoints, bench_data, train_and_evaluate
from smcwake.tasks import get

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce

EVAL = EvalOptions(num_samples=50, c2st_observations=0, curve_observations=4)


def toy_data(n=6):
    task = get("toy-collapse", dtype=torch.float64)
    z_true, x = task.observations(n, 0)
    return bench_data(task, z_true, x, EVAL, 0, curve_points=4)


def test_checkpoints_are_due_once_each_including_skipped_ones():
    points = Checkpoints([5, 1, 3, 3])
    assert [step for step in range(1, 8) if points.due(step)] == [1, 3, 5]
    late = Checkpoints([2, 4, 6])
    assert late.due(5)  # a step past several pending points records once
    assert not late.due(5)
    assert late.due(6)


def test_a_run_records_counts_curve_and_metrics(tmp_path):
    data = toy_data()
    base = {"steps": 8, "encoder": "gaussian", "num_proposals": 20, "batch_size": 6}
    config = config_for("wake", {**base, "seed": 0, "progress": False, "log_every": 1}, None, 6)
    record = train_and_evaluate(data, "wake", 0, config, tmp_path / "run", resume=False)
    assert set(record) <= set(RunRecord.__optional_keys__)
    assert (record["steps"], record["stopped_by"]) == (8, "steps")
    assert record["likelihood_evals"] == 8 * 6 * 20  # steps x observations x proposals
    # the initial encoder, four points at max(1, 8 k / 4) for k = 0..3, and the last step
    assert record["curve"]["step"] == [0, 1, 2, 4, 6, 8]
    assert len(record["curve"]["forward_kl"]) == 6
    assert len(record["curve"]["q_sd_at_observed"]) == 6
    assert (tmp_path / "run" / "curve.json").exists()
    assert record["q_at_observed"]["sd"] > 0
    # the trained posterior is saved next to the checkpoint and loads without the task
    loaded = smcwake.load(tmp_path / "run" / "posterior.pt")
    assert loaded.z_dim == data.task.model.dim


def test_a_diverged_run_is_evaluated_at_its_last_state(monkeypatch):
    data = toy_data()

    def diverging_fit(model, x, *, callbacks, **kwargs):
        for cb in callbacks:
            cb(1, kwargs["encoder"], {"step": 1, "likelihood_evals": 42, "wall_time": 0.1})
        raise FloatingPointError("20 consecutive non-finite losses at step 21")

    monkeypatch.setattr(training, "fit", diverging_fit)
    config = config_for("wake", {"steps": 50, "encoder": "gaussian", "progress": False}, None, 6)
    record = train_and_evaluate(data, "wake", 0, config, None, resume=False)
    assert record["stopped_by"] == "diverged"
    assert "non-finite" in record["diverged"]
    assert (record["steps"], record["likelihood_evals"]) == (1, 42)  # the last row seen
    assert "forward_kl" in record["metrics"]
