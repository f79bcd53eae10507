"""Tests for smcwake.diagnostics: every metric against a closed form or an exact property.

Tolerances are multiples (usually 4) of the Monte Carlo or binomial standard error of the
quantity tested; all randomness comes from fixed-seed generators.
"""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from torch.distributions import MultivariateNormal, kl_divergence

from smcwake.diagnostics import (
    C2ST_CLASSIFIER,
    c2st,
    forward_kl_gaussian,
    gaussian_kl,
    log_q_true,
    mean_l1,
    mmd,
    reverse_kl_gaussian,
    summarize,
    weighted_moments,
)


def random_spd(shape: tuple[int, ...], d: int, generator: torch.Generator) -> torch.Tensor:
    """Well-conditioned random covariance matrices [*shape, d, d] in float64."""
    a = torch.randn(*shape, d, d, generator=generator, dtype=torch.float64)
    return a @ a.mT / d + 0.5 * torch.eye(d, dtype=torch.float64)


# ------------------------------------------------------------------------------ gaussian_kl
def test_gaussian_kl_is_zero_for_identical_distributions(dtype):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 3, generator=g, dtype=torch.float64).to(dtype)
    cov = random_spd((4,), 3, g).to(dtype)
    kl = gaussian_kl(mean, cov, mean, cov)
    assert kl.shape == (4,)
    assert kl.dtype == dtype
    # Exact in real arithmetic; float32 inputs are solved in float64, so only rounding remains.
    torch.testing.assert_close(kl, torch.zeros(4, dtype=dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("mu_p", "sd_p", "mu_q", "sd_q"),
    [(0.0, 1.0, 1.0, 1.0), (0.0, 1.0, 0.0, 2.0), (-3.0, 0.1, 2.0, 5.0), (1.0, 7.0, 1.5, 0.3)],
)
def test_gaussian_kl_matches_univariate_closed_form(mu_p, sd_p, mu_q, sd_q):
    exact = math.log(sd_q / sd_p) + (sd_p**2 + (mu_p - mu_q) ** 2) / (2 * sd_q**2) - 0.5
    kl = gaussian_kl(
        torch.tensor([mu_p], dtype=torch.float64),
        torch.tensor([[sd_p**2]], dtype=torch.float64),
        torch.tensor([mu_q], dtype=torch.float64),
        torch.tensor([[sd_q**2]], dtype=torch.float64),
    )
    assert kl.shape == ()
    assert float(kl) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_gaussian_kl_matches_torch_kl_divergence():
    g = torch.Generator().manual_seed(1)
    mean_p, mean_q = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    cov_p, cov_q = random_spd((5,), 4, g), random_spd((5,), 4, g)
    expected = kl_divergence(MultivariateNormal(mean_p, cov_p), MultivariateNormal(mean_q, cov_q))
    torch.testing.assert_close(gaussian_kl(mean_p, cov_p, mean_q, cov_q), expected)


def test_gaussian_kl_matches_monte_carlo_in_three_dimensions():
    g = torch.Generator().manual_seed(2)
    mean_p = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    mean_q = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    cov_p, cov_q = random_spd((), 3, g), random_spd((), 3, g)
    p, q = MultivariateNormal(mean_p, cov_p), MultivariateNormal(mean_q, cov_q)
    eps = torch.randn(20_000, 3, generator=g, dtype=torch.float64)
    z = mean_p + eps @ torch.linalg.cholesky(cov_p).mT  # [N, 3] from p
    log_ratio = p.log_prob(z) - q.log_prob(z)  # KL(p || q) = E_p[log p - log q]
    estimate, se = log_ratio.mean(), log_ratio.std() / math.sqrt(z.shape[0])
    exact = gaussian_kl(mean_p, cov_p, mean_q, cov_q)
    assert abs(float(estimate - exact)) < 4 * float(se)


def test_gaussian_kl_is_asymmetric_and_forward_reverse_swap_arguments():
    zero, one, four = torch.zeros(1), torch.eye(1), 4 * torch.eye(1)
    # N(0, 1) vs N(0, 4): 0.5 (1/4 - 1 + log 4) one way, 0.5 (4 - 1 - log 4) the other.
    forward = forward_kl_gaussian(zero, one, zero, four)
    reverse = reverse_kl_gaussian(zero, one, zero, four)
    assert float(forward) == pytest.approx(0.5 * (0.25 - 1 + math.log(4)), rel=1e-6)
    assert float(reverse) == pytest.approx(0.5 * (4 - 1 - math.log(4)), rel=1e-6)
    assert float(reverse) > 2 * float(forward)
    torch.testing.assert_close(forward, gaussian_kl(zero, one, zero, four))
    torch.testing.assert_close(reverse, gaussian_kl(zero, four, zero, one))


def test_gaussian_kl_batched_and_broadcast_shapes():
    g = torch.Generator().manual_seed(3)
    mean_p = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    cov_p = random_spd((3, 4), 2, g)
    mean_q = torch.randn(2, generator=g, dtype=torch.float64)
    cov_q = random_spd((), 2, g)
    kl = gaussian_kl(mean_p, cov_p, mean_q, cov_q)  # q broadcasts over the batch of p
    assert kl.shape == (3, 4)
    one = gaussian_kl(mean_p[2, 1], cov_p[2, 1], mean_q, cov_q)
    torch.testing.assert_close(kl[2, 1], one)


def test_gaussian_kl_is_stable_for_ill_conditioned_float32_covariances():
    cov = torch.diag(torch.tensor([1e-6, 1.0, 1e6]))
    mean = torch.tensor([0.0, 0.0, -1e3])  # the tight coordinate at 0: no input rounding
    kl = gaussian_kl(mean, cov, mean, cov)
    assert kl.dtype == torch.float32
    assert abs(float(kl)) < 1e-6
    # Shifting the tight coordinate by 1e-3 (one standard deviation) costs exactly 1/2.
    shifted = mean + torch.tensor([1e-3, 0.0, 0.0])
    assert float(gaussian_kl(mean, cov, shifted, cov)) == pytest.approx(0.5, rel=1e-3)


def test_gaussian_kl_rejects_bad_inputs():
    mean, cov = torch.zeros(2), torch.eye(2)
    with pytest.raises(ValueError, match=r"cov_q: expected shape \[\*, 2, 2\].*received \[3, 3\]"):
        gaussian_kl(mean, cov, mean, torch.eye(3))
    with pytest.raises(ValueError, match=r"mean_q: expected event dimension d = 2"):
        gaussian_kl(mean, cov, torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="cov_p: expected symmetric positive-definite"):
        gaussian_kl(mean, torch.diag(torch.tensor([1.0, -1.0])), mean, cov)
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        gaussian_kl(torch.zeros(3, 2), cov, torch.zeros(4, 2), cov)


def test_mean_l1():
    a = torch.tensor([[0.0, 1.0, -2.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(mean_l1(a, b), torch.tensor([5.0, 0.0]))
    with pytest.raises(ValueError, match=r"mean_b: expected shape \[\*, d\]"):
        mean_l1(a, b[:, :2])


# ------------------------------------------------------------------------------------ c2st
def test_c2st_identical_distributions_is_chance():
    g = torch.Generator().manual_seed(4)
    n = 1_000
    p, q = torch.randn(2, n, 2, generator=g)
    accuracy = c2st(p, q, seed=0)
    # Accuracy over 2n held-out points; under the null each is a coin flip.
    assert abs(accuracy - 0.5) < 4 * math.sqrt(0.25 / (2 * n))
    assert c2st(p, q, seed=0) == accuracy  # seeded: deterministic


def test_c2st_disjoint_distributions_is_near_one():
    g = torch.Generator().manual_seed(5)
    p = torch.randn(1_000, 2, generator=g)
    q = torch.randn(400, 2, generator=g) + 10.0  # unequal sizes: p is subsampled to 400
    assert c2st(p, q) > 0.95
    assert "MLPClassifier" in C2ST_CLASSIFIER


def test_c2st_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"q_samples: expected shape \[M, 2\]"):
        c2st(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"p_samples: expected shape \[N, d\]"):
        c2st(torch.zeros(10), torch.zeros(10, 1))
    with pytest.raises(ValueError, match="at least folds = 5 samples per side"):
        c2st(torch.zeros(3, 1), torch.zeros(10, 1))


# ------------------------------------------------------------------------------------- mmd
def gaussian_mmd2(shift: float, sd: float, bandwidth: float, d: int) -> float:
    """MMD^2 between N(0, sd^2 I) and N(shift e_1, sd^2 I) with a Gaussian kernel of width h.

    E k(X, X') = (h^2 / (h^2 + 2 sd^2))^(d/2) since X - X' ~ N(0, 2 sd^2 I); the cross term
    carries an extra factor exp(-shift^2 / (2 (h^2 + 2 sd^2))).
    """
    s2 = bandwidth**2 + 2 * sd**2
    c = (bandwidth**2 / s2) ** (d / 2)
    return 2 * c * (1 - math.exp(-(shift**2) / (2 * s2)))


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_mmd_is_unbiased_for_the_closed_form(shift):
    g = torch.Generator().manual_seed(6)
    d, n, reps, h = 2, 200, 40, 1.5
    offset = torch.tensor([shift, 0.0], dtype=torch.float64)
    values = torch.stack(
        [
            mmd(
                torch.randn(n, d, generator=g, dtype=torch.float64),
                torch.randn(n, d, generator=g, dtype=torch.float64) + offset,
                bandwidth=h,
            )
            for _ in range(reps)
        ]
    )
    se = values.std() / math.sqrt(reps)  # spread over independent replications
    assert abs(float(values.mean()) - gaussian_mmd2(shift, 1.0, h, d)) < 4 * float(se)


def test_mmd_same_distribution_small_and_shift_clearly_positive():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(2, 300, 2, generator=g, dtype=torch.float64)
    pooled = torch.cat([x, y])
    h = float(np.median(pdist(pooled.numpy())))  # the median heuristic; permutation-invariant
    # Permutation null: relabelling the pooled sample draws the statistic under H0; the observed
    # value is exchangeable with these draws, so it exceeds all 50 with probability 1/51.
    perms = [torch.randperm(600, generator=g) for _ in range(50)]
    null = torch.stack([mmd(*pooled[perm].split(300), bandwidth=h) for perm in perms])
    assert float(mmd(x, y).abs()) <= float(null.abs().max())
    assert float(mmd(x, y + torch.tensor([1.0, 0.0]))) > 5 * float(null.abs().max())


def test_mmd_median_heuristic_and_dtype(dtype):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(31, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64) + 0.5
    median = float(np.median(pdist(torch.cat([x, y]).numpy())))
    torch.testing.assert_close(mmd(x, y), mmd(x, y, bandwidth=median))
    assert mmd(x.to(dtype), y.to(dtype)).dtype == dtype


def test_mmd_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"y: expected shape \[M, 2\]"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="bandwidth: expected a positive"):
        mmd(torch.zeros(5, 2), torch.ones(5, 2), bandwidth=0.0)


# --------------------------------------------------------------------------------- helpers
def test_weighted_moments_match_numpy(dtype):
    g = torch.Generator().manual_seed(12)
    z = torch.randn(3, 50, 3, generator=g, dtype=torch.float64)
    log_weights = 2.0 * torch.randn(3, 50, generator=g, dtype=torch.float64)
    log_weights[1, 7] = -math.inf  # a zero-weight particle
    mean, cov = weighted_moments(z.to(dtype), log_weights.to(dtype))
    assert mean.shape == (3, 3)
    assert cov.shape == (3, 3, 3)
    assert mean.dtype == cov.dtype == dtype
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    for b in range(3):
        w = torch.softmax(log_weights[b], -1).numpy()
        zb = z[b].numpy()
        expected_mean = np.average(zb, axis=0, weights=w)
        expected_cov = np.cov(zb, rowvar=False, aweights=w, bias=True)
        torch.testing.assert_close(mean[b].double(), torch.from_numpy(expected_mean), **tol)
        torch.testing.assert_close(cov[b].double(), torch.from_numpy(expected_cov), **tol)


def test_weighted_moments_rejects_rows_without_weight():
    log_weights = torch.tensor([[0.0, 0.0], [-math.inf, -math.inf]])
    with pytest.raises(ValueError, match=r"1 row\(s\) have no finite entry"):
        weighted_moments(torch.zeros(2, 2, 1), log_weights)
    with pytest.raises(ValueError, match=r"log_weights: expected shape \[2, 2\]"):
        weighted_moments(torch.zeros(2, 2, 1), torch.zeros(2, 3))


class ShiftedGaussianEncoder(torch.nn.Module):
    """q(z | x) = N(x[:, :d] + shift, I); a trainable shift to check that no graph is kept."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.full((d,), 0.5))

    def log_prob(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc = (x[:, : z.shape[-1]] + self.shift)[:, None, :]
        return torch.distributions.Normal(loc, 1.0).log_prob(z).sum(-1)


def test_log_q_true_matches_direct_evaluation():
    g = torch.Generator().manual_seed(13)
    x, z_true = torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
    encoder = ShiftedGaussianEncoder(2)
    out = log_q_true(encoder, z_true, x)
    expected = torch.distributions.Normal(x[:, :2] + 0.5, 1.0).log_prob(z_true).sum(-1)
    assert out.shape == (6,)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected)


def test_log_q_true_rejects_wrong_encoder_output():
    class Wrong:
        def log_prob(self, z, x):
            return z.sum((-2, -1))  # [B], not [B, 1]

    with pytest.raises(ValueError, match=r"expected output shape \[B, S\] = \[3, 1\]"):
        log_q_true(Wrong(), torch.zeros(3, 2), torch.zeros(3, 1))


def test_summarize():
    values = [1.0, 2.0, 4.0, 7.0]
    out = summarize(torch.tensor(values))
    assert out["n"] == 4
    assert out["mean"] == pytest.approx(3.5)
    assert out["std"] == pytest.approx(float(np.std(values, ddof=1)))
    assert out["sem"] == pytest.approx(float(np.std(values, ddof=1)) / 2)
    assert summarize(values) == out
    single = summarize([3.0])
    assert single["mean"] == 3.0
    assert math.isnan(single["std"])
    assert math.isnan(single["sem"])
    with pytest.raises(ValueError, match=r"values: expected shape \[n\]"):
        summarize(torch.zeros(2, 2))


def test_calibration_statistics_stay_importable_from_diagnostics():
    from smcwake import calibration_metrics, diagnostics

    for name in calibration_metrics.__all__:
        assert name in diagnostics.__all__
        assert getattr(diagnostics, name) is getattr(calibration_metrics, name)
