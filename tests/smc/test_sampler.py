"""run_smc against closed forms: conjugate Gaussian evidence and moments, truncated supports."""

import logging
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from smcwake import Model, run_smc

PRIOR_SD, NOISE_SD = 2.0, 0.5


def conjugate_model(d: int, dtype=torch.float64) -> Model:
    """z ~ N(0, PRIOR_SD^2 I), x | z ~ N(z, NOISE_SD^2 I)."""
    prior = Independent(
        Normal(torch.zeros(d, dtype=dtype), PRIOR_SD * torch.ones(d, dtype=dtype)), 1
    )
    return Model(prior, lambda z, x: Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1))


def conjugate_truth(x: torch.Tensor):
    """Exact log p(x) [B], posterior mean [B, d] and (shared) variance."""
    marginal_sd = math.sqrt(PRIOR_SD**2 + NOISE_SD**2)
    log_evidence = Normal(0.0, marginal_sd).log_prob(x).sum(-1)
    post_var = 1 / (1 / PRIOR_SD**2 + 1 / NOISE_SD**2)
    return log_evidence, post_var * x / NOISE_SD**2, post_var


def observations(B: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d, generator=g, dtype=dtype) * math.sqrt(PRIOR_SD**2 + NOISE_SD**2)


@pytest.mark.parametrize("kernel", ["rwmh", "mala", "hmc"])
def test_evidence_is_unbiased_on_conjugate_gaussian(kernel):
    # Zhat / p(x) has mean 1 (unbiasedness of SMC's evidence); 10 repeats of 20 observations run
    # as one batch of 200 independent samplers; the tolerance is 3 standard errors of the mean.
    d, B, repeats = 5, 20, 10
    x = observations(B, d, seed=0).repeat(repeats, 1)
    g = torch.Generator().manual_seed(1)
    result = run_smc(conjugate_model(d), x, 500, kernel=kernel, generator=g)
    assert result.converged.all()
    exact, _, _ = conjugate_truth(x)
    ratio = torch.exp(result.log_evidence - exact)
    se = ratio.std() / math.sqrt(ratio.numel())
    assert abs(float(ratio.mean()) - 1) < 3 * float(se), (float(ratio.mean()), float(se))
    assert float(se) < 0.05  # the test has power: the spread is small enough to catch a bias


def test_posterior_moments_on_conjugate_gaussian():
    # The weighted mean of K iid posterior draws has s.e. sqrt(v / K); SMC particles are
    # correlated, so allow an effective sample size down to K / 9 (3x the iid s.e.) in RMS over
    # 100 coordinates, plus a bias check: the mean standardized error is within 3 s.e. of 0.
    d, B, K = 5, 20, 1000
    x = observations(B, d, seed=2)
    g = torch.Generator().manual_seed(3)
    result = run_smc(conjugate_model(d), x, K, generator=g)
    _, post_mean, post_var = conjugate_truth(x)
    w = result.log_weights.exp()[..., None]
    mean = (w * result.particles).sum(1)
    var = (w * (result.particles - mean[:, None]) ** 2).sum(1)
    z_mean = (mean - post_mean) / math.sqrt(post_var / K)
    assert float(z_mean.square().mean().sqrt()) < 3
    assert abs(float(z_mean.mean())) < 3 * 3 / math.sqrt(z_mean.numel())
    # variance of a sample variance of n iid normal draws: 2 v^2 / n, same ESS allowance
    z_var = (var - post_var) / (post_var * math.sqrt(2 / K))
    assert float(z_var.square().mean().sqrt()) < 3
    # resampling whenever ESS < K / 2 leaves every final cloud with ESS >= K / 2
    assert float(result.ess.min()) >= 0.5 * K - 1e-6


def test_schedules_differ_with_informativeness():
    # the second column of x carries the noise sd: sd 10 is barely informative (one stage),
    # sd 0.01 needs many stages; both run in one batch with their own schedules
    prior = Independent(
        Normal(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)), 1
    )

    def loglik(z, x):
        return Normal(z[..., 0], x[:, 1:2]).log_prob(x[:, 0:1])

    x = torch.tensor([[0.3, 10.0], [0.3, 0.01]], dtype=torch.float64)
    result = run_smc(Model(prior, loglik), x, 400, generator=torch.Generator().manual_seed(0))
    assert result.converged.all()
    assert int(result.num_stages[0]) == 1
    assert int(result.num_stages[1]) >= 4
    # the finished observation stops costing likelihood evaluations
    assert int(result.num_likelihood_evals[0]) < int(result.num_likelihood_evals[1])
    t = result.temperatures
    assert t[0, 1] == 1.0
    assert torch.isnan(t[0, 2:]).all()
    assert (t[1, 1 : int(result.num_stages[1]) + 1].diff() > 0).all()


def test_truncated_support_with_minus_inf_likelihood():
    # x | z ~ N(z, 1) observed only when z > 0 (likelihood -inf elsewhere), z ~ N(0, 1):
    # p(x) = N(x; 0, 2) Phi(m / s) with posterior N(m, s^2) = N(x / 2, 1 / 2) truncated to z > 0
    prior = Independent(
        Normal(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)), 1
    )

    def loglik(z, x):
        ll = Normal(z[..., 0], 1.0).log_prob(x)
        return torch.where(z[..., 0] > 0, ll, -math.inf)

    x = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64).repeat(40, 1)
    g = torch.Generator().manual_seed(4)
    result = run_smc(Model(prior, loglik), x, 500, generator=g)
    assert result.converged.all()
    m, s = x[:, 0] / 2, math.sqrt(0.5)
    std = Normal(0.0, 1.0)
    exact = Normal(0.0, math.sqrt(2)).log_prob(x[:, 0]) + torch.log(std.cdf(m / s))
    ratio = torch.exp(result.log_evidence - exact).reshape(40, 3)
    se = ratio.std(0) / math.sqrt(40)
    assert torch.all((ratio.mean(0) - 1).abs() < 3 * se)
    alive = result.log_weights > -math.inf  # no weighted particle outside the support
    assert (result.particles[..., 0][alive] > 0).all()
    # truncated-normal mean m + s phi(a) / Phi(a), a = m / s; pooled over repeats
    a = m / s
    exact_mean = m + s * torch.exp(std.log_prob(a)) / std.cdf(a)
    mean = (result.log_weights.exp() * result.particles[..., 0]).sum(1)
    pooled = mean.reshape(40, 3).mean(0)
    pooled_se = mean.reshape(40, 3).std(0) / math.sqrt(40)
    assert torch.all((pooled - exact_mean[:3]).abs() < 4 * pooled_se)


def test_nan_likelihood_raises_with_location():
    model = conjugate_model(2)
    bad = model._log_likelihood

    def loglik(z, x):
        ll = bad(z, x)
        return torch.where((z[..., 0] > 1.5) & (torch.arange(len(x))[:, None] == 1), math.nan, ll)

    with pytest.raises(ValueError, match=r"NaN or \+inf .* observation\(s\): 1 \("):
        run_smc(Model(model.prior, loglik), torch.zeros(3, 2, dtype=torch.float64), 200)


def test_zero_likelihood_everywhere_is_flagged(caplog):
    model = conjugate_model(1)

    def loglik(z, x):
        ll = model._log_likelihood(z, x)
        return torch.where(x[:, :1] > 100, -math.inf, ll)

    x = torch.tensor([[0.0], [1000.0]], dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        result = run_smc(
            Model(model.prior, loglik), x, 100, generator=torch.Generator().manual_seed(0)
        )
    assert result.converged.tolist() == [True, False]
    assert result.zero_likelihood.tolist() == [False, True]
    assert result.log_evidence[1] == -math.inf
    assert "zero likelihood" in caplog.text


def test_stage_cap_is_flagged_and_logged(caplog):
    x = observations(4, 3, seed=5)
    with caplog.at_level(logging.WARNING, logger="smcwake"):
        result = run_smc(conjugate_model(3), x, 200, max_stages=1)
    assert not result.converged.any()
    assert (result.num_stages == 1).all()
    assert "max_stages=1" in caplog.text


def test_seeded_runs_are_reproducible_and_float32_works():
    x = observations(3, 2, seed=6, dtype=torch.float32)
    model = conjugate_model(2, dtype=torch.float32)
    a = run_smc(model, x, 100, generator=torch.Generator().manual_seed(7))
    b = run_smc(model, x, 100, generator=torch.Generator().manual_seed(7))
    assert a.particles.dtype == torch.float32
    assert torch.equal(a.particles, b.particles)
    assert torch.equal(a.log_evidence, b.log_evidence)


@pytest.mark.parametrize("kernel", ["rwmh", "mala", "hmc", "mixture+rwmh"])
def test_likelihood_in_another_dtype_is_converted_to_z_dtype(kernel):
    # a float32 model whose likelihood computes in float64: every kernel runs in float32 and
    # matches the run of the same model whose likelihood rounds to float32 itself
    model = conjugate_model(2, dtype=torch.float32)
    in_float64 = Model(model.prior, lambda z, x: model._log_likelihood(z.double(), x.double()))
    rounded = Model(model.prior, lambda z, x: in_float64._log_likelihood(z, x).float())
    x = observations(3, 2, seed=6, dtype=torch.float32)
    assert in_float64.log_likelihood(torch.zeros(3, 4, 2), x).dtype == torch.float32
    runs = [
        run_smc(m, x, 100, kernel=kernel, generator=torch.Generator().manual_seed(7))
        for m in (in_float64, rounded)
    ]
    assert runs[0].particles.dtype == torch.float32
    assert torch.equal(runs[0].particles, runs[1].particles)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_particles": 1}, "num_particles"),
        ({"ess_target": 1.0}, "ess_target"),
        ({"resampling": "nope"}, "unknown scheme"),
        ({"kernel": "nope"}, "unknown name"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    kwargs = {"num_particles": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_smc(conjugate_model(2), torch.zeros(1, 2, dtype=torch.float64), **kwargs)


def test_wrong_likelihood_shape_is_rejected():
    model = conjugate_model(2)
    wrong = Model(model.prior, lambda z, x: model._log_likelihood(z, x)[..., None])
    with pytest.raises(ValueError, match=r"expected output shape \[B, K\] = \[1, 10\]"):
        run_smc(wrong, torch.zeros(1, 2, dtype=torch.float64), 10)


def test_distinct_fraction_counts_copies():
    from smcwake.smc.sampler import distinct_fraction

    z = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]])
    torch.testing.assert_close(distinct_fraction(z), torch.tensor([0.75]))
    result = run_smc(
        conjugate_model(2),
        observations(3, 2, seed=8),
        200,
        generator=torch.Generator().manual_seed(0),
    )
    assert (result.distinct_fraction > 0.5).all()  # RWMH moves renew most particles here
    assert set(result.kernel_info) >= {"sq_jump"}
