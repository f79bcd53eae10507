"""The problems every SMC tool is run on, with their exact (or numerically exact) answers.

==================== == === ===================================================== ==========
name                 d  p   model                                                 truth
==================== == === ===================================================== ==========
two-moons            2  2   smcwake's built-in task (box prior U[-1, 1]^2)         grid
linear-gaussian-10d  10 20  z ~ N(0, I), x ~ N(A z, I) (``tasks.linear_gaussian``) closed form
linear-gaussian-50d  50 100 the same with d = 50, p = 100                          closed form
squares-5d           5  5   z ~ N(0, I), x_j ~ N(z_j^2, 0.1^2) for j < 2, else     quadrature
                            N(z_j, 0.1^2): four mirror modes (benchmarks/multimodal.py)
box-10d              10 10  z ~ U[-1, 1]^10, x ~ N(z, 0.32^2 I), as a user writes   closed form
                            it (benchmarks/training_speed.py; ``fit``'s SMC refresh)
==================== == === ===================================================== ==========

box-10d is not in the peers' table (``PROBLEMS``): it is there for ``--compare-with``, to time
smcwake's engine on the model of its training benchmark, which runs in unconstrained
coordinates.

Observations are prior-predictive draws from a fixed seed. The truth per observation is its log
evidence log p(x), posterior mean and posterior standard deviation of each coordinate: in closed
form for the linear-Gaussian and box models (the box posterior is a product of truncated
normals); by 1-D quadrature for the squares model (its posterior
factorizes over coordinates); on a 1024 x 1024 grid over the prior's square for two-moons (the
midpoint rule: errors far below the SMC errors measured here).

Each tool writes the likelihood in its own language from ``Problem.kind`` and ``Problem.params``;
smcwake gets ``Problem.model`` (float32, torch's default, as a user would build it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special
from torch.distributions import Independent, Normal, Uniform

from smcwake import Model
from smcwake.tasks import get
from smcwake.tasks.linear_gaussian import linear_gaussian
from smcwake.tasks.two_moons import log_likelihood as two_moons_log_likelihood

__all__ = ["OTHER_PROBLEMS", "PROBLEMS", "Problem", "build_problem", "errors"]

PROBLEMS = ("two-moons", "linear-gaussian-10d", "linear-gaussian-50d", "squares-5d")
OTHER_PROBLEMS = ("box-10d",)  # for --compare-with only: no peer writes these
BOX = {"d": 10, "sd": 0.32}
SQUARES = {"d": 5, "m": 2, "sigma": 0.1}


@dataclass(frozen=True)
class Problem:
    """A model, its observations and the truth for each (all arrays float64 NumPy).

    Shapes: x [B, p], log_evidence [B], mean [B, d], sd [B, d].
    """

    name: str
    kind: str  # "two-moons" | "linear-gaussian" | "squares"
    d: int
    p: int
    prior: str  # "uniform" (U[-1, 1]^d) | "normal" (N(0, I_d))
    params: dict[str, Any]
    model: Model
    x: np.ndarray
    log_evidence: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    truth: str
    notes: dict[str, str] = field(default_factory=dict)


def _squares_model(d: int, m: int, sigma: float) -> Model:
    """The squares model of benchmarks/multimodal.py, in float32."""
    prior = Independent(Normal(torch.zeros(d), torch.ones(d)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = torch.cat([z[..., :m] ** 2, z[..., m:]], -1)
        return Normal(mean, sigma).log_prob(x[:, None, :]).sum(-1)

    return Model(prior, log_likelihood, name=f"squares-{d}d")


def _squares_truth(x: np.ndarray, m: int, sigma: float):
    """log p(x), posterior means and sds of the squares model. Shapes: x [B, d] -> [B], [B, d]."""
    B, d = x.shape
    grid = np.linspace(-7.0, 7.0, 280_001)  # spacing 5e-5, far below a mode's width (~0.01)
    step = grid[1] - grid[0]
    log_z = np.zeros(B)
    mean = np.zeros((B, d))
    sd = np.zeros((B, d))
    log_prior = -0.5 * grid**2 - 0.5 * math.log(2 * math.pi)
    for b in range(B):
        for j in range(m):
            lp = log_prior - 0.5 * ((x[b, j] - grid**2) / sigma) ** 2
            lp -= math.log(sigma) + 0.5 * math.log(2 * math.pi)
            top = lp.max()
            w = np.exp(lp - top)
            log_z[b] += top + math.log(w.sum() * step)
            w /= w.sum()
            mean[b, j] = (w * grid).sum()
            sd[b, j] = math.sqrt(max((w * grid**2).sum() - mean[b, j] ** 2, 0.0))
    # z_j ~ N(0, 1), x_j ~ N(z_j, s^2): posterior N(x / (1 + s^2), s^2 / (1 + s^2))
    s2 = sigma**2
    rest = x[:, m:]
    mean[:, m:] = rest / (1 + s2)
    sd[:, m:] = math.sqrt(s2 / (1 + s2))
    log_z += (-0.5 * rest**2 / (1 + s2) - 0.5 * math.log(2 * math.pi * (1 + s2))).sum(-1)
    return log_z, mean, sd


def _box_model(d: int, sd: float) -> Model:
    """U[-1, 1]^d prior and x | z ~ N(z, sd^2 I), written as a user would, in float32."""
    prior = Independent(Uniform(-torch.ones(d), torch.ones(d)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Normal(z, sd).log_prob(x[:, None, :]).sum(-1)

    return Model(prior, log_likelihood, name=f"box-{d}d")


def _box_truth(x: np.ndarray, sd: float):
    """log p(x), posterior means and sds of the box model: each coordinate's posterior is
    N(x_j, sd^2) truncated to [-1, 1]. Shapes: x [B, d] -> [B], [B, d], [B, d]."""
    a, b = (-1 - x) / sd, (1 - x) / sd
    # log(Phi(b) - Phi(a)) with both ends in the left tail when x > 0 (mirror otherwise)
    lo, hi = np.where(x > 0, a, -b), np.where(x > 0, b, -a)
    log_mass = special.log_ndtr(hi) + np.log1p(
        -np.exp(special.log_ndtr(lo) - special.log_ndtr(hi))
    )
    log_z = (log_mass - math.log(2)).sum(-1)  # the prior density is 1/2 per coordinate
    mass = np.exp(log_mass)
    pdf_a, pdf_b = np.exp(-0.5 * a**2), np.exp(-0.5 * b**2)
    pdf_a, pdf_b = pdf_a / math.sqrt(2 * math.pi), pdf_b / math.sqrt(2 * math.pi)
    shift = (pdf_a - pdf_b) / mass
    mean = x + sd * shift
    var = sd**2 * (1 + (a * pdf_a - b * pdf_b) / mass - shift**2)
    return log_z, mean, np.sqrt(var)


def _grid_truth(x: np.ndarray, grid_size: int = 1024):
    """Two-moons log p(x), posterior means and sds on a grid over [-1, 1]^2 (midpoint rule)."""
    h = 2.0 / grid_size
    axis = -1.0 + h * (torch.arange(grid_size, dtype=torch.float64) + 0.5)
    centres = torch.cartesian_prod(axis, axis)  # [G^2, 2]
    log_cell = math.log(h * h) + math.log(0.25)  # cell area times the prior density 1/4
    log_z, mean, sd = [], [], []
    for b in range(x.shape[0]):
        ll = two_moons_log_likelihood(centres, torch.as_tensor(x[b])[None])  # [G^2]
        log_z.append(float(torch.logsumexp(ll, 0)) + log_cell)
        w = torch.softmax(ll, 0)[:, None]
        m = (w * centres).sum(0)
        mean.append(m.numpy())
        sd.append(((w * (centres - m) ** 2).sum(0)).sqrt().numpy())
    return np.array(log_z), np.stack(mean), np.stack(sd)


def build_problem(name: str, num_observations: int, seed: int = 0) -> Problem:
    """The problem ``name`` with ``num_observations`` prior-predictive observations."""
    B = num_observations
    if name == "two-moons":
        task = get("two-moons")
        _, x = task.observations(B, seed)
        x = x.double().numpy()
        log_z, mean, sd = _grid_truth(x)
        return Problem(
            name, "two-moons", 2, 2, "uniform", {}, task.model, x, log_z, mean, sd, "grid 1024^2"
        )
    if name.startswith("linear-gaussian-"):
        d = int(name.removeprefix("linear-gaussian-").removesuffix("d"))
        p = 2 * d
        exact = linear_gaussian(d=d, p=p, dtype=torch.float64)
        _, x = exact.observations(B, seed)
        mean, cov = exact.posterior_moments(x)
        model = linear_gaussian(d=d, p=p).model
        params = {"A": exact.defaults["design_matrix"].numpy(), "noise": 1.0}
        return Problem(
            name,
            "linear-gaussian",
            d,
            p,
            "normal",
            params,
            model,
            x.numpy(),
            exact.log_evidence(x).numpy(),
            mean.numpy(),
            torch.diagonal(cov, dim1=-2, dim2=-1).sqrt().numpy(),
            "closed form",
        )
    if name == "squares-5d":
        d, m, sigma = SQUARES["d"], SQUARES["m"], SQUARES["sigma"]
        g = np.random.default_rng(seed)
        z = g.standard_normal((B, d))
        x = np.concatenate([z[:, :m] ** 2, z[:, m:]], -1) + sigma * g.standard_normal((B, d))
        log_z, mean, sd = _squares_truth(x, m, sigma)
        return Problem(
            name,
            "squares",
            d,
            d,
            "normal",
            {"m": m, "sigma": sigma},
            _squares_model(d, m, sigma),
            x,
            log_z,
            mean,
            sd,
            "quadrature",
        )
    if name == "box-10d":
        d, sd = BOX["d"], BOX["sd"]
        g = np.random.default_rng(seed)
        x = g.uniform(-1, 1, (B, d)) + sd * g.standard_normal((B, d))
        log_z, mean, post_sd = _box_truth(x, sd)
        model = _box_model(d, sd)
        params = {"sd": sd}
        return Problem(
            name, "box", d, d, "uniform", params, model, x, log_z, mean, post_sd, "exact"
        )
    known = list(PROBLEMS + OTHER_PROBLEMS)
    raise ValueError(f"problem: expected one of {known}, received {name!r}")


def errors(problem: Problem, log_evidence: np.ndarray, mean: np.ndarray) -> dict[str, float]:
    """Mean |log Zhat - log Z| and posterior-mean error over the first b observations.

    The posterior-mean error of one observation is the root mean square over coordinates of
    (estimated mean - exact mean) / exact posterior sd; the table reports its mean over
    observations. Runs whose log Zhat is not finite are counted in ``failed``.

    Shapes: log_evidence [b], mean [b, d].
    """
    b = log_evidence.shape[0]
    finite = np.isfinite(log_evidence) & np.isfinite(mean).all(-1)
    z_err = np.abs(log_evidence - problem.log_evidence[:b])
    m_err = np.sqrt((((mean - problem.mean[:b]) / problem.sd[:b]) ** 2).mean(-1))
    return {
        "log_z_error": float(z_err[finite].mean()) if finite.any() else math.nan,
        "mean_error": float(m_err[finite].mean()) if finite.any() else math.nan,
        "failed": int((~finite).sum()),
    }
