"""Independence Metropolis-Hastings moves from proposals fitted to the cloud, and their step rule.

:func:`mixture_independence` proposes from the Gaussian mixture fitted crosswise to the weighted
cloud (:func:`~smcwake.smc.proposal_mixture.cross_fit`), independently of the current point, so a
particle can jump between modes in one step. The steps themselves (:func:`_independence_steps`)
serve any fixed proposal density given as a sampler and a log-density, which is how
:func:`~smcwake.smc.encoder_proposal.encoder_independence` reuses them; :class:`StepRule` says
how many steps one call takes, per observation.

How many steps. Jumps between modes need no path through the low-density gaps: a proposal lands
in each mode with about that mode's share of the cloud, and the ratio corrects the shares toward
pi_tau. Each accepted proposal is a fresh draw, so a mode's share relaxes toward pi_tau about as
fast as particles accept; what is left of an imbalance after a call is roughly the share of
particles that never accepted. Hence the rule: after ``num_steps`` steps, a particle keeps
stepping until a weighted share ``min_moved`` of the *other* particles of its half have accepted
at least once in this call, or until those accept under 5% of their proposals per step, at most
``max_steps`` steps. Where g fits pi_tau well this stops at ``num_steps``; on curved or
heavy-tailed modes, where acceptance is lower, it spends the steps that the mode masses need (on
the SLCP model of ``docs/KERNELS.md``, two fixed steps left mode masses off by 0.11 on average,
the adaptive rule by 0.01). The other particles of a half never see the particle (their
proposals come from a g fitted to the other half), so its number of steps is a stopping time of
chains independent of its own: given them, it makes a fixed number of exact steps, and the move
is exact at every K (:func:`_independence_steps`). ``min_moved=0`` gives exactly ``num_steps``.

Where the cloud shows modes. The extra steps are taken where, for the other particles of the
half, the mixture beats one Gaussian fitted to the same points by at least ``min_gain`` nats per
particle out of sample (:func:`~smcwake.smc.proposal_mixture.held_out_gain`). On a single lump
(a Gaussian-like posterior in any dimension) there are no modes to balance, the local steps mix
the cloud, and more steps would only cost evaluations (2.7 times on a 10-d Gaussian at
K = 300); there the move makes ``num_steps`` steps. ``min_gain=None`` applies the rule
everywhere. The gain is read from particles other than the one that moves, so the step count
stays a stopping time of chains independent of its own.

Proposals outside the prior's support are drawn again, up to ``max_oversampling`` draws per
particle (:func:`_proposals_in_support`): g restricted to the support has the density
g / g(support), a constant that cancels from the ratio, so the move stays exact and spends its
likelihood evaluations inside the support (on the SLCP model, a posterior cut by a box prior,
about a tenth of the draws fall outside). ``max_oversampling=1`` turns this off.

How many points each fit uses. ``fit_points`` caps the particles each half-cloud's fit uses
(drawn by weight), and with it the components (at least 20 d points each): fewer points fit
faster but can leave fewer components than modes. On the 6-d model with 8 modes of
``benchmarks/multimodal.py``, 512 points per fit lost up to half of a mode's mass where the
default kept every mode within 0.01.

References:
    Beskos, Jasra, Kantas & Thiery (2016), On the convergence of adaptive sequential Monte Carlo
    methods, Ann. Appl. Probab.
    Papamakarios, Sterratt & Murray (2019), Sequential neural likelihood, AISTATS (the SLCP
    model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from smcwake._ops import select
from smcwake.smc.base import make_kernel
from smcwake.smc.composite import _put_rows, _rows
from smcwake.smc.gmm import (
    MixtureDensity,
    PairedDensity,
    PreviousFits,
    mixture_density,
    paired_density,
)
from smcwake.smc.mh import (
    Kernel,
    MoveInfo,
    Target,
    accept,
    log_target_ratio,
    update_where,
    whitened_sq_norm,
)
from smcwake.smc.proposal_mixture import MIN_GAIN, CrossFit, FitSettings, held_out_gain

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["MIN_MOVED", "MAX_STEPS", "MAX_OVERSAMPLING", "StepRule", "mixture_independence"]


MIN_MOVED = 0.95
"""Default share of the particles an independence move must have moved before it stops."""

MAX_STEPS = 30
"""Default cap on the independence steps of one call."""

MAX_OVERSAMPLING = 4.0
"""Default cap on the draws from the proposal per particle, to find points inside the support."""


def _check_num_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, received {num_steps}")


SampleSide = Callable[[int, Tensor | None, int], tuple[Tensor, Tensor | None]]
"""``sample_side(side, rows, n)``: n independent draws per observation of ``rows`` (None: all)
from the proposal that serves particles ``[:half]`` (side 0) or ``[half:]`` (side 1), and
optionally a mask of those drawn from a part of the proposal whose acceptance is reported
separately. Shapes: -> ([b, n, d], [b, n] bool or None)."""

LogProposal = Callable[[Tensor, Tensor | None], Tensor]
"""``log_proposal(z, rows)``: log g(z), each particle's own proposal density, for the
observations ``rows`` (None: all). Shapes: z [b, K, d] -> [b, K]."""


def _proposals_in_support(
    sample_side: SampleSide,
    rows: Tensor | None,
    target: Target,
    num_particles: int,
    half: int,
    inside_rate: Tensor,
    max_oversampling: float,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """One proposal per particle, drawn from g where possible inside the prior's support S.

    For each side, n >= size draws are made from that side's g and the draws inside S are
    handed out first, in the order drawn, to the particles in index order; particles left
    over (when fewer than size draws fall inside) get draws outside S, which the move rejects.
    The number n follows the share of that side's draws inside S at the previous step
    (``inside_rate``), enough for every particle with high probability, at most
    ``max_oversampling`` times size.

    Exactness: every draw is independent of the particles, and which draw a particle receives
    depends only on the draws of its own side's g and on the particle's index, never on
    positions. A particle therefore proposes from g restricted to S, density g / g(S), or (with
    a probability that does not depend on its position) a point outside S. The constant g(S)
    cancels from the ratio g(z) / g(z'), so the acceptance probability of an independence move
    is unchanged and the move stays exact; each likelihood evaluation is spent on a point
    inside S instead of a certain rejection, which matters for posteriors that pile up against
    the edge of a bounded prior. Redraws cost evaluations of g's sampler and of the prior only.

    Shapes: inside_rate [2, b] (per side) -> (z [b, K, d], tag [b, K] bool or None,
    log_prior [b, K], inside_rate [2, b] of these draws).
    """
    zs, tags, lps, rates = [], [], [], []
    for side, size in ((0, half), (1, num_particles - half)):
        rate = float(inside_rate[side].min().clamp(1.0 / max_oversampling, 1.0))
        n = size
        if rate < 1.0:  # room for ~3 binomial standard deviations of the count inside
            n = math.ceil((size + 3.0 * math.sqrt(size * (1.0 - rate) / rate)) / rate)
            n = min(n, math.ceil(max_oversampling * size))
        z, tag = sample_side(side, rows, n)
        lp = target.model.log_prior(z)
        ok = lp > -math.inf
        rates.append(ok.sum(-1).to(inside_rate.dtype) / n)
        if n > size:  # the draws inside S first, each group in the order drawn
            first = _inside_first(ok)[:, :size]
            z = torch.gather(z, 1, first[..., None].expand(-1, -1, z.shape[-1]))
            lp = torch.gather(lp, 1, first)
            tag = None if tag is None else torch.gather(tag, 1, first)
        zs.append(z)
        lps.append(lp)
        tags.append(tag)
    tag = None if tags[0] is None else torch.cat(tags, 1)
    return torch.cat(zs, 1), tag, torch.cat(lps, 1), torch.stack(rates)


def _inside_first(ok: Tensor) -> Tensor:
    """The indices of the draws with ``ok`` first, then the others, each group in its order:
    what a stable argsort of ``~ok`` gives, from two cumulative sums instead of a sort.

    Shapes: ok [b, n] bool -> [b, n] int64.
    """
    inside = ok.to(torch.int64)
    rank_in = inside.cumsum(-1) - 1  # place among the draws inside
    rank_out = inside.sum(-1, keepdim=True) + (1 - inside).cumsum(-1) - 1  # after all of them
    position = torch.where(ok, rank_in, rank_out)  # where each draw goes, a permutation
    order = torch.empty_like(position)
    return order.scatter_(-1, position, torch.arange(ok.shape[-1], device=ok.device).expand_as(ok))


def _mean_of_others(weights: Tensor, values: Tensor, half: int) -> Tensor:
    """For every particle, the weighted mean of ``values`` over the *other* particles of its
    side (1 where the others carry no weight).

    Shapes: weights [b, K] (unnormalized, >= 0), values [b, K] -> [b, K].
    """
    out = torch.empty_like(values)
    for part in (slice(0, half), slice(half, None)):
        w, wv = weights[:, part], weights[:, part] * values[:, part]
        total = w.sum(-1, keepdim=True)
        others = total - w
        some = others > 1e-12 * total
        mean = (wv.sum(-1, keepdim=True) - wv) / torch.where(some, others, 1.0)
        out[:, part] = torch.where(some, mean, 1.0)
    return out


_FUTILE_ACCEPTANCE = 0.05
"""Independence steps stop early where the other particles accepted under this share of their
proposals. At 5% per step, 30 steps leave a fifth of the particles where they were
(0.95^30 = 0.21): the move cannot refresh the cloud within ``max_steps`` and the local steps are
the better use of the evaluations (a 50-d posterior fitted from 150 points per half accepted 2%
and gained nothing from 12 steps per stage instead of 2)."""


class StepRule(NamedTuple):
    """How many independence steps one call makes, per observation.

    At least ``num_steps``; then more, while the weighted share of particles that accepted at
    least one proposal during the call is below ``min_moved``, up to ``max_steps`` in all, where
    the fitted mixture beats one Gaussian by ``min_gain`` nats per particle out of sample
    (:func:`held_out_gain`; None: everywhere). ``max_oversampling``: at most this many draws
    from g per proposal, to find points inside the prior's support.
    """

    num_steps: int
    min_moved: float
    max_steps: int
    max_oversampling: float
    min_gain: float | None = MIN_GAIN

    @property
    def adaptive(self) -> bool:
        return self.max_steps > self.num_steps and self.min_moved > 0


def _step_rule(
    num_steps: int,
    min_moved: float,
    max_steps: int | None,
    max_oversampling: float,
    min_gain: float | None,
) -> StepRule:
    if not 0.0 <= min_moved <= 1.0:
        raise ValueError(f"min_moved: expected a fraction in [0, 1], received {min_moved!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps: expected None or >= 1, received {max_steps!r}")
    if not max_oversampling >= 1.0:
        raise ValueError(f"max_oversampling: expected >= 1, received {max_oversampling!r}")
    if min_gain is not None and not math.isfinite(min_gain):
        raise ValueError(f"min_gain: expected None or a finite number, received {min_gain!r}")
    cap = num_steps if max_steps is None or min_moved == 0 else max(num_steps, max_steps)
    return StepRule(num_steps, min_moved, cap, float(max_oversampling), min_gain)


class _Chains(NamedTuple):
    """The chains of one call as they run: every particle keeps stepping until its observation
    stops."""

    state: SMCState
    log_g: Tensor  # [B, K] the proposal density at the current points
    moved: Tensor  # [B, K] 1 where the chain accepted in this call
    inside_rate: Tensor  # [2, B] share of each side's last draws inside the prior's support


class _Returned(NamedTuple):
    """What the call returns: each particle as it was at its own stopping step."""

    state: SMCState
    moved: Tensor  # [B, K]
    stopped: Tensor  # [B, K] bool


@dataclass
class _Tally:
    """Counts over the steps of one call, added to in place for the observations stepped."""

    accepted: Tensor  # [B, K] acceptances within the steps each particle used
    tried: Tensor  # [B, K] steps each particle used
    jump: Tensor  # [B, K] whitened squared jumps accepted within those steps
    acc_run: Tensor  # [B, K] acceptances of the running chains, in every step
    steps: Tensor  # [B] int64: steps each observation was evaluated for
    tagged: Tensor  # [B] tagged proposals (see SampleSide) within the steps used
    tagged_accepted: Tensor  # [B]
    any_tag: bool = False

    @classmethod
    def zeros(cls, state: SMCState) -> _Tally:
        like = state.log_prior
        per_observation = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
        steps = torch.zeros(like.shape[0], dtype=torch.int64, device=like.device)
        return cls(
            *(torch.zeros_like(like) for _ in range(4)),
            steps,
            per_observation,
            torch.zeros_like(per_observation),
        )

    def add(self, rows: Tensor, acc: Tensor, used: Tensor, sq: Tensor, tag: Tensor | None) -> None:
        """Count one step of the observations ``rows``. Shapes: rows [b], others [b, K]."""
        self.acc_run.index_add_(0, rows, acc)
        self.accepted.index_add_(0, rows, acc * used)
        self.tried.index_add_(0, rows, used)
        self.jump.index_add_(0, rows, sq)
        self.steps[rows] += 1
        if tag is not None:
            self.any_tag = True
            tag_f = tag.to(self.tagged.dtype)
            self.tagged.index_add_(0, rows, (tag_f * used).sum(-1))
            self.tagged_accepted.index_add_(0, rows, (acc * used * tag_f).sum(-1))


class _StepContext(NamedTuple):
    """What stays fixed during one call of the independence steps."""

    target: Target
    generator: torch.Generator | None
    chol: Tensor  # [B, d, d]
    rule: StepRule
    half: int
    sample_side: SampleSide
    log_proposal: LogProposal
    raw_weights: Tensor  # [B, K] the particles' weights, unnormalized
    balance: Tensor  # [B, K] bool: the step rule applies (the cloud shows modes)
    tally: _Tally


def _part(t: Tensor, rows: Tensor | None) -> Tensor:
    """Rows ``rows`` of t (None: all of it)."""
    return t if rows is None else t[rows]


def _put(full: Tensor, rows: Tensor | None, part: Tensor) -> Tensor:
    """``full`` with rows ``rows`` replaced by ``part`` (None: ``part`` is all of it)."""
    return part if rows is None else full.index_copy(0, rows, part)


def _independence_step(
    chains: _Chains,
    stopped: Tensor,
    rows: Tensor | None,
    active: Tensor,
    ctx: _StepContext,
) -> tuple[_Chains, SMCState, Tensor]:
    """One step of the chains of the observations ``active`` (``rows``: None when all are).

    Returns the chains after the step, the stepped rows' new states and their moved flags.
    Shapes: stopped [B, K] bool; the rows' state [b, K, d] and moved [b, K].
    """
    K = chains.state.z.shape[1]
    dtype = chains.state.log_prior.dtype
    sub = chains.state if rows is None else _rows(chains.state, rows)
    sub_target = ctx.target if rows is None else ctx.target.select(rows)
    z_new, tag, lp, rate = _proposals_in_support(
        ctx.sample_side,
        rows,
        sub_target,
        K,
        ctx.half,
        chains.inside_rate if rows is None else chains.inside_rate[:, rows],
        ctx.rule.max_oversampling,
    )
    ll = ctx.target.model.log_likelihood(z_new, sub_target.x, sub_target.rows, log_prior=lp)
    log_g_new = ctx.log_proposal(z_new, rows)
    log_g = _part(chains.log_g, rows)
    acc = accept(log_target_ratio(sub, lp, ll) + log_g - log_g_new, ctx.generator)
    used = (~_part(stopped, rows)).to(dtype)  # the steps that count for the returned particles
    acc_f = acc.to(dtype)
    sq = acc_f * used * whitened_sq_norm(z_new - sub.z, _part(ctx.chol, rows))
    sub = update_where(sub, acc, z_new, lp, ll)
    moved_now = torch.maximum(_part(chains.moved, rows), acc_f)
    ctx.tally.add(active, acc_f, used, sq, tag)
    chains = _Chains(
        sub if rows is None else _put_rows(chains.state, rows, sub),
        _put(chains.log_g, rows, select(acc, log_g_new, log_g)),
        _put(chains.moved, rows, moved_now),
        rate if rows is None else chains.inside_rate.index_copy(1, rows, rate),
    )
    return chains, sub, moved_now


def _stop_where_done(
    returned: _Returned,
    sub: SMCState,
    moved_now: Tensor,
    rows: Tensor | None,
    step: int,
    ctx: _StepContext,
) -> _Returned:
    """Stop the particles whose rule is met after ``step``; they keep this step's state.

    Shapes: sub and moved_now the stepped rows' [b, K, d] and [b, K].
    """
    rule = ctx.rule
    done = _mean_of_others(_part(ctx.raw_weights, rows), moved_now, ctx.half) >= rule.min_moved
    acc_run = _part(ctx.tally.acc_run, rows)
    rate_others = _mean_of_others(torch.ones_like(moved_now), acc_run, ctx.half)
    done = done | (rate_others < _FUTILE_ACCEPTANCE * (step + 1)) | ~_part(ctx.balance, rows)
    if step + 1 == rule.max_steps:
        done = torch.ones_like(done)
    stopped = _part(returned.stopped, rows)
    newly = done & ~stopped  # particles that stop here keep this step's state
    out = returned.state if rows is None else _rows(returned.state, rows)
    out = update_where(out, newly, sub.z, sub.log_prior, sub.loglik)
    return _Returned(
        out if rows is None else _put_rows(returned.state, rows, out),
        _put(returned.moved, rows, select(newly, moved_now, _part(returned.moved, rows))),
        _put(returned.stopped, rows, stopped | newly),
    )


def _independence_steps(
    state: SMCState,
    target: Target,
    generator: torch.Generator | None,
    chol: Tensor,
    rule: StepRule,
    fit: CrossFit,
    sample_side: SampleSide,
    log_proposal: LogProposal,
) -> tuple[SMCState, MoveInfo]:
    """Independence Metropolis-Hastings steps with fixed proposal densities g.

    Every step draws one proposal per particle (:func:`_proposals_in_support`) and accepts it
    with probability min(1, pi_tau(z') g(z) / (pi_tau(z) g(z'))).

    With an adaptive ``rule``, particle k's number of steps is tau_k, the first step from
    ``rule.num_steps`` on at which the weighted share of the *other* particles of its side
    that have accepted at least once reaches ``rule.min_moved``, or at which those particles
    accepted under ``_FUTILE_ACCEPTANCE`` (5%) of their proposals per step (at most
    ``rule.max_steps``); the particle's state at step tau_k is returned. Where the weighted
    mean of :func:`held_out_gain` over the other particles of its side is under
    ``rule.min_gain``, tau_k = ``rule.num_steps``. Every chain keeps
    stepping until all particles of its observation have reached their tau (so the shares
    keep growing), but the other chains of a side never see particle k: they propose from a g
    fitted to the other side and accept with their own randomness. tau_k is therefore a
    stopping time of chains independent of particle k's, and given them the particle makes a
    fixed number of exact steps: the move is exact at every K. A rule that counted the
    particle itself would not be; at K = 4 it comes close to "step until you accept", whose
    stationary law is not pi_tau. Observations whose particles have all stopped are not
    evaluated again.

    ``MoveInfo.extra`` holds, per observation, ``"independence/acceptance"`` (over the steps
    each particle used), ``"independence/moved"`` (the weighted share of the returned
    particles that accepted at least once), ``"independence/steps"`` (the steps the
    observation was evaluated for), ``"independence/gain"`` (the weighted mean of
    :func:`held_out_gain`), and ``"acceptance/from_encoder"`` when ``sample_side`` tags
    proposals.

    Shapes: state.z [B, K, d]; sample_side and log_proposal as :data:`SampleSide` and
    :data:`LogProposal`.
    """
    B = state.z.shape[0]
    dtype = state.log_prior.dtype
    top = state.log_weights.amax(-1, keepdim=True)
    raw = torch.exp(state.log_weights - torch.where(torch.isfinite(top), top, 0.0))
    weights = raw / raw.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    gain = held_out_gain(state.z, state.log_weights, fit).to(dtype)  # [B, K]
    if rule.min_gain is None:  # every particle may take more than num_steps steps
        balance = torch.ones_like(state.log_prior, dtype=torch.bool)
    else:  # read from the other particles of the side, as the moved share is
        balance = _mean_of_others(raw, gain, fit.half) >= rule.min_gain
    ctx = _StepContext(
        target,
        generator,
        chol,
        rule,
        fit.half,
        sample_side,
        log_proposal,
        raw,
        balance,
        _Tally.zeros(state),
    )
    moved = torch.zeros_like(state.log_prior)
    inside_rate = torch.ones(2, B, dtype=dtype, device=state.z.device)
    chains = _Chains(state, log_proposal(state.z, None), moved, inside_rate)
    returned = _Returned(state, moved, torch.zeros_like(moved, dtype=torch.bool))
    active = torch.arange(B, device=state.z.device)
    for step in range(rule.max_steps):
        rows = None if active.numel() == B else active
        chains, sub, moved_now = _independence_step(chains, returned.stopped, rows, active, ctx)
        if not rule.adaptive or step + 1 < rule.num_steps:
            continue
        returned = _stop_where_done(returned, sub, moved_now, rows, step, ctx)
        active = active[~_part(returned.stopped, rows).all(-1)]
        if active.numel() == 0:
            break
    if not rule.adaptive:
        returned = returned._replace(state=chains.state, moved=chains.moved)
    return returned.state, _move_info(ctx.tally, returned.moved, weights, gain, rule)


def _move_info(
    tally: _Tally, moved: Tensor, weights: Tensor, gain: Tensor, rule: StepRule
) -> MoveInfo:
    """The call's diagnostics. Shapes: moved, weights (normalized), gain [B, K]."""
    total = tally.tried.sum(-1).clamp_min(1)
    extra = {
        "independence/acceptance": tally.accepted.sum(-1) / total,
        "independence/moved": (weights * moved).sum(-1),
        "independence/steps": tally.steps.to(gain.dtype),
        "independence/gain": (weights * gain).sum(-1),
    }
    if tally.any_tag:
        extra["acceptance/from_encoder"] = tally.tagged_accepted / tally.tagged.clamp_min(1)
    evals = tally.steps.to(torch.float64) if rule.adaptive else rule.num_steps
    return MoveInfo(extra["independence/acceptance"], evals, tally.jump.sum(-1) / total, extra)


def _prepared_proposal(
    fit: CrossFit, generator: torch.Generator | None
) -> tuple[SampleSide, LogProposal]:
    """The cross-fitted mixtures as a :data:`SampleSide` and a :data:`LogProposal`.

    Their density terms and component probabilities are computed once per call
    (:func:`~smcwake.smc.gmm.mixture_density`), and the rows of the observations still
    stepping are selected once each time that set changes, not at every step. When the halves
    are of equal size, both densities are evaluated in one pass
    (:func:`~smcwake.smc.gmm.paired_density`).
    """
    full = (mixture_density(fit.first), mixture_density(fit.second))
    pair = paired_density(*full) if fit.first.loc.shape == fit.second.loc.shape else None
    cache: dict[str, object] = {"rows": None, "part": (full, pair)}

    def part(
        rows: Tensor | None,
    ) -> tuple[tuple[MixtureDensity, MixtureDensity], PairedDensity | None]:
        if rows is None:
            return full, pair
        if cache["rows"] is not rows:  # the step loop passes the same tensor until it changes
            sides = tuple(m.select(rows) for m in full)
            cache["rows"] = rows
            cache["part"] = (sides, None if pair is None else pair.select(rows))
        return cache["part"]  # type: ignore[return-value]

    def sample_side(side: int, rows: Tensor | None, n: int) -> tuple[Tensor, None]:
        return part(rows)[0][side].sample(n, generator), None

    def log_proposal(z: Tensor, rows: Tensor | None) -> Tensor:
        (first, second), both = part(rows)
        h = fit.half
        if both is not None and 2 * h == z.shape[1]:
            return both.log_prob(z)
        return torch.cat([first.log_prob(z[:, :h]), second.log_prob(z[:, h:])], 1)

    return sample_side, log_proposal


def mixture_independence(
    num_steps: int = 3,
    *,
    num_components: int = 16,
    em_iterations: int = 10,
    fit_points: int | None = 4096,
    defensive_weight: float = 0.05,
    defensive_scale: float = 1.5,
    min_moved: float = MIN_MOVED,
    max_steps: int | None = MAX_STEPS,
    max_oversampling: float = MAX_OVERSAMPLING,
    min_gain: float | None = MIN_GAIN,
) -> Kernel:
    """Independence Metropolis-Hastings with a Gaussian mixture fitted to the weighted cloud.

    At the start of each call a mixture g with up to ``num_components`` components is fitted to
    each half of each observation's weighted particles (weighted EM, see
    :func:`~smcwake.smc.gmm.fit_mixture`) and widened by a defensive component (see
    :func:`cloud_mixture`); each half of the particles uses the other half's g
    (:func:`cross_fit`). Then, step after step, every particle proposes z' ~ g independently of
    z and accepts with probability

        min(1, pi_tau(z') g(z) / (pi_tau(z) g(z'))).

    Exactness: for a fixed g the proposal density is q(z' | z) = g(z'), so this is the
    Metropolis-Hastings ratio pi(z') q(z | z') / (pi(z) q(z' | z)); with a(z, z') the acceptance
    probability, pi(z) g(z') a(z, z') = min(pi(z) g(z'), pi(z') g(z)) is symmetric in (z, z'),
    which is detailed balance for pi_tau (Tierney, 1994). A particle's g is fitted once, before
    any particle moves, to particles other than itself, and held fixed for the whole call;
    g > 0 everywhere (Gaussian components), so the chain is irreducible on the support of pi_tau.

    The number of steps adapts where the cloud shows modes, up to ``max_steps``, and proposals
    outside the prior's support are drawn again: the module's documentation says how, why, and
    why the move stays exact. Acceptance is high where g matches pi_tau and falls with the
    dimension when it does not, so pair it with local moves
    (:func:`~smcwake.smc.composite.compose`). It does not read ``state.scale``.

    ``MoveInfo.extra`` reports per observation ``"independence/acceptance"``,
    ``"independence/moved"`` (the weighted share of particles that accepted at least once),
    ``"independence/steps"`` and ``"independence/gain"``; ``check_mode_mixing`` reads them from
    ``SMCResult.kernel_info``. ``MoveInfo.evals_per_particle`` is the number of steps per
    observation (a float64 tensor [B]) when the number adapts.

    Args:
        num_steps: independence steps per call, at least.
        fit_points: at most this many particles (drawn by weight) per half-cloud fit.
        min_moved: share of the particles that must have accepted before a particle stops;
            0 for exactly ``num_steps`` steps.
        max_steps: at most this many steps per call (None: exactly ``num_steps``).
        max_oversampling: at most this many draws from g per proposal, to find points inside
            the prior's support (1: no redraws).
        min_gain: held-out gain (nats per particle) of the mixture over one Gaussian from
            which the cloud counts as showing modes and the step rule applies (None: always).

    Shapes: state.z [B, K, d]; one likelihood evaluation per particle and step.

    References:
        Tierney (1994), Markov chains for exploring posterior distributions, Ann. Statist.
        Chopin (2002), A sequential particle filter method for static models, Biometrika.
        South, Pettitt & Drovandi (2019), Sequential Monte Carlo samplers with independent
        Markov chain Monte Carlo proposals, Bayesian Analysis.

    >>> from smcwake.smc.sampler import run_smc
    >>> from smcwake.model import Model
    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(1).double(), torch.ones(1).double()), 1)
    >>> model = Model(prior, lambda z, x: Normal(z[..., 0] ** 2, 0.2).log_prob(x))
    >>> g = torch.Generator().manual_seed(0)
    >>> res = run_smc(model, torch.tensor([[4.0]]).double(), 2000,
    ...               kernel=mixture_independence(), generator=g)
    >>> positive = (res.log_weights.exp() * (res.particles[..., 0] > 0)).sum()
    >>> abs(float(positive) - 0.5) < 0.05  # two mirror modes, half the mass each
    True
    """
    _check_num_steps(num_steps)
    settings = FitSettings(
        num_components, em_iterations, fit_points, defensive_weight, defensive_scale
    ).checked()
    rule = _step_rule(num_steps, min_moved, max_steps, max_oversampling, min_gain)
    previous = PreviousFits()  # EM starts from the last stage's fits (exact: see PreviousFits)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = settings.fit(state, generator, init=previous.get(target.x, state.tau))
        previous.keep(target.x, state.tau, (fit.first, fit.second), settings.defensive_weight > 0)
        sample_side, log_proposal = _prepared_proposal(fit, generator)
        return _independence_steps(
            state, target, generator, chol, rule, fit, sample_side, log_proposal
        )

    return make_kernel(move, num_steps=num_steps, name="mixture", uses_scale=False)
