"""Tests for smcwake.calibration_metrics: each statistic against an exact property.

Truths and draws come from known Gaussians, so a calibrated case is uniform by construction and
a miscalibrated one has a closed form or a known direction. Tolerances are multiples (usually 4)
of the binomial or Monte Carlo standard error; all randomness comes from fixed-seed generators.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from smcwake.calibration_metrics import (
    ecdf_band,
    expected_coverage,
    hpd_levels,
    sbc_histogram,
    sbc_ranks,
    sbc_uniformity,
    tarp_levels,
)


def gaussian_draws(
    mean: torch.Tensor, cov: torch.Tensor, num: int, generator: torch.Generator
) -> torch.Tensor:
    """Draws from N(mean, cov) with a generator. Shapes: mean [B, d], cov [d, d] -> [B, num, d]."""
    chol = torch.linalg.cholesky(cov)
    eps = torch.randn(mean.shape[0], num, mean.shape[1], generator=generator, dtype=mean.dtype)
    return mean[:, None, :] + eps @ chol.mT


# -------------------------------------------------------------------------------- coverage
def coverage_experiment(q_scale: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Truth from N(mu_b, Sigma); q_b = N(mu_b, q_scale^2 Sigma). Returns grid, coverage, B."""
    g = torch.Generator().manual_seed(9)
    num_obs, num_samples, d = 2_000, 500, 2
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    mean = 2.0 * torch.randn(num_obs, d, generator=g, dtype=torch.float64)
    z_true = gaussian_draws(mean, cov, 1, g)[:, 0]  # [B, d]
    q_cov = q_scale**2 * cov
    samples = gaussian_draws(mean, q_cov, num_samples, g)  # [B, S, d]
    q = MultivariateNormal(mean[:, None, :], q_cov)
    levels = hpd_levels(q.log_prob(samples), q.log_prob(z_true[:, None, :])[:, 0])
    grid, coverage = expected_coverage(levels, torch.linspace(0.05, 0.95, 19, dtype=torch.float64))
    return grid, coverage, num_obs


def test_coverage_of_exact_posterior_is_diagonal():
    grid, coverage, num_obs = coverage_experiment(q_scale=1.0)
    # Binomial s.e. per level, plus 1/S for the discreteness of the Monte Carlo level.
    tolerance = 4 * torch.sqrt(grid * (1 - grid) / num_obs) + 1 / 500
    assert bool(((coverage - grid).abs() < tolerance).all()), (coverage - grid).tolist()


def test_coverage_of_overconfident_posterior_is_below_diagonal():
    grid, coverage, num_obs = coverage_experiment(q_scale=0.5)
    se = torch.sqrt(grid * (1 - grid) / num_obs)
    assert bool((coverage < grid - 4 * se).all())
    # Closed form: the truth's squared q-Mahalanobis distance is 4 chi2_2, and the level-a HPD
    # region of q is chi2_2 <= -2 log(1 - a), so coverage = 1 - (1 - a)^(1/4).
    exact = 1 - (1 - grid) ** 0.25
    assert bool(
        ((coverage - exact).abs() < 4 * torch.sqrt(exact * (1 - exact) / num_obs) + 1 / 500).all()
    )


def test_hpd_levels_and_expected_coverage_defaults():
    levels = hpd_levels(
        torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]]), torch.tensor([1.5, 5.0])
    )
    torch.testing.assert_close(levels, torch.tensor([0.5, 0.0]))  # ties do not exceed
    grid, coverage = expected_coverage(torch.tensor([0.0, 0.25, 1.0]))
    assert grid.shape == coverage.shape == (101,)
    assert float(coverage[0]) == pytest.approx(1 / 3)
    assert float(coverage[-1]) == 1.0
    assert bool((coverage.diff() >= 0).all())


def test_coverage_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"log_q_true: expected shape \[2\]"):
        hpd_levels(torch.zeros(2, 5), torch.zeros(3))
    with pytest.raises(ValueError, match=r"levels_at_truth: expected shape \[B\]"):
        expected_coverage(torch.zeros(2, 2))


# ------------------------------------------------------------------------------------- SBC
def sbc_experiment(shift: float) -> tuple[torch.Tensor, int]:
    """Truth from N(mu_b, Sigma); samples from the same Gaussian with mean + shift * e_1."""
    g = torch.Generator().manual_seed(10)
    num_obs, num_samples, d = 1_000, 99, 2
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    mean = torch.randn(num_obs, d, generator=g, dtype=torch.float64)
    z_true = gaussian_draws(mean, cov, 1, g)[:, 0]
    offset = torch.tensor([shift, 0.0], dtype=torch.float64)
    samples = gaussian_draws(mean + offset, cov, num_samples, g)
    return sbc_ranks(samples, z_true, generator=g), num_samples


def test_sbc_ranks_of_exact_posterior_are_uniform():
    ranks, num_samples = sbc_experiment(shift=0.0)
    assert ranks.shape == (1_000, 2)
    assert ranks.dtype == torch.int64
    assert int(ranks.min()) >= 0
    assert int(ranks.max()) <= num_samples
    p_values = sbc_uniformity(ranks, num_samples)
    assert p_values.shape == (2,)
    assert bool((p_values > 0.001).all()), p_values.tolist()


def test_sbc_ranks_of_shifted_posterior_fail_only_in_the_shifted_dimension():
    ranks, num_samples = sbc_experiment(shift=0.5)  # half a marginal standard deviation
    p_values = sbc_uniformity(ranks, num_samples)
    assert float(p_values[0]) < 1e-6
    assert float(p_values[1]) > 0.001  # a mean shift in z_1 leaves the z_2 marginal exact


def test_sbc_ranks_break_ties_uniformly_and_reproducibly():
    samples = torch.zeros(2_000, 9, 1)  # every sample ties with the truth
    z_true = torch.zeros(2_000, 1)
    ranks = sbc_ranks(samples, z_true, generator=torch.Generator().manual_seed(11))
    assert float(sbc_uniformity(ranks, 9)[0]) > 0.001
    torch.testing.assert_close(
        ranks, sbc_ranks(samples, z_true, generator=torch.Generator().manual_seed(11))
    )
    torch.testing.assert_close(sbc_ranks(samples, z_true), sbc_ranks(samples, z_true))


def test_sbc_uniformity_with_unequal_bins_is_exact():
    # S = 10 gives 11 rank values; 4 bins hold 3, 3, 3, 2 of them. Exactly uniform ranks fit
    # the expected counts exactly, so the statistic is 0 and the p-value 1.
    ranks = torch.arange(11).repeat(20)[:, None]
    torch.testing.assert_close(
        sbc_uniformity(ranks, 10, num_bins=4), torch.ones(1, dtype=torch.float64)
    )


def test_sbc_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"z_true: expected shape \[4, 2\]"):
        sbc_ranks(torch.zeros(4, 10, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"ranks: expected values in \[0, num_samples = 5\]"):
        sbc_uniformity(torch.tensor([[6]]), 5)
    with pytest.raises(ValueError, match="ranks: expected an integer tensor"):
        sbc_uniformity(torch.zeros(10, 1), 5)


# ------------------------------------------------------------------------ TARP, histogram, band
def test_sbc_histogram_bins_as_the_uniformity_test_does():
    g = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 51, (300, 3), generator=g)
    counts, expected = sbc_histogram(ranks, 50, num_bins=7)
    assert counts.shape == (3, 7)
    assert counts.sum(1).tolist() == [300.0] * 3
    assert float(expected.sum()) == pytest.approx(300.0)
    bins = ranks * 7 // 51
    for j in range(3):
        assert counts[j].tolist() == torch.bincount(bins[:, j], minlength=7).double().tolist()
    # 51 rank values in 7 bins: bins hold 7 or 8 values, and the expected counts follow
    sizes = torch.bincount(torch.arange(51) * 7 // 51, minlength=7).double()
    assert torch.allclose(expected, 300 * sizes / 51)
    with pytest.raises(ValueError, match=r"ranks: expected values in \[0, num_samples = 50\]"):
        sbc_histogram(ranks + 1, 50)


def test_tarp_levels_are_uniform_for_exchangeable_draws():
    # truth and samples drawn from the same distribution: the count of samples closer to the
    # reference than the truth is uniform on {0..S}; chi-square on 20 bins at 4000 draws
    g = torch.Generator().manual_seed(3)
    B, S, d = 4000, 19, 3
    samples = torch.randn(B, S, d, generator=g, dtype=torch.float64)
    truth = torch.randn(B, d, generator=g, dtype=torch.float64)
    refs = 2 * torch.randn(B, d, generator=g, dtype=torch.float64)
    levels = tarp_levels(samples, truth, refs)
    counts = (levels * S).round().to(torch.int64)
    assert torch.allclose(levels * S, counts.double())
    p = sbc_uniformity(counts[:, None], S, num_bins=20)
    assert float(p[0]) > 0.001
    # a truth farther out than the samples (over-confident q) makes levels pile up near 1
    wide = tarp_levels(samples, 3 * truth, torch.zeros(B, d, dtype=torch.float64))
    assert float(wide.mean()) > 0.75


def test_tarp_levels_scale_makes_units_irrelevant():
    g = torch.Generator().manual_seed(4)
    samples = torch.randn(50, 30, 2, generator=g)
    truth, refs = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    units = torch.tensor([1.0, 1000.0])
    plain = tarp_levels(samples, truth, refs)
    scaled = tarp_levels(samples * units, truth * units, refs * units, scale=units)
    assert torch.equal(plain, scaled)
    with pytest.raises(ValueError, match=r"scale: expected positive values of shape \[2\]"):
        tarp_levels(samples, truth, refs, scale=torch.tensor([1.0, 0.0]))


def test_ecdf_band_bounds_the_uniform_ecdf():
    # DKW: the sup-distance of a uniform ECDF of n draws exceeds the band with probability at
    # most alpha = 0.05; over 2000 replicates at most 100 expected, 130 is 3 sd above
    g = torch.Generator().manual_seed(5)
    n, reps = 50, 2000
    u = torch.rand(reps, n, generator=g, dtype=torch.float64).sort(-1).values
    k = torch.arange(1, n + 1, dtype=torch.float64)
    sup = torch.maximum(k / n - u, u - (k - 1) / n).max(-1).values
    eps = ecdf_band(n, 0.05)
    assert eps == pytest.approx(math.sqrt(math.log(40) / 100))
    assert int((sup > eps).sum()) <= 130
    assert int((sup > eps).sum()) >= 20  # and the band is not absurdly wide either
