"""Batched likelihood-tempered SMC: B independent samplers, each with its own temperatures.

For each observation x_b the sampler targets pi_t(z) ∝ p(z) p(x_b | z)^{tau_t}, starting from K
prior draws at tau_0 = 0 and ending at tau_T = 1. One stage, in the order the code runs
(Chopin & Papaspiliopoulos, "An Introduction to Sequential Monte Carlo", ch. 17):

1. choose tau_{t+1} so the conditional ESS of the increment equals ``ess_target`` (a bracketed
   Newton search, all observations at once; jump to 1 when allowed);
2. reweight the *current* particles: log w_k += (tau_{t+1} - tau_t) loglik_k, and accumulate the
   evidence log Z += log sum_k W_k exp(increment_k) with the normalized carried weights W;
3. resample the observations whose ESS fell below ``resample_threshold * K``;
4. move every particle with an MCMC kernel invariant for pi_{t+1}, preconditioned by the
   weighted particle covariance (its correlations shrunk toward 0 when the cloud holds few
   distinct points for its dimension, see :mod:`smcwake.smc.precondition`), its step scale
   adapted from the previous stage's acceptance;
5. measure how far the move took the particles from where they started (the start/end
   correlation of :mod:`smcwake.smc.mixing`); a run in which some stage's particles stayed
   correlated with their starting points is flagged ``mixed = False`` and a warning is logged.

The default kernel (:func:`~smcwake.smc.auto.auto_kernel`) uses gradients when the likelihood is
differentiable (checked at its first evaluation), jumps between modes with a mixture fitted to
the cloud, and makes local steps until the particles have decorrelated, per observation.

Observations that reach tau = 1 leave the batch: later stages evaluate the likelihood only for the
ones still running. The product of the evidence increments is an unbiased estimate of p(x_b).

For a prior on a half-line, or an interval or box in 6 or more dimensions, the particles move, by
default, in unconstrained coordinates u = T^{-1}(z) (:mod:`smcwake.smc.unconstrained`) and are
mapped back to z at the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from smcwake.model import Model
from smcwake.smc.auto import probe_gradients
from smcwake.smc.base import (
    ADAPTATION_GAIN,
    MAX_SCALE,
    MIN_SCALE,
    Kernel,
    SMCResult,
    SMCState,
    Target,
)
from smcwake.smc.kernels import get_kernel
from smcwake.smc.mixing import NOISE_ALLOWANCE, correlation_noise, start_end_correlation
from smcwake.smc.options import SMCOptions
from smcwake.smc.precondition import shrunk_cholesky
from smcwake.smc.resampling import Resampler, ess, get_resampler, normalize_with_log_norm
from smcwake.smc.run_settings import check_run_arguments, resolve_settings
from smcwake.smc.tempering import conditional_ess, next_temperature, tempered
from smcwake.smc.unconstrained import UnconstrainedModel, choose_space, support_kind

__all__ = ["SMCState", "SMCResult", "distinct_fraction", "run_smc", "smc_stage"]

logger = logging.getLogger(__name__)

DEGENERATE_FRACTION = 0.1
"""A converged cloud with fewer distinct particles than this share is reported (a warning).

Resampling copies particles and rejected moves keep the copies, so a cloud whose moves mix poorly
ends with few distinct points: its weighted sample then stands for far fewer than K draws.
"""

PLANNED_ESS_SHARE = 0.5
"""A planned temperature is kept while its conditional ESS is at least this share of the target.

Each stage plans the next temperature from its particles before they move (so the move makes the
particles independent of that choice). After the move the conditional ESS of the planned step is
checked on the new particles; a plan that falls below ``PLANNED_ESS_SHARE * ess_target`` there is
replaced by a temperature chosen from the current particles.
"""


class StageInfo(NamedTuple):
    """Diagnostics of one stage, per observation."""

    tau: Tensor  # [B] temperature reached
    ess: Tensor  # [B] ESS after reweighting (before resampling)
    resampled: Tensor  # [B] bool
    acceptance_rate: Tensor  # [B]
    zero_likelihood: Tensor  # [B] bool: every weighted particle had zero likelihood
    evals_per_particle: int | Tensor  # or [B] when the kernel's count varies by row
    extra: dict[str, Tensor]  # [B] each, from the kernel
    correlation: Tensor  # [B] start/end correlation of the move (1: nothing moved)
    correlation_noise: Tensor  # [B] its standard error under independence
    planned: Tensor  # [B] float64 next temperature, chosen before the move (NaN at tau = 1)


def distinct_fraction(z: Tensor) -> Tensor:
    """Share of distinct particles per observation (exact float equality).

    Shapes: z [B, K, d] -> [B].
    """
    K = z.shape[1]
    # copies made by resampling (and kept by rejected moves) are bitwise equal; sorting by the
    # first coordinate puts them next to each other (continuous z has no other ties)
    order = torch.argsort(z[..., 0], dim=-1, stable=True)
    sorted_z = torch.gather(z, 1, order[..., None].expand_as(z))
    same = (sorted_z[:, 1:] == sorted_z[:, :-1]).all(-1)  # [B, K - 1]
    return 1.0 - same.sum(-1).to(z.dtype) / K


def _gather_rows(state: SMCState, idx: Tensor) -> SMCState:
    return SMCState(*(t[idx] for t in state))


def _scatter_rows_(full: SMCState, idx: Tensor, part: SMCState) -> SMCState:
    """Write ``part`` into rows ``idx`` of ``full`` in place (run_smc owns ``full``'s tensors)."""
    for f, p in zip(full, part, strict=True):
        f.index_copy_(0, idx, p)
    return full


def _resample_rows(
    state: SMCState, which: Tensor, resampler: Resampler, generator: torch.Generator | None
) -> SMCState:
    """Resample the rows flagged in ``which`` [B]; others keep their particles and weights.

    Ancestors are drawn for every row, so the random stream does not depend on which rows
    resample; only the flagged rows are gathered.
    """
    B, K = state.log_weights.shape
    ancestors = resampler(state.log_weights, generator=generator)  # [B, K]
    rows = torch.nonzero(which).flatten()
    r = rows.numel()
    if r == 0:
        return state
    everyone = r == B
    sub = state if everyone else _gather_rows(state, rows)
    if not everyone:
        ancestors = ancestors[rows]
    d = state.z.shape[-1]
    z = torch.gather(sub.z, 1, ancestors[..., None].expand(-1, -1, d))
    log_prior = torch.gather(sub.log_prior, 1, ancestors)
    loglik = torch.gather(sub.loglik, 1, ancestors)
    log_weights = torch.full_like(sub.log_weights, -math.log(K))
    if everyone:
        return state._replace(z=z, log_prior=log_prior, loglik=loglik, log_weights=log_weights)
    return state._replace(
        z=state.z.index_copy(0, rows, z),
        log_prior=state.log_prior.index_copy(0, rows, log_prior),
        loglik=state.loglik.index_copy(0, rows, loglik),
        log_weights=state.log_weights.index_copy(0, rows, log_weights),
    )


def smc_stage(
    state: SMCState,
    target: Target,
    *,
    kernel: Kernel,
    resampler: Resampler,
    ess_target: float,
    resample_threshold: float,
    min_increment: float,
    generator: torch.Generator | None,
    planned: Tensor | None = None,
) -> tuple[SMCState, StageInfo]:
    """One reweight -> resample -> move stage for B observations (all still running).

    ``planned`` [B] is the next temperature of each row, chosen by the previous stage from its
    particles before they moved (``StageInfo.planned``; NaN or None: choose it from the current
    particles). A planned temperature whose conditional ESS on the current particles is below
    ``PLANNED_ESS_SHARE`` (half) of ``ess_target`` is replaced by one chosen from the current
    particles.

    Shapes: state with B rows, target.x [B, p] -> (new state, StageInfo with [B] fields).
    """
    K = state.z.shape[1]

    def choose(s: SMCState) -> Tensor:
        return next_temperature(
            s.loglik, s.log_weights, s.tau, ess_target=ess_target, min_increment=min_increment
        )

    if planned is None:
        tau_next = choose(state)
    else:
        ok = conditional_ess(state.loglik, state.log_weights, planned - state.tau)
        ok = ~torch.isnan(planned) & (ok >= PLANNED_ESS_SHARE * ess_target)
        tau_next = planned if bool(ok.all()) else torch.where(ok, planned, choose(state))
    increment = tempered(state.loglik, tau_next - state.tau)
    unnormalized = state.log_weights + increment
    normalized, log_norm = normalize_with_log_norm(unnormalized)  # log sum_k W_k g_k
    zero = log_norm == -math.inf
    # a row with zero likelihood everywhere keeps finite weights (it is reported and stopped)
    log_weights = torch.where(zero[:, None], state.log_weights, normalized)
    state = state._replace(
        log_weights=log_weights,
        tau=torch.where(zero, state.tau, tau_next),
        log_evidence=state.log_evidence + log_norm.to(state.log_evidence.dtype),
    )
    ess_now = ess(log_weights)
    resampled = (ess_now < resample_threshold * K) & ~zero
    if getattr(kernel, "resamples", False):  # e.g. waste-free: the kernel draws its ancestors
        resampled = ~zero
    else:
        state = _resample_rows(state, resampled, resampler, generator)
    # the next temperature, from particles the move is about to make independent of it
    plan = torch.where(state.tau < 1.0, choose(state), math.nan)

    chol = shrunk_cholesky(state.z, state.log_weights)
    start = state.z
    state, move = kernel(state, target, generator, chol)
    reported = (move.extra or {}).get("start_end_correlation")
    if reported is None:  # a kernel that resamples reports its own (its particles are new)
        correlation = start_end_correlation(start, state.z, state.log_weights)
        noise = correlation_noise(start, state.log_weights)
    else:
        correlation, noise = reported, move.extra["correlation_noise"]
    # Robbins-Monro style adaptation of the scale for the next stage (exactness within a stage)
    gain = getattr(kernel, "adaptation_gain", ADAPTATION_GAIN)
    scale = state.scale * torch.exp(gain * (move.acceptance_rate - kernel.target_acceptance))
    state = state._replace(scale=scale.clamp(MIN_SCALE, MAX_SCALE))
    extra = {"sq_jump": move.sq_jump, **(move.extra or {})}
    info = StageInfo(
        state.tau,
        ess_now,
        resampled,
        move.acceptance_rate,
        zero,
        move.evals_per_particle,
        extra,
        correlation,
        noise.to(correlation.dtype),
        plan,
    )
    return state, info


class _Run(NamedTuple):
    """What every stage of one run reads: the target, the moves and the settings."""

    target: Target  # x [B, p] on the run's device, in the particles' dtype
    kernel: Kernel
    resampler: Resampler
    ess_target: float
    resample_threshold: float
    min_increment: float
    max_stages: int
    max_correlation: float
    generator: torch.Generator | None

    def rows_of(self, idx: Tensor) -> Target:
        """The target of the observations ``idx`` only. Shapes: idx [b] -> x [b, p]."""
        model, x, rows = self.target.model, self.target.x, self.target.rows
        return Target(model, x[idx], None if rows is None else rows[idx])


@dataclass
class _Trace:
    """What a run records per observation over its stages (updated in place).

    Rows that have left the batch (tau = 1 or zero likelihood) get NaN in the histories.
    """

    evals: Tensor  # [B] int64 likelihood evaluations
    num_stages: Tensor  # [B] int64
    zero_likelihood: Tensor  # [B] bool
    running: Tensor  # [B] bool: still in the batch
    planned: Tensor  # [B] float64 next temperature planned by the last stage (NaN: none)
    unmixed_stage: Tensor  # [B] bool: some stage's particles stayed correlated
    taus: list[Tensor] = field(default_factory=list)  # [B] float64 per stage, from tau_0
    accs: list[Tensor] = field(default_factory=list)  # [B] per stage
    corrs: list[Tensor] = field(default_factory=list)  # [B] per stage
    extra_sums: dict[str, Tensor] = field(default_factory=dict)  # [B] float64 each

    @classmethod
    def start(cls, state: SMCState, first_evals: int) -> _Trace:
        """The records of a run at tau = 0, after ``first_evals`` evaluations per particle."""
        B, K = state.log_weights.shape
        device = state.z.device
        no = torch.zeros(B, dtype=torch.bool, device=device)
        return cls(
            evals=torch.full((B,), first_evals * K, dtype=torch.int64, device=device),
            num_stages=torch.zeros(B, dtype=torch.int64, device=device),
            zero_likelihood=no,
            running=torch.ones(B, dtype=torch.bool, device=device),
            planned=torch.full((B,), math.nan, dtype=torch.float64, device=device),
            unmixed_stage=no.clone(),
            taus=[state.tau.clone()],
        )

    def record(self, idx: Tensor, info: StageInfo, z: Tensor, max_correlation: float) -> int:
        """Record a stage of the rows ``idx``; returns how many of them finished in it.

        Shapes: idx [b], info with [b] fields, z [B, K, d] (for its dtype, device and K).
        """
        B, K = z.shape[:2]
        self.planned[idx] = info.planned
        per_particle = info.evals_per_particle  # an int, or [B] (possibly fractional)
        if isinstance(per_particle, Tensor) and per_particle.is_floating_point():
            self.evals[idx] += (per_particle * K).round().to(torch.int64)
        else:
            self.evals[idx] += per_particle * K
        self.num_stages[idx] += 1
        self.zero_likelihood[idx] |= info.zero_likelihood
        for history, value, dtype in (
            (self.taus, info.tau, torch.float64),
            (self.accs, info.acceptance_rate.to(z.dtype), z.dtype),
            (self.corrs, info.correlation.to(z.dtype), z.dtype),
        ):
            row = torch.full((B,), math.nan, dtype=dtype, device=z.device)
            row[idx] = value
            history.append(row)
        excess = (info.correlation - NOISE_ALLOWANCE * info.correlation_noise).to(z.dtype)
        self.unmixed_stage[idx] |= excess > max_correlation
        for key, value in info.extra.items():
            sums = self.extra_sums.setdefault(
                key, torch.zeros(B, dtype=torch.float64, device=z.device)
            )
            sums[idx] += value.to(torch.float64)
        was_running = self.running.clone()
        self.running[idx] = (info.tau < 1.0) & ~info.zero_likelihood
        return int((was_running & ~self.running).sum())


def _start(
    model: Model,
    x: Tensor,
    num_particles: int,
    settings: dict[str, Any],
    min_increment: float,
    max_correlation: float,
    generator: torch.Generator | None,
    seed: int | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    rows: Tensor | None,
) -> tuple[_Run, SMCState, int]:
    """Check a run's inputs, draw its particles from the prior and evaluate them.

    Returns the run, the state at tau = 0 and the likelihood evaluations per particle spent.

    Shapes: x [B, p] -> state with z [B, K, d].
    """
    check_run_arguments(
        num_particles, settings, min_increment, max_correlation, generator, seed, dtype
    )
    model.check_x(x)
    device = torch.device(device) if device is not None else x.device
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    kernel = get_kernel(settings["kernel"], settings["num_mcmc_steps"])
    resampler = get_resampler(settings["resampling"])
    B, K = x.shape[0], num_particles

    z = model.sample_prior((B, K), generator=generator, dtype=dtype, device=device)
    target = Target(model, x.to(device=device, dtype=z.dtype), rows)
    kernel, log_prior, loglik, first_evals = _first_evaluation(target, z, kernel)
    if bool((log_prior == -math.inf).any()):
        raise ValueError("prior.sample() produced points where prior.log_prob is -inf")
    f64 = dict(dtype=torch.float64, device=device)
    state = SMCState(
        z=z,
        log_weights=torch.full((B, K), -math.log(K), dtype=z.dtype, device=device),
        log_prior=log_prior,
        loglik=loglik,
        tau=torch.zeros(B, **f64),
        log_evidence=torch.zeros(B, **f64),
        scale=torch.full((B,), kernel.initial_scale, dtype=z.dtype, device=device),
    )
    run = _Run(
        target,
        kernel,
        resampler,
        ess_target=settings["ess_target"],
        resample_threshold=settings["resample_threshold"],
        min_increment=min_increment,
        max_stages=settings["max_stages"],
        max_correlation=max_correlation,
        generator=generator,
    )
    return run, state, first_evals


def _first_evaluation(
    target: Target, z: Tensor, kernel: Kernel
) -> tuple[Kernel, Tensor, Tensor, int]:
    """Evaluate the initial particles; the default kernel chooses its moves here.

    Returns the kernel to run, log prior and log-likelihood [B, K], and the evaluations per
    particle spent (the default kernel's gradient probe may take more than one).
    """
    choose = getattr(kernel, "choose", None)
    if choose is None:
        log_prior, loglik = target.evaluate(z)
        return kernel, log_prior, loglik, 1
    probe = probe_gradients(target, z)  # gradients or not, decided at the first evaluation
    kernel = choose(probe.usable)
    if probe.usable:
        logger.info("the likelihood is differentiable: moves use gradients (%s)", kernel.name)
    else:
        logger.info("gradient-free moves (%s): %s", kernel.name, probe.reason)
    return kernel, probe.log_prior, probe.loglik, probe.evaluations


def _advance(run: _Run, state: SMCState, trace: _Trace) -> tuple[SMCState, int] | None:
    """One stage of the observations still running (None: none is); records it in ``trace``.

    Returns the new state and how many observations finished in this stage. The rows that
    stepped are written into ``state`` in place unless every row stepped.
    """
    idx = torch.nonzero(trace.running).flatten()
    if idx.numel() == 0:
        return None
    everyone = idx.numel() == state.z.shape[0]
    part, info = smc_stage(
        state if everyone else _gather_rows(state, idx),
        run.target if everyone else run.rows_of(idx),
        kernel=run.kernel,
        resampler=run.resampler,
        ess_target=run.ess_target,
        resample_threshold=run.resample_threshold,
        min_increment=run.min_increment,
        generator=run.generator,
        planned=trace.planned if everyone else trace.planned[idx],
    )
    state = part if everyone else _scatter_rows_(state, idx, part)
    return state, trace.record(idx, info, state.z, run.max_correlation)


def _mixing_advice(
    settings: dict[str, Any], space: str, model: Model, kernel: Kernel, user_kernel: object
) -> str:
    """What a user can change when a run's particles did not decorrelate (for the warning)."""
    advice = []
    if space == "constrained" and support_kind(model.prior.support) != "real":
        try:
            choose_space("unconstrained", model)
            advice.append(
                "the particles moved in the prior's own coordinates, where proposals beyond "
                "the support's boundary are rejected: pass space='unconstrained'"
            )
        except ValueError:
            pass
    steps = getattr(kernel, "num_steps", None)
    now = f", now {steps}" if isinstance(steps, int) else ""
    advice.append(
        f"raise num_mcmc_steps (MCMC steps per stage{now}) or ess_target (now "
        f"{settings['ess_target']:g}; closer to 1 makes smaller tempering steps)"
    )
    if not (isinstance(user_kernel, str) and user_kernel == "auto"):
        advice.append("try kernel='auto'")
    return "; ".join(advice)


def _warn_flagged(
    run: _Run,
    converged: Tensor,
    zero_likelihood: Tensor,
    mixed: Tensor,
    correlation_history: Tensor,
    distinct: Tensor,
    advice: str,
) -> None:
    """Log a warning for each kind of flagged observation. Shapes: [B] each, history [B, T].

    ``advice``: what to change when the particles did not decorrelate (:func:`_mixing_advice`).
    """
    B = converged.shape[0]
    if bool(zero_likelihood.any()):
        bad = torch.nonzero(zero_likelihood).flatten()
        names = bad if run.target.rows is None else run.target.rows[bad]
        logger.warning(
            "%d of %d observations have zero likelihood at every particle (first: %s); they are "
            "flagged zero_likelihood and not converged",
            bad.numel(),
            B,
            names[:5].tolist(),
        )
    stuck = ~converged & ~zero_likelihood
    if bool(stuck.any()):
        logger.warning(
            "%d of %d runs stopped at max_stages=%d before tau=1 (see SMCResult.converged)",
            int(stuck.sum()),
            B,
            run.max_stages,
        )
    unmixed = converged & ~mixed
    if bool(unmixed.any()):
        worst = correlation_history.nan_to_num(-math.inf).amax(-1)[unmixed]
        logger.warning(
            "%d of %d runs reached tau=1 with particles that did not decorrelate from their "
            "starting points in some stage (start/end correlation up to %.2f > "
            "max_correlation=%.2f; see SMCResult.mixed): the sample may not represent the "
            "posterior; %s",
            int(unmixed.sum()),
            B,
            float(worst.max()),
            run.max_correlation,
            advice,
        )
    degenerate = converged & (distinct < DEGENERATE_FRACTION)
    if bool(degenerate.any()):
        logger.warning(
            "%d of %d final particle clouds have under %g%% distinct particles (see "
            "SMCResult.distinct_fraction); use more MCMC steps or a kernel that mixes better",
            int(degenerate.sum()),
            B,
            100 * DEGENERATE_FRACTION,
        )


def _result(run: _Run, state: SMCState, trace: _Trace, advice: str) -> SMCResult:
    """The run's result from its final state and records, after logging what is flagged.

    ``advice``: what to change if the particles did not decorrelate (for the warning).
    """
    B = state.z.shape[0]
    like = dict(dtype=state.z.dtype, device=state.z.device)
    converged = (state.tau >= 1.0) & ~trace.zero_likelihood
    corr_hist = torch.stack(trace.corrs, 1) if trace.corrs else torch.empty(B, 0, **like)
    # a stage counts against mixing when its correlation exceeds max_correlation by more than
    # two standard errors (NaN, a stage of a row with zero likelihood everywhere, does not)
    mixed = ~trace.unmixed_stage
    distinct = distinct_fraction(state.z)
    _warn_flagged(run, converged, trace.zero_likelihood, mixed, corr_hist, distinct, advice)
    acc_hist = torch.stack(trace.accs, 1) if trace.accs else torch.empty(B, 0, **like)
    return SMCResult(
        particles=state.z,
        log_weights=state.log_weights,
        log_evidence=torch.where(trace.zero_likelihood, -math.inf, state.log_evidence),
        converged=converged,
        zero_likelihood=trace.zero_likelihood,
        num_stages=trace.num_stages,
        temperatures=torch.stack(trace.taus, 1),
        acceptance_rate=torch.nanmean(acc_hist, 1)
        if trace.accs
        else torch.full((B,), math.nan, **like),
        acceptance_history=acc_hist,
        ess=ess(state.log_weights),
        num_likelihood_evals=trace.evals,
        loglik=state.loglik,
        distinct_fraction=distinct,
        kernel_info={k: v / trace.num_stages.clamp_min(1) for k, v in trace.extra_sums.items()},
        mixed=mixed,
        correlation_history=corr_hist,
    )


@torch.no_grad()
def run_smc(
    model: Model,
    x: Tensor,
    num_particles: int = 1000,
    *,
    options: SMCOptions | None = None,
    ess_target: float | None = None,
    resample_threshold: float | None = None,
    resampling: str | Resampler | None = None,
    kernel: str | Kernel | None = None,
    num_mcmc_steps: int | None = None,
    max_stages: int | None = None,
    space: str | None = None,
    max_correlation: float = 0.5,
    min_increment: float = 1e-9,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    rows: Tensor | None = None,
    progress: bool = False,
    seed: int | None = None,
) -> SMCResult:
    """Likelihood-tempered SMC for a batch of observations at once.

    Args:
        model: prior and batched likelihood.
        x: observations [B, p]; each gets its own sampler and temperature schedule.
        num_particles: K particles per observation, drawn from the prior.
        options: the seven settings below as one :class:`~smcwake.smc.options.SMCOptions` (as
            ``fit`` stores them in ``TrainConfig.smc``). Give each setting either here or as a
            keyword, not both (a ``ValueError`` naming it); a setting given in neither place
            takes its default, the same as SMCOptions'.
        ess_target: the conditional ESS fraction each tempering step aims for (default 0.5).
        resample_threshold: resample an observation when ESS < resample_threshold * K
            (default 0.5).
        resampling: "systematic" (default), "stratified", "multinomial", "residual".
        kernel: "auto" (default: jumps between modes from a Gaussian mixture fitted to the
            cloud, then Langevin steps if the likelihood is differentiable, random-walk steps
            if not, until the particles have decorrelated from their starting points; see
            :func:`~smcwake.smc.auto.auto_kernel` and docs/KERNELS.md), "mixture+rwmh" (two
            jumps and three random-walk steps), "rwmh", "mala", "hmc" (differentiable
            likelihoods), "waste-free", "mixture", "local_rwmh", "mixture+local_rwmh", or a
            built kernel from :mod:`smcwake.smc.kernels` (e.g. ``encoder_then_rwmh(encoder)``).
        num_mcmc_steps: MCMC steps per stage for a kernel given by name (kernel default if None;
            for "auto", the most local steps per stage).
        max_stages: cap on the number of stages (default 500); observations that hit it are
            flagged ``converged = False`` and a warning is logged.
        space: the coordinates the particles move in. "auto" (default): in u = T^{-1}(z),
            T = ``torch.distributions.biject_to(prior.support)`` (exp for a half-line, a
            scaled sigmoid for an interval), when the prior's support is a half-line per
            coordinate and ``kernel`` is a name, or an interval or box of 6 or more
            dimensions and ``kernel`` is "auto" (whose mixture jumps then act in z); in z
            otherwise (R^d, a box of fewer dimensions or with another named kernel, a
            support ``biject_to`` does not know, a built kernel, which may carry densities
            in z). "unconstrained": in u (a built kernel then acts
            on u; give an encoder kernel an encoder on u,
            :func:`~smcwake.smc.unconstrained.unconstrained_encoder`).
            "constrained": in z, proposals outside the support rejected. The target in u is
            log p(T(u)) + log |det J_T(u)| + tau log p(x | T(u)); the evidence is the same in
            both, and ``particles`` are always in z. In u, the diagnostics measured on the
            particles (``correlation_history``, ``mixed``, ``distinct_fraction``,
            ``kernel_info``'s squared jumps) are measured in u.
        max_correlation: observations in which some stage's start/end correlation exceeds this
            by more than two of its standard errors (which are large only for clouds of a few
            particles, see :func:`~smcwake.smc.mixing.correlation_noise`) are flagged
            ``mixed = False`` and a warning is logged.
        min_increment: smallest temperature step.
        generator: source of all randomness (prior draws included), for reproducible runs.
        seed: shorthand for ``generator=torch.Generator(device).manual_seed(seed)``; pass
            ``seed`` or ``generator``, not both (a ``ValueError``). With neither, the run draws
            from torch's global random state.
        device, dtype: where and in which precision to run (default: x's device, prior's dtype;
            float32 or float64).
        rows: dataset indices of the observations, used in error messages.
        progress: show a progress bar over stages.

    The likelihood is evaluated without recording an autograd graph (kernels that need
    gradients take them themselves), so a likelihood with learnable parameters, such as an
    ``nn.Module`` emulator, can be used as it is.

    Shapes: x [B, p] -> SMCResult with particles [B, K, d], log_weights [B, K], log_evidence [B].

    References:
        Chopin & Papaspiliopoulos (2020), An Introduction to Sequential Monte Carlo, ch. 17.
        McNamara, Loper & Regier (2024), Sequential Monte Carlo for Inclusive KL Minimization
        in Amortized Variational Inference, AISTATS.

    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(1), 10 * torch.ones(1)), 1)
    >>> model = Model(prior, lambda z, x: Normal(z[..., 0], 1.0).log_prob(x))
    >>> g = torch.Generator().manual_seed(0)
    >>> result = run_smc(model, torch.tensor([[12.0]]), 500, generator=g)
    >>> bool(result.converged.all() & result.mixed.all()), round(float(result.log_evidence[0]), 0)
    (True, -4.0)
    """
    settings = resolve_settings(
        options,
        ess_target,
        resample_threshold,
        resampling,
        kernel,
        num_mcmc_steps,
        max_stages,
        space,
    )
    chosen = choose_space(settings["space"], model, settings["kernel"])
    moved = UnconstrainedModel(model) if chosen == "unconstrained" else model
    run, state, first_evals = _start(
        moved, x, num_particles, settings, min_increment, max_correlation, generator, seed,
        device, dtype, rows,
    )  # fmt: skip
    trace = _Trace.start(state, first_evals)
    bar = tqdm(total=x.shape[0], desc="SMC", unit="obs", disable=not progress, leave=False)
    for _ in range(run.max_stages):
        stepped = _advance(run, state, trace)
        if stepped is None:
            break
        state, finished = stepped
        bar.update(finished)
    bar.close()
    advice = _mixing_advice(settings, chosen, model, run.kernel, settings["kernel"])
    result = _result(run, state, trace, advice)
    if isinstance(moved, UnconstrainedModel):
        result = result._replace(particles=moved.to_constrained(result.particles))
    return result
