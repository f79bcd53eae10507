"""run_smc on bad input and at numerical extremes: clear errors, honest results, exact evidence."""

import logging
import math

import pytest
import torch
from torch.distributions import Normal

from faults import (
    BAD_X,
    NOISE_SD,
    PRIOR_SD,
    D,
    Emulator,
    bounded_noise,
    conjugate,
    g0,
    gaussian_loglik,
)
from smcwake import Model, run_smc
from smcwake.encoders import GaussianEncoder
from smcwake.smc.resampling import normalize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("corrupt", "error", "message"), BAD_X)
def test_run_smc_rejects_bad_observations(corrupt, error, message):
    model, x = conjugate()
    with pytest.raises(error, match=message):
        run_smc(model, corrupt(x), 20, generator=g0())


def test_run_smc_seed_is_a_generator_seeded_with_it():
    model, x = conjugate(4)
    by_seed = run_smc(model, x, 30, seed=7)
    by_generator = run_smc(model, x, 30, generator=torch.Generator().manual_seed(7))
    assert torch.equal(by_seed.particles, by_generator.particles)
    assert torch.equal(by_seed.log_evidence, by_generator.log_evidence)
    assert not torch.equal(run_smc(model, x, 30, seed=8).particles, by_seed.particles)


def test_run_smc_runs_half_precision_observations_in_the_prior_precision():
    # x only conditions the likelihood: it is converted to the run's dtype (the prior's, or
    # dtype=), which is exact from float16 and bfloat16, so the run is the one on those values
    model, x = conjugate(4)
    for low in (torch.float16, torch.bfloat16):
        result = run_smc(model, x.to(low), 30, generator=g0())
        same_values = run_smc(model, x.to(low).double(), 30, generator=g0())
        assert result.particles.dtype == torch.float64
        assert torch.equal(result.log_evidence, same_values.log_evidence)


def _parameter_noise_loglik():
    noise = torch.nn.Parameter(torch.tensor(NOISE_SD, dtype=torch.float64))

    def loglik(z, x):
        return Normal(z, noise).log_prob(x[:, None, :]).sum(-1)

    return loglik, [noise]


def _emulator_loglik():
    emulator = Emulator()
    return emulator, list(emulator.parameters())


def _kernels_by_name():
    from smcwake.smc.kernels import ENCODER_KERNEL_NAMES, KERNEL_NAMES, get_kernel

    encoder = GaussianEncoder(D, D).double()
    built = [
        (name, lambda n=name: get_kernel(n, encoder=encoder)) for name in ENCODER_KERNEL_NAMES
    ]
    return [(name, lambda n=name: n) for name in KERNEL_NAMES] + built


@pytest.mark.parametrize(
    "likelihood",
    [_parameter_noise_loglik, _emulator_loglik],
    ids=["parameter-noise", "module-emulator"],
)
@pytest.mark.parametrize(
    ("name", "kernel"), _kernels_by_name(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_run_smc_with_a_likelihood_whose_output_requires_grad(likelihood, name, kernel):
    # premise: the likelihood's output is part of an autograd graph
    loglik, parameters = likelihood()
    _, x = conjugate(4)
    assert loglik(torch.zeros(4, 3, D, dtype=torch.float64), x).requires_grad
    model = Model(conjugate()[0].prior, loglik)
    result = run_smc(model, x, 30, kernel=kernel(), generator=g0())
    # no graph was kept and no gradient reached the parameters
    assert not any(t.requires_grad for t in result if isinstance(t, torch.Tensor))
    assert all(p.grad is None for p in parameters)
    # the same numbers as the same likelihood with its parameters frozen
    for p in parameters:
        p.requires_grad_(False)
    frozen = run_smc(Model(model.prior, loglik), x, 30, kernel=kernel(), generator=g0())
    assert bool(frozen.converged.all()), name
    assert torch.equal(result.particles, frozen.particles), name
    assert torch.equal(result.log_evidence, frozen.log_evidence), name


def test_run_smc_flags_zero_likelihood_and_keeps_other_rows_exact(caplog):
    model, x = conjugate(loglik=bounded_noise)
    x[[2, 9]] = 100.0  # far outside where the prior puts any particle
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        result = run_smc(model, x, 200, generator=g0())
    flagged = torch.zeros(12, dtype=torch.bool)
    flagged[[2, 9]] = True
    assert torch.equal(result.zero_likelihood, flagged)
    assert torch.equal(result.converged, ~flagged)
    assert torch.equal(result.log_evidence[flagged], torch.full((2,), -math.inf).double())
    assert torch.isfinite(result.log_evidence[~flagged]).all()
    # every row, flagged or not, carries normalized weights and no NaN
    torch.testing.assert_close(
        torch.logsumexp(result.log_weights, -1), torch.zeros(12, dtype=torch.float64)
    )
    assert not torch.isnan(result.particles).any()
    assert "2 of 12 observations have zero likelihood" in caplog.text


def scaled_loglik(scale: float, offset: float):
    def loglik(z, x):
        return scale * gaussian_loglik(z, x) + offset

    return loglik


@pytest.mark.parametrize(
    ("scale", "offset"),
    [(1e6, 0.0), (1.0, 1e6), (1.0, -1e6), (1e6, -1e6)],
    ids=["scale-1e6", "offset+1e6", "offset-1e6", "both"],
)
def test_huge_log_likelihoods_give_finite_unbiased_evidence(scale, offset):
    # scale * log N(x; z, s^2) + offset = scale * c + offset - |x - z|^2 / (2 v), v = s^2 / scale,
    # c = -log(s sqrt(2 pi)), so log p(x) = offset + scale * D * c + (D / 2) log(2 pi v)
    # + log N(x; 0, (PRIOR_SD^2 + v) I). Zhat / p(x) has mean 1: 32 independent samplers on one
    # observation, tolerance 3 standard errors of the mean; an overflow or a lost 1e6 term would
    # give inf, NaN or a ratio of exp(+-1e6).
    model, x = conjugate(1, loglik=scaled_loglik(scale, offset))
    x = x.repeat(32, 1)
    result = run_smc(model, x, 200, generator=g0())
    assert result.converged.all()
    assert torch.isfinite(result.log_evidence).all()
    assert not torch.isnan(result.log_weights).any()
    torch.testing.assert_close(
        torch.logsumexp(result.log_weights, -1), torch.zeros(32, dtype=torch.float64)
    )
    var = NOISE_SD**2 / scale
    c = -math.log(NOISE_SD * math.sqrt(2 * math.pi))
    exact = (
        offset
        + scale * D * c
        + 0.5 * D * math.log(2 * math.pi * var)
        + Normal(0.0, math.sqrt(PRIOR_SD**2 + var)).log_prob(x).sum(-1)
    )
    ratio = torch.exp(result.log_evidence - exact)
    se = float(ratio.std()) / math.sqrt(32)
    assert abs(float(ratio.mean()) - 1) < 3 * se, (float(ratio.mean()), se)
    assert se < 0.15  # the check has power


@pytest.mark.parametrize(
    ("dtype", "level"),
    [(torch.float32, -1e4), (torch.float64, -5e59)],
    ids=["float32-10k-data-points", "float64-x-1e30"],
)
def test_normalize_is_exact_for_large_log_weights(dtype, level):
    # a likelihood of ~10^4 data points has log-likelihoods ~ -1e4, where one float32 ulp is
    # 1e-3; x = 1e30 gives float64 log-likelihoods ~ -5e59 (equal for every particle)
    log_weights = level + torch.tensor([[0.0, -0.5, -1.0, -3.0]], dtype=dtype)
    total = torch.logsumexp(normalize(log_weights).double(), -1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=4e-7, rtol=0)


def test_run_smc_weights_are_normalized_when_every_likelihood_is_huge():
    # x = 1e30: every particle has log-likelihood -5e59 (z is lost in (x - z)^2 at that scale)
    model, x = conjugate(4)
    result = run_smc(model, x + 1e30, 200, generator=g0())
    total = torch.logsumexp(result.log_weights, -1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-9, rtol=0)
