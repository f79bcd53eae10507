"""Scores of a trained encoder against what a task knows about its posteriors.

:func:`evaluate` computes, per observation and then averaged:

- exact Gaussian tasks (``toy-collapse``, ``linear-gaussian``, ``many-samplers``): forward KL
  KL(p || q), reverse KL KL(q || p) and the L1 distance between means, in closed form when the
  encoder is Gaussian (``encoder.gaussian_params``), otherwise by sampling (forward KL as
  E_p[log p(z | x) - log q(z | x)] with the exact log posterior);
- ``two-moons``: forward KL against the dense-grid posterior (its normalizing constant from the
  same grid, :func:`grid_log_evidence`), C2ST and MMD against grid reference samples;
- every task with a reference: C2ST (the classifier of
  :data:`smcwake.diagnostics.C2ST_CLASSIFIER`) and MMD on a subset of observations;
- every task with known latents: expected coverage of q's highest-density regions, SBC ranks,
  log q(z_true | x);
- evidence: an importance-sampling estimate of log p(x) with q as proposal
  (:func:`importance_log_evidence`), and for SMC-Wake the bank's running estimate log Zbar
  (errors where the evidence is known).

:class:`Reference` holds what is computed once per dataset (reference samples, grid
normalizers) and reused across runs; :func:`curve_metric` is the cheap metric tracked during
training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.distributions import MultivariateNormal

from smcwake import diagnostics
from smcwake._ops import log_mean_exp
from smcwake.model import Model
from smcwake.tasks import Task

__all__ = [
    "EvalOptions",
    "Reference",
    "curve_metric",
    "evaluate",
    "grid_log_evidence",
    "importance_log_evidence",
    "mean_finite",
]


@dataclass(frozen=True)
class EvalOptions:
    """How much work :func:`evaluate` does.

    Args:
        num_samples: draws from q per observation (coverage, SBC, evidence, sampled KLs).
        c2st_observations: observations (the first ones) scored by C2ST, MMD and the grid KL.
        c2st_samples: reference and q samples per observation for C2ST.
        mmd_samples: samples per side for MMD.
        sbc_samples: draws per observation whose ranks SBC counts (ranks in 0..sbc_samples).
        grid_size: cells per axis of the grid that normalizes 2-D posteriors (two-moons).
        curve_observations: observations scored by the metric tracked during training.
        heldout_particles: K of the SMC runs that estimate held-out log-likelihoods (digits).
    """

    num_samples: int = 1000
    c2st_observations: int = 10
    c2st_samples: int = 1000
    mmd_samples: int = 500
    sbc_samples: int = 99
    grid_size: int = 1024
    curve_observations: int = 10
    heldout_particles: int = 1000


def mean_finite(t: Tensor) -> float:
    """The float64 mean of the finite entries of ``t`` (of all entries if none is finite)."""
    t = t.double()
    t = t[torch.isfinite(t)] if bool(torch.isfinite(t).any()) else t
    return float(t.mean())


def importance_log_evidence(model: Model, z: Tensor, log_q: Tensor, x: Tensor) -> Tensor:
    """log p(x) estimated by importance sampling with the draws ``z`` of a proposal q.

    log (1/S) sum_s p(z_s, x) / q(z_s | x), in float64. Its exponential is unbiased for p(x),
    so the log is a slightly low (Jensen) but consistent estimate: the importance-weighted
    bound.

    Shapes: z [B, S, d], log_q [B, S] (log q(z_s | x_b)), x [B, p] -> [B] float64.
    """
    return log_mean_exp(model.log_joint(z, x).double() - log_q.double())


# ----------------------------------------------------------------------------- references
def _box(task: Task) -> tuple[Tensor, Tensor] | None:
    """(low, high) of a box-uniform prior, else None."""
    prior = task.model.prior
    base = getattr(prior, "base_dist", prior)
    if isinstance(base, torch.distributions.Uniform):
        low = base.low.expand(task.model.dim).double().cpu()
        high = base.high.expand(task.model.dim).double().cpu()
        return low, high
    return None


def grid_log_evidence(task: Task, x: Tensor, grid_size: int = 1024) -> Tensor:
    """log p(x) of a 2-D task with a box-uniform prior, by the midpoint rule on a dense grid.

    log p(x) = log sum_c p(z_c) p(x | z_c) |cell|, z_c the cell centres; the same grid the
    two-moons reference sampler uses, so it normalizes that reference's density.

    Shapes: x [B, 2] -> [B] float64.

    >>> from smcwake.tasks import get
    >>> task = get("two-moons")
    >>> _, x = task.observations(1, 0)
    >>> bool(torch.isfinite(grid_log_evidence(task, x, grid_size=256)).all())
    True
    """
    box = _box(task)
    if task.model.dim != 2 or box is None:
        raise ValueError(
            f"grid_log_evidence: expected a 2-D task with a box-uniform prior, received "
            f"{task.name} (d = {task.model.dim})"
        )
    low, high = box
    width = (high - low) / grid_size
    axes = [
        low[j] + width[j] * (torch.arange(grid_size, dtype=torch.float64) + 0.5) for j in (0, 1)
    ]
    centres = torch.cartesian_prod(*axes).to(x.dtype)  # [G^2, 2]
    log_cell = float(torch.log(width).sum())
    out = []
    with torch.no_grad():
        log_prior = task.model.log_prior(centres).double()
        for b in range(x.shape[0]):
            loglik = task.model.log_likelihood(centres[None], x[b : b + 1]).double()[0]
            out.append(torch.logsumexp(loglik + log_prior, 0) + log_cell)
    return torch.stack(out)


class Reference:
    """Reference samples and normalizers, computed once per dataset and reused across runs.

    ``samples`` [n, c2st_samples, d] are the task's reference posterior draws for the first
    ``n = min(options.c2st_observations, B)`` observations (None without a reference); for a
    2-D task with a box-uniform prior and no closed form, ``log_z`` [n] is the grid evidence
    and ``log_p`` the normalized log density of the samples.
    """

    def __init__(self, task: Task, x: Tensor, options: EvalOptions, seed: int = 0) -> None:
        self.task = task
        self.options = options
        n = min(options.c2st_observations, x.shape[0])
        self.idx = torch.arange(n)
        self.samples = None
        self.log_z = None
        if task.reference_posterior is not None and n > 0:
            self.samples = task.reference_posterior(x[:n], options.c2st_samples, seed + 10_000)
            if task.posterior_moments is None and _box(task) is not None and task.model.dim == 2:
                self.log_z = grid_log_evidence(task, x[:n], options.grid_size)
                self.log_p = (
                    task.model.log_joint(self.samples, x[:n]).double() - self.log_z[:, None]
                )

    def forward_kl(self, encoder, x: Tensor) -> Tensor | None:
        """Grid-normalized forward KL on the reference subset, per observation [n] (or None)."""
        if self.log_z is None:
            return None
        log_q = encoder.log_prob(self.samples, x[self.idx]).double()
        return (self.log_p - log_q).mean(-1)


# ----------------------------------------------------------------------------- Gaussian
def _exact_log_posterior(task: Task, x: Tensor) -> MultivariateNormal:
    mean, cov = task.posterior_moments(x)
    return MultivariateNormal(mean.double(), covariance_matrix=cov.double())


def _gaussian_of(encoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """A Gaussian encoder's mean and covariance in float64.

    The covariance is formed from the Cholesky factor in float64: in float32, L L^T of a
    nearly collapsed q can lose positive definiteness.

    Shapes: x [B, p] -> (mean [B, d], cov [B, d, d]).
    """
    dist = encoder(x) if callable(encoder) else None
    if isinstance(dist, MultivariateNormal):
        tril = dist.scale_tril.double()
        return dist.loc.double(), tril @ tril.mT
    mean, cov = encoder.gaussian_params(x)
    return mean.double(), cov.double()


def _gaussian_metrics(task: Task, encoder, x: Tensor, q_samples: Tensor, log_q: Tensor, seed):
    """Forward KL, reverse KL and mean L1 against the exact Gaussian posterior, per obs [B]."""
    post = _exact_log_posterior(task, x)
    if hasattr(encoder, "gaussian_params"):
        q_mean, q_cov = _gaussian_of(encoder, x)
        return {
            "forward_kl": diagnostics.forward_kl_gaussian(
                post.mean, post.covariance_matrix, q_mean, q_cov
            ),
            "reverse_kl": diagnostics.reverse_kl_gaussian(
                post.mean, post.covariance_matrix, q_mean, q_cov
            ),
            "mean_l1": diagnostics.mean_l1(q_mean, post.mean),
        }
    ref = task.reference_posterior(x, q_samples.shape[1], seed)  # [B, S, d]
    log_p_ref = post.log_prob(ref.double().movedim(1, 0)).movedim(0, 1)
    log_q_ref = encoder.log_prob(ref, x).double()
    log_p_q = post.log_prob(q_samples.double().movedim(1, 0)).movedim(0, 1)
    return {
        "forward_kl": (log_p_ref - log_q_ref).mean(-1),
        "reverse_kl": (log_q.double() - log_p_q).mean(-1),
        "mean_l1": diagnostics.mean_l1(q_samples.double().mean(1), post.mean),
    }


# ----------------------------------------------------------------------------- evaluate
def evaluate(
    task: Task,
    encoder,
    z_true: Tensor,
    x: Tensor,
    *,
    options: EvalOptions | None = None,
    seed: int = 0,
    bank=None,
    reference: Reference | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Score an encoder on a task's observations. Returns (scalar metrics, curves and arrays).

    Scalars (NaN-free subsets only, averaged over observations): ``forward_kl``, ``reverse_kl``,
    ``mean_l1`` (exact Gaussian tasks; forward KL also for grid-normalized 2-D tasks), ``c2st``,
    ``mmd`` (tasks with a reference), ``coverage_error`` (mean |coverage - level| over the
    levels of :func:`~smcwake.diagnostics.expected_coverage`), ``sbc_p`` (smallest per-dimension
    SBC uniformity p-value, Bonferroni-corrected), ``log_q_true``, ``log_evidence_is`` (log p(x)
    by importance sampling with q), ``evidence_error`` (its error where log p(x) is known) and,
    with an SMC-Wake ``bank``, ``bank_evidence_error`` and ``bank_evidence_spread`` (standard
    deviation of the retained runs' log Zhat).
    Arrays: ``coverage`` (grid, coverage) and ``sbc_p_values``.

    Shapes: z_true [B, d] (NaN when unknown), x [B, p].

    >>> from smcwake.tasks import get
    >>> from smcwake import build_encoder
    >>> task = get("toy-collapse")
    >>> z, x = task.observations(20, 0)
    >>> metrics, arrays = evaluate(task, build_encoder("gaussian", 1, 1), z, x,
    ...     options=EvalOptions(num_samples=100, c2st_observations=2, c2st_samples=50,
    ...     mmd_samples=50))
    >>> sorted(metrics)[:4]
    ['c2st', 'coverage_error', 'evidence_error', 'forward_kl']
    """
    options = options or EvalOptions()
    g = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    arrays: dict[str, Any] = {}
    with torch.no_grad():
        q_samples = encoder.sample(x, options.num_samples, generator=g)  # [B, S, d]
        log_q = encoder.log_prob(q_samples, x)  # [B, S]
        if task.posterior_moments is not None:
            try:
                gaussian = _gaussian_metrics(task, encoder, x, q_samples, log_q, seed)
            except ValueError as err:  # a collapsed q: covariance numerically singular
                gaussian = {}
                arrays.setdefault("metric_errors", []).append(f"KL: {err}")
            for key, value in gaussian.items():
                metrics[key] = mean_finite(value)
        if bool(torch.isfinite(z_true).all()):
            _calibration(encoder, z_true, x, q_samples, log_q, options, metrics, arrays)
        log_z_is = importance_log_evidence(task.model, q_samples, log_q, x)
        metrics["log_evidence_is"] = mean_finite(log_z_is)
        exact_log_z = task.log_evidence(x).double() if task.log_evidence is not None else None
        reference = reference or Reference(task, x, options, seed)
        if exact_log_z is not None:
            metrics["evidence_error"] = mean_finite(log_z_is - exact_log_z)
        elif reference.log_z is not None:
            metrics["evidence_error"] = mean_finite(log_z_is[reference.idx] - reference.log_z)
        if bank is not None:
            _bank_evidence(bank, exact_log_z, metrics)
        if reference.samples is not None:
            _against_reference(encoder, x, q_samples, reference, options, seed, metrics, arrays)
    return metrics, arrays


def _calibration(encoder, z_true, x, q_samples, log_q, options, metrics, arrays) -> None:
    """log q(z_true | x), and with enough observations coverage and SBC (z_true known)."""
    B = x.shape[0]  # coverage and SBC need many (z_true, x) pairs to mean anything
    lqt = diagnostics.log_q_true(encoder, z_true, x)
    metrics["log_q_true"] = mean_finite(lqt)
    if B >= 10:
        levels = diagnostics.hpd_levels(log_q, lqt)
        grid, cov = diagnostics.expected_coverage(levels.double())
        metrics["coverage_error"] = float((cov - grid).abs().mean())
        arrays["coverage"] = {"level": grid.tolist(), "coverage": cov.tolist()}
    if B >= 20:  # fewer ranks leave the uniformity test without power
        thinned = q_samples[:, : options.sbc_samples]
        ranks = diagnostics.sbc_ranks(thinned, z_true)
        p_values = diagnostics.sbc_uniformity(ranks, thinned.shape[1])
        metrics["sbc_p"] = min(1.0, float(p_values.min()) * p_values.numel())
        arrays["sbc_p_values"] = p_values.tolist()


def _bank_evidence(bank, exact_log_z: Tensor | None, metrics: dict[str, float]) -> None:
    """Error of the bank's running log Zbar, and the spread of its retained runs' log Zhat."""
    zbar = bank.log_zbar.cpu()
    if exact_log_z is not None:
        metrics["bank_evidence_error"] = mean_finite(zbar - exact_log_z)
    runs = bank.log_z_runs.cpu()
    finite = torch.isfinite(runs)
    count = finite.sum(-1)
    if bool((count > 1).any()):
        filled = torch.where(finite, runs, 0.0)
        mean = filled.sum(-1) / count.clamp_min(1)
        var = (torch.where(finite, runs - mean[:, None], 0.0) ** 2).sum(-1)
        spread = (var / (count - 1).clamp_min(1)).sqrt()[count > 1]
        metrics["bank_evidence_spread"] = float(spread.mean())


def _against_reference(encoder, x, q_samples, reference, options, seed, metrics, arrays) -> None:
    """Grid forward KL, C2ST and MMD on the reference subset of observations."""
    n = reference.idx.numel()
    fkl = reference.forward_kl(encoder, x)
    if fkl is not None:
        metrics["forward_kl"] = mean_finite(fkl)
    c2st, mmd = [], []
    for i in range(n):
        ref = reference.samples[i]
        q = q_samples[i, : options.c2st_samples]
        if not bool(torch.isfinite(q).all()):
            arrays.setdefault("metric_errors", []).append("C2ST: q draws non-finite")
            break
        with threadpool_limits(1):  # small MLPs: threads only contend for cores
            c2st.append(diagnostics.c2st(ref, q, seed=seed))
        m = options.mmd_samples
        mmd.append(float(diagnostics.mmd(ref[:m], q[:m])))
    if len(c2st) == n:
        metrics["c2st"] = sum(c2st) / n
        metrics["mmd"] = sum(mmd) / n
        arrays["c2st_per_observation"] = c2st


def curve_metric(
    task: Task, reference: Reference, x: Tensor, options: EvalOptions
) -> tuple[str, Callable[[Any], float]] | None:
    """A cheap metric to track during training: (name, fn(encoder) -> float), or None."""
    n = min(options.curve_observations, x.shape[0])
    if task.posterior_moments is not None:
        post = _exact_log_posterior(task, x[:n])
        ref = task.reference_posterior(x[:n], 200, 12_345) if task.reference_posterior else None

        def forward_kl(encoder) -> float:
            if hasattr(encoder, "gaussian_params"):
                m, c = _gaussian_of(encoder, x[:n])
                try:
                    kl = diagnostics.forward_kl_gaussian(post.mean, post.covariance_matrix, m, c)
                except ValueError:  # q's covariance is numerically singular
                    return math.inf
                return mean_finite(kl)
            log_p = post.log_prob(ref.double().movedim(1, 0)).movedim(0, 1)
            return mean_finite((log_p - encoder.log_prob(ref, x[:n]).double()).mean(-1))

        return "forward_kl", forward_kl
    if reference.log_z is not None:
        return "forward_kl", lambda encoder: mean_finite(reference.forward_kl(encoder, x))
    return None
