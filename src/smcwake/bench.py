"""Benchmarks: train several methods on a built-in task at a matched budget and score them.

:func:`run_bench` trains every method with :func:`smcwake.fit` on the same observations, encoder
kind, optimizer and seeds, and stops each run at the same number of gradient steps or the same
number of likelihood evaluations, whichever comes first (``TrainConfig.max_evals``). It records
both counts, evaluates the metrics of :func:`evaluate` at a few checkpoints during training and at
the end, and writes ``results.json`` (everything the report needs) and the report of
:mod:`smcwake.report` to the output folder. Two experiments have their own runners:
:func:`run_many_samplers` (one big SMC run per observation against many small ones) and
:func:`run_digits` (wake against SMC-Wake with a decoder learned jointly with the encoder).

Metrics (:func:`evaluate`), per observation and then averaged:

- exact Gaussian tasks (``toy-collapse``, ``linear-gaussian``, ``many-samplers``): forward KL
  KL(p || q), reverse KL KL(q || p) and the L1 distance between means, in closed form when the
  encoder is Gaussian (``encoder.gaussian_params``), otherwise by sampling (forward KL as
  E_p[log p(z | x) - log q(z | x)] with the exact log posterior);
- ``two-moons``: forward KL against the dense-grid posterior (its normalizing constant from the
  same grid), C2ST and MMD against grid reference samples;
- every task with a reference: C2ST (the classifier of
  :data:`smcwake.diagnostics.C2ST_CLASSIFIER`) and MMD on a subset of observations;
- every task with known latents: expected coverage of q's highest-density regions, SBC ranks,
  log q(z_true | x);
- evidence: an importance-sampling estimate of log p(x) with q as proposal, and for SMC-Wake the
  bank's running estimate log Zbar (errors where the evidence is known).

A method that cannot run on a task (``sleep`` without a simulator; ``elbo`` and ``iwae`` with
the mixture-density encoder, or on a bounded prior when the encoder is not kept on its support
by ``support_transform``) is kept in the results with the reason (:func:`unavailable_reason`),
never dropped.

References:
    McNamara, Loper & Regier (2024), Sequential Monte Carlo for Inclusive KL Minimization in
    Amortized Variational Inference, AISTATS.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.distributions import MultivariateNormal, constraints

from smcwake import diagnostics
from smcwake.objectives import SMC_WAKE_METHODS, get_objective
from smcwake.smc.sampler import run_smc
from smcwake.tasks import Task, get
from smcwake.train import CHECKPOINT_NAME, SMCOptions, TrainConfig, fit, initial_encoder

__all__ = [
    "ALL_METHODS",
    "RECOMMENDED_SMC",
    "EvalOptions",
    "evaluate",
    "grid_log_evidence",
    "load_results",
    "load_task",
    "run_bench",
    "run_digits",
    "run_fit",
    "run_many_samplers",
    "save_results",
    "unavailable_reason",
]

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"

ALL_METHODS = (
    "smc-wake-a",
    "smc-wake-b",
    "smc-wake-c",
    "smc-wake-pimh",
    "wake",
    "defensive-wake",
    "sleep",
    "elbo",
    "msc",
)
"""The methods :func:`run_bench` compares by default."""

RECOMMENDED_SMC: dict[str, SMCOptions] = {
    "linear-gaussian": SMCOptions(kernel="mala", num_mcmc_steps=5),
    "many-samplers": SMCOptions(kernel="mala", num_mcmc_steps=5),
    "digits": SMCOptions(kernel="mala", num_mcmc_steps=5),
}
"""SMC settings used by default per task (others: :class:`~smcwake.train.SMCOptions`' defaults).

The 50- and 8-dimensional tasks have differentiable likelihoods; a gradient-based move (MALA,
preconditioned by the particle covariance) mixes where a random walk does not: with K = 1000 on
``linear-gaussian``, five RWMH steps per stage leave an L1 error of the posterior mean of about 14
(summed over 50 dimensions) and a log-evidence error of about -240, five MALA steps about 0.2 and
-0.3, for about the same number of likelihood evaluations.
"""

_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear-gaussian": {"lr": 3e-3},
    "many-samplers": {"lr": 3e-3},
}


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


# ------------------------------------------------------------------------------- tasks
def load_task(name: str, **options: Any) -> Task:
    """A built-in task by name (see :mod:`smcwake.tasks`), in float32.

    ``galaxy-spectra`` raises with the task's own message: it needs a user-supplied emulator.
    """
    return get(name, **options)


def _bounded_support(task: Task) -> str | None:
    """A description of the prior's support when it is not all of R^d, else None."""
    support = task.model.prior.support
    base = getattr(support, "base_constraint", support)
    if base is constraints.real or isinstance(base, type(constraints.real)):
        return None
    low, high = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    if isinstance(low, Tensor) and isinstance(high, Tensor):
        lo, hi = low.unique(), high.unique()
        if lo.numel() == 1 and hi.numel() == 1:
            return f"[{float(lo):g}, {float(hi):g}]^{task.model.dim}"
    return str(base)


def unavailable_reason(
    task: Task, method: str, encoder: str, *, support_transform: bool = True
) -> str | None:
    """Why ``method`` cannot train ``encoder`` on ``task``, or None when it can.

    ``support_transform``: whether the encoder maps onto the prior's support (the default of
    :class:`~smcwake.train.TrainConfig`); without it, the ELBO and IWAE are undefined on a
    bounded prior.

    >>> from smcwake.tasks import get
    >>> unavailable_reason(get("two-moons"), "elbo", "flow", support_transform=False)[:29]
    'the prior has bounded support'
    >>> unavailable_reason(get("two-moons"), "elbo", "flow") is None
    True
    """
    get_objective(method)  # unknown names raise
    if method == "sleep" and not task.model.can_simulate:
        return "the model has no simulator (sleep trains on simulated pairs (z, x))"
    if method in ("elbo", "iwae"):
        if encoder == "mdn":
            return "the mixture-density encoder has no reparameterized sampler"
        support = _bounded_support(task)
        if support is not None and not support_transform:
            return (
                f"the prior has bounded support ({support}): q, supported on all of R^d, puts "
                "mass where log p(z) = -inf, so the bound is -inf and its gradient undefined "
                "(support_transform=True keeps q on the support)"
            )
    return None


def _observations(task: Task, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The dataset: for toy-collapse with one observation, the paper's x = 12.

    There z_true is drawn from the exact posterior p(z | x = 12), which is what calibration
    checks conditional on x need.
    """
    observed = task.defaults.get("observed")
    if n == 1 and observed is not None and task.reference_posterior is not None:
        x = torch.full((1, task.model.dim), float(observed))
        return task.reference_posterior(x, 1, seed)[:, 0, :], x
    return task.observations(n, seed)


# ------------------------------------------------------------------------------- metrics
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


def _mean(t: Tensor) -> float:
    t = t.double()
    t = t[torch.isfinite(t)] if bool(torch.isfinite(t).any()) else t
    return float(t.mean())


class _Reference:
    """Reference samples and normalizers, computed once per dataset and reused across runs."""

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


def evaluate(
    task: Task,
    encoder,
    z_true: Tensor,
    x: Tensor,
    *,
    options: EvalOptions | None = None,
    seed: int = 0,
    bank=None,
    reference: _Reference | None = None,
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
    B = x.shape[0]
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
                metrics[key] = _mean(value)
        known = bool(torch.isfinite(z_true).all())
        if known:  # coverage and SBC need many (z_true, x) pairs to mean anything
            lqt = diagnostics.log_q_true(encoder, z_true, x)
            metrics["log_q_true"] = _mean(lqt)
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
        log_w = task.model.log_joint(q_samples, x).double() - log_q.double()
        log_z_is = torch.logsumexp(log_w, -1) - math.log(options.num_samples)
        metrics["log_evidence_is"] = _mean(log_z_is)
        exact_log_z = task.log_evidence(x).double() if task.log_evidence is not None else None
        reference = reference or _Reference(task, x, options, seed)
        if exact_log_z is not None:
            metrics["evidence_error"] = _mean(log_z_is - exact_log_z)
        elif reference.log_z is not None:
            metrics["evidence_error"] = _mean(log_z_is[reference.idx] - reference.log_z)
        if bank is not None:
            zbar = bank.log_zbar.cpu()
            if exact_log_z is not None:
                metrics["bank_evidence_error"] = _mean(zbar - exact_log_z)
            runs = bank.log_z_runs.cpu()
            finite = torch.isfinite(runs)
            count = finite.sum(-1)
            if bool((count > 1).any()):
                filled = torch.where(finite, runs, 0.0)
                mean = filled.sum(-1) / count.clamp_min(1)
                var = (torch.where(finite, runs - mean[:, None], 0.0) ** 2).sum(-1)
                spread = (var / (count - 1).clamp_min(1)).sqrt()[count > 1]
                metrics["bank_evidence_spread"] = float(spread.mean())
        if reference.samples is not None:
            n = reference.idx.numel()
            fkl = reference.forward_kl(encoder, x)
            if fkl is not None:
                metrics["forward_kl"] = _mean(fkl)
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
    return metrics, arrays


def _curve_metric(task: Task, reference: _Reference, x: Tensor, options: EvalOptions):
    """A cheap metric to track during training: (name, fn(encoder) -> float)."""
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
                return _mean(kl)
            log_p = post.log_prob(ref.double().movedim(1, 0)).movedim(0, 1)
            return _mean((log_p - encoder.log_prob(ref, x[:n]).double()).mean(-1))

        return "forward_kl", forward_kl
    if reference.log_z is not None:
        return "forward_kl", lambda encoder: _mean(reference.forward_kl(encoder, x))
    return None


# ------------------------------------------------------------------------------- runs
def _json_default(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def save_results(results: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write ``results`` to ``out/results.json`` atomically; returns the path."""
    path = Path(out) / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1, default=_json_default, allow_nan=True))
    os.replace(tmp, path)
    return path


def load_results(out: str | os.PathLike) -> dict[str, Any]:
    """Read ``out/results.json`` (written by :func:`run_bench`, the ``fit`` command, ...)."""
    path = Path(out)
    path = path if path.suffix == ".json" else path / RESULTS_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results here (run `smcwake bench` or `smcwake fit`)")
    return json.loads(path.read_text())


def _train_one(
    task: Task,
    method: str,
    seed: int,
    x: Tensor,
    z_true: Tensor,
    config: TrainConfig,
    run_dir: Path | None,
    options: EvalOptions,
    reference: _Reference,
    curve_points: int,
    resume: bool,
    panel_obs: int,
) -> dict[str, Any]:
    """Train one (method, seed) and evaluate it; returns the run's JSON record.

    A run that stops with a FloatingPointError (``max_bad_steps`` non-finite gradients in a
    row, which leave the parameters untouched) is evaluated at its last finite state and
    marked ``diverged``.
    """
    curve_def = _curve_metric(task, reference, x, options)
    observed = task.defaults.get("observed")
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    curve_file = run_dir / "curve.json" if run_dir is not None else None
    curve: dict[str, list] = {"step": [], "likelihood_evals": [], "wall_time": []}
    if resume and curve_file is not None and curve_file.exists():
        curve = json.loads(curve_file.read_text())
    marks = sorted({max(1, round(config.steps * k / curve_points)) for k in range(curve_points)})
    last_row: dict[str, Any] = {}

    def record(step: int, encoder, row: dict) -> None:
        if curve["step"] and step <= curve["step"][-1]:
            return
        curve["step"].append(step)
        curve["likelihood_evals"].append(row.get("likelihood_evals", 0))
        curve["wall_time"].append(row.get("wall_time", 0.0))
        with torch.no_grad():
            if curve_def is not None:
                curve.setdefault(curve_def[0], []).append(curve_def[1](encoder))
            if observed is not None and hasattr(encoder, "gaussian_params"):
                _, cov = encoder.gaussian_params(torch.full((1, x.shape[1]), float(observed)))
                curve.setdefault("q_sd_at_observed", []).append(float(cov[0, 0, 0].sqrt()))
        if curve_file is not None:
            curve_file.write_text(json.dumps(curve))

    def callback(step: int, encoder, row: dict) -> None:
        last_row.update(row)
        if marks and step >= marks[0]:
            while marks and step >= marks[0]:
                marks.pop(0)
            record(step, encoder, row)

    encoder = _initial_encoder(task, x, config)
    if curve_def is not None or observed is not None:
        record(0, encoder, {})
    diverged = None
    bank = None
    try:
        result = fit(
            task.model,
            x,
            encoder=encoder,
            config=config,
            run_dir=run_dir,
            resume=resume,
            callbacks=[callback],
        )
        final_row = {k: v[-1] for k, v in result.history.items() if v}
        bank = result.bank
    except FloatingPointError as err:
        diverged = str(err)
        final_row = dict(last_row)
        logger.warning("%s seed %d diverged: %s", method, seed, err)
    steps = int(final_row.get("step", 0))
    record(steps, encoder, final_row)
    metrics, arrays = evaluate(
        task, encoder, z_true, x, options=options, seed=seed, bank=bank, reference=reference
    )
    record_ = {
        "seed": seed,
        "steps": steps,
        "likelihood_evals": final_row.get("likelihood_evals", 0),
        "simulations": final_row.get("simulations", 0),
        "smc_runs": final_row.get("smc_runs", 0),
        "skipped_steps": final_row.get("skipped_steps", 0),
        "wall_time": final_row.get("wall_time", 0.0),
        "stopped_by": "diverged" if diverged else "steps" if steps >= config.steps else "budget",
        "metrics": metrics,
        "curve": curve,
        **arrays,
    }
    if diverged:
        record_["diverged"] = diverged
    with torch.no_grad():
        if task.model.dim == 2 and panel_obs:
            g = torch.Generator().manual_seed(seed)
            record_["panel_samples"] = encoder.sample(x[:panel_obs], 500, generator=g)
        if observed is not None and hasattr(encoder, "gaussian_params"):
            m, c = encoder.gaussian_params(torch.full((1, x.shape[1]), float(observed)))
            record_["q_at_observed"] = {"mean": float(m[0, 0]), "sd": float(c[0, 0, 0].sqrt())}
    return record_


def _initial_encoder(task: Task, x: Tensor, config: TrainConfig):
    """The encoder :func:`smcwake.fit` would build, from ``config.seed``."""
    return initial_encoder(task.model, x, config, torch.Generator().manual_seed(config.seed))


def _config_for(
    task: Task, method: str, base: dict[str, Any], budget: int | None, n: int
) -> TrainConfig:
    """The TrainConfig of one method: shared settings, the evaluation cap, sleep's step cap."""
    settings = {**base, "method": method, "max_evals": budget}
    if method == "sleep" and budget is not None:
        # sleep makes simulations, not likelihood evaluations: one simulation counts as one
        batch = min(settings.get("batch_size", TrainConfig.batch_size), n)
        per_step = batch * settings.get("num_proposals", TrainConfig.num_proposals)
        settings["steps"] = max(1, min(settings["steps"], math.ceil(budget / per_step)))
    return TrainConfig(**settings)


def _base_settings(
    task: Task,
    *,
    steps: int,
    encoder: str | None,
    overrides: dict[str, Any] | None,
    progress: bool,
) -> dict[str, Any]:
    defaults = task.defaults
    base: dict[str, Any] = {
        "steps": steps,
        "encoder": encoder or defaults.get("encoder", "flow"),
        "num_particles": defaults.get("num_particles", 1000),
        "smc": RECOMMENDED_SMC.get(task.name, SMCOptions()),
        "log_every": 1,  # a history row every step: exact counts when a budget stops a run
        "checkpoint_every": max(1, steps // 10),
        "progress": progress,
        **_TASK_DEFAULTS.get(task.name, {}),
    }
    for key, value in (overrides or {}).items():
        if key.startswith("smc."):
            base["smc"] = dataclasses.replace(base["smc"], **{key[4:]: value})
        else:
            base[key] = value
    if isinstance(base["smc"], dict):
        base["smc"] = SMCOptions(**base["smc"])
    return base


def _header(task: Task, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "task": task.name,
        "description": task.description,
        "c2st_classifier": diagnostics.C2ST_CLASSIFIER,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **fields,
    }


def run_bench(
    task_name: str,
    methods: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 3,
    steps: int = 1000,
    budget: int | None = None,
    out: str | os.PathLike | None = None,
    *,
    num_observations: int | None = None,
    encoder: str | None = None,
    overrides: dict[str, Any] | None = None,
    eval_options: EvalOptions | None = None,
    curve_points: int = 8,
    data_seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    keep_checkpoints: bool = False,
    command: str | None = None,
    task_options: dict[str, Any] | None = None,
    on_run: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train every method on one task at a matched budget; evaluate; write results and report.

    Every method trains the same encoder kind on the same observations (drawn with
    ``data_seed``) with the same optimizer settings, for each training seed, and stops after
    ``steps`` gradient steps or ``budget`` likelihood evaluations, whichever comes first (sleep
    counts simulations instead). With ``budget=None`` the budget is what the first listed method
    uses in ``steps`` steps with the same seed (list an SMC-Wake method first to give the
    baselines its number of evaluations). ``many-samplers`` and ``digits`` dispatch to
    :func:`run_many_samplers` and :func:`run_digits`.

    Args:
        task_name: a built-in task (see :func:`smcwake.tasks.names`).
        methods: method names (:data:`smcwake.objectives.OBJECTIVES`); default: the task's
            ``defaults["methods"]``, else :data:`ALL_METHODS`.
        seeds: a count (0..n-1) or explicit training seeds.
        steps: gradient steps per run.
        budget: likelihood evaluations per run (None: see above).
        out: output folder: ``results.json``, ``report.md``, PNGs, and ``runs/<method>/seed<s>``.
        num_observations: dataset size (default: the task's).
        encoder: encoder kind (default: the task's).
        overrides: other :class:`~smcwake.train.TrainConfig` fields; ``"smc.<field>"`` keys set
            :class:`~smcwake.train.SMCOptions` fields.
        eval_options: how much work evaluation does.
        curve_points: checkpoints at which the tracked metric is evaluated during training.
        resume: reuse finished runs found in ``out`` and continue interrupted ones.
        keep_checkpoints: keep each finished run's checkpoint (they can be large).
        command: the command line, recorded in the report.
        on_run: called as ``on_run(method, seed, record)`` after each run.

    Returns:
        The results dictionary written to ``out/results.json``.
    """
    if task_name == "many-samplers":
        seed0 = seeds if isinstance(seeds, int) else seeds[0]
        return run_many_samplers(
            steps=steps,
            out=out,
            seed=0 if isinstance(seeds, int) else seed0,
            resume=resume,
            progress=progress,
            command=command,
            eval_options=eval_options,
            overrides=overrides,
            curve_points=curve_points,
        )
    if task_name == "digits":
        return run_digits(
            methods=methods,
            seeds=seeds,
            steps=steps,
            budget=budget,
            out=out,
            resume=resume,
            progress=progress,
            command=command,
            eval_options=eval_options,
            overrides=overrides,
            num_observations=num_observations,
        )
    task = load_task(task_name, **(task_options or {}))
    methods = list(methods or task.defaults.get("methods", ALL_METHODS))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    options = eval_options or EvalOptions()
    n = num_observations or task.defaults.get("num_observations", 100)
    z_true, x = _observations(task, n, data_seed)
    base = _base_settings(
        task, steps=steps, encoder=encoder, overrides=overrides, progress=progress
    )
    out_path = Path(out) if out is not None else None
    reference = _Reference(task, x, options, data_seed)
    panel_obs = min(4, n) if task.model.dim == 2 else 0
    results = _header(
        task,
        "bench",
        command=command,
        methods={},
        seeds=seed_list,
        settings={
            "steps": steps,
            "budget": budget,
            "num_observations": n,
            "data_seed": data_seed,
            "train": {k: v for k, v in base.items() if k not in ("progress",)},
            "eval": dataclasses.asdict(options),
        },
    )
    if panel_obs and reference.samples is not None:
        results["panel_reference"] = reference.samples[:panel_obs, :500]
        results["panel_x"] = x[:panel_obs]
    if task.name == "toy-collapse":
        from smcwake.tasks.toy_collapse import collapse_table

        observed = float(task.defaults.get("observed", 12.0))
        mean, cov = task.posterior_moments(torch.tensor([[observed]]))
        results["collapse"] = {
            "observed": observed,
            "posterior": {"mean": float(mean), "sd": float(cov.sqrt())},
            "rows": [row._asdict() for row in collapse_table(observed)],
        }
    budgets: dict[int, int | None] = {s: budget for s in seed_list}
    for method in methods:
        entry: dict[str, Any] = {"status": "ok", "reason": None, "runs": []}
        results["methods"][method] = entry
        reason = unavailable_reason(
            task, method, base["encoder"], support_transform=base.get("support_transform", True)
        )
        if reason is not None:
            entry.update(status="unavailable", reason=reason)
            logger.info("%s: not run (%s)", method, reason)
            continue
        for seed in seed_list:
            run_dir = out_path / "runs" / method / f"seed{seed}" if out_path else None
            done = run_dir / "result.json" if run_dir else None
            if resume and done is not None and done.exists():
                record = json.loads(done.read_text())
            else:
                config = _config_for(task, method, {**base, "seed": seed}, budgets[seed], n)
                try:
                    record = _train_one(
                        task,
                        method,
                        seed,
                        x,
                        z_true,
                        config,
                        run_dir,
                        options,
                        reference,
                        curve_points,
                        resume,
                        panel_obs,
                    )
                except (FloatingPointError, RuntimeError, ValueError) as err:
                    logger.warning("%s seed %d failed: %s", method, seed, err)
                    record = {"seed": seed, "failed": f"{type(err).__name__}: {err}"}
                if done is not None:
                    done.write_text(json.dumps(record, default=_json_default))
                    if not keep_checkpoints and (run_dir / CHECKPOINT_NAME).exists():
                        (run_dir / CHECKPOINT_NAME).unlink()
            if budgets[seed] is None and "failed" not in record:
                budgets[seed] = int(record["likelihood_evals"]) or None
            entry["runs"].append(record)
            if on_run is not None:
                on_run(method, seed, record)
        if entry["runs"] and all("failed" in r for r in entry["runs"]):
            entry.update(status="failed", reason=entry["runs"][0]["failed"])
        results["budgets"] = budgets
        if out_path is not None:
            save_results(results, out_path)
    if out_path is not None:
        save_results(results, out_path)
        from smcwake.report import write_report

        write_report(out_path, results)
    return results


def run_fit(
    task_name: str,
    method: str,
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    seed: int = 0,
    budget: int | None = None,
    num_observations: int | None = None,
    encoder: str | None = None,
    overrides: dict[str, Any] | None = None,
    eval_options: EvalOptions | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    kind: str = "fit",
    curve_points: int = 8,
) -> dict[str, Any]:
    """Train one method on a task with ``run_dir=out``, evaluate it, write results and report.

    ``out`` receives fit's checkpoint and ``history.json`` (so ``resume=True`` continues the
    run, possibly with more ``steps``), ``metrics.json`` (the scalar metrics),
    ``results.json`` and the report of :mod:`smcwake.report`.
    """
    if task_name == "digits":
        results = run_digits(
            methods=[method],
            seeds=[seed],
            steps=steps or 1000,
            budget=budget,
            out=out,
            resume=resume,
            progress=progress,
            command=command,
            eval_options=eval_options,
            overrides=overrides,
            num_observations=num_observations,
        )
        _write_metrics(results, method, Path(out))
        return results
    task = load_task(task_name)
    encoder = encoder or task.defaults.get("encoder", "flow")
    transform = (overrides or {}).get("support_transform", True)
    reason = unavailable_reason(task, method, encoder, support_transform=transform)
    if reason is not None:
        raise ValueError(f"{method} cannot run on {task_name}: {reason}")
    options = eval_options or EvalOptions()
    steps = steps or TrainConfig.steps
    n = num_observations or task.defaults.get("num_observations", 100)
    z_true, x = _observations(task, n, 0)
    base = _base_settings(
        task, steps=steps, encoder=encoder, overrides=overrides, progress=progress
    )
    config = _config_for(task, method, {**base, "seed": seed}, budget, n)
    out_path = Path(out)
    reference = _Reference(task, x, options, 0)
    panel_obs = min(4, n) if task.model.dim == 2 else 0
    record = _train_one(
        task,
        method,
        seed,
        x,
        z_true,
        config,
        out_path,
        options,
        reference,
        curve_points,
        resume,
        panel_obs,
    )
    results = _header(
        task,
        kind,
        command=command,
        seeds=[seed],
        methods={method: {"status": "ok", "reason": None, "runs": [record]}},
        settings={
            "steps": steps,
            "budget": budget,
            "num_observations": n,
            "train": {k: v for k, v in base.items() if k != "progress"},
            "eval": dataclasses.asdict(options),
        },
    )
    if panel_obs and reference.samples is not None:
        results["panel_reference"] = reference.samples[:panel_obs, :500]
    save_results(results, out_path)
    _write_metrics(results, method, out_path)
    from smcwake.report import write_report

    write_report(out_path, results)
    return results


def _write_metrics(results: dict[str, Any], method: str, out: Path) -> None:
    run = results["methods"][method]["runs"][0]
    keep = ("seed", "steps", "likelihood_evals", "simulations", "wall_time", "stopped_by")
    payload = {
        "task": results["task"],
        "method": method,
        **{k: run.get(k) for k in keep},
        "metrics": run["metrics"],
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=1))


# ------------------------------------------------------------------------ many samplers
def run_many_samplers(
    *,
    steps: int = 1000,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    eval_options: EvalOptions | None = None,
    overrides: dict[str, Any] | None = None,
    curve_points: int = 10,
) -> dict[str, Any]:
    """One big SMC run per observation against many small ones, at equal particle totals.

    On ``many-samplers`` (linear Gaussian, A scaled by 10, 10 observations) SMC-Wake (estimator
    (a), every retained run weighted by its evidence) trains the same Gaussian encoder with
    either M = 1 run of K = 10,000 particles per observation, made before training, or M = 100
    runs of K = 100, one per observation every ``steps / 100`` steps as SMC-Wake refreshes its
    bank. The forward KL to the exact posterior is tracked over training.
    """
    task = load_task("many-samplers")
    options = eval_options or EvalOptions(c2st_observations=0)
    n = task.defaults["num_observations"]
    z_true, x = task.observations(n, 0)
    base = _base_settings(task, steps=steps, encoder=None, overrides=overrides, progress=progress)
    base.update(batch_size=n, refresh_size=n, runs_per_step=None, seed=seed)
    out_path = Path(out) if out is not None else None
    reference = _Reference(task, x, options, 0)
    results = _header(
        task,
        "many-samplers",
        command=command,
        methods={},
        seeds=[seed],
        settings={
            "steps": steps,
            "num_observations": n,
            "train": base,
            "eval": dataclasses.asdict(options),
        },
    )
    for setting in task.defaults["settings"]:
        label, runs, particles = setting["label"], setting["num_runs"], setting["num_particles"]
        refresh = steps + 1 if runs == 1 else max(1, steps // runs)
        settings = {
            **base,
            "method": task.defaults.get("method", "smc-wake-a"),
            "num_particles": particles,
            "max_runs": runs,
            "refresh_every": refresh,
        }
        config = TrainConfig(**settings)
        run_dir = (
            out_path / "runs" / label.replace(" ", "").replace(",", "_") if out_path else None
        )
        done = run_dir / "result.json" if run_dir else None
        if resume and done is not None and done.exists():
            record = json.loads(done.read_text())
        else:
            record = _train_one(
                task,
                label,
                seed,
                x,
                z_true,
                config,
                run_dir,
                options,
                reference,
                curve_points,
                resume,
                0,
            )
            record.update(num_runs=runs, num_particles=particles, refresh_every=refresh)
            if done is not None:
                done.write_text(json.dumps(record, default=_json_default))
                (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        results["methods"][label] = {"status": "ok", "reason": None, "runs": [record]}
        if out_path is not None:
            save_results(results, out_path)
    if out_path is not None:
        save_results(results, out_path)
        from smcwake.report import write_report

        write_report(out_path, results)
    return results


# ------------------------------------------------------------------------------- digits
def heldout_log_likelihood(
    model, x: Tensor, num_particles: int = 1000, *, smc: SMCOptions | None = None, seed: int = 0
) -> Tensor:
    """log p(x) of held-out observations, estimated by likelihood-tempered SMC.

    The SMC evidence estimate is unbiased for p(x), so its log is a slightly low (Jensen) but
    consistent estimate of log p(x); runs that did not reach tau = 1 are NaN.

    Shapes: x [M, p] -> [M] float64.
    """
    smc = smc or SMCOptions(kernel="mala", num_mcmc_steps=5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        result = run_smc(
            model,
            x,
            num_particles,
            ess_target=smc.ess_target,
            resample_threshold=smc.resample_threshold,
            resampling=smc.resampling,
            kernel=smc.kernel,
            num_mcmc_steps=smc.num_mcmc_steps,
            max_stages=smc.max_stages,
            generator=g,
        )
    return torch.where(result.converged, result.log_evidence, math.nan)


def run_digits(
    *,
    methods: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 1,
    steps: int = 1000,
    budget: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    eval_options: EvalOptions | None = None,
    overrides: dict[str, Any] | None = None,
    num_observations: int | None = None,
    digit: int | None = None,
) -> dict[str, Any]:
    """Wake against SMC-Wake on binarized handwritten digits, the decoder learned jointly.

    Each run builds a fresh task (the same initial decoder for every method) and calls
    ``fit(..., decoder=decoder)``: every step takes an encoder step with the method and a
    decoder step on the importance-weighted bound with the encoder as proposal. SMC-Wake drops
    bank runs older than ``stale_after`` steps, since they target the posterior of an older
    decoder. Scored on held-out images: log p(x) by SMC under the learned decoder
    (:func:`heldout_log_likelihood`), the importance-weighted bound with q as proposal, and
    reconstructions (decoder mean at q's mean).
    """
    from smcwake.tasks.digits import digits_task

    options = eval_options or EvalOptions()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    task, _ = digits_task(digit=digit)
    methods = list(methods or task.defaults["methods"])
    smc_first = sorted(methods, key=lambda m: m not in SMC_WAKE_METHODS)
    n = num_observations or task.defaults["num_observations"]
    _, x = task.observations(n, 0)
    heldout = task.defaults["held_out"]()
    base = _base_settings(task, steps=steps, encoder=None, overrides=None, progress=progress)
    base.update(refresh_every=1, refresh_size=64, stale_after=100, lr=3e-3, decoder_lr=3e-3)
    for key, value in (overrides or {}).items():
        base[key] = value
    out_path = Path(out) if out is not None else None
    shown = heldout[:8]
    results = _header(
        task,
        "digits",
        command=command,
        methods={},
        seeds=seed_list,
        settings={
            "steps": steps,
            "budget": budget,
            "num_observations": n,
            "heldout": heldout.shape[0],
            "train": base,
            "eval": dataclasses.asdict(options),
        },
        reconstruction_targets=shown,
    )
    budgets: dict[int, int | None] = {s: budget for s in seed_list}
    for method in smc_first:
        entry: dict[str, Any] = {"status": "ok", "reason": None, "runs": []}
        results["methods"][method] = entry
        for seed in seed_list:
            run_dir = out_path / "runs" / method / f"seed{seed}" if out_path else None
            done = run_dir / "result.json" if run_dir else None
            if resume and done is not None and done.exists():
                record = json.loads(done.read_text())
            else:
                record = _digits_run(
                    method, seed, x, heldout, base, budgets[seed], run_dir, resume, options, digit
                )
                if done is not None:
                    done.write_text(json.dumps(record, default=_json_default))
                    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
            if budgets[seed] is None:
                budgets[seed] = int(record["likelihood_evals"]) or None
            entry["runs"].append(record)
        if out_path is not None:
            save_results(results, out_path)
    results["budgets"] = budgets
    if out_path is not None:
        save_results(results, out_path)
        from smcwake.report import write_report

        write_report(out_path, results)
    return results


def _digits_run(method, seed, x, heldout, base, budget, run_dir, resume, options, digit):
    from smcwake.tasks.digits import digits_task

    task, decoder = digits_task(digit=digit)
    settings = {**base, "method": method, "seed": seed, "max_evals": budget}
    if method not in SMC_WAKE_METHODS:
        settings["stale_after"] = None
    config = TrainConfig(**settings)
    curve: dict[str, list] = {"step": [], "likelihood_evals": [], "wall_time": [], "iwbo": []}
    marks = sorted({max(1, round(config.steps * k / 8)) for k in range(1, 9)})
    probe = heldout[:100]

    def iwbo(encoder) -> float:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            z = encoder.sample(probe, 100, generator=g)
            log_w = task.model.log_joint(z, probe).double() - encoder.log_prob(z, probe).double()
        return float((torch.logsumexp(log_w, -1) - math.log(100)).mean())

    def callback(step, encoder, row):
        if marks and step >= marks[0]:
            while marks and step >= marks[0]:
                marks.pop(0)
            curve["step"].append(step)
            curve["likelihood_evals"].append(row["likelihood_evals"])
            curve["wall_time"].append(row["wall_time"])
            curve["iwbo"].append(iwbo(encoder))

    result = fit(
        task.model,
        x,
        config=config,
        run_dir=run_dir,
        resume=resume,
        callbacks=[callback],
        decoder=decoder,
    )
    history = result.history
    final = {k: v[-1] for k, v in history.items() if v}
    encoder = result.encoder
    heldout_ll = heldout_log_likelihood(task.model, heldout, options.heldout_particles, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = encoder.sample(heldout, options.num_samples, generator=g)
        log_w = task.model.log_joint(z, heldout).double() - encoder.log_prob(z, heldout).double()
        bound = torch.logsumexp(log_w, -1) - math.log(options.num_samples)
        mean, _ = encoder.gaussian_params(heldout[:8])
        recon = decoder.mean(mean)
    return {
        "seed": seed,
        "steps": final.get("step", 0),
        "likelihood_evals": final.get("likelihood_evals", 0),
        "simulations": 0,
        "smc_runs": final.get("smc_runs", 0),
        "skipped_steps": final.get("skipped_steps", 0),
        "wall_time": final.get("wall_time", 0.0),
        "stopped_by": "steps" if final.get("step", 0) >= config.steps else "budget",
        "metrics": {
            "heldout_loglik": _mean(heldout_ll),
            "heldout_iwbo": _mean(bound),
            "heldout_unconverged": int(torch.isnan(heldout_ll).sum()),
        },
        "curve": curve,
        "reconstructions": recon,
    }
