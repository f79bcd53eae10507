"""Shared pieces of the fault tests: a conjugate Gaussian model, small fits, bad inputs."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from smcwake import Model
from smcwake.encoders import GaussianEncoder

PRIOR_SD, NOISE_SD, D = 2.0, 0.5, 2


def gaussian_loglik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1)


def conjugate(n: int = 12, *, loglik=gaussian_loglik, dtype=torch.float64):
    """z ~ N(0, PRIOR_SD^2 I_2), x | z ~ N(z, NOISE_SD^2 I_2), n observations."""
    prior = Independent(
        Normal(torch.zeros(D, dtype=dtype), PRIOR_SD * torch.ones(D, dtype=dtype)), 1
    )
    model = Model(prior, loglik, simulate=lambda z: z + NOISE_SD * torch.randn_like(z))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g, dtype=dtype) * math.sqrt(PRIOR_SD**2 + NOISE_SD**2)
    return model, x


def small(**kw):
    """A fit that takes about a second on two cores."""
    base = dict(
        encoder="gaussian",
        method="smc-wake-c",
        steps=20,
        num_particles=50,
        batch_size=6,
        refresh_every=5,
        refresh_size=4,
        checkpoint_every=10,
        progress=False,
    )
    return {**base, **kw}


def with_encoder(**kw):
    """Settings for a fit given a built encoder (no encoder kind)."""
    settings = small(**kw)
    del settings["encoder"]
    return settings


def same_training(a, b) -> None:
    """Two FitResults made the same updates: equal parameters, losses and banks."""
    for (name, p), q in zip(
        a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert a.history["step"] == b.history["step"]
    assert a.history["loss"] == b.history["loss"]
    assert torch.equal(a.bank.z, b.bank.z)
    assert torch.equal(a.bank.log_z_runs, b.bank.log_z_runs)


def g0() -> torch.Generator:
    return torch.Generator().manual_seed(0)


BAD_X = [
    pytest.param(lambda x: x[0], ValueError, r"expected shape \[B, p\].*x\[None, :\]", id="1-D"),
    pytest.param(lambda x: x.long(), TypeError, "floating-point tensor.*int64", id="integer"),
    pytest.param(lambda x: x.tolist(), TypeError, "torch.Tensor.*list", id="list"),
    pytest.param(lambda x: x[:0], ValueError, "no observations", id="empty"),
    pytest.param(
        lambda x: torch.cat([x, torch.full((1, D), math.nan, dtype=x.dtype)]),
        ValueError,
        r"finite.*NaN in observation 12",
        id="NaN",
    ),
    pytest.param(
        lambda x: torch.cat([x[:3], torch.tensor([[0.0, -math.inf]], dtype=x.dtype)]),
        ValueError,
        r"finite.*inf in observation 3",
        id="inf",
    ),
]


def bounded_noise(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise truncated at 5: zero likelihood when any |x - z| > 5."""
    far = (x[:, None, :] - z).abs().amax(-1) > 5.0
    return torch.where(far, -math.inf, gaussian_loglik(z, x))


class Emulator(torch.nn.Module):
    """A learnable stand-in for a neural emulator: mean = z @ W + b, Gaussian noise."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(D, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def forward(self, z, x):
        return Normal(z @ self.weight + self.bias, NOISE_SD).log_prob(x[:, None, :]).sum(-1)


class Counted:
    """A likelihood that counts its calls (to show that a check came before any of them)."""

    def __init__(self, loglik=gaussian_loglik):
        self.calls, self.loglik = 0, loglik

    def __call__(self, z, x):
        self.calls += 1
        return self.loglik(z, x)


class FaultyEncoder(GaussianEncoder):
    """A Gaussian encoder whose log_prob is NaN on chosen calls (1-based), e.g. an overflow."""

    def __init__(self, bad_calls) -> None:
        super().__init__(D, D)
        self.double()
        self.bad_calls = bad_calls
        self.calls = 0

    def log_prob(self, z, x):
        self.calls += 1
        out = super().log_prob(z, x)
        return out * math.nan if self.calls in self.bad_calls else out
