"""Move kernels on multimodal posteriors with exact answers, beside the plain random walk.

Models whose posteriors are known exactly:

* ``squares-5d``: z ~ N(0, I_5), x_j | z ~ N(z_j^2, 0.1^2) for j < 2 and N(z_j, 0.1^2) otherwise.
  The likelihood sees z_0 and z_1 only through their squares: four mirror modes of mass 1/4 each,
  about 160 posterior standard deviations apart. The posterior factorizes over coordinates, so
  exact draws come from a fine grid per squared coordinate and a Gaussian for the others.
* ``squares-6d``: the same with three squared coordinates, eight modes of mass 1/8.
* ``far-mixture``: a prior 0.25 N(-12 e, I_3) + 0.75 N(12 e, I_3), e = (1, 1, 1) / sqrt(3), and
  x | z ~ N(z, 0.5^2 I_3). The posterior is a two-component Gaussian mixture with weights 0.7 and
  0.3 (the prior favours the other component), modes about 11 standard deviations apart.
* ``gaussian-50d``: z ~ N(0, 2^2 I_50), x | z ~ N(z, 0.5^2 I_50), unimodal, as a check that
  the mixture moves cost nothing in accuracy where there is a single mode in many dimensions.

Every kernel runs with K = 10,000 particles (2,000 for gaussian-50d) and 4 independent samplers
per model, most with 10 likelihood evaluations per particle and stage; the plain random walk and
``mixture+rwmh`` run with 5 (its mixture moves take more steps where the cloud shows modes and
they moved too few particles). The library's default kernel, ``"auto"``, is measured on these
models by ``benchmarks/kernels_by_dimension.py --sections multimodal``. Reported per kernel
and model: the largest error of a mode's mass (mean over samplers), the share of distinct
particles after the last move, C2ST accuracy of 1,000 draws from the first sampler against
1,000 exact draws (0.5 = indistinguishable), the error of the log evidence where it is known,
likelihood evaluations per sampler and wall time for the batch of samplers.

Curved modes, ten observations each (one sampler per observation, K = 5,000), with the default
kernel ``"auto"``, the same with four fixed jumps per stage (the default before its jumps
followed the step rule), ``mixture+rwmh`` with the step rule and with two fixed steps, and the
plain random walk:

* ``slcp-5d``: the SLCP model ("simple likelihood, complex posterior", Papamakarios, Sterratt &
  Murray, 2019). z ~ U[-3, 3]^5; x is four iid 2-d points N((z_1, z_2), Sigma) with standard
  deviations z_3^2, z_4^2 and correlation tanh(z_5). The likelihood sees z_3 and z_4 only
  through their squares, so every posterior has four modes of mass exactly 1/4 (the signs of
  z_3, z_4), each a curved, heavy-tailed ridge cut by the prior's box. Exact draws: given
  (z_3, z_4, z_5) the mean is a bivariate normal cut to the box, whose mass is integrated by
  48-point Gauss-Legendre in one coordinate and the normal CDF in the other; this leaves a 3-d
  density in (log|z_3|, log|z_4|, z_5), sampled from a 128^3 grid placed by two coarse passes,
  with uniform signs and the mean drawn by rejection from the cut normal.
* ``slcp-4d-asym``: its lower-dimensional, asymmetric variant: no correlation (z_5 dropped) and
  the prior's box is [-3, 3]^2 x [-2, 3] x [-2.5, 3], which cuts the negative modes, so the four
  masses differ (0.13 to 0.37). Given x the posterior factorizes into (z_1, z_3) and (z_2, z_4),
  the mean integrates out in closed form, and each sign's mass is a 1-d quadrature.
* ``slcp-4d-corner``: the same with the box [-3, 3]^2 x [-1, 3] x [-1.5, 3], which leaves some
  negative modes as small corners of the box (masses from 0 to 0.93, several under 0.03).

Reported per kernel: the largest error of a mode's mass per observation (mean and maximum over
the ten), its largest standardized error |mass - exact| / sqrt(m (1 - m) / ESS) (binomial, with
the ESS of the final weights), the lowest share of distinct particles, C2ST per observation
(1,000 draws against 1,000 exact draws; mean and maximum), the mean number of stages and of
independence steps per stage, the observations that
:func:`smcwake.smc.multimodal.check_mode_mixing` flags, likelihood evaluations per observation
and wall time for the batch of ten.

Torch runs on one thread, so that timings depend less on the machine's other load; they still
vary with it by tens of percent, so compare times within one run.

    python benchmarks/multimodal.py                 # about 20 minutes; updates docs/KERNELS.md
    python benchmarks/multimodal.py --only curved   # the curved-modes table alone, about 10

Each part rewrites only its own block of docs/KERNELS.md (between ``<!-- begin NAME -->`` and
``<!-- end NAME -->``); the text around the blocks is kept.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, Uniform

from smcwake import Model, run_smc
from smcwake.diagnostics import c2st
from smcwake.smc.composite import adaptive_steps, compose
from smcwake.smc.kernels import get_kernel, random_walk_metropolis
from smcwake.smc.mixing import until_decorrelated
from smcwake.smc.multimodal import check_mode_mixing, local_random_walk, mixture_independence
from smcwake.smc.steppers import mala_stepper

DT = torch.float64

# ------------------------------------------------------------------------------------ models


def squares_model(d: int, m: int, sigma: float) -> Model:
    """z ~ N(0, I_d); x_j ~ N(z_j^2, sigma^2) for j < m, N(z_j, sigma^2) for j >= m."""
    prior = Independent(Normal(torch.zeros(d, dtype=DT), torch.ones(d, dtype=DT)), 1)

    def loglik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = torch.cat([z[..., :m] ** 2, z[..., m:]], -1)
        return Normal(mean, sigma).log_prob(x[:, None, :]).sum(-1)

    return Model(prior, loglik, name=f"squares-{d}d")


def squares_exact(x: torch.Tensor, m: int, sigma: float, n: int, g: torch.Generator):
    """Exact posterior draws [n, d] for one observation x [d] of :func:`squares_model`."""
    d = x.shape[0]
    out = torch.empty(n, d, dtype=DT)
    grid = torch.linspace(0.0, 8.0, 400_001, dtype=DT)
    for j in range(m):
        log_p = -0.5 * grid**2 + Normal(grid**2, sigma).log_prob(x[j])
        cdf = torch.cumsum(torch.exp(log_p - log_p.max()), 0)
        u = torch.rand(n, generator=g, dtype=DT) * cdf[-1]
        idx = torch.searchsorted(cdf, u).clamp(max=grid.numel() - 1)
        step = float(grid[1] - grid[0])
        folded = grid[idx] - step * torch.rand(n, generator=g, dtype=DT)
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(DT)
        out[:, j] = sign * folded.clamp_min(0.0)
    var = sigma**2 / (1 + sigma**2)
    out[:, m:] = x[m:] / (1 + sigma**2) + math.sqrt(var) * torch.randn(
        n, d - m, generator=g, dtype=DT
    )
    return out


def sign_masses(z: torch.Tensor, log_weights: torch.Tensor, m: int) -> torch.Tensor:
    """Weighted mass of each sign pattern of the first m coordinates. [B, K, d] -> [B, 2^m]."""
    code = ((z[..., :m] > 0).long() * (2 ** torch.arange(m))).sum(-1)
    w = log_weights.exp()
    return torch.stack([(w * (code == c)).sum(-1) for c in range(2**m)], -1)


FAR_MU, FAR_NOISE, FAR_D = 12.0, 0.5, 3
FAR_PRIOR_WEIGHTS = (0.25, 0.75)


def far_mixture_model() -> tuple[Model, torch.Tensor, torch.Tensor]:
    """Gaussian-mixture prior, Gaussian likelihood; returns the model, locations and weights."""
    e = torch.ones(FAR_D, dtype=DT) / math.sqrt(FAR_D)
    locs = torch.stack([-FAR_MU * e, FAR_MU * e])
    weights = torch.tensor(FAR_PRIOR_WEIGHTS, dtype=DT)
    prior = MixtureSameFamily(
        Categorical(probs=weights), Independent(Normal(locs, torch.ones_like(locs)), 1)
    )

    def loglik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Normal(z, FAR_NOISE).log_prob(x[:, None, :]).sum(-1)

    return Model(prior, loglik, name="far-mixture"), locs, weights


def far_mixture_truth(x: torch.Tensor, locs: torch.Tensor, weights: torch.Tensor):
    """Posterior weights [2], component means [2, d], variance and log evidence for x [d]."""
    marginal = Independent(Normal(locs, math.sqrt(1 + FAR_NOISE**2)), 1).log_prob(x)
    log_joint = torch.log(weights) + marginal
    log_evidence = torch.logsumexp(log_joint, 0)
    post_var = 1 / (1 + 1 / FAR_NOISE**2)
    post_mean = post_var * (locs + x / FAR_NOISE**2)
    return torch.exp(log_joint - log_evidence), post_mean, post_var, log_evidence


def far_observation(posterior_weight_first: float = 0.7) -> torch.Tensor:
    """x = t e with t chosen so that the first component has the given posterior weight."""
    a1, a2 = FAR_PRIOR_WEIGHTS
    p = posterior_weight_first
    # log odds (second : first) = log(a2 / a1) + 2 mu t / (1 + s^2)
    t = (math.log((1 - p) / p) - math.log(a2 / a1)) * (1 + FAR_NOISE**2) / (2 * FAR_MU)
    return t * torch.ones(FAR_D, dtype=DT) / math.sqrt(FAR_D)


def far_exact(x: torch.Tensor, locs: torch.Tensor, weights: torch.Tensor, n: int, g):
    post_w, post_mean, post_var, _ = far_mixture_truth(x, locs, weights)
    comp = torch.multinomial(post_w, n, replacement=True, generator=g)
    return post_mean[comp] + math.sqrt(post_var) * torch.randn(n, FAR_D, generator=g, dtype=DT)


# ----------------------------------------------------------------------------------- kernels

KERNELS: dict[str, tuple[int, Callable[[], object]]] = {
    "rwmh": (10, lambda: random_walk_metropolis(10)),
    "mixture": (10, lambda: mixture_independence(10)),
    "mixture+rwmh": (10, lambda: compose(mixture_independence(3), random_walk_metropolis(7))),
    "mixture+local_rwmh": (10, lambda: compose(mixture_independence(3), local_random_walk(7))),
    "local_rwmh": (10, lambda: local_random_walk(10)),
    "adaptive_steps(mixture+rwmh)": (
        5,
        lambda: adaptive_steps(
            compose(mixture_independence(2), random_walk_metropolis(3)), min_moved=0.9, max_calls=4
        ),
    ),
    "rwmh (plain random walk)": (5, lambda: random_walk_metropolis(5)),
    "mixture+rwmh (5 steps)": (5, lambda: get_kernel("mixture+rwmh")),
}
GAUSSIAN_KERNELS = ["rwmh", "mixture+rwmh", "rwmh (plain random walk)", "mixture+rwmh (5 steps)"]


# --------------------------------------------------------------------------------- measuring


class Case(NamedTuple):
    name: str
    model: Model
    x0: torch.Tensor  # [d], one observation, run by several independent samplers
    truth_masses: torch.Tensor | None  # [modes]
    masses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    exact: Callable[[int, torch.Generator], torch.Tensor]
    log_z: float | None
    num_particles: int


def run_case(case: Case, kernel, samplers: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    x = case.x0.repeat(samplers, 1)
    start = time.perf_counter()
    result = run_smc(case.model, x, case.num_particles, kernel=kernel, generator=g)
    seconds = time.perf_counter() - start
    draws = result.sample(1000, generator=g)[0]
    exact = case.exact(1000, torch.Generator().manual_seed(seed + 1))
    row = {
        "distinct": float(result.distinct_fraction.mean()),
        "c2st": c2st(exact.float(), draws.float(), seed=0),
        "evals": float(result.num_likelihood_evals.double().mean()),
        "seconds": seconds,
        "converged": float(result.converged.double().mean()),
    }
    if case.masses is not None:
        masses = case.masses(result.particles, result.log_weights)
        row["mass_err"] = float((masses - case.truth_masses).abs().amax(-1).mean())
    if case.log_z is not None:
        row["log_z_err"] = float((result.log_evidence - case.log_z).abs().mean())
    return row


def gaussian_case(d: int = 50) -> Case:
    prior_sd, noise = 2.0, 0.5
    prior = Independent(Normal(torch.zeros(d, dtype=DT), prior_sd * torch.ones(d, dtype=DT)), 1)
    model = Model(
        prior,
        lambda z, x: Normal(z, noise).log_prob(x[:, None, :]).sum(-1),
        name=f"gaussian-{d}d",
    )
    marginal_sd = math.sqrt(prior_sd**2 + noise**2)
    x0 = marginal_sd * torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=DT)
    var = 1 / (1 / prior_sd**2 + 1 / noise**2)
    mean = var * x0 / noise**2

    def exact(n: int, g: torch.Generator) -> torch.Tensor:
        return mean + math.sqrt(var) * torch.randn(n, d, generator=g, dtype=DT)

    log_z = float(Normal(0.0, marginal_sd).log_prob(x0).sum())
    return Case(model.name, model, x0, None, None, exact, log_z, 2000)


def cases() -> list[Case]:
    out = []
    for d, m in [(5, 2), (6, 3)]:
        x0 = torch.cat([torch.full((m,), 4.0, dtype=DT), torch.tensor([0.5, -0.3, 1.0], dtype=DT)])
        out.append(
            Case(
                f"squares-{d}d",
                squares_model(d, m, 0.1),
                x0,
                torch.full((2**m,), 1.0 / 2**m, dtype=DT),
                lambda z, lw, m=m: sign_masses(z, lw, m),
                lambda n, g, x0=x0, m=m: squares_exact(x0, m, 0.1, n, g),
                None,
                10_000,
            )
        )
    model, locs, weights = far_mixture_model()
    x0 = far_observation(0.7)
    post_w, _, _, log_z = far_mixture_truth(x0, locs, weights)
    e = torch.ones(FAR_D, dtype=DT) / math.sqrt(FAR_D)

    def far_masses(z: torch.Tensor, lw: torch.Tensor) -> torch.Tensor:
        first = (lw.exp() * (z @ e < 0)).sum(-1)
        return torch.stack([first, 1 - first], -1)

    out.append(
        Case(
            "far-mixture",
            model,
            x0,
            post_w,
            far_masses,
            lambda n, g: far_exact(x0, locs, weights, n, g),
            float(log_z),
            10_000,
        )
    )
    out.append(gaussian_case())
    return out


# ----------------------------------------------------------------------------- curved modes

BOX = 3.0
SLCP_POINTS = 4
ASYM_LOW = (-3.0, -3.0, -2.0, -2.5)
CORNER_LOW = (-3.0, -3.0, -1.0, -1.5)


def slcp_loglik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Four iid 2-d points N((z_1, z_2), Sigma(z_3^2, z_4^2, tanh z_5)).

    Shapes: z [B, K, 5], x [B, 8] -> [B, K].
    """
    pts = x.view(x.shape[0], 1, SLCP_POINTS, 2)
    s1, s2 = (z[..., j, None] ** 2 for j in (2, 3))
    rho = torch.tanh(z[..., 4, None])
    u = (pts[..., 0] - z[..., None, 0]) / s1
    v = (pts[..., 1] - z[..., None, 1]) / s2
    one_m = 1 - rho**2
    quad = (u**2 - 2 * rho * u * v + v**2) / one_m
    log_det = torch.log(s1) + torch.log(s2) + 0.5 * torch.log(one_m)
    return (-math.log(2 * math.pi) - log_det - 0.5 * quad).sum(-1)


def slcp_simulate(z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x [N, 8] for z [N, 5] (d = 5) or, with the correlation dropped, z [N, 4]."""
    n = z.shape[0]
    rho = torch.tanh(z[:, 4:5]) if z.shape[1] > 4 else torch.zeros(n, 1, dtype=DT)
    e1 = torch.randn(n, SLCP_POINTS, generator=g, dtype=DT)
    e2 = torch.randn(n, SLCP_POINTS, generator=g, dtype=DT)
    a = z[:, 0:1] + z[:, 2:3] ** 2 * e1
    b = z[:, 1:2] + z[:, 3:4] ** 2 * (rho * e1 + torch.sqrt(1 - rho**2) * e2)
    return torch.stack([a, b], -1).reshape(n, 2 * SLCP_POINTS)


def asym_loglik(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The SLCP likelihood without correlation. [B, K, 4], [B, 8] -> [B, K]."""
    pts = x.view(x.shape[0], 1, SLCP_POINTS, 2)
    return Normal(z[..., None, :2], z[..., None, 2:] ** 2).log_prob(pts).sum((-1, -2))


def box_prior(low: tuple[float, ...]) -> Independent:
    low_t = torch.tensor(low, dtype=DT)
    return Independent(Uniform(low_t, BOX * torch.ones_like(low_t)), 1)


_STD = Normal(torch.zeros((), dtype=DT), torch.ones((), dtype=DT))


def _log_box_mass(xbar: torch.Tensor, s1, s2, rho) -> torch.Tensor:
    """log P(mu in [-3, 3]^2) for mu ~ N(xbar, Sigma / 4), by Gauss-Legendre in mu_1."""
    import numpy as np

    nodes, w = (torch.tensor(a, dtype=DT) for a in np.polynomial.legendre.leggauss(48))
    sd1 = s1 / 2
    lo = ((-BOX - xbar[0]) / sd1).clamp(-9, 9)
    hi = ((BOX - xbar[0]) / sd1).clamp(-9, 9)
    half = (hi - lo) / 2
    t = lo[..., None] + half[..., None] * (nodes + 1)  # standardized mu_1
    m2 = xbar[1] + (rho * s2 / s1)[..., None] * sd1[..., None] * t
    c = (s2 * torch.sqrt(1 - rho**2) / 2)[..., None]
    inner = _STD.cdf((BOX - m2) / c) - _STD.cdf((-BOX - m2) / c)
    mass = (half[..., None] * w * torch.exp(_STD.log_prob(t)) * inner).sum(-1)
    return torch.log(mass.clamp_min(1e-300))


def _slcp_log_marginal(x: torch.Tensor, a3, a4, z5) -> torch.Tensor:
    """log p(|z_3| = a3, |z_4| = a4, z_5 | x) up to a constant (the mean integrated out)."""
    pts = x.view(SLCP_POINTS, 2)
    xbar = pts.mean(0)
    dev = pts - xbar
    S = dev.T @ dev
    s1, s2, rho = a3**2, a4**2, torch.tanh(z5)
    one_m = 1 - rho**2
    log_det = 2 * torch.log(s1) + 2 * torch.log(s2) + torch.log(one_m)
    trace = (S[0, 0] / s1**2 - 2 * rho * S[0, 1] / (s1 * s2) + S[1, 1] / s2**2) / one_m
    # the points' density with the mean integrated over the box: |Sigma|^(-n/2 + 1/2)
    power = -(SLCP_POINTS - 1) / 2
    return power * log_det - 0.5 * trace + _log_box_mass(xbar, s1, s2, rho)


def _slcp_grid(x: torch.Tensor, lo: list[float], hi: list[float], n: int):
    """Cell centres and widths per axis and the log density per cell [n, n, n], in the
    coordinates (log|z_3|, log|z_4|, z_5) (Jacobian |z_3| |z_4| included)."""
    cells = []
    for a, b in zip(lo, hi, strict=True):
        h = (b - a) / n
        cells.append((a + (torch.arange(n, dtype=DT) + 0.5) * h, h))
    (u3, _), (u4, _), (c5, _) = cells
    a3, a4 = torch.meshgrid(u3.exp(), u4.exp(), indexing="ij")
    log_p = torch.empty(n, n, n, dtype=DT)
    for k in range(n):
        log_p[:, :, k] = _slcp_log_marginal(x, a3, a4, c5[k].expand_as(a3)) + u3[:, None] + u4
    return cells, log_p


def slcp_exact(x: torch.Tensor, n: int, g: torch.Generator, fine: int = 128) -> torch.Tensor:
    """Exact posterior draws [n, 5] for one observation x [8] of the SLCP model."""
    lo = [math.log(1e-3), math.log(1e-3), -BOX]
    hi = [math.log(BOX), math.log(BOX), BOX]
    for _ in range(2):  # two coarse passes find the range holding all but 1e-8 of the mass
        cells, log_p = _slcp_grid(x, lo, hi, 64)
        p = torch.softmax(log_p.flatten(), 0).view_as(log_p)
        for axis, (centres, h) in enumerate(cells):
            others = tuple(i for i in range(3) if i != axis)
            cdf = p.sum(others).cumsum(0)
            first = int(torch.nonzero(cdf > 1e-8)[0])
            last = (
                int(torch.nonzero(cdf < 1 - 1e-8)[-1]) + 1 if bool((cdf < 1 - 1e-8).any()) else 0
            )
            lo[axis] = max(lo[axis], float(centres[first]) - h)
            hi[axis] = min(hi[axis], float(centres[min(last, 63)]) + h)
    cells, log_p = _slcp_grid(x, lo, hi, fine)
    idx = torch.multinomial(torch.softmax(log_p.flatten(), 0), n, replacement=True, generator=g)
    coords = []
    for axis, (i, (centres, h)) in enumerate(
        zip((idx // fine**2, idx // fine % fine, idx % fine), cells, strict=True)
    ):
        c = centres[i] + h * (torch.rand(n, generator=g, dtype=DT) - 0.5)
        if axis < 2:
            sign = torch.where(torch.rand(n, generator=g, dtype=DT) < 0.5, -1.0, 1.0)
            c = sign.to(DT) * c.exp()
        coords.append(c)
    z3, z4, z5 = coords
    xbar = x.view(SLCP_POINTS, 2).mean(0)
    mu = torch.empty(n, 2, dtype=DT)
    todo = torch.arange(n)
    while todo.numel():  # the mean: N(xbar, Sigma / 4) cut to the box, by rejection
        s1, s2, rho = z3[todo] ** 2, z4[todo] ** 2, torch.tanh(z5[todo])
        e1 = torch.randn(todo.numel(), generator=g, dtype=DT)
        e2 = torch.randn(todo.numel(), generator=g, dtype=DT)
        m1 = xbar[0] + s1 / 2 * e1
        m2 = xbar[1] + s2 / 2 * (rho * e1 + torch.sqrt(1 - rho**2) * e2)
        ok = (m1.abs() < BOX) & (m2.abs() < BOX)
        mu[todo[ok]] = torch.stack([m1[ok], m2[ok]], -1)
        todo = todo[~ok]
    return torch.stack([mu[:, 0], mu[:, 1], z3, z4, z5], -1)


_A_GRID = torch.linspace(0.0, BOX, 600_001, dtype=DT)[1:]


def _asym_log_marginal(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """log p(|z_3| = a | y) up to a constant, for one coordinate's points y [4]: the mean's
    normal factor integrated over [-3, 3] leaves s^-(n-1) exp(-S / 2 s^2) times a CDF term."""
    ybar = y.mean()
    scatter = ((y - ybar) ** 2).sum()
    s = a**2
    inside = _STD.cdf((BOX - ybar) / (s / 2)) - _STD.cdf((-BOX - ybar) / (s / 2))
    return -(SLCP_POINTS - 1) * torch.log(s) - scatter / (2 * s**2) + torch.log(inside)


def asym_sign_mass(y: torch.Tensor, low: float) -> float:
    """Posterior mass of z_j > 0 when its prior is U[low, 3] (low < 0), by quadrature."""
    log_p = _asym_log_marginal(y, _A_GRID)
    p = torch.exp(log_p - log_p.max())
    positive, negative = float(p.sum()), float(p[-low >= _A_GRID].sum())
    return positive / (positive + negative)


def asym_truth(x: torch.Tensor, low: tuple[float, ...]) -> torch.Tensor:
    """Exact masses [B, 4] of (z_3 > 0, z_4 > 0), (>, <), (<, >), (<, <) under the prior
    box with lower corner ``low``."""
    out = []
    for xi in x:
        pts = xi.view(SLCP_POINTS, 2)
        p3, p4 = (asym_sign_mass(pts[:, j], low[2 + j]) for j in (0, 1))
        out.append([p3 * p4, p3 * (1 - p4), (1 - p3) * p4, (1 - p3) * (1 - p4)])
    return torch.tensor(out, dtype=DT)


def asym_exact(
    x: torch.Tensor, n: int, g: torch.Generator, low: tuple[float, ...]
) -> torch.Tensor:
    """Exact posterior draws [n, 4] for one observation x [8] of the asymmetric variant."""
    pts = x.view(SLCP_POINTS, 2)
    out = torch.empty(n, 4, dtype=DT)
    step = float(_A_GRID[1] - _A_GRID[0])
    for j in (0, 1):
        y, bound = pts[:, j], -low[2 + j]
        log_p = _asym_log_marginal(y, _A_GRID)
        p = torch.exp(log_p - log_p.max())
        both = torch.where(bound >= _A_GRID, 2 * p, p)  # |z| below the bound has two signs
        cdf = torch.cumsum(both, 0)
        idx = torch.searchsorted(cdf, torch.rand(n, generator=g, dtype=DT) * cdf[-1])
        a = _A_GRID[idx.clamp(max=_A_GRID.numel() - 1)] - step * torch.rand(n, generator=g)
        negative = (a <= bound) & (torch.rand(n, generator=g, dtype=DT) < 0.5)
        out[:, 2 + j] = torch.where(negative, -a, a)
        s, ybar = a**2, y.mean()  # the mean: N(ybar, s^2 / 4) cut to [-3, 3], by inverse CDF
        lo, hi = _STD.cdf((-BOX - ybar) / (s / 2)), _STD.cdf((BOX - ybar) / (s / 2))
        u = lo + (hi - lo) * torch.rand(n, generator=g, dtype=DT)
        out[:, j] = (ybar + s / 2 * _STD.icdf(u.clamp(1e-300, 1 - 1e-16))).clamp(-BOX, BOX)
    return out


def quadrant_masses(z: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Weighted masses of the sign patterns of (z_3, z_4), in the order of :func:`asym_truth`.

    Shapes: z [B, K, d], log_weights [B, K] -> [B, 4].
    """
    w = log_weights.exp()
    p3, p4 = z[..., 2] > 0, z[..., 3] > 0
    signs = [p3 & p4, p3 & ~p4, ~p3 & p4, ~p3 & ~p4]
    return torch.stack([(w * s).sum(-1) for s in signs], -1)


class CurvedCase(NamedTuple):
    name: str
    model: Model
    x: torch.Tensor  # [B, p]
    truth: torch.Tensor  # [B, 4] exact masses
    exact: list[torch.Tensor]  # per observation, exact draws [1000, d]


def curved_cases(num_obs: int = 10, seed: int = 0) -> list[CurvedCase]:
    """The SLCP model and its asymmetric variants, observations simulated from the prior."""
    out = []
    for name, low in (
        ("slcp-5d", (-BOX,) * 5),
        ("slcp-4d-asym", ASYM_LOW),
        ("slcp-4d-corner", CORNER_LOW),
    ):
        g = torch.Generator().manual_seed(seed)
        lo = torch.tensor(low, dtype=DT)
        z = lo + (BOX - lo) * torch.rand(num_obs, len(low), generator=g, dtype=DT)
        x = slcp_simulate(z, g)
        if len(low) == 5:
            model = Model(box_prior(low), slcp_loglik, name=name)
            truth = torch.full((num_obs, 4), 0.25, dtype=DT)
        else:
            model = Model(box_prior(low), asym_loglik, name=name)
            truth = asym_truth(x, low)
        draws = []
        for i in range(num_obs):
            gi = torch.Generator().manual_seed(seed + 100 + i)
            draws.append(
                slcp_exact(x[i], 1000, gi) if len(low) == 5 else asym_exact(x[i], 1000, gi, low)
            )
        out.append(CurvedCase(name, model, x, truth, draws))
    return out


CURVED_KERNELS: dict[str, Callable[[], object]] = {
    "auto (default)": lambda: get_kernel("auto"),
    # the default as it was before the step rule: four fixed jumps, MALA steps until decorrelated
    # (what "auto" runs on these differentiable likelihoods)
    "auto, fixed jumps": lambda: until_decorrelated(
        mala_stepper(),
        jumps=mixture_independence(4, min_moved=0.0, max_oversampling=1.0),
        max_steps=50,
    ),
    "mixture+rwmh": lambda: get_kernel("mixture+rwmh"),
    "mixture+rwmh, fixed steps": lambda: compose(
        mixture_independence(2, min_moved=0.0, max_oversampling=1.0), random_walk_metropolis(3)
    ),
    "rwmh (plain random walk)": lambda: random_walk_metropolis(5),
}


def run_curved(case: CurvedCase, kernel, num_particles: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    result = run_smc(case.model, case.x, num_particles, kernel=kernel, generator=g)
    seconds = time.perf_counter() - start
    masses = quadrant_masses(result.particles, result.log_weights)
    err = (masses - case.truth).abs()  # [B, 4]
    se = torch.sqrt(case.truth * (1 - case.truth) / result.ess[:, None])
    z = torch.where(se > 0, err / se.clamp_min(1e-300), torch.where(err > 0, math.inf, 0.0))
    draws = result.sample(1000, generator=g)
    scores = [c2st(exact.float(), draws[i].float(), seed=0) for i, exact in enumerate(case.exact)]
    info = result.kernel_info
    steps = info.get("independence/steps")
    return {
        "err_mean": float(err.amax(-1).mean()),
        "err_max": float(err.max()),
        "z_max": float(z.max()),
        "distinct": float(result.distinct_fraction.min()),
        "c2st_mean": statistics.mean(scores),
        "c2st_max": max(scores),
        "stages": float(result.num_stages.double().mean()),
        "ind_steps": math.nan if steps is None else float(steps.mean()),
        "flagged": float(check_mode_mixing(result, warn=False).sum()),
        "evals": float(result.num_likelihood_evals.double().mean()),
        "seconds": seconds,
    }


# ------------------------------------------------------------------------------------ report


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, spec)


def table(results: dict[tuple[str, str], dict], names: list[str], kernels: list[str]) -> str:
    lines = [
        "| model | kernel | steps | mass err | distinct | C2ST | \\|Δ log Z\\| | evals | "
        "time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for k in kernels:
            row = results.get((name, k))
            if row is None:
                continue
            lines.append(
                f"| {name} | {k} | {KERNELS[k][0]} | {fmt(row.get('mass_err'), '.3f')} | "
                f"{row['distinct']:.3f} | {row['c2st']:.3f} | "
                f"{fmt(row.get('log_z_err'), '.3f')} | {row['evals'] / 1e6:.2f} M | "
                f"{row['seconds']:.1f} |"
            )
    return "\n".join(lines)


def curved_table(results: dict[tuple[str, str], dict], names: list[str]) -> str:
    lines = [
        "| model | kernel | mass err mean / max | max std. err | lowest distinct | "
        "C2ST mean / max | stages | indep. steps | flagged | evals | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for k in CURVED_KERNELS:
            r = results[(name, k)]
            lines.append(
                f"| {name} | {k} | {r['err_mean']:.3f} / {r['err_max']:.3f} | "
                f"{r['z_max']:.1f} | {r['distinct']:.2f} | "
                f"{r['c2st_mean']:.3f} / {r['c2st_max']:.3f} | {r['stages']:.1f} | "
                f"{fmt(r['ind_steps'], '.1f')} | {int(r['flagged'])} / 10 | "
                f"{r['evals'] / 1e6:.2f} M | {r['seconds']:.1f} |"
            )
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    """Replace the text between ``<!-- begin name -->`` and ``<!-- end name -->``."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    if begin not in text or end not in text:
        raise ValueError(f"docs: markers {begin} ... {end} not found")
    block = f"{begin}\n{body.strip()}\n{end}"
    return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]


def measure_kernels(args: argparse.Namespace) -> str:
    """The tables of the separated-modes models and the 50-d Gaussian."""
    started = time.perf_counter()
    results: dict[tuple[str, str], dict] = {}
    all_cases = cases()
    for case in all_cases:
        names = GAUSSIAN_KERNELS if case.name.startswith("gaussian") else list(KERNELS)
        for kname in names:
            row = run_case(case, KERNELS[kname][1](), args.samplers, args.seed)
            results[(case.name, kname)] = row
            print(
                f"{case.name:13s} {kname:29s} mass err {fmt(row.get('mass_err'), '.3f')}  "
                f"distinct {row['distinct']:.3f}  c2st {row['c2st']:.3f}  "
                f"|dlogZ| {fmt(row.get('log_z_err'), '.3f')}  evals {row['evals']:.0f}  "
                f"{row['seconds']:.1f}s",
                flush=True,
            )
    multimodal = [c.name for c in all_cases if c.masses is not None]
    summary = []
    for k in ["rwmh (plain random walk)", "mixture+rwmh (5 steps)"]:
        rows = [results[(n, k)] for n in multimodal]
        summary.append(
            f"| {k} | {max(r['mass_err'] for r in rows):.3f} | "
            f"{min(r['distinct'] for r in rows):.3f} | {max(r['c2st'] for r in rows):.3f} | "
            f"{statistics.mean(r['evals'] for r in rows) / 1e6:.2f} M | "
            f"{statistics.mean(r['seconds'] for r in rows):.1f} |"
        )
    return "\n".join(
        [
            "### 5 steps per stage, worst case over the multimodal models",
            "",
            "| kernel | worst mass err | lowest distinct | worst C2ST | mean evals | "
            "mean time (s) |",
            "|---|---|---|---|---|---|",
            *summary,
            "",
            "### Every kernel",
            "",
            table(results, multimodal, list(KERNELS)),
            "",
            "### One mode in 50 dimensions (K = 2,000)",
            "",
            table(results, [all_cases[-1].name], GAUSSIAN_KERNELS),
            "",
            f"_Generated by `python benchmarks/multimodal.py --only kernels` in "
            f"{(time.perf_counter() - started) / 60:.1f} minutes, torch {torch.__version__}, "
            f"seed {args.seed}._",
        ]
    )


def measure_curved(args: argparse.Namespace) -> str:
    """The table of the SLCP model and its asymmetric variant."""
    started = time.perf_counter()
    all_cases = curved_cases(seed=args.seed)
    results: dict[tuple[str, str], dict] = {}
    for case in all_cases:
        for kname, build in CURVED_KERNELS.items():
            row = run_curved(case, build(), args.curved_particles, args.seed)
            results[(case.name, kname)] = row
            print(
                f"{case.name:13s} {kname:27s} "
                + "  ".join(f"{key} {value:.3f}" for key, value in row.items()),
                flush=True,
            )
    return "\n".join(
        [
            curved_table(results, [c.name for c in all_cases]),
            "",
            f"_Generated by `python benchmarks/multimodal.py --only curved` in "
            f"{(time.perf_counter() - started) / 60:.1f} minutes (exact references included), "
            f"K = {args.curved_particles:,}, torch {torch.__version__}, seed {args.seed}._",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", type=int, default=4)
    parser.add_argument("--curved-particles", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["all", "kernels", "curved"], default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs/KERNELS.md")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    blocks = {}
    if args.only in ("all", "kernels"):
        blocks["multimodal-kernels"] = measure_kernels(args)
    if args.only in ("all", "curved"):
        blocks["curved-modes"] = measure_curved(args)
    for body in blocks.values():
        print(f"\n{body}\n")
    if args.no_write:
        return
    text = args.out.read_text()
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
