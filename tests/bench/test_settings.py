"""bench.settings: which methods can run where, and the settings every run shares."""

import pytest
import torch

from smcwake.bench.settings import (
    apply_overrides,
    base_settings,
    config_for,
    observations,
    unavailable_reason,
)
from smcwake.tasks import get
from smcwake.train import SMCOptions

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors; seeded runs reproduce


def test_unavailable_methods_have_reasons():
    two_moons = get("two-moons")
    assert "bounded support" in unavailable_reason(
        two_moons, "elbo", "flow", support_transform=False
    )
    assert "bounded support" in unavailable_reason(
        two_moons, "iwae", "gaussian", support_transform=False
    )
    assert unavailable_reason(two_moons, "elbo", "flow") is None  # q kept on the support
    assert "reparameterized" in unavailable_reason(get("toy-collapse"), "elbo", "mdn")
    assert unavailable_reason(two_moons, "sleep", "flow") is None
    with pytest.raises(ValueError, match="unknown"):
        unavailable_reason(two_moons, "nope", "flow")


def test_overrides_replace_fields_and_single_smc_fields():
    task = get("linear-gaussian", d=2, p=3)
    base = base_settings(
        task,
        steps=50,
        encoder=None,
        overrides={"lr": 0.5, "smc.num_mcmc_steps": 2},
        progress=False,
    )
    assert base["lr"] == 0.5  # over the task's 3e-3
    assert base["smc"] == SMCOptions(kernel="mala", num_mcmc_steps=2)  # the task's kernel kept
    assert base["encoder"] == task.defaults["encoder"]
    assert base["checkpoint_every"] == 5
    settings = {"smc": SMCOptions()}
    apply_overrides(settings, {"smc.kernel": "rwmh", "batch_size": 3})
    assert settings == {"smc": SMCOptions(kernel="rwmh"), "batch_size": 3}


def test_sleep_is_capped_at_the_steps_its_simulations_allow():
    # a budget of 1000 evaluations buys sleep ceil(1000 / (4 observations x 30 simulations))
    config = config_for("sleep", {"steps": 100, "batch_size": 8, "num_proposals": 30}, 1000, 4)
    assert config.steps == 9
    assert config.max_evals == 1000
    wake = config_for("wake", {"steps": 100, "batch_size": 8, "num_proposals": 30}, 1000, 4)
    assert wake.steps == 100


def test_one_toy_observation_is_the_papers():
    task = get("toy-collapse")
    z_true, x = observations(task, 1, 0)
    assert x.tolist() == [[12.0]]
    assert torch.isfinite(z_true).all()
    _, x5 = observations(task, 5, 0)
    assert torch.equal(x5, task.observations(5, 0)[1])
