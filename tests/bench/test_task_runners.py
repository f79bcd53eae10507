"""bench.digits and bench.many_samplers: the runners the digits and many-samplers tasks name."""

import pytest

import smcwake.bench.digits as digits
import smcwake.bench.many_samplers as many_samplers
from smcwake.bench import EvalOptions, run_bench, run_fit

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce


def test_digits_learns_a_decoder_and_scores_held_out_images(tmp_path):
    results = run_bench(
        "digits",
        ["wake", "smc-wake-c"],
        seeds=1,
        steps=3,
        out=tmp_path,
        num_observations=16,
        overrides={"refresh_size": 8, "num_particles": 30, "smc.num_mcmc_steps": 2},
        eval_options=EvalOptions(num_samples=30, heldout_particles=30),
        progress=False,
    )
    assert list(results["methods"]) == ["smc-wake-c", "wake"]  # SMC-Wake first: its budget
    assert results["settings"]["train"]["smc"].num_mcmc_steps == 2
    for method in ("smc-wake-c", "wake"):
        run = results["methods"][method]["runs"][0]
        assert run["steps"] == 3
        # log p(x) of a binary 8x8 image lies in [64 log(1e-3), 0) for any sane decoder
        assert -450 < run["metrics"]["heldout_loglik"] < 0
        assert run["metrics"]["heldout_iwbo"] <= 0
        assert len(run["reconstructions"]) == 8
    assert (tmp_path / "reconstructions.png").exists()


@pytest.fixture
def calls(monkeypatch):
    """Replace the two experiments by recorders of their arguments."""
    seen = {}

    def recorder(name):
        def run(**kwargs):
            seen[name] = kwargs
            return {"task": name, "methods": {"wake": {"runs": [{"metrics": {}}]}}}

        return run

    monkeypatch.setattr(digits, "run_digits", recorder("digits"))
    monkeypatch.setattr(many_samplers, "run_many_samplers", recorder("many-samplers"))
    return seen


def test_run_bench_hands_its_arguments_to_the_tasks_runner(calls):
    run_bench("many-samplers", seeds=[4, 5], steps=7, curve_points=3, progress=False)
    assert calls["many-samplers"]["seed"] == 4  # the first training seed
    assert (calls["many-samplers"]["steps"], calls["many-samplers"]["curve_points"]) == (7, 3)
    run_bench("digits", ["wake"], seeds=2, steps=9, budget=100, task_options={"digit": 3})
    assert calls["digits"]["methods"] == ["wake"]
    assert (calls["digits"]["seeds"], calls["digits"]["budget"]) == (2, 100)
    assert calls["digits"]["digit"] == 3


def test_run_fit_on_digits_is_one_method_and_seed_of_its_runner(calls, tmp_path):
    run_fit("digits", "wake", tmp_path, seed=3, progress=False)
    assert calls["digits"]["methods"] == ["wake"]
    assert calls["digits"]["seeds"] == [3]
    assert calls["digits"]["steps"] == 1000  # the digits default when no steps are given
    assert (tmp_path / "metrics.json").exists()
