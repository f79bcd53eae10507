"""Two moons: the exact likelihood against the simulator, and the dense-grid reference."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from smcwake.tasks import get
from smcwake.tasks.two_moons import (
    _grid_centres,
    _grid_log_likelihood,
    grid_posterior_samples,
    log_likelihood,
    simulate,
)

THETAS = [(0.0, 0.0), (0.3, -0.7), (-0.9, -0.6), (0.5, 0.5), (-0.2, 0.95)]


def _centre(theta):
    t1, t2 = theta
    return 0.25 - abs(t1 + t2) / math.sqrt(2), (t2 - t1) / math.sqrt(2)


def _density_on_uv_grid(theta, u_edges, v_edges, sub):
    """Likelihood density at the midpoints of a (u, v) grid, each cell split sub x sub.

    Returns densities [len(u_edges) - 1, len(v_edges) - 1, sub, sub] and the sub-cell area.
    Grid lines follow u = x1 - c1, v = x2 - c2, so the edge u = 0 of the support is a cell
    edge and the midpoint rule never straddles the discontinuity.
    """
    hu, hv = (u_edges[1] - u_edges[0]) / sub, (v_edges[1] - v_edges[0]) / sub
    u = (u_edges[:-1, None] + hu * (np.arange(sub) + 0.5)).reshape(-1)
    v = (v_edges[:-1, None] + hv * (np.arange(sub) + 0.5)).reshape(-1)
    c1, c2 = _centre(theta)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    x = torch.from_numpy(np.stack([uu + c1, vv + c2], -1))
    th = torch.tensor(theta, dtype=torch.float64)
    dens = torch.exp(log_likelihood(th, x)).numpy()
    nu, nv = len(u_edges) - 1, len(v_edges) - 1
    return dens.reshape(nu, sub, nv, sub).transpose(0, 2, 1, 3), hu * hv


@pytest.mark.parametrize("theta", THETAS)
def test_density_integrates_to_one(theta):
    """Midpoint rule with h = 5e-4 on the box u in (0, 0.18), |v| < 0.18. The density is smooth
    inside (scale R_SD = 0.01), even in u about the edge u = 0 and ~0 at the other edges (mass
    beyond r = 0.18, 8 sd, is below 1e-14), so the Euler-Maclaurin boundary terms vanish and the
    error is far below the generic (h / 0.01)^2 / 24 = 1e-4 (it is ~1e-15); allow 1e-6."""
    u_edges = np.linspace(0.0, 0.18, 361)
    v_edges = np.linspace(-0.18, 0.18, 721)
    dens, area = _density_on_uv_grid(theta, u_edges, v_edges, 1)
    assert dens.sum() * area == pytest.approx(1.0, abs=1e-6)


def test_zero_likelihood_where_u_is_not_positive():
    theta = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.3, -0.7], [-0.5, -0.4]], dtype=torch.float64)
    c1 = 0.25 - (theta[:, 0] + theta[:, 1]).abs() / math.sqrt(2)
    c2 = (theta[:, 1] - theta[:, 0]) / math.sqrt(2)
    # u = 0 exactly (a = +-pi/2 excluded), then u < 0 at the ring's radius.
    u = torch.tensor([0.0, -0.01, -0.05, -1e-9], dtype=torch.float64)
    x = torch.stack([c1 + u, c2 + 0.1], -1)
    assert premise_u(theta, x).le(0).all()
    assert torch.equal(log_likelihood(theta, x), torch.full((4,), -math.inf, dtype=torch.float64))
    # Just inside the support the likelihood is positive: the density jumps at u = 0.
    x_in = torch.stack([c1 + 1e-6, c2 + 0.1], -1)
    assert torch.isfinite(log_likelihood(theta, x_in)).all()


def premise_u(theta, x):
    return x[:, 0] - 0.25 + (theta[:, 0] + theta[:, 1]).abs() / math.sqrt(2)


def test_gradients_are_finite_inside_and_outside_the_support():
    theta = torch.tensor([[0.1, 0.2], [0.0, 0.0], [0.4, -0.4]], requires_grad=True)
    x = torch.tensor([[0.2, 0.05], [0.25, 0.0], [0.1, -0.5]])  # inside, u = r = 0, outside
    ll = log_likelihood(theta, x)
    assert torch.isfinite(ll[0])
    assert torch.isinf(ll[1:]).all()
    ll[0].backward()
    assert torch.isfinite(theta.grad).all()


@pytest.mark.parametrize("theta", [(0.0, 0.0), (0.3, -0.7)])
def test_likelihood_matches_histogram_of_simulations(theta):
    """Bin 100,000 simulations on a 0.01 grid in (u, v) and compare with the likelihood's mass
    per bin (midpoint rule, 20 x 20 sub-cells; integration error ~1e-4 relative, far below the
    counts' Poisson error). Pearson chi-square over bins expecting >= 5 counts (the rest pooled):
    a correct likelihood gives a p-value ~ U(0, 1); fail below 1e-3."""
    n = 100_000
    th = torch.tensor([theta], dtype=torch.float64).expand(n, 2)
    x = simulate(th, torch.Generator().manual_seed(5)).numpy()
    c1, c2 = _centre(theta)
    u_edges = np.linspace(0.0, 0.16, 17)  # r < 0.16 = 6 sd above the mean radius
    v_edges = np.linspace(-0.16, 0.16, 33)
    counts, _, _ = np.histogram2d(x[:, 0] - c1, x[:, 1] - c2, bins=[u_edges, v_edges])
    assert counts.sum() == n  # premise: the bins cover every simulation
    dens, area = _density_on_uv_grid(theta, u_edges, v_edges, 20)
    expected = n * dens.sum((2, 3)) * area
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert big.sum() > 50
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert stats.chi2(len(obs) - 1).sf(chi2) > 1e-3, (chi2, len(obs))


def test_grid_evaluation_matches_log_likelihood():
    centres = _grid_centres(64)
    x = torch.tensor([[0.05, -0.02], [0.1, 0.1], [-0.5, 0.3]], dtype=torch.float64)
    fast = _grid_log_likelihood(centres, x)
    direct = log_likelihood(centres, x[:, None, :])
    assert torch.equal(torch.isinf(fast), torch.isinf(direct))
    assert torch.isfinite(direct).any()
    torch.testing.assert_close(fast, direct)


def _grid_mean(x, grid_size):
    """Posterior mean by direct weighting of a grid_size^2 grid of cell centres (numpy)."""
    axis = -1 + (np.arange(grid_size) + 0.5) * 2 / grid_size
    t1, t2 = np.meshgrid(axis, axis, indexing="ij")
    u = x[0] - 0.25 + np.abs(t1 + t2) / np.sqrt(2)
    v = x[1] - (t2 - t1) / np.sqrt(2)
    r = np.sqrt(u**2 + v**2)
    with np.errstate(divide="ignore"):
        logw = np.where(
            u > 0, -0.5 * ((r - 0.1) / 0.01) ** 2 - np.log(np.where(u > 0, r, 1)), -np.inf
        )
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = np.array([(w * t1).sum(), (w * t2).sum()])
    sd = np.sqrt(np.array([(w * t1**2).sum(), (w * t2**2).sum()]) - mean**2)
    return mean, sd


def test_reference_samples_are_in_the_support_and_match_the_grid_mean():
    task = get("two-moons", dtype=torch.float64, grid_size=512)
    _, x = task.observations(3, 11)
    n = 4_000
    samples = task.reference_posterior(x, n, 0)
    assert samples.shape == (3, n, 2)
    assert samples.abs().max() <= 1
    assert torch.isfinite(task.model.log_likelihood(samples, x)).all()
    for b in range(3):
        xb = x[b].numpy()
        mean_fine, sd = _grid_mean(xb, 1500)
        mean_coarse, _ = _grid_mean(xb, 1000)
        # Monte Carlo error of a mean of n draws, plus the grid error estimated from two
        # resolutions (the reference uses a coarser 512 grid: allow 3x that difference + 1e-3).
        tol = 4 * sd / math.sqrt(n) + 3 * np.abs(mean_fine - mean_coarse) + 1e-3
        got = samples[b].mean(0).numpy()
        assert (np.abs(got - mean_fine) < tol).all(), (b, got, mean_fine, tol)


def test_reference_jitter_never_leaves_the_support_near_the_tips():
    """Near the moons' tips (u -> 0) the density jumps to zero. Cell centres sit on levels of
    s = (theta1 + theta2) / sqrt 2 spaced q = h / sqrt 2 apart; choose x1 so that the edge u = 0
    cuts the lowest kept cells 0.3 q below their centres. A uniform point in such a cell then
    falls outside the support about 25% of the time; the sampler must redraw it."""
    grid_size = 256
    h = 2 / grid_size
    q = h / math.sqrt(2)
    s_centre = (266 * h - 2) / math.sqrt(2)  # a level of cell centres, near s = 0.05
    x = torch.tensor([[0.25 - s_centre + 0.3 * q, -0.09]], dtype=torch.float64)
    samples = grid_posterior_samples(x, 5_000, 1, grid_size=grid_size)
    u = x[:, None, 0] - 0.25 + (samples[..., 0] + samples[..., 1]).abs() / math.sqrt(2)
    assert (u < 0.3 * q).sum() > 10  # premise: draws land in the cut cells, below their centres
    assert torch.isfinite(log_likelihood(samples, x[:, None, :])).all()


def test_impossible_observation_is_reported():
    # u = x1 - 0.25 + |theta1 + theta2| / sqrt 2 <= -3 - 0.25 + sqrt 2 < 0 for every theta.
    with pytest.raises(ValueError, match="zero on every grid cell for 1 observation"):
        grid_posterior_samples(torch.tensor([[0.0, 0.0], [-3.0, 0.0]]), 3, 0, grid_size=32)


def test_defaults_follow_spec():
    task = get("two-moons")
    assert task.defaults["num_observations"] == 100
    assert task.defaults["num_particles"] == 1000
    assert task.defaults["encoder"] == "nsf"
    assert task.posterior_moments is None
    assert task.log_evidence is None
