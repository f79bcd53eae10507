"""Priors with a bounded support and likelihoods that are undefined outside it.

Proposals leave the support of a Gamma prior; the Poisson log-likelihood there is NaN (log of a
negative rate), or raises when torch.distributions validates its arguments. Neither is an error
of the model: those points have zero prior density and the sampler must simply reject them.
"""

import math

import pytest
import torch
from torch.distributions import (
    Dirichlet,
    Gamma,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
    StickBreakingTransform,
    TransformedDistribution,
)

from smcwake import Model, run_smc

SHAPE, RATE = 2.0, 1.0  # Gamma prior on each Poisson rate
COUNTS = torch.tensor([[0.0, 4.0], [7.0, 1.0], [2.0, 12.0]], dtype=torch.float64)


def gamma_prior() -> Independent:
    return Independent(
        Gamma(torch.full((2,), SHAPE, dtype=torch.float64), torch.full((2,), RATE)), 1
    )


def poisson_nan_outside(z, x):
    """log Poisson(x; z), written out: NaN where a rate is negative."""
    x = x[:, None, :]
    return (x * torch.log(z) - z - torch.lgamma(x + 1)).sum(-1)


def poisson_raises_outside(z, x):
    """The same through torch.distributions, validating: raises for a negative rate."""
    return Poisson(z, validate_args=True).log_prob(x[:, None, :]).sum(-1)


def gamma_poisson_truth(x):
    """Exact log p(x) [B] (negative binomial per coordinate) and posterior mean [B, 2]."""
    log_evidence = (
        torch.lgamma(SHAPE + x)
        - math.lgamma(SHAPE)
        - torch.lgamma(x + 1)
        + SHAPE * math.log(RATE / (RATE + 1))
        - x * math.log(RATE + 1)
    ).sum(-1)
    return log_evidence, (SHAPE + x) / (RATE + 1)


@pytest.mark.parametrize("kernel", ["mixture+rwmh", "rwmh", "mala"])
def test_likelihood_undefined_outside_the_support(kernel):
    # 40 repeats of 3 observations as one batch: Zhat / p(x) has mean 1 (3 s.e. of the mean over
    # the repeats), and the pooled posterior mean is within 4 s.e. of the exact one
    repeats = 40
    x = COUNTS.repeat(repeats, 1)
    g = torch.Generator().manual_seed(0)
    result = run_smc(Model(gamma_prior(), poisson_nan_outside), x, 500, kernel=kernel, generator=g)
    assert result.converged.all()
    exact_log_z, exact_mean = gamma_poisson_truth(x)
    ratio = torch.exp(result.log_evidence - exact_log_z).reshape(repeats, 3)
    se = ratio.std(0) / math.sqrt(repeats)
    assert torch.all((ratio.mean(0) - 1).abs() < 3 * se), (ratio.mean(0), se)
    assert float(se.max()) < 0.05  # power: a 15% bias would fail
    mean = (result.log_weights.exp()[..., None] * result.particles).sum(1).reshape(repeats, 3, 2)
    pooled_se = mean.std(0) / math.sqrt(repeats)
    assert torch.all((mean.mean(0) - exact_mean[:3]).abs() < 4 * pooled_se)
    alive = result.log_weights > -math.inf
    assert (result.particles[alive] > 0).all()


def test_likelihood_that_raises_outside_the_support_gives_the_same_run():
    # the library calls it again with the outside points moved inside, and those points get -inf
    # either way: with one seed, both likelihoods give the same run bit for bit
    runs = [
        run_smc(
            Model(gamma_prior(), loglik), COUNTS, 300, generator=torch.Generator().manual_seed(1)
        )
        for loglik in (poisson_nan_outside, poisson_raises_outside)
    ]
    assert torch.equal(runs[0].particles, runs[1].particles)
    assert torch.equal(runs[0].log_evidence, runs[1].log_evidence)


def test_log_likelihood_is_minus_inf_outside_the_support_given_the_log_prior():
    model = Model(gamma_prior(), poisson_nan_outside)
    z = torch.tensor([[[1.0, 2.0], [-1.0, 2.0], [3.0, -0.5]]], dtype=torch.float64)
    x = COUNTS[:1]
    log_prior = model.log_prior(z)
    assert torch.isinf(log_prior[0, 1:]).all()
    out = model.log_likelihood(z, x, log_prior=log_prior)
    assert out[0, 1:].tolist() == [-math.inf, -math.inf]
    assert torch.allclose(out[0, 0], poisson_nan_outside(z[:, :1], x)[0, 0])
    with pytest.raises(ValueError, match="NaN or"):  # without the log prior, NaN is an error
        model.log_likelihood(z, x)
    with pytest.raises(ValueError, match="rate"):  # and an exception raised outside it
        Model(gamma_prior(), poisson_raises_outside).log_likelihood(z, x)


def test_nan_inside_the_support_is_still_an_error():
    def broken(z, x):
        ll = poisson_nan_outside(z, x)
        return torch.where(z[..., 0] > 2.0, math.nan, ll)

    with pytest.raises(ValueError, match=r"NaN or \+inf"):
        run_smc(
            Model(gamma_prior(), broken), COUNTS, 200, generator=torch.Generator().manual_seed(2)
        )


def test_log_joint_has_finite_gradients_outside_the_support():
    # the training objectives differentiate log p(z) + log p(x | z) at encoder draws, some of
    # which fall outside the support: the likelihood is not evaluated there, so no NaN leaks
    model = Model(gamma_prior(), poisson_nan_outside)
    z = torch.tensor([[[1.0, 2.0], [-1.0, 2.0]]], dtype=torch.float64, requires_grad=True)
    log_joint = model.log_joint(z, COUNTS[:1])
    assert log_joint[0, 1] == -math.inf
    (grad,) = torch.autograd.grad(log_joint[0, 0], z)
    assert torch.isfinite(grad).all()
    # d/dz [(a - 1) log z - b z + x log z - z] at the first point
    expected = (SHAPE - 1 + COUNTS[0]) / z[0, 0].detach() - RATE - 1
    assert torch.allclose(grad[0, 0], expected)
    assert torch.equal(grad[0, 1], torch.zeros(2, dtype=torch.float64))


def test_priors_the_samplers_cannot_move_on_are_rejected():
    with pytest.raises(ValueError, match="simplex.*StickBreakingTransform"):
        Model(Dirichlet(torch.ones(3)), lambda z, x: z.sum(-1))
    with pytest.raises(ValueError, match="discrete support"):
        Model(OneHotCategorical(torch.ones(3)), lambda z, x: z.sum(-1))
    with pytest.raises(ValueError, match="discrete support"):
        Model(Independent(Poisson(torch.ones(2)), 1), lambda z, x: z.sum(-1))
    # the suggested reparameterization is accepted: d - 1 unconstrained coordinates
    stick = TransformedDistribution(Dirichlet(torch.ones(3)), [StickBreakingTransform().inv])
    assert Model(stick, lambda z, x: z.sum(-1)).dim == 2
    assert Model(Independent(Normal(torch.zeros(2), 1.0), 1), lambda z, x: z.sum(-1)).dim == 2
