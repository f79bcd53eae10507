"""run_smc on multimodal posteriors with exact answers: every mode keeps its mass.

Four models. (1) z ~ N(0, I_d), x_j | z ~ N(z_j^2, 0.1^2) for j < m and N(z_j, 0.1^2) otherwise:
the likelihood sees z_0, ..., z_{m-1} only through their squares, so the posterior has 2^m mirror
modes of mass 2^-m, each about 160 standard deviations from its neighbours, and it factorizes
over coordinates (exact draws from a fine grid per squared coordinate, Gaussians for the others).
(2) a two-component Gaussian-mixture prior with a Gaussian likelihood, whose posterior weights
and evidence have closed forms. (3) the SLCP model (Papamakarios, Sterratt & Murray, 2019): four
curved, heavy-tailed modes of mass exactly 1/4, cut by a box prior. (4) its lower-dimensional,
asymmetric variant, whose mode masses are known by 1-d quadrature. The mode-mixing diagnostic is
tested at the end; the independence moves' own mechanics (the adaptive number of steps, the
redraws outside the support) in test_independence.py.
"""

import logging
import math

import pytest
import torch
from multimodal_models import (
    DT,
    E,
    mixture_prior_model,
    mixture_truth,
    observation_with_weight,
    standard_normal_model,
)
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from smcwake import Model, run_smc
from smcwake.smc import multimodal
from smcwake.smc.composite import compose
from smcwake.smc.kernels import random_walk_metropolis
from smcwake.smc.multimodal import check_mode_mixing, mixture_independence

SIGMA = 0.1
KERNELS = ["mixture+rwmh", "mixture+local_rwmh", "mixture"]


# ------------------------------------------------------------------------ squares model


def squares_model(d: int, m: int) -> Model:
    prior = Independent(Normal(torch.zeros(d, dtype=DT), torch.ones(d, dtype=DT)), 1)

    def loglik(z, x):
        mean = torch.cat([z[..., :m] ** 2, z[..., m:]], -1)
        return Normal(mean, SIGMA).log_prob(x[:, None, :]).sum(-1)

    return Model(prior, loglik)


def exact_folded(x: torch.Tensor, m: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Exact draws of (|z_0|, ..., |z_{m-1}|, z_m, ...) for one observation x [d].

    Each squared coordinate has density ∝ N(t; 0, 1) N(x_j; t^2, sigma^2) on t > 0, sampled by
    inverse CDF on a grid of spacing 4e-5 (the modes' standard deviation is about 0.025); the
    others are N(x_j / (1 + sigma^2), sigma^2 / (1 + sigma^2)).
    """
    d = x.shape[0]
    out = torch.empty(n, d, dtype=DT)
    grid = torch.linspace(0.0, 8.0, 200_001, dtype=DT)
    step = float(grid[1] - grid[0])
    for j in range(m):
        log_p = -0.5 * grid**2 + Normal(grid**2, SIGMA).log_prob(x[j])
        cdf = torch.cumsum(torch.exp(log_p - log_p.max()), 0)
        u = torch.rand(n, generator=g, dtype=DT) * cdf[-1]
        idx = torch.searchsorted(cdf, u).clamp(max=grid.numel() - 1)
        out[:, j] = (grid[idx] - step * torch.rand(n, generator=g, dtype=DT)).clamp_min(0.0)
    var = SIGMA**2 / (1 + SIGMA**2)
    out[:, m:] = x[m:] / (1 + SIGMA**2) + math.sqrt(var) * torch.randn(
        n, d - m, generator=g, dtype=DT
    )
    return out


def sign_masses(z: torch.Tensor, log_weights: torch.Tensor, m: int) -> torch.Tensor:
    """Weighted mass of each sign pattern of z_0..z_{m-1}. Shapes: [B, K, d] -> [B, 2^m]."""
    code = ((z[..., :m] > 0).long() * (2 ** torch.arange(m))).sum(-1)
    w = log_weights.exp()
    return torch.stack([(w * (code == c)).sum(-1) for c in range(2**m)], -1)


def mass_z_scores(result, m: int) -> torch.Tensor:
    """(mass - 2^-m) / binomial s.e. with n = ESS of the final weights, per row and mode.

    A kernel that jumps between modes leaves the particles after the last move close to
    independent draws from the target, so a mode's weighted mass has the s.e. of a proportion
    over ESS draws (Kong's approximation of the variance of a weighted mean). A kernel that does
    not mix keeps the resampling genealogy's excess variance, which this test detects.
    """
    p = 1.0 / 2**m
    masses = sign_masses(result.particles, result.log_weights, m)
    se = torch.sqrt(p * (1 - p) / result.ess)[:, None]
    return (masses - p) / se


def energy_distance(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, yy: float) -> float:
    """Energy distance of a weighted sample (x [N, d], w [N] summing to 1) and y [M, d].

    ``yy`` is the mean distance within y (the same for every x, computed once).
    """
    xy = torch.cdist(x, y).mean(1)
    return float(2 * (w * xy).sum() - w @ torch.cdist(x, x) @ w - yy)


def assert_folded_match(result, x: torch.Tensor, row: int, m: int, seed: int) -> None:
    """Folded particles of one row match exact folded draws: energy distance within its null.

    The null is the same statistic with exact draws in place of the particles, carrying the
    same weights: 16 replicates give its mean and standard deviation; the statistic must fall
    below mean + 5 sd (the null is a weighted sum of chi-squares, right-skewed: for a single
    chi-square with one degree of freedom the tail beyond mean + 5 sd has probability 0.005).
    """
    g = torch.Generator().manual_seed(seed)
    reference = exact_folded(x, m, 1000, g)
    scale = reference.std(0)  # compare in standardized units
    y = reference / scale
    yy = float(torch.cdist(y, y).mean())
    w = result.log_weights[row].exp()
    folded = torch.cat([result.particles[row, :, :m].abs(), result.particles[row, :, m:]], -1)
    stat = energy_distance(folded / scale, w, y, yy)
    null = torch.tensor(
        [energy_distance(exact_folded(x, m, w.numel(), g) / scale, w, y, yy) for _ in range(16)]
    )
    bound = float(null.mean() + 5 * null.std())
    assert stat < bound, f"row {row}: energy distance {stat:.2e}, null bound {bound:.2e}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_squares_four_modes_keep_equal_mass(kernel):
    d, m, K, repeats = 4, 2, 2000, 4
    x_obs = torch.tensor([[4.0, 4.0, 0.5, -0.3], [3.0, 5.0, 0.0, 1.0]], dtype=DT)
    x = x_obs.repeat_interleave(repeats, 0)  # rows 0-3: first observation, 4-7: second
    g = torch.Generator().manual_seed(20)
    result = run_smc(squares_model(d, m), x, K, kernel=kernel, generator=g)
    assert result.converged.all()
    z_scores = mass_z_scores(result, m)
    assert z_scores.abs().max() < 4, z_scores
    # pooled over the independent repeats, a sharper check for a bias (s.e. over the summed ESS)
    masses = sign_masses(result.particles, result.log_weights, m).reshape(2, repeats, 4)
    pooled_se = torch.sqrt(0.25 * 0.75 / result.ess.reshape(2, repeats).sum(1))[:, None]
    assert ((masses.mean(1) - 0.25).abs() < 4 * pooled_se).all(), masses.mean(1)
    assert (result.distinct_fraction > 0.9).all()
    assert_folded_match(result, x_obs[0], 0, m, seed=21)
    assert_folded_match(result, x_obs[1], 4, m, seed=22)


def test_plain_random_walk_loses_mode_mass():
    # the premise of the kernels above: with the cloud covariance spanning the gaps between the
    # modes, the random walk barely moves, and the modes' masses drift with resampling noise
    d, m, K = 4, 2, 2000
    x = torch.tensor([[4.0, 4.0, 0.5, -0.3]], dtype=DT).repeat(4, 1)
    g = torch.Generator().manual_seed(20)
    result = run_smc(squares_model(d, m), x, K, kernel="rwmh", num_mcmc_steps=10, generator=g)
    assert mass_z_scores(result, m).abs().max() > 8


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS[:2])
def test_squares_eight_modes_keep_equal_mass(kernel):
    d, m, K = 6, 3, 8000
    x_obs = torch.tensor([4.0, 4.0, 4.0, 0.5, -0.3, 1.0], dtype=DT)
    g = torch.Generator().manual_seed(23)
    result = run_smc(squares_model(d, m), x_obs.repeat(4, 1), K, kernel=kernel, generator=g)
    assert result.converged.all()
    z_scores = mass_z_scores(result, m)
    assert z_scores.abs().max() < 4, z_scores
    assert_folded_match(result, x_obs, 0, m, seed=24)


def test_far_apart_unequal_modes_weights_and_evidence():
    # the modes sit 11 posterior standard deviations apart; the prior puts 0.75 on the second,
    # the posterior 0.7 (or 0.1, or 0.5) on the first: tempering must move mass between them,
    # and each mode's particles travel from the prior's component toward x. The recommended
    # kernel; with K = 1000 the spread of log Zhat (about 0.2) keeps Zhat / Z close to
    # symmetric, so the mean over 20 runs and its s.e. are meaningful.
    kernel = "mixture+rwmh"
    repeats, K = 20, 1000
    x_obs = torch.stack([observation_with_weight(p) for p in (0.7, 0.1, 0.5)])
    weight, log_z = mixture_truth(x_obs)
    torch.testing.assert_close(weight, torch.tensor([0.7, 0.1, 0.5], dtype=DT))  # premise
    x = x_obs.repeat(repeats, 1)  # row r * 3 + i is observation i
    g = torch.Generator().manual_seed(25)
    result = run_smc(mixture_prior_model(), x, K, kernel=kernel, generator=g)
    assert result.converged.all()
    first = (result.log_weights.exp() * (result.particles @ E < 0)).sum(-1).reshape(repeats, 3)
    se = first.std(0) / math.sqrt(repeats)
    assert ((first.mean(0) - weight).abs() < 4 * se).all(), (first.mean(0), weight, se)
    # mixing: the run-to-run variance of the mass is close to that of ESS independent draws
    # (binomial); the sample variance over 20 runs is within a factor 2 of its mean with
    # probability > 0.99, so a ratio under 4 allows an effective sample size down to ESS / 2.
    # The plain random walk, which never crosses, gives ratios of 12 to 24 here (K = 500).
    binomial = (weight * (1 - weight) / result.ess.reshape(repeats, 3)).mean(0)
    assert (first.var(0) / binomial < 4).all(), first.var(0) / binomial
    # Zhat / Z has mean 1 (unbiasedness); its s.e. is measured over the repeats
    ratio = torch.exp(result.log_evidence.reshape(repeats, 3) - log_z)
    ratio_se = ratio.std(0) / math.sqrt(repeats)
    assert ((ratio.mean(0) - 1).abs() < 3 * ratio_se).all(), (ratio.mean(0), ratio_se)
    assert (ratio_se < 0.08).all()  # power: 3 s.e. resolve a 25% error in Z (0.22 in log Z)


# ------------------------------------------------------------------------- curved modes: SLCP

BOX = 3.0
POINTS = 4  # iid 2-d points per observation
SLCP_LOW = (-BOX,) * 5
ASYM_LOW = (-BOX, -BOX, -2.0, -2.5)  # cuts the negative modes of z_3 and z_4


def slcp_model(low: tuple[float, ...] = SLCP_LOW) -> Model:
    """z ~ U[low, 3]; x: four iid 2-d points N((z_1, z_2), Sigma) with standard deviations
    z_3^2, z_4^2 and correlation tanh(z_5) (5-d), or 0 (4-d: the lower-dimensional variant)."""
    low_t = torch.tensor(low, dtype=DT)
    prior = Independent(Uniform(low_t, BOX * torch.ones_like(low_t)), 1)
    return Model(prior, lambda z, x: slcp_normal(z).log_prob(points(x)).sum(-1))


def slcp_normal(z: torch.Tensor) -> MultivariateNormal:
    """The points' distribution at z [*, d], batch shape [*, 1]."""
    s1, s2 = z[..., 2] ** 2, z[..., 3] ** 2
    rho = torch.tanh(z[..., 4]) if z.shape[-1] == 5 else torch.zeros_like(s1)
    zero = torch.zeros_like(s1)
    tril = torch.stack(
        [torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * torch.sqrt(1 - rho**2)], -1)],
        -2,
    )
    return MultivariateNormal(z[..., None, :2], scale_tril=tril[..., None, :, :])


def points(x: torch.Tensor) -> torch.Tensor:
    """x [B, 8] as points [B, 1, 4, 2] (broadcast over the particles)."""
    return x.view(x.shape[0], 1, POINTS, 2)


def slcp_observations(low: tuple[float, ...], n: int, seed: int) -> torch.Tensor:
    """x [n, 8] simulated at z drawn from the prior."""
    g = torch.Generator().manual_seed(seed)
    low_t = torch.tensor(low, dtype=DT)
    z = low_t + (BOX - low_t) * torch.rand(n, len(low), generator=g, dtype=DT)
    noise = torch.randn(n, POINTS, 2, generator=g, dtype=DT)
    normal = slcp_normal(z)
    x = normal.loc + (normal.scale_tril @ noise[..., None])[..., 0]  # [n, 4, 2]
    return x.reshape(n, 2 * POINTS)


def sign_masses_34(z: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Masses [B, 4] of (z_3 > 0, z_4 > 0), (>, <), (<, >), (<, <)."""
    w = log_weights.exp()
    p3, p4 = z[..., 2] > 0, z[..., 3] > 0
    return torch.stack([(w * s).sum(-1) for s in (p3 & p4, p3 & ~p4, ~p3 & p4, ~p3 & ~p4)], -1)


def standardized_errors(result, truth: torch.Tensor) -> torch.Tensor:
    """(mass - exact) / s.e. per observation and mode, s.e. = sqrt(m (1 - m) / ESS).

    The s.e. is that of a proportion over n independent draws, with n the effective sample size
    of the final weights (Kong's approximation of the variance of a self-normalized weighted
    mean). Treating the particles as independent draws is justified by the moves, not assumed:
    the mixture move stops only after 95% of the particles have accepted a fresh independence
    proposal in the final stage, which replaces each mode's share by a new draw; a sampler that
    leaves copies or unmixed mode allocations has an excess variance that the pooled check of
    :func:`assert_masses_within_binomial_error` detects.
    """
    masses = sign_masses_34(result.particles, result.log_weights)
    se = torch.sqrt(truth * (1 - truth) / result.ess[:, None])
    return (masses - truth) / se


def assert_masses_within_binomial_error(result, truth: torch.Tensor) -> None:
    """Every mode within 4 s.e. of its exact mass, and the s.e. itself right on average.

    With correct s.e. each squared standardized error has mean 1; over n observations and 4
    modes (3 n free values, the masses sum to 1) their mean is about chi-square with 3 n
    degrees of freedom over 3 n, above 2 with probability 0.007 for n = 6 and 0.001 for n = 10.
    A mean above 2 means the particles carry less information than ESS independent draws:
    unmixed modes.
    """
    assert result.converged.all()
    z = standardized_errors(result, truth)
    assert z.abs().max() < 4, z
    assert float(z.square().mean()) < 2, z


def asym_sign_mass(y: torch.Tensor, low: float) -> float:
    """P(z_j > 0 | x) for the 4-d variant with prior z_j ~ U[low, 3], y [4] its points' coordinate.

    Given x the posterior factorizes into (z_1, z_3) and (z_2, z_4). With s = z_j^2, the mean
    integrates out over [-3, 3]: p(z_j | x) is proportional to s^-(n-1) exp(-S / (2 s^2))
    [Phi((3 - ybar) / (s / 2)) - Phi((-3 - ybar) / (s / 2))], S the scatter of the n = 4 points
    about their mean ybar; it depends on z_j through s only, so the sign masses are the
    integrals over (0, 3] and (0, -low], by the trapezoid rule on 300,000 points.
    """
    a = torch.linspace(0.0, BOX, 300_001, dtype=DT)[1:]
    s = a**2
    ybar, scatter = y.mean(), (y - y.mean()).square().sum()
    std = Normal(torch.zeros((), dtype=DT), torch.ones((), dtype=DT))
    inside = std.cdf((BOX - ybar) / (s / 2)) - std.cdf((-BOX - ybar) / (s / 2))
    log_p = -(POINTS - 1) * torch.log(s) - scatter / (2 * s**2) + torch.log(inside)
    p = torch.exp(log_p - log_p.max())
    positive = float(torch.trapezoid(p, a))
    negative = float(torch.trapezoid(p[a <= -low], a[a <= -low]))
    return positive / (positive + negative)


def asym_truth(x: torch.Tensor, low: tuple[float, ...]) -> torch.Tensor:
    """Exact masses [B, 4] of the sign patterns of (z_3, z_4), as :func:`sign_masses_34`."""
    rows = []
    for xi in x:
        y = xi.view(POINTS, 2)
        p3, p4 = asym_sign_mass(y[:, 0], low[2]), asym_sign_mass(y[:, 1], low[3])
        rows.append([p3 * p4, p3 * (1 - p4), (1 - p3) * p4, (1 - p3) * (1 - p4)])
    return torch.tensor(rows, dtype=DT)


def fixed_mixture_steps() -> object:
    """Two mixture steps per stage whatever they achieve, then three random-walk steps."""
    return compose(
        mixture_independence(2, min_moved=0.0, max_oversampling=1.0), random_walk_metropolis(3)
    )


def test_slcp_four_modes_keep_equal_mass():
    # six observations with the default kernel: the fast version of the slow test below. The
    # default's jumps take the adaptive number of steps here (the clouds show modes), not the
    # four of a fixed kernel. K = 5000 as in the issue: at K = 2000 the 30-step cap stops the
    # jumps at 91 to 95% moved and one observation in six came out 8.9 s.e. off (a limit
    # stated in docs/KERNELS.md)
    x = slcp_observations(SLCP_LOW, 6, seed=0)
    g = torch.Generator().manual_seed(31)
    result = run_smc(slcp_model(), x, 5000, generator=g)
    assert_masses_within_binomial_error(result, torch.full((6, 4), 0.25, dtype=DT))
    assert (result.kernel_info["independence/steps"] > 8).all()
    assert (result.kernel_info["independence/gain"] > multimodal.MIN_GAIN).all()
    assert not check_mode_mixing(result, warn=False).any()


def test_slcp_fixed_mixture_steps_lose_the_balance_and_are_flagged(caplog):
    # the premise of the adaptive rule and the power of the test above: two independence steps
    # per stage, whatever they achieve, leave masses many standard errors off on these curved
    # modes, and the diagnostic flags the observations
    x = slcp_observations(SLCP_LOW, 6, seed=0)
    g = torch.Generator().manual_seed(31)
    result = run_smc(slcp_model(), x, 2000, kernel=fixed_mixture_steps(), generator=g)
    z = standardized_errors(result, torch.full((6, 4), 0.25, dtype=DT))
    assert z.abs().max() > 6
    with caplog.at_level(logging.WARNING, logger="smcwake.smc.multimodal"):
        assert check_mode_mixing(result).all()
    assert "6 of 6 observations: mode masses may not have equilibrated" in caplog.text


def test_asymmetric_variant_matches_quadrature():
    x = slcp_observations(ASYM_LOW, 6, seed=1)
    truth = asym_truth(x, ASYM_LOW)
    # premises: the quadrature gives 1/2 per sign for a symmetric box, and the cut box makes
    # some of these masses far from 1/4
    assert abs(asym_sign_mass(x[0].view(POINTS, 2)[:, 0], -BOX) - 0.5) < 1e-9
    assert (truth - 0.25).abs().max() > 0.1, truth
    g = torch.Generator().manual_seed(32)
    result = run_smc(slcp_model(ASYM_LOW), x, 2000, generator=g)
    assert_masses_within_binomial_error(result, truth)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["auto", "mixture+rwmh"])
def test_slcp_ten_observations_keep_equal_mass(kernel):
    # the full check of the issue: K = 5000, ten observations simulated from the prior, with the
    # default kernel and with the fixed-step composite that uses the same step rule
    x = slcp_observations(SLCP_LOW, 10, seed=0)
    g = torch.Generator().manual_seed(33)
    result = run_smc(slcp_model(), x, 5000, kernel=kernel, generator=g)
    assert_masses_within_binomial_error(result, torch.full((10, 4), 0.25, dtype=DT))
    assert (result.distinct_fraction > 0.9).all()


@pytest.mark.slow
def test_asymmetric_variant_ten_observations_match_quadrature():
    # with the default kernel, K = 5000
    x = slcp_observations(ASYM_LOW, 10, seed=1)
    truth = asym_truth(x, ASYM_LOW)
    g = torch.Generator().manual_seed(34)
    result = run_smc(slcp_model(ASYM_LOW), x, 5000, generator=g)
    assert_masses_within_binomial_error(result, truth)


def with_diagnostics(result, moved, acceptance, distinct, gain=None):
    info = dict(result.kernel_info)
    if moved is not None:
        info["independence/moved"] = torch.tensor(moved, dtype=DT)
        info["independence/acceptance"] = torch.tensor(acceptance, dtype=DT)
    if gain is not None:
        info["independence/gain"] = torch.tensor(gain, dtype=DT)
    return result._replace(kernel_info=info, distinct_fraction=torch.tensor(distinct, dtype=DT))


def test_check_mode_mixing_applies_its_thresholds_and_warns(caplog):
    g = torch.Generator().manual_seed(43)
    x = torch.zeros(4, 1, dtype=DT)
    result = run_smc(standard_normal_model(1), x, 200, kernel="rwmh", generator=g)
    assert "independence/moved" not in result.kernel_info  # premise: a local kernel
    # the four ways through the rule: fine, too few moved, too low acceptance, too few distinct
    flagged = with_diagnostics(
        result, [0.95, 0.80, 0.95, 0.95], [0.30, 0.30, 0.01, 0.30], [1.0, 1.0, 1.0, 0.4]
    )
    with caplog.at_level(logging.WARNING, logger="smcwake.smc.multimodal"):
        suspect = check_mode_mixing(flagged)
    assert suspect.tolist() == [False, True, True, True]
    assert "3 of 4 observations" in caplog.text
    # thresholds are parameters; warn=False stays silent
    caplog.clear()
    assert not check_mode_mixing(
        flagged, min_moved=0.5, min_acceptance=0.0, min_distinct=0.3, warn=False
    ).any()
    assert caplog.text == ""
    # where the clouds showed no modes (held-out gain under min_gain) the moved share and the
    # acceptance are not read: a unimodal posterior in many dimensions rarely accepts a jump
    lumps = with_diagnostics(
        result, [0.95, 0.80, 0.95, 0.95], [0.30, 0.30, 0.01, 0.30], [1.0] * 4, [2.0, 0.0, 0.0, 2.0]
    )
    assert check_mode_mixing(lumps, warn=False).tolist() == [False, False, False, False]
    # without independence moves only the distinct share is read
    local = with_diagnostics(result, None, None, [1.0, 0.3, 1.0, 1.0])
    assert check_mode_mixing(local, warn=False).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="min_moved"):
        check_mode_mixing(result, min_moved=2.0)
