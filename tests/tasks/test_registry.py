"""The task registry and the contract every built-in task shares (shapes, seeds, dtypes)."""

import dataclasses
import math

import pytest
import torch

from smcwake import tasks
from smcwake.model import Model

# Small settings so every task builds and runs in well under a second.
SMALL = {
    "toy-collapse": {},
    "two-moons": {"grid_size": 128},
    "linear-gaussian": {"d": 5, "p": 8},
    "many-samplers": {"d": 5, "p": 8},
    "digits": {"digit": 3, "latent_dim": 4},
    "spike-slab": {},
}


def test_names_lists_every_task_in_spec_order():
    assert tasks.names() == [
        "toy-collapse",
        "two-moons",
        "linear-gaussian",
        "many-samplers",
        "digits",
        "galaxy-spectra",
        "spike-slab",
    ]


def test_unknown_name_lists_the_available_tasks():
    with pytest.raises(ValueError, match="unknown task 'moons'") as info:
        tasks.get("moons")
    for name in tasks.names():
        assert name in str(info.value)


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) dims; accepted options: d, p"):
        tasks.get("linear-gaussian", dims=3)


def test_task_is_frozen():
    task = tasks.get("toy-collapse")
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "other"


@pytest.mark.parametrize("name", list(SMALL))
def test_task_contract(name, dtype):
    task = tasks.get(name, dtype=dtype, **SMALL[name])
    assert task.name == name
    assert isinstance(task.model, Model)
    assert task.description
    d = task.model.dim
    assert task.defaults["num_observations"] >= 1

    z, x = task.observations(6, 3)
    assert z.shape == (6, d)
    assert x.dim() == 2
    assert x.shape[0] == 6
    assert z.dtype == x.dtype == dtype

    # Deterministic by seed, different across seeds, global RNG untouched.
    state = torch.get_rng_state()
    z2, x2 = task.observations(6, 3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(x2, x, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(z2, z, rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(task.observations(6, 4)[1], x)

    # The likelihood is finite at the true latents (where they are known) and at prior draws.
    if not bool(z.isnan().any()):
        assert torch.isfinite(task.model.log_likelihood(z[:, None, :], x)).all()
    z_prior = task.model.sample_prior((6, 5), generator=torch.Generator().manual_seed(1))
    loglik = task.model.log_likelihood(z_prior.to(dtype), x)
    assert loglik.shape == (6, 5)
    assert loglik.dtype == dtype
    assert not bool(loglik.isnan().any())

    # The simulator, when given, matches the data's shape and is seeded by its generator.
    if task.model.can_simulate:
        zs = z_prior[:, 0].to(dtype)
        xs = task.model.simulate(zs, generator=torch.Generator().manual_seed(2))
        assert xs.shape == x.shape
        assert torch.equal(xs, task.model.simulate(zs, generator=torch.Generator().manual_seed(2)))

    if task.reference_posterior is not None:
        samples = task.reference_posterior(x[:2], 7, 0)
        assert samples.shape == (2, 7, d)
        assert samples.dtype == dtype
        assert torch.equal(samples, task.reference_posterior(x[:2], 7, 0))
        assert torch.isfinite(task.model.log_likelihood(samples, x[:2])).all()
    if task.posterior_moments is not None:
        mean, cov = task.posterior_moments(x)
        assert mean.shape == (6, d)
        assert cov.shape == (6, d, d)
        assert torch.linalg.eigvalsh(cov.double()).min() > 0
    if task.log_evidence is not None:
        log_z = task.log_evidence(x)
        assert log_z.shape == (6,)
        assert torch.isfinite(log_z).all()


@pytest.mark.parametrize("name", list(SMALL))
def test_dtype_changes_precision_not_data(name):
    """Draws are made in float64 and cast, so float32 data is float64 data rounded."""
    z32, x32 = tasks.get(name, dtype=torch.float32, **SMALL[name]).observations(5, 0)
    z64, x64 = tasks.get(name, dtype=torch.float64, **SMALL[name]).observations(5, 0)
    assert x32.dtype == torch.float32
    assert x64.dtype == torch.float64
    torch.testing.assert_close(x32, x64.float(), rtol=0, atol=0)
    torch.testing.assert_close(z32, z64.float(), rtol=0, atol=0, equal_nan=True)


def test_device_option_places_prior_and_data():
    task = tasks.get("linear-gaussian", d=2, p=3, device="cpu")
    z, x = task.observations(2, 0)
    assert z.device.type == x.device.type == task.model.prior.mean.device.type == "cpu"


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        tasks.get("toy-collapse").observations(3, seed)


def test_bad_count_is_rejected():
    with pytest.raises(ValueError, match="n: expected an int >= 1, received 0"):
        tasks.get("toy-collapse").observations(0, 0)
    assert math.isfinite(float(tasks.get("toy-collapse").observations(1, 0)[1]))
