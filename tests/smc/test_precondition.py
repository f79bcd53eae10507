"""The shrunk cloud covariance: exact properties and its error against a known covariance."""

import math

import torch

from smcwake.smc.mh import weighted_cholesky
from smcwake.smc.precondition import merged_weights, shrunk_cholesky, shrunk_covariance

DT = torch.float64


def correlated_cov(d: int) -> torch.Tensor:
    """An AR(1) covariance 0.6^|i - j| with standard deviations from 0.5 to 2."""
    i = torch.arange(d, dtype=DT)
    corr = 0.6 ** (i[:, None] - i[None, :]).abs()
    sd = torch.linspace(0.5, 2.0, d, dtype=DT)
    return sd[:, None] * corr * sd[None, :]


def draws(cov: torch.Tensor, B: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(B, n, cov.shape[0], generator=g, dtype=DT)
    return eps @ torch.linalg.cholesky(cov).mT


def test_merged_weights_put_each_points_mass_on_one_copy():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 7, 3, generator=g, dtype=DT)
    pick = torch.randint(0, 7, (2, 40), generator=g)
    z = torch.gather(base, 1, pick[..., None].expand(-1, -1, 3))
    log_weights = torch.randn(2, 40, generator=g, dtype=DT)
    merged = merged_weights(z, log_weights)
    w = torch.softmax(log_weights, -1)
    for b in range(2):
        for point in pick[b].unique():
            copies = pick[b] == point
            torch.testing.assert_close(merged[b, copies].sum(), w[b, copies].sum())
            assert int((merged[b, copies] > 0).sum()) == 1  # all of it on one copy
    # equal weights: 1 / sum v^2 counts distinct points when each is copied equally often
    z = base.repeat_interleave(4, dim=1)
    merged = merged_weights(z, torch.zeros(2, 28, dtype=DT))
    torch.testing.assert_close(1 / merged.square().sum(-1), torch.full((2,), 7.0, dtype=DT))


def test_shrinkage_fades_with_many_points_and_grows_with_few():
    cov = correlated_cov(10)
    flat = torch.zeros(20, 5000, dtype=DT)
    shrunk, lam = shrunk_covariance(draws(cov, 20, 5000, seed=1), flat)
    assert float(lam.max()) < 0.05
    few, lam_few = shrunk_covariance(draws(cov, 20, 15, seed=2), flat[:, :15])
    assert float(lam_few.min()) > float(lam.max())
    assert float(lam_few.mean()) > 0.3
    # the diagonal is never shrunk: it is the plain weighted variance
    z = draws(cov, 20, 15, seed=2)
    var = z.var(1, unbiased=False)
    torch.testing.assert_close(torch.diagonal(few, dim1=-2, dim2=-1), var)


def test_shrunk_estimate_is_closer_to_the_truth_when_points_are_few():
    # n = 30 points in d = 20: the plain covariance's error (in the correlation scale, where
    # the intensity is chosen) is larger than the shrunk one's for every one of 50 clouds
    d, n, B = 20, 30, 50
    cov = correlated_cov(d)
    sd = torch.diagonal(cov).sqrt()
    truth = cov / (sd[:, None] * sd[None, :])
    z = draws(cov, B, n, seed=3)
    flat = torch.zeros(B, n, dtype=DT)

    def corr_error(c: torch.Tensor) -> torch.Tensor:
        s = torch.diagonal(c, dim1=-2, dim2=-1).sqrt()
        return (c / (s[..., :, None] * s[..., None, :]) - truth).square().sum((-2, -1))

    plain_chol = weighted_cholesky(z, flat)
    plain = corr_error(plain_chol @ plain_chol.mT)
    shrunk = corr_error(shrunk_covariance(z, flat)[0])
    assert (shrunk < plain).float().mean() > 0.9, (shrunk / plain).tolist()


def test_copies_count_once():
    # n distinct points copied 3 times shrink exactly as the n points themselves: resampling
    # adds no information, so it must not lower the intensity
    cov = correlated_cov(8)
    z = draws(cov, 4, 40, seed=4)
    _, lam = shrunk_covariance(z, torch.zeros(4, 40, dtype=DT))
    copies = z.repeat_interleave(3, dim=1)
    _, lam_copies = shrunk_covariance(copies, torch.zeros(4, 120, dtype=DT))
    torch.testing.assert_close(lam_copies, lam)


def test_weights_are_used():
    # a weighted cloud gives the covariance of the weighted points, not of the raw ones
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 4000, 2, generator=g, dtype=DT)
    log_weights = -0.5 * z[..., 0].square() * 3  # reweights N(0, 1) to N(0, 1/4) along axis 0
    cov, _ = shrunk_covariance(z, log_weights)
    assert abs(float(cov[0, 0, 0]) - 0.25) < 0.03  # s.e. about 0.25 sqrt(2 / ESS), ESS ~ 2800
    assert abs(float(cov[0, 1, 1]) - 1.0) < 0.1


def test_edge_cases_stay_finite():
    # one dimension: nothing to shrink; a coordinate with no spread; a single distinct point
    z1 = torch.randn(3, 50, 1, dtype=DT)
    cov, lam = shrunk_covariance(z1, torch.zeros(3, 50, dtype=DT))
    assert (lam == 0).all()
    torch.testing.assert_close(cov[:, 0, 0], z1[..., 0].var(1, unbiased=False))
    z = torch.randn(2, 50, 3, dtype=DT)
    z[..., 1] = 1.0
    z[1] = z[1, :1]  # every particle of the second cloud the same point
    chol = shrunk_cholesky(z, torch.zeros(2, 50, dtype=DT))
    assert torch.isfinite(chol).all()
    assert (torch.diagonal(chol, dim1=-2, dim2=-1) > 0).all()
    assert not math.isnan(float(shrunk_covariance(z, torch.zeros(2, 50, dtype=DT))[1].sum()))
