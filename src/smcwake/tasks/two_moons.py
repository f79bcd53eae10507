"""Two moons: a 2-D simulator whose posteriors are crescents, some of them bimodal.

theta ~ U[-1, 1]^2, a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2) and

    x = (r cos a + 0.25 - |theta1 + theta2| / sqrt 2,  r sin a + (-theta1 + theta2) / sqrt 2).

The likelihood is exact: with u = x1 - 0.25 + |theta1 + theta2| / sqrt 2 and
v = x2 - (-theta1 + theta2) / sqrt 2, the map (a, r) -> (u, v) is polar coordinates, so

    log p(x | theta) = -log pi + log N(r; 0.1, 0.01^2) - log r,   r = sqrt(u^2 + v^2),

(1/pi the density of a, 1/r the polar Jacobian) and p(x | theta) = 0 where u <= 0 (cos a < 0).
The absolute value makes posteriors symmetric under theta1 + theta2 -> -(theta1 + theta2).

The reference posterior is a dense grid over the prior's square: cells are drawn by their mass
(likelihood at the cell centre; the prior is flat) and jittered uniformly within the cell.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, Uniform

from smcwake.model import Model
from smcwake.tasks import Task
from smcwake.tasks._common import check_count, make_generator, place

__all__ = ["grid_posterior_samples", "log_likelihood", "simulate", "two_moons"]

R_MEAN = 0.1
R_SD = 0.01
OFFSET = 0.25
_SQRT_HALF = math.sqrt(0.5)
_LOG_CONST = -math.log(math.pi) - math.log(R_SD) - 0.5 * math.log(2 * math.pi)
_MAX_CATEGORIES = 2**24  # torch.multinomial's limit on the number of categories


def _centre(theta: Tensor) -> tuple[Tensor, Tensor]:
    """The point the moon is drawn around: (0.25 - |t1 + t2| / sqrt 2, (-t1 + t2) / sqrt 2)."""
    t1, t2 = theta[..., 0], theta[..., 1]
    return OFFSET - (t1 + t2).abs() * _SQRT_HALF, (t2 - t1) * _SQRT_HALF


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """Exact log p(x | theta); ``-inf`` where u <= 0. Broadcasts over leading dimensions.

    Gradients are finite everywhere (masked entries use a safe stand-in point).

    Shapes: theta [*, 2], x [*, 2] -> [*].

    >>> theta = torch.zeros(1, 2)
    >>> x = torch.tensor([[0.35, 0.0], [0.15, 0.0]])  # u = 0.1, r = 0.1; then u = -0.1
    >>> [round(v, 4) for v in log_likelihood(theta, x).tolist()]
    [4.8441, -inf]
    """
    c1, c2 = _centre(theta)
    u = x[..., 0] - c1
    v = x[..., 1] - c2
    inside = u > 0
    u_safe = torch.where(inside, u, torch.ones_like(u))
    r = torch.sqrt(u_safe.square() + v.square())
    value = _LOG_CONST - 0.5 * ((r - R_MEAN) / R_SD).square() - torch.log(r)
    return torch.where(inside, value, -math.inf)


def simulate(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw x ~ p(x | theta), from ``generator`` (on theta's device) or torch's global RNG.

    Shapes: theta [N, 2] -> x [N, 2].

    >>> simulate(torch.zeros(4, 2), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 2])
    """
    n = theta.shape[0]
    kw = {"generator": generator, "dtype": theta.dtype, "device": theta.device}
    a = math.pi * (torch.rand(n, **kw) - 0.5)
    r = R_MEAN + R_SD * torch.randn(n, **kw)
    c1, c2 = _centre(theta)
    return torch.stack([r * torch.cos(a) + c1, r * torch.sin(a) + c2], dim=-1)


def _grid_centres(grid_size: int) -> Tensor:
    """Centres of a grid_size x grid_size grid of equal cells over [-1, 1]^2 (float64, CPU).

    Shapes: -> [grid_size^2, 2].
    """
    h = 2.0 / grid_size
    axis = -1.0 + h * (torch.arange(grid_size, dtype=torch.float64) + 0.5)
    return torch.cartesian_prod(axis, axis)


def _grid_log_likelihood(centres: Tensor, x: Tensor) -> Tensor:
    """:func:`log_likelihood` of many observations on one set of points, computed in place.

    The same formula as :func:`log_likelihood` (about twice as fast on a dense grid).

    Shapes: centres [N, 2], x [c, 2] -> [c, N].
    """
    c1, c2 = _centre(centres)  # [N]
    u = (x[:, :1] - c1).contiguous()  # [c, N]
    inside = u > 0
    r = torch.hypot(u, x[:, 1:] - c2)
    value = torch.log(r).neg_().add_(_LOG_CONST)
    value.add_(r.sub_(R_MEAN).div_(R_SD).square_().mul_(-0.5))
    return value.masked_fill_(~inside, -math.inf)


def grid_posterior_samples(
    x: Tensor,
    n: int,
    seed: int,
    *,
    grid_size: int = 1024,
    chunk_elements: int = 2**21,
) -> Tensor:
    """Reference posterior samples from a dense grid over the prior's square [-1, 1]^2.

    Each observation's posterior is approximated by the likelihood at the centres of
    ``grid_size^2`` equal cells (the prior is flat); ``n`` cells are drawn with replacement by
    mass and each draw is placed uniformly in its cell. Near the edge of the support (u = 0) a
    uniform point may fall where the likelihood is zero; it is redrawn within the cell (up to
    32 times, then the cell centre is used), so every sample has a positive likelihood.
    Observations are processed in chunks of about ``chunk_elements`` grid evaluations to bound
    memory (about 100 bytes per element at peak). Computed in float64 on the CPU.

    Shapes: x [B, 2] -> [B, n, 2] (x's dtype and device).

    >>> x = torch.tensor([[0.05, -0.02]])
    >>> z = grid_posterior_samples(x, 5, seed=0, grid_size=256)
    >>> z.shape, bool(torch.isfinite(log_likelihood(z, x[:, None, :])).all())
    (torch.Size([1, 5, 2]), True)
    """
    check_count(n)
    check_count(grid_size, "grid_size")
    if grid_size**2 > _MAX_CATEGORIES:
        raise ValueError(
            f"grid_size: expected at most {math.isqrt(_MAX_CATEGORIES)} (torch.multinomial "
            f"draws from at most 2^24 cells), received {grid_size}"
        )
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x: expected shape [B, 2], received {list(x.shape)}")
    g = make_generator(seed)
    h = 2.0 / grid_size
    centres = _grid_centres(grid_size)  # [G^2, 2]
    xd = x.detach().to(dtype=torch.float64, device="cpu")
    step = max(1, chunk_elements // grid_size**2)
    out = []
    for start in range(0, xd.shape[0], step):
        xc = xd[start : start + step]  # [c, 2]
        log_mass = _grid_log_likelihood(centres, xc)  # [c, G^2]
        empty = (log_mass == -math.inf).all(-1)  # [c]
        if bool(empty.any()):
            b = int(torch.nonzero(empty)[0]) + start
            raise ValueError(
                f"x: the likelihood is zero on every grid cell for {int(empty.sum())} "
                f"observation(s), first observation {b} (x = {xd[b].tolist()}); such x cannot "
                "come from the two-moons simulator with theta in [-1, 1]^2"
            )
        cells = torch.multinomial(torch.softmax(log_mass, -1), n, replacement=True, generator=g)
        z = centres[cells]  # [c, n, 2]
        centre = z
        todo = torch.ones(z.shape[:2], dtype=torch.bool)
        for _ in range(32):
            jitter = (torch.rand(z.shape, generator=g, dtype=torch.float64) - 0.5) * h
            candidate = centre + jitter
            ok = torch.isfinite(log_likelihood(candidate, xc[:, None, :]))
            take = todo & ok
            z = torch.where(take[..., None], candidate, z)
            todo = todo & ~ok
            if not bool(todo.any()):
                break
        out.append(z)
    return place(torch.cat(out), x.dtype, x.device)


def two_moons(
    *,
    grid_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """The two-moons task with its exact likelihood and a dense-grid reference posterior.

    ``defaults``: ``num_observations`` (100), ``num_particles`` (1000), ``encoder``
    (``"nsf"``, a neural spline flow), ``num_steps``, ``reference`` (``"grid"``) and
    ``grid_size``. ``grid_size`` sets the reference grid (cells of width 2 / grid_size).

    Shapes: theta [B, K, 2], x [B, 2].

    >>> task = two_moons()
    >>> theta, x = task.observations(100, seed=0)
    >>> bool(torch.isfinite(task.model.log_likelihood(theta[:, None, :], x)).all())
    True
    """
    check_count(grid_size, "grid_size")
    prior = Independent(
        Uniform(
            -torch.ones(2, dtype=dtype, device=device), torch.ones(2, dtype=dtype, device=device)
        ),
        1,
    )

    def model_log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        return log_likelihood(z, x[:, None, :])

    model = Model(prior, model_log_likelihood, simulate=simulate, name="two-moons")

    def observations(n: int, seed: int) -> tuple[Tensor, Tensor]:
        g = make_generator(seed)
        theta = 2.0 * torch.rand(check_count(n), 2, generator=g, dtype=torch.float64) - 1.0
        x = simulate(theta, g)
        return place(theta, dtype, device), place(x, dtype, device)

    def reference_posterior(x: Tensor, n: int, seed: int) -> Tensor:
        return grid_posterior_samples(x, n, seed, grid_size=grid_size)

    return Task(
        name="two-moons",
        model=model,
        description=(
            "Two moons: theta ~ U[-1, 1]^2, x = crescent of radius ~N(0.1, 0.01^2) around "
            "(0.25 - |theta1 + theta2| / sqrt 2, (theta2 - theta1) / sqrt 2), d = p = 2. Exact "
            "likelihood (zero outside the half-ring); posteriors are crescents, bimodal by the "
            f"symmetry theta1 + theta2 -> -(theta1 + theta2). Reference: a {grid_size}^2 grid."
        ),
        observations=observations,
        reference_posterior=reference_posterior,
        defaults={
            "num_observations": 100,
            "num_particles": 1000,
            "encoder": "nsf",
            "num_steps": 10_000,
            "reference": "grid",
            "grid_size": grid_size,
        },
    )
