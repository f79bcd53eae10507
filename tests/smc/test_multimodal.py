"""run_smc on multimodal posteriors with exact answers: every mode keeps its mass.

Two models. (1) z ~ N(0, I_d), x_j | z ~ N(z_j^2, 0.1^2) for j < m and N(z_j, 0.1^2) otherwise:
the likelihood sees z_0, ..., z_{m-1} only through their squares, so the posterior has 2^m mirror
modes of mass 2^-m, each about 160 standard deviations from its neighbours, and it factorizes
over coordinates (exact draws from a fine grid per squared coordinate, Gaussians for the others).
(2) a two-component Gaussian-mixture prior with a Gaussian likelihood, whose posterior weights
and evidence have closed forms.
"""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from smcwake import Model, run_smc

DT = torch.float64
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


# ------------------------------------------------------------------- mixture prior model

MU, NOISE, D = 12.0, 0.5, 3
E = torch.ones(D, dtype=DT) / math.sqrt(D)
LOCS = torch.stack([-MU * E, MU * E])
PRIOR_WEIGHTS = torch.tensor([0.25, 0.75], dtype=DT)


def mixture_prior_model() -> Model:
    """0.25 N(-12 e, I_3) + 0.75 N(12 e, I_3) prior, x | z ~ N(z, 0.5^2 I_3)."""
    prior = MixtureSameFamily(
        Categorical(probs=PRIOR_WEIGHTS), Independent(Normal(LOCS, torch.ones_like(LOCS)), 1)
    )
    return Model(prior, lambda z, x: Normal(z, NOISE).log_prob(x[:, None, :]).sum(-1))


def mixture_truth(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior weight of the first component and log evidence. Shapes: x [B, D] -> [B], [B]."""
    marginal = Normal(LOCS[:, None, :], math.sqrt(1 + NOISE**2)).log_prob(x).sum(-1)  # [2, B]
    log_joint = torch.log(PRIOR_WEIGHTS)[:, None] + marginal
    log_evidence = torch.logsumexp(log_joint, 0)
    return torch.exp(log_joint[0] - log_evidence), log_evidence


def observation_with_weight(p: float) -> torch.Tensor:
    """x = t e with posterior weight p on the first component (log odds linear in t)."""
    t = (
        (math.log((1 - p) / p) - math.log(PRIOR_WEIGHTS[1] / PRIOR_WEIGHTS[0]))
        * (1 + NOISE**2)
        / (2 * MU)
    )
    return t * E


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
