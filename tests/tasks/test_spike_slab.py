"""Spike and slab: closed-form evidence against the benchmark's dense grid, exact posterior draws
against grid expectations, and the simulator against the likelihood."""

import math

import pytest
import torch

from smcwake.bench import grid_log_evidence
from smcwake.tasks import get
from smcwake.tasks.spike_slab import log_likelihood

HALF, BROAD, NARROW = 5.0, 1.0, 0.05
# inside, near an edge (the broad base truncated), in a corner, just outside the box (the
# spike itself truncated)
X = torch.tensor([[0.3, -1.2], [4.6, 0.0], [-4.8, 4.9], [5.03, -2.0]], dtype=torch.float64)
GRID = 2048


@pytest.fixture(scope="module")
def task():
    return get("spike-slab", dtype=torch.float64)


def test_closed_form_evidence_matches_the_grid(task):
    # Midpoint rule on 2048^2 cells (h = 0.0049, a tenth of the spike's sd) whose edges are the
    # box's: its error is about h^2 / 24 times the integrand's slope at the box edges, relative
    # 4e-4 at most where the spike is cut (x just outside), far less elsewhere.
    grid = grid_log_evidence(task, X, grid_size=GRID)
    torch.testing.assert_close(task.log_evidence(X), grid, atol=1e-3, rtol=0)
    # inside the box the spike is whole and the base loses only its far tails
    phi = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (4.7, -5.3, 6.2, -3.8)]
    base = (phi[0] - phi[1]) * (phi[2] - phi[3])
    exact = math.log(0.5 * base + 0.5) - 2 * math.log(2 * HALF)
    assert abs(float(task.log_evidence(X[:1])[0]) - exact) < 1e-9


def grid_expectations(x):
    """E[f(z) | x] on the midpoint grid for f = z_1, z_2, z_1^2, z_2^2, 1{|z - x| < 0.15}."""
    h = 2 * HALF / GRID
    axis = -HALF + h * (torch.arange(GRID, dtype=torch.float64) + 0.5)
    centres = torch.cartesian_prod(axis, axis)
    out = []
    for row in x:
        w = torch.softmax(log_likelihood(centres, row, BROAD, NARROW), 0)
        near = ((centres - row).norm(dim=-1) < 0.15).double()
        out.append(
            torch.stack(
                [
                    w @ centres[:, 0],
                    w @ centres[:, 1],
                    w @ centres[:, 0] ** 2,
                    w @ centres[:, 1] ** 2,
                    w @ near,
                ]
            )
        )
    return torch.stack(out)  # [B, 5]


def test_reference_draws_match_grid_expectations(task):
    # 40,000 exact draws per observation: each statistic's sample mean is within 4 standard
    # errors (sd of the statistic over the draws / 200) of its grid value, plus the grid's own
    # error (the disc's pixelated edge: about 2 pi 0.15 h times the spike's density, < 2e-3).
    n = 40_000
    z = task.reference_posterior(X, n, 0)
    assert z.shape == (4, n, 2)
    assert (z.abs() < HALF).all()
    stats = torch.stack(
        [
            z[..., 0],
            z[..., 1],
            z[..., 0] ** 2,
            z[..., 1] ** 2,
            ((z - X[:, None, :]).norm(dim=-1) < 0.15).double(),
        ],
        -1,
    )  # [B, n, 5]
    expected = grid_expectations(X)
    error = (stats.mean(1) - expected).abs()
    bound = 4 * stats.std(1) / math.sqrt(n) + 2e-3
    assert (error < bound).all(), (error, bound)
    assert (expected[:3, 4] > 0.45).all()  # premise: the spike holds about half the mass


def test_simulator_draws_from_the_likelihood(task):
    # |x - z|_inf < 0.2 has probability 1/2 (spike: 4 sd) + 1/2 (2 Phi(0.2) - 1)^2 = 0.5126;
    # 4 standard errors of a proportion over 20,000 draws: 4 sqrt(0.25 / 20,000) = 0.014.
    z = task.model.sample_prior((20_000,), generator=torch.Generator().manual_seed(0))
    x = task.model.simulate(z, generator=torch.Generator().manual_seed(1))
    close = float(((x - z).abs().amax(-1) < 0.2).double().mean())
    inner = math.erf(0.2 / math.sqrt(2))
    assert abs(close - (0.5 + 0.5 * inner**2)) < 0.014
    _, x_obs = task.observations(100, 0)
    assert x_obs.shape == (100, 2)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="narrow_sd"):
        get("spike-slab", narrow_sd=0.0)
