"""The default kernel: the gradient probe, its fallback, and its answers against closed forms."""

import logging
import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from smcwake import Model, run_smc
from smcwake.smc.auto import auto_kernel, probe_gradients
from smcwake.smc.mh import Target
from smcwake.tasks.linear_gaussian import linear_gaussian

DT = torch.float64
NOISE = 0.5


def gaussian(z, x):
    return Normal(z, NOISE).log_prob(x[:, None, :]).sum(-1)


def through_numpy(z, x):
    ll = -0.5 * ((x[:, None, :].numpy() - z.numpy()) / NOISE) ** 2 - math.log(NOISE)
    return torch.from_numpy((ll - 0.5 * math.log(2 * math.pi)).sum(-1))


def under_no_grad(z, x):
    with torch.no_grad():
        return gaussian(z, x)


def detached(z, x):
    return gaussian(z.detach(), x)


def rounded(z, x):  # piecewise constant in z: gradient 0 almost everywhere
    return gaussian(torch.round(z * 100) / 100, x)


def nan_gradient(z, x):  # finite values, NaN gradient: sqrt of |z| has an infinite slope at 0
    return gaussian(z, x) + 0.0 * (z - z.detach()).abs().sqrt().sum(-1)


def model_with(loglik, d: int = 3) -> Model:
    prior = Independent(Normal(torch.zeros(d, dtype=DT), 2 * torch.ones(d, dtype=DT)), 1)
    return Model(prior, loglik)


def probe(loglik, *, plain: bool = False):
    """The probe at 100 points, or (``plain``) the values without autograd."""
    target = Target(model_with(loglik), torch.ones(2, 3, dtype=DT))
    z = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    return target.evaluate(z)[1] if plain else probe_gradients(target, z)


def test_probe_accepts_a_differentiable_likelihood():
    result = probe(gaussian)
    assert result.usable
    assert (result.reason, result.evaluations) == ("", 1)
    assert not result.loglik.requires_grad
    assert not result.log_prior.requires_grad


@pytest.mark.parametrize(
    ("loglik", "reason", "evaluations"),
    [
        (through_numpy, "numpy() on Tensor that requires grad", 2),
        (under_no_grad, "no autograd graph", 1),
        (detached, "no autograd graph", 1),
        (rounded, "zero everywhere", 1),
        (nan_gradient, "non-finite gradients", 1),
    ],
    ids=["numpy", "no_grad", "detach", "round", "nan-gradient"],
)
def test_probe_falls_back_when_gradients_are_unusable(loglik, reason, evaluations):
    result = probe(loglik)
    assert not result.usable
    assert reason in result.reason
    assert result.evaluations == evaluations
    torch.testing.assert_close(result.loglik, probe(loglik, plain=True))  # values still right


def test_detached_likelihood_with_a_flat_prior_gradient_falls_back():
    # under a uniform prior the log target of a detached likelihood has no graph at all
    from torch.distributions import Uniform

    prior = Independent(Uniform(-5 * torch.ones(2, dtype=DT), 5 * torch.ones(2, dtype=DT)), 1)
    model = Model(prior, detached)
    z = torch.rand(1, 40, 2, generator=torch.Generator().manual_seed(1), dtype=DT) * 8 - 4
    assert not probe_gradients(Target(model, torch.ones(1, 2, dtype=DT)), z).usable


def test_a_model_error_is_raised_not_swallowed():
    def broken(z, x):
        return gaussian(z, x)[..., None]  # wrong shape, with or without autograd

    with pytest.raises(ValueError, match="expected output shape"):
        probe(broken)


@pytest.mark.parametrize(
    ("loglik", "chosen"),
    [
        (gaussian, "gradients (mixture+mala*)"),
        (through_numpy, "gradient-free moves (mixture+rwmh*)"),
    ],
)
def test_run_smc_logs_its_choice(caplog, loglik, chosen):
    x = torch.tensor([[1.0, -0.5, 0.3]], dtype=DT)
    with caplog.at_level(logging.INFO, logger="smcwake"):
        result = run_smc(model_with(loglik), x, 200, generator=torch.Generator().manual_seed(0))
    assert chosen in caplog.text
    assert result.converged.all()
    assert result.mixed.all()


def conjugate_truth(x: torch.Tensor, prior_sd: float = 2.0):
    marginal = math.sqrt(prior_sd**2 + NOISE**2)
    post_var = 1 / (1 / prior_sd**2 + 1 / NOISE**2)
    return Normal(0.0, marginal).log_prob(x).sum(-1), post_var * x / NOISE**2, post_var


@pytest.mark.parametrize("loglik", [gaussian, through_numpy], ids=["gradients", "numpy"])
def test_default_evidence_and_moments_on_a_conjugate_gaussian(loglik):
    # d = 5; 60 independent samplers (12 observations x 5). Zhat / p(x) has mean 1: within 3
    # standard errors computed from the runs; the weighted means are within 4 s.e. of the exact
    # ones (s.e. from the spread over runs), the variances within 10%.
    d, reps = 5, 5
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(12, d, generator=g, dtype=DT) * math.sqrt(4 + NOISE**2)).repeat(reps, 1)
    result = run_smc(model_with(loglik, d), x, 300, generator=torch.Generator().manual_seed(4))
    assert result.converged.all()
    assert result.mixed.all()
    exact, post_mean, post_var = conjugate_truth(x)
    ratio = torch.exp(result.log_evidence - exact)
    se = float(ratio.std() / math.sqrt(ratio.numel()))
    assert abs(float(ratio.mean()) - 1) < 3 * se, (float(ratio.mean()), se)
    assert se < 0.05  # power: a 15% bias would be caught
    w = result.log_weights.exp()[..., None]
    mean = (w * result.particles).sum(1)
    var = (w * (result.particles - mean[:, None]) ** 2).sum(1)
    z_mean = (mean - post_mean) / math.sqrt(post_var)  # [60, d] in posterior sds
    bias_se = z_mean.std(0) / math.sqrt(z_mean.shape[0])
    assert (z_mean.mean(0).abs() < 4 * bias_se).all(), z_mean.mean(0)
    assert float(z_mean.square().mean().sqrt()) < 0.1
    assert abs(float((var / post_var).mean()) - 1) < 0.1


def test_default_at_moderate_dimension_is_right_and_cheap_at_low_dimension():
    # linear Gaussian d = 10 (closed form), 4 observations: the default reaches the posterior
    # (the previous default left a 10x larger evidence error at d = 30, see docs/KERNELS.md)
    task = linear_gaussian(d=10, p=20, dtype=DT)
    _, x = task.observations(4, seed=1)
    result = run_smc(task.model, x, 300, generator=torch.Generator().manual_seed(0))
    assert result.converged.all()
    assert result.mixed.all()
    mean, cov = task.posterior_moments(x)
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    w = result.log_weights.exp()[..., None]
    m = (w * result.particles).sum(1)
    v = (w * (result.particles - m[:, None]) ** 2).sum(1)
    # K = 300, ESS >= 150: the mean's Monte Carlo error is about 0.08 sd per coordinate
    assert float(((m - mean) / sd).square().mean().sqrt()) < 0.15
    assert abs(float((v / sd.square()).mean()) - 1) < 0.1
    assert float((result.log_evidence - task.log_evidence(x)).abs().max()) < 1.0
    # steps follow mixing: fewer local steps per stage at d = 2 than at d = 10
    low = run_smc(
        linear_gaussian(d=2, p=4, dtype=DT).model,
        linear_gaussian(d=2, p=4, dtype=DT).observations(4, seed=1)[1],
        300,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(low.kernel_info["steps"].mean()) < float(result.kernel_info["steps"].mean())


def test_auto_kernel_options():
    assert auto_kernel(num_jumps=0).choose(True).name == "mala*"
    assert auto_kernel(7).choose(False).num_steps == 7
    with pytest.raises(ValueError, match="num_jumps"):
        auto_kernel(num_jumps=-1)
    assert np.isfinite(auto_kernel().target_acceptance)


def test_a_reused_kernel_gives_the_same_seeded_run():
    # the mixture jumps start each stage's EM from the previous stage's fit; a second run with
    # the same kernel object must start cold again, so a seeded run does not depend on what
    # the kernel did before (here: the same observations, where a stale fit would be used)
    prior = Independent(Normal(torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)), 1)
    model = Model(prior, lambda z, x: Normal(z.square().sum(-1), 0.3).log_prob(x[:, :1]))
    x = torch.tensor([[1.0], [2.0], [0.5]], dtype=DT)
    kernel = auto_kernel()
    first = run_smc(model, x, 400, kernel=kernel, seed=5)
    second = run_smc(model, x, 400, kernel=kernel, seed=5)
    torch.testing.assert_close(first.log_evidence, second.log_evidence, rtol=0, atol=0)
    torch.testing.assert_close(first.particles, second.particles, rtol=0, atol=0)
