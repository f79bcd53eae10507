"""Galaxy-spectra slot: the error without an emulator, and the wiring with a linear stand-in."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, Uniform

from smcwake.tasks import get
from smcwake.tasks.galaxy_spectra import galaxy_spectra

D, P = 3, 12
# A tiny linear stand-in for an emulator, defined here only: spectrum = z @ B^T + c.
B = torch.randn(P, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
C = torch.linspace(1.0, 2.0, P, dtype=torch.float64)


def stand_in(z):
    return z @ B.to(z.dtype).T + C.to(z.dtype)


def prior(dtype=torch.float64):
    return Independent(Uniform(-torch.ones(D, dtype=dtype), torch.ones(D, dtype=dtype)), 1)


def test_slot_without_emulator_explains_what_to_supply():
    with pytest.raises(ValueError, match="needs a spectrum emulator") as info:
        get("galaxy-spectra")
    message = str(info.value)
    for needle in (
        "PROVABGS",
        "does not ship",
        "emulator=",
        "prior=",
        "noise_sd=",
        "z [N, d]",
        "[N, p]",
    ):
        assert needle in message, needle


@pytest.mark.parametrize(
    ("options", "missing"),
    [({"noise_sd": 0.1}, "prior"), ({"prior": prior()}, "noise_sd"), ({}, "prior and noise_sd")],
)
def test_missing_prior_or_noise_is_reported(options, missing):
    with pytest.raises(ValueError, match=f"{missing} not given"):
        get("galaxy-spectra", emulator=stand_in, **options)


def test_bad_noise_and_emulator_are_reported():
    with pytest.raises(ValueError, match="noise_sd: expected a positive"):
        get("galaxy-spectra", emulator=stand_in, prior=prior(), noise_sd=-1.0)
    with pytest.raises(TypeError, match="emulator: expected a callable"):
        get("galaxy-spectra", emulator="provabgs", prior=prior(), noise_sd=0.1)
    task = get("galaxy-spectra", emulator=lambda z: z.sum(-1), prior=prior(), noise_sd=0.1)
    with pytest.raises(ValueError, match=r"emulator: expected output shape \[N=6, p\]"):
        task.model.log_likelihood(
            torch.zeros(2, 3, D, dtype=torch.float64), torch.zeros(2, P, dtype=torch.float64)
        )
    task = get("galaxy-spectra", emulator=stand_in, prior=prior(), noise_sd=torch.ones(P + 1))
    with pytest.raises(ValueError, match="noise_sd: has 13 entries"):
        task.model.log_likelihood(torch.zeros(2, 3, D), torch.zeros(2, P))


@pytest.mark.parametrize("noise_sd", [0.1, torch.linspace(0.05, 0.2, P)])
def test_gaussian_likelihood_on_the_emulator_output(noise_sd):
    task = galaxy_spectra(emulator=stand_in, prior=prior(), noise_sd=noise_sd, dtype=torch.float64)
    assert task.name == "galaxy-spectra"
    assert task.reference_posterior is None
    z_true, x = task.observations(5, 0)
    assert z_true.shape == (5, D)
    assert x.shape == (5, P)
    z2, x2 = task.observations(5, 0)
    assert torch.equal(z_true, z2)
    assert torch.equal(x, x2)
    assert (z_true.abs() <= 1).all()  # drawn from the given prior

    z = task.model.sample_prior((5, 4), generator=torch.Generator().manual_seed(1))
    sd = torch.as_tensor(noise_sd, dtype=torch.float64)
    direct = Normal(stand_in(z), sd).log_prob(x[:, None, :]).sum(-1)
    torch.testing.assert_close(task.model.log_likelihood(z, x), direct)
    # Out of the given prior's support the model's log prior is -inf.
    assert task.model.log_prior(torch.full((1, 1, D), 2.0, dtype=torch.float64)).isinf().all()


def test_simulated_noise_has_the_given_scale():
    task = get(
        "galaxy-spectra", emulator=stand_in, prior=prior(), noise_sd=0.3, dtype=torch.float64
    )
    z = torch.zeros(20_000, D, dtype=torch.float64)
    x = task.model.simulate(z, generator=torch.Generator().manual_seed(0))
    resid = x - stand_in(z)
    # Standard error of a sample sd from n draws: sd / sqrt(2 n) ~ 0.0015 per wavelength.
    assert ((resid.std(0) - 0.3).abs() < 4 * 0.3 / math.sqrt(2 * 20_000)).all()
