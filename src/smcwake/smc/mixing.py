"""How far a move took the particles from where they started, and moves that run until far enough.

After reweighting and resampling, the cloud is a weighted sample of the next tempered target
whose copies sit on top of each other; the move must separate them before the next reweighting,
or the copies of one ancestor count as many draws when they are one. How well a move did that
is measured by the *start/end correlation* of the stage (:func:`start_end_correlation`): 1 when no
particle moved, about 0 when the end positions are as far from the starting points as
independent draws from the cloud would be.

:func:`until_decorrelated` is a kernel that makes local steps until that correlation falls below
a target, per observation, with a cap: few steps where the target is easy (low dimension, mixture
jumps that are accepted), as many as mixing needs where it is not. The sampler reports the
correlation of every stage (``SMCResult.correlation_history``) and flags runs in which some stage
stayed above ``max_correlation`` (``SMCResult.mixed``), whatever the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.composite import _put_rows, _rows
from smcwake.smc.crosswise import (
    NUM_FOLDS,
    Folds,
    fold_count,
    fold_mean,
    fold_particles,
    join_folds,
    split_folds,
)
from smcwake.smc.mh import Kernel, MoveInfo, Target
from smcwake.smc.precondition import merged_weights
from smcwake.smc.steppers import Stepper, carry_rows

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["NOISE_ALLOWANCE", "correlation_noise", "start_end_correlation", "until_decorrelated"]


def _weighted_var(z: Tensor, w: Tensor) -> Tensor:
    """Weighted variance of each coordinate. Shapes: z [B, K, d], w [B, K] -> [B, d]."""
    mean = (w[..., None] * z).sum(1, keepdim=True)
    return (w[..., None] * (z - mean).square()).sum(1)


def _correlation(start: Tensor, end: Tensor, w: Tensor, start_var: Tensor) -> Tensor:
    """The start/end correlation of :func:`start_end_correlation` given the start variances.

    Shapes: start, end [B, K, d], w [B, K] (normalized), start_var [B, d] -> [B].
    """
    inv = 1 / start_var.clamp_min(torch.finfo(start_var.dtype).tiny)  # [B, d]
    moved = ((w[..., None] * (end - start).square()).sum(1) * inv).sum(-1)
    spread = ((start_var + _weighted_var(end, w)) * inv).sum(-1)
    r = 1 - moved / spread.clamp_min(torch.finfo(spread.dtype).tiny)
    return torch.where(moved > 0, r, torch.ones_like(r))


#: standard errors of the measured correlation allowed above a target before it counts as missed
NOISE_ALLOWANCE = 2.0


def correlation_noise(start: Tensor, log_weights: Tensor) -> Tensor:
    """Standard error of the start/end correlation when end points are independent of the start.

    With n the effective number of distinct starting points (copies merged, see
    :func:`~smcwake.smc.precondition.merged_weights`) and d the dimension, each particle's
    standardized squared displacement has variance 8 d for Gaussian coordinates, so the
    measured correlation has standard error sqrt(2 / (d n)): 0.016 for n = 150 distinct
    particles in d = 50, 0.7 for 4 particles in d = 1, where the measure says nothing.

    Shapes: start [B, K, d], log_weights [B, K] -> [B].
    """
    v = merged_weights(start, log_weights)
    return torch.sqrt(2 * v.square().sum(-1) / start.shape[-1])


def start_end_correlation(start: Tensor, end: Tensor, log_weights: Tensor) -> Tensor:
    """How much of the particles' starting positions a move left in their end positions.

    With W the weights, coordinates standardized by the start cloud's variances v_j,

        r = 1 - D / (S0 + S1),    D = sum_j sum_k W_k (end_kj - start_kj)^2 / v_j,

    S0 and S1 the standardized spreads sum_j Var_W(start_j) / v_j (= d) and
    sum_j Var_W(end_j) / v_j. When start and end have the same spread, r is the weighted
    correlation between start and end positions, averaged over the coordinates: 1 when nothing
    moved, about 0 when each end point is as far from its start as an independent draw from the
    cloud would be (below 0 when farther). A cloud of one point that did not move gives 1.
    The coordinates' own variances, rather than the full cloud covariance, set the metric: they
    are well estimated from any cloud, and the measure needs no linear solve.

    Shapes: start [B, K, d], end [B, K, d], log_weights [B, K] -> [B].

    >>> start = torch.randn(2, 500, 3, generator=torch.Generator().manual_seed(0))
    >>> end = torch.randn(2, 500, 3, generator=torch.Generator().manual_seed(1))
    >>> flat = torch.zeros(2, 500)
    >>> start_end_correlation(start, start, flat).tolist()
    [1.0, 1.0]
    >>> bool((start_end_correlation(start, end, flat).abs() < 0.1).all())
    True
    """
    w = torch.softmax(log_weights, dim=-1)
    return _correlation(start, end, w, _weighted_var(start, w))


class _StopRule(NamedTuple):
    """When :func:`until_decorrelated` stops stepping (its arguments of the same names)."""

    target_correlation: float
    max_steps: int
    min_steps: int


class _FoldRun(NamedTuple):
    """What the local steps of one call did, per fold row (rows of :func:`_step_folds`)."""

    work: SMCState  # each row's state at the step it was released
    steps: Tensor  # [R] steps kept (until released)
    made: Tensor  # [R] every step made, for the count of evaluations
    acc_sum: Tensor  # [R] summed mean acceptance of the kept steps
    jump_sum: Tensor  # [R] summed mean squared jump of the kept steps
    correlation: Tensor  # [R] the correlation the rule saw last (at release)
    folds: Folds | None  # how the particles were cut (None: not cut, R = B)


def _step_folds(
    stepper: Stepper,
    state: SMCState,
    target: Target,
    chol: Tensor,
    start: Tensor,
    F: int,
    generator: torch.Generator | None,
    *,
    rule: _StopRule,
) -> _FoldRun:
    """The local steps of :func:`until_decorrelated`: the particles cut into F folds (if F > 1)
    each moved with the metric of the others, R = F B rows (fold-major), each row stepping
    until released by the rule described there.

    Shapes: state.z [B, K, d], start [B, K, d] (the positions at the start of the call).
    """
    B = state.z.shape[0]
    R = F * B
    folds = None
    if F > 1:  # every fold moves with the metric of the others (smcwake.smc.crosswise)
        folds = split_folds(state, target, F)
        work, work_target, work_chol = folds.state, folds.target, folds.chol
        start = fold_particles(start, F)
    else:
        work, work_target, work_chol = state, target, chol
    device, dtype = work.z.device, work.scale.dtype
    w = torch.softmax(work.log_weights, dim=-1)
    start_var = _weighted_var(start, w)
    # the measured correlation has a standard error; where it is below the target, a fold
    # within one standard error of the target counts as there (waiting for noise to dip
    # below it costs many steps on a slowly mixing tail, e.g. 28 instead of 8 per stage on
    # two-moons); where it is not (a few particles), the target itself is kept
    noise = correlation_noise(start, work.log_weights).to(dtype)
    target_correlation = rule.target_correlation
    goal = target_correlation + torch.where(noise <= target_correlation, noise, 0.0)
    carry = stepper.start(work, work_target, work_chol)
    steps = torch.zeros(R, dtype=dtype, device=device)  # kept steps (until released)
    made = torch.zeros(R, dtype=dtype, device=device)  # every step made, for the count
    acc_sum = torch.zeros(R, dtype=dtype, device=device)
    jump_sum = torch.zeros(R, dtype=dtype, device=device)
    correlation = torch.ones(R, dtype=dtype, device=device)
    reached = torch.zeros(R, dtype=torch.bool, device=device)
    released = torch.zeros(R, dtype=torch.bool, device=device)
    active = torch.arange(R, device=device)
    part, part_target, part_chol = work, work_target, work_chol
    for i in range(rule.max_steps):
        part, carry, acc, jump = stepper.step(part, carry, part_target, generator, part_chol)
        kept = ~released[active]
        made[active] += 1
        steps[active] += kept.to(dtype)
        acc_sum[active] += kept * acc.to(dtype).mean(-1)
        jump_sum[active] += kept * jump.to(dtype).mean(-1)
        r = _correlation(start[active], part.z, w[active], start_var[active]).to(dtype)
        correlation[active] = torch.where(kept, r, correlation[active])
        reached[active] |= r <= goal[active]
        # A fold is released, and its state kept, once every *other* fold of its
        # observation has reached the target: its number of steps then does not depend on
        # its own moves. A released fold that has not reached the target itself keeps
        # stepping (its moves discarded) only to time its own reach for the others.
        reached_by_fold = reached.reshape(F, B)
        others = reached_by_fold.sum(0)[None] - reached_by_fold.to(torch.int64)
        release = ((others >= F - 1).reshape(R) if F > 1 else reached) & ~released
        release &= i + 1 >= rule.min_steps
        last = i + 1 == rule.max_steps
        newly = release[active] | (last & ~released[active])
        if bool(newly.any()):
            rows = torch.nonzero(newly).flatten()
            work = _put_rows(work, active[rows], _rows(part, rows))
            released[active[rows]] = True
        if last:
            break
        keep = torch.nonzero(~(released[active] & reached[active])).flatten()
        if keep.numel() == 0:
            break
        if keep.numel() < active.numel():
            active = active[keep]
            part, carry = _rows(part, keep), carry_rows(carry, keep)
            part_target, part_chol = work_target.select(active), work_chol[active]
    return _FoldRun(work, steps, made, acc_sum, jump_sum, correlation, folds)


def _per_observation(run: _FoldRun, B: int, F: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Acceptance and squared jump per kept step, kept steps and last correlation, each
    averaged over the folds of an observation. Shapes: rows [F B] -> [B] each."""
    steps_done = run.steps.clamp_min(1)
    out = (run.acc_sum / steps_done, run.jump_sum / steps_done, run.steps, run.correlation)
    return tuple(fold_mean(v, B, F) for v in out) if F > 1 else out


def _jump_first(
    jumps: Kernel | None,
    name: str | None,
    state: SMCState,
    target: Target,
    generator: torch.Generator | None,
    chol: Tensor,
) -> tuple[SMCState, Tensor, dict[str, Tensor]]:
    """Run ``jumps`` (if any): the state after them, their evaluations per particle [B] and
    their diagnostics (``"acceptance/<name>"`` and their own ``extra``), in the scale's dtype."""
    dtype = state.scale.dtype
    evals = torch.zeros(state.z.shape[0], dtype=torch.float64, device=state.z.device)
    extra: dict[str, Tensor] = {}
    if jumps is not None:
        state, info = jumps(state, target, generator, chol)
        evals += info.evals_per_particle
        extra[f"acceptance/{name}"] = info.acceptance_rate.to(dtype)
        extra.update({k: v.to(dtype) for k, v in (info.extra or {}).items()})
    return state, evals, extra


def until_decorrelated(
    stepper: Stepper,
    *,
    jumps: Kernel | None = None,
    target_correlation: float = 0.1,
    max_steps: int = 50,
    min_steps: int = 1,
    num_folds: int = NUM_FOLDS,
) -> Kernel:
    """Local steps until the start/end correlation of the stage falls to a target, per observation.

    Each call first runs ``jumps`` once, if given (e.g.
    :func:`~smcwake.smc.multimodal.mixture_independence`, which moves particles between modes),
    then steps of ``stepper`` (e.g. :func:`~smcwake.smc.steppers.mala_stepper`). After each step,
    an observation whose particles have moved far enough from their positions at the start of
    the call (start/end correlation, :func:`start_end_correlation`, at most
    ``target_correlation`` plus one standard error of the measure,
    :func:`correlation_noise`, when that is smaller than the target) and that has made at
    least ``min_steps`` steps stops; the others
    continue, up to ``max_steps`` steps. Observations that stop are no longer evaluated, and
    the likelihood evaluations are counted per observation. This is the rule of PyMC's SMC
    (steps until the correlation between start and end positions is small), measured per
    observation.

    Exactness: every step is an exact Metropolis-Hastings step for pi_tau at the step size and
    metric fixed at the start of the call, so any number of steps is. The number is chosen from
    a cloud average in which each particle counts 1/K, as the metric itself is: the rule adapts
    the kernel to the particle system and leaves the method consistent as K grows (Beskos,
    Jasra, Kantas & Thiery, 2016).

    The local steps are crosswise (:mod:`smcwake.smc.crosswise`): the particles are cut into
    ``num_folds`` folds, each moved with the shrunk covariance of the others, so that no
    particle's metric depends on its own position (1: the ``chol`` of the call, for all). For
    the same reason, a fold's number of steps is set by the *other* folds: it stops once every
    other fold of its observation has reached the target (so its own trajectory does not
    decide when it stops; a stopping rule read from a particle's own moves selects the moves
    that happened to go far, which biases small clouds). The reported values are averaged over
    the folds.

    ``MoveInfo``: ``acceptance_rate`` and ``sq_jump`` of the local steps (they drive the step
    scale's adaptation); ``extra`` adds ``"steps"`` (local steps per observation),
    ``"correlation"`` (the correlation the rule saw last), and, with ``jumps``,
    ``"acceptance/<name>"`` of the jumps and their own diagnostics.

    Shapes: as for any kernel.

    References:
        Beskos, Jasra, Kantas & Thiery (2016), On the convergence of adaptive sequential Monte
        Carlo methods, Ann. Appl. Probab.
        Drovandi & Pettitt (2011), Estimation of parameters for macroparasite population
        evolution using approximate Bayesian computation, Biometrics.

    >>> from smcwake.smc.steppers import mala_stepper
    >>> move = until_decorrelated(mala_stepper(), max_steps=30)
    >>> move.name, move.num_steps
    ('mala*', 30)
    """
    if not -1.0 < target_correlation < 1.0:
        raise ValueError(
            f"target_correlation: expected a number in (-1, 1), received {target_correlation!r}"
        )
    if not 1 <= min_steps <= max_steps:
        raise ValueError(
            f"max_steps, min_steps: expected 1 <= min_steps <= max_steps, received "
            f"{max_steps!r}, {min_steps!r}"
        )
    jumps_name = str(getattr(jumps, "name", "jumps")) if jumps is not None else None
    _rule = _StopRule(target_correlation, max_steps, min_steps)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        B, num_particles, _ = state.z.shape
        dtype = state.scale.dtype
        start = state.z
        state, evals, extra = _jump_first(jumps, jumps_name, state, target, generator, chol)
        F = fold_count(num_particles, num_folds)
        run = _step_folds(stepper, state, target, chol, start, F, generator, rule=_rule)
        fold_evals = stepper.start_evals + run.made.to(torch.float64) * stepper.step_evals
        if run.folds is not None:
            state = join_folds(run.folds, run.work, state)
            evals += fold_mean(fold_evals, B, F) * (F * run.folds.size / num_particles)
        else:
            state = run.work
            evals += fold_evals
        acceptance, sq_jump, steps, correlation = _per_observation(run, B, F)
        extra.update(steps=steps.to(dtype), correlation=correlation.to(dtype))
        return state, MoveInfo(acceptance.to(dtype), evals, sq_jump.to(dtype), extra)

    return make_kernel(
        move,
        target_acceptance=stepper.target_acceptance,
        initial_scale=stepper.initial_scale,
        num_steps=max_steps,
        name=f"{jumps_name}+{stepper.name}*" if jumps is not None else f"{stepper.name}*",
        adaptation_gain=stepper.adaptation_gain,
    )
