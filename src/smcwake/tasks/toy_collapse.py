"""Toy Gaussian model of the paper, and the table showing why the wake phase collapses.

z ~ N(0, prior_sd^2), x | z ~ N(z, noise_sd^2), d = p = 1. The posterior is
N(v x / noise_sd^2, v) with v = (1 / prior_sd^2 + 1 / noise_sd^2)^-1 and the evidence is
N(x; 0, prior_sd^2 + noise_sd^2): exact references for every check.

:func:`collapse_table` reproduces the failure of Reweighted Wake-Sleep's wake phase: with the
encoder as its own proposal, the self-normalized estimate of the cross-entropy -E_p[log r]
rewards a proposal r that has collapsed to a point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from smcwake.model import Model
from smcwake.tasks import Task
from smcwake.tasks._common import check_count, make_generator, place

__all__ = [
    "CollapseRow",
    "collapse_table",
    "format_collapse_table",
    "gaussian_cross_entropy",
    "toy_collapse",
]

_LOG_2PI = math.log(2 * math.pi)
DEFAULT_SCALES = (1.0, 0.1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def gaussian_cross_entropy(mean_p: float, var_p: float, mean_r: float, sd_r: float) -> float:
    """-E_p[log r] for p = N(mean_p, var_p) and r = N(mean_r, sd_r^2), in closed form.

    Equals 0.5 log(2 pi sd_r^2) + ((mean_p - mean_r)^2 + var_p) / (2 sd_r^2); with r = p it is
    the entropy of p.

    >>> round(gaussian_cross_entropy(0.0, 1.0, 0.0, 1.0), 4)  # entropy of N(0, 1)
    1.4189
    """
    return 0.5 * math.log(2 * math.pi * sd_r**2) + ((mean_p - mean_r) ** 2 + var_p) / (2 * sd_r**2)


def _posterior(x: Tensor, prior_sd: float, noise_sd: float) -> tuple[Tensor, float]:
    """Posterior mean [B, 1] and variance of the toy model (x's dtype)."""
    var = 1.0 / (1.0 / prior_sd**2 + 1.0 / noise_sd**2)
    return var * x / noise_sd**2, var


def toy_collapse(
    *,
    prior_sd: float = 10.0,
    noise_sd: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """The toy model z ~ N(0, prior_sd^2), x | z ~ N(z, noise_sd^2), with exact references.

    ``defaults``: ``observed`` (12.0, the paper's x), ``num_observations`` (1), ``num_particles``
    (10,000, the table's number of proposals), ``encoder`` (``"gaussian"``), ``num_steps``, and
    ``bench_extras``: a function ``() -> {"collapse": ...}``, the exact posterior at the
    observed x and the rows of :func:`collapse_table`, which a benchmark adds to its results
    (the report draws them).

    Shapes: z [B, K, 1], x [B, 1].

    >>> task = toy_collapse()
    >>> mean, cov = task.posterior_moments(torch.tensor([[12.0]]))
    >>> round(float(mean), 2), round(float(cov), 3)
    (11.88, 0.99)
    """
    if prior_sd <= 0 or noise_sd <= 0:
        raise ValueError(
            f"prior_sd and noise_sd: expected > 0, received {prior_sd!r} and {noise_sd!r}"
        )
    prior = Independent(
        Normal(
            torch.zeros(1, dtype=dtype, device=device),
            torch.full((1,), float(prior_sd), dtype=dtype, device=device),
        ),
        1,
    )

    def log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        resid = (x[:, None, :] - z) / noise_sd  # [B, K, 1]
        return (-0.5 * resid.square() - math.log(noise_sd) - 0.5 * _LOG_2PI).sum(-1)

    def simulate(z: Tensor) -> Tensor:
        return z + noise_sd * torch.randn_like(z)

    model = Model(prior, log_likelihood, simulate=simulate, name="toy-collapse")

    def observations(n: int, seed: int) -> tuple[Tensor, Tensor]:
        g = make_generator(seed)
        z = prior_sd * torch.randn(check_count(n), 1, generator=g, dtype=torch.float64)
        x = z + noise_sd * torch.randn(n, 1, generator=g, dtype=torch.float64)
        return place(z, dtype, device), place(x, dtype, device)

    def posterior_moments(x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = _posterior(x.double(), prior_sd, noise_sd)
        cov = torch.full((x.shape[0], 1, 1), var, dtype=torch.float64, device=x.device)
        return mean.to(x.dtype), cov.to(x.dtype)

    def reference_posterior(x: Tensor, n: int, seed: int) -> Tensor:
        mean, var = _posterior(x.double().cpu(), prior_sd, noise_sd)
        eps = torch.randn(
            x.shape[0], check_count(n), 1, generator=make_generator(seed), dtype=torch.float64
        )
        return place(mean[:, None, :] + math.sqrt(var) * eps, x.dtype, x.device)

    def log_evidence(x: Tensor) -> Tensor:
        var = prior_sd**2 + noise_sd**2
        xd = x.double()[:, 0]
        return (-0.5 * xd.square() / var - 0.5 * math.log(var) - 0.5 * _LOG_2PI).to(x.dtype)

    observed = 12.0  # the paper's x

    return Task(
        name="toy-collapse",
        model=model,
        description=(
            f"Toy Gaussian model of the paper: z ~ N(0, {prior_sd:g}^2), x | z ~ "
            f"N(z, {noise_sd:g}^2), d = p = 1. Exact posterior samples, moments and evidence. "
            "collapse_table() shows the wake-phase estimate rewarding a collapsed proposal."
        ),
        observations=observations,
        reference_posterior=reference_posterior,
        posterior_moments=posterior_moments,
        log_evidence=log_evidence,
        defaults={
            "observed": observed,
            "num_observations": 1,
            "num_particles": 10_000,
            "encoder": "gaussian",
            "num_steps": 2_000,
            "bench_extras": partial(
                _collapse_results, posterior_moments, observed, prior_sd, noise_sd
            ),
        },
    )


class CollapseRow(NamedTuple):
    """One row of :func:`collapse_table` for the proposal r = N(0, scale^2)."""

    scale: float
    """Standard deviation s of the proposal r."""
    estimate: float
    """Self-normalized importance-sampling estimate of -E_p[log r] (what wake estimates)."""
    exact: float
    """The exact -E_p[log r] under the true posterior p(z | x)."""
    posterior_score: float
    """The exact posterior's own score -E_p[log p] (its entropy): what a correct q achieves."""
    ess: float
    """Effective sample size of the self-normalized weights, out of ``num_proposals``."""


def collapse_table(
    x: float = 12.0,
    scales: Sequence[float] = DEFAULT_SCALES,
    num_proposals: int = 10_000,
    seed: int = 0,
    *,
    prior_sd: float = 10.0,
    noise_sd: float = 1.0,
) -> list[CollapseRow]:
    """The wake objective's estimate of -E_p[log r] for ever narrower proposals r = N(0, s^2).

    For each scale s: draw z_k ~ r (k = 1..K, K = ``num_proposals``), weight
    w_k ∝ p(z_k) p(x | z_k) / r(z_k), normalize, and report sum_k w_k (-log r(z_k)), next to the
    exact -E_p[log r] under the posterior p = p(z | x) and the posterior's own score -E_p[log p].
    The estimate falls as s -> 0 while the exact value explodes: a self-normalized wake
    objective prefers a collapsed encoder (the paper). Computed in float64. The rows share
    common random numbers: one set of K standard normal draws eps_k, seeded with ``seed``, gives
    z_k = s eps_k for every s, so differences between rows come from s, not from resampling
    noise (the estimate's spread over seeds is about 2 nats for s <= 0.1).

    References:
        McNamara, Loper, Regier, "Sequential Monte Carlo for Inclusive KL Minimization in
        Amortized Variational Inference", AISTATS 2024, section 3.

    >>> rows = collapse_table(scales=(0.1, 1e-7))
    >>> [f"{r.exact:.4g}" for r in rows], round(rows[0].posterior_score, 2)
    (['7106', '7.108e+15'], 1.41)
    >>> rows[0].estimate > rows[1].estimate
    True
    """
    check_count(num_proposals, "num_proposals")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales: expected positive standard deviations, received {scales}")
    g = make_generator(seed)
    mean_p, var_p = _posterior(torch.tensor(float(x), dtype=torch.float64), prior_sd, noise_sd)
    mean_p = float(mean_p)
    posterior_score = gaussian_cross_entropy(mean_p, var_p, mean_p, math.sqrt(var_p))
    eps = torch.randn(num_proposals, generator=g, dtype=torch.float64)
    rows = []
    for scale in scales:
        z = scale * eps
        log_r = -0.5 * eps.square() - math.log(scale) - 0.5 * _LOG_2PI
        log_prior = -0.5 * (z / prior_sd).square() - math.log(prior_sd) - 0.5 * _LOG_2PI
        log_lik = -0.5 * ((x - z) / noise_sd).square() - math.log(noise_sd) - 0.5 * _LOG_2PI
        weights = torch.softmax(log_prior + log_lik - log_r, dim=0)
        rows.append(
            CollapseRow(
                scale=float(scale),
                estimate=float(-(weights * log_r).sum()),
                exact=gaussian_cross_entropy(mean_p, var_p, 0.0, scale),
                posterior_score=posterior_score,
                ess=float(1.0 / weights.square().sum()),
            )
        )
    return rows


def _collapse_results(
    posterior_moments: Callable[[Tensor], tuple[Tensor, Tensor]],
    observed: float,
    prior_sd: float,
    noise_sd: float,
) -> dict[str, Any]:
    """The exact posterior at ``observed`` and the rows of :func:`collapse_table`, as a
    benchmark stores them (``results["collapse"]``, drawn by the report)."""
    mean, cov = posterior_moments(torch.tensor([[observed]]))
    rows = collapse_table(observed, prior_sd=prior_sd, noise_sd=noise_sd)
    return {
        "collapse": {
            "observed": observed,
            "posterior": {"mean": float(mean), "sd": float(cov.sqrt())},
            "rows": [row._asdict() for row in rows],
        }
    }


def format_collapse_table(rows: Sequence[CollapseRow]) -> str:
    """A Markdown table of :func:`collapse_table`'s rows.

    >>> print(format_collapse_table(collapse_table(scales=(1.0,)))[:40])
    | proposal sd s | wake (SNIS) estimate |
    """
    lines = [
        "| proposal sd s | wake (SNIS) estimate | exact -E_p[log r] | -E_p[log p] | ESS |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.scale:.0e} | {r.estimate:.2f} | {r.exact:.4g} | {r.posterior_score:.2f} "
        f"| {r.ess:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)
