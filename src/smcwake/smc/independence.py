"""Independence Metropolis-Hastings moves from proposals fitted to the cloud, and their step rule.

:func:`mixture_independence` proposes from the Gaussian mixture fitted crosswise to the weighted
cloud (:func:`~smcwake.smc.proposal_mixture.cross_fit`), independently of the current point, so a
particle can jump between modes in one step. The steps themselves (:func:`_independence_steps`)
serve any fixed proposal density given as a sampler and a log-density, which is how
:func:`~smcwake.smc.encoder_proposal.encoder_independence` reuses them; :class:`StepRule` says
how many steps one call takes, per observation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.composite import _put_rows, _rows
from smcwake.smc.gmm import mixture_log_prob
from smcwake.smc.mh import (
    Kernel,
    MoveInfo,
    Target,
    accept,
    log_target_ratio,
    update_where,
    whitened_sq_norm,
)
from smcwake.smc.proposal_mixture import MIN_GAIN, CrossFit, cross_fit, held_out_gain

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["MIN_MOVED", "MAX_STEPS", "MAX_OVERSAMPLING", "StepRule", "mixture_independence"]


MIN_MOVED = 0.95
"""Default share of the particles an independence move must have moved before it stops."""

MAX_STEPS = 30
"""Default cap on the independence steps of one call."""

MAX_OVERSAMPLING = 4.0
"""Default cap on the draws from the proposal per particle, to find points inside the support."""


def _check_common(num_steps: int, num_components: int, em_iterations: int) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, received {num_steps}")
    if num_components < 1:
        raise ValueError(f"num_components: expected >= 1, received {num_components}")
    if em_iterations < 0:
        raise ValueError(f"em_iterations: expected >= 0, received {em_iterations}")


def _check_fraction(name: str, value: float, *, closed_low: bool) -> None:
    low_ok = value >= 0.0 if closed_low else value > 0.0
    if not (low_ok and value < 1.0):
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{name}: expected a fraction in {interval}, received {value!r}")


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
            first = torch.argsort((~ok).to(torch.int8), dim=-1, stable=True)[:, :size]
            z = torch.gather(z, 1, first[..., None].expand(-1, -1, z.shape[-1]))
            lp = torch.gather(lp, 1, first)
            tag = None if tag is None else torch.gather(tag, 1, first)
        zs.append(z)
        lps.append(lp)
        tags.append(tag)
    tag = None if tags[0] is None else torch.cat(tags, 1)
    return torch.cat(zs, 1), tag, torch.cat(lps, 1), torch.stack(rates)


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
    B, K, _ = state.z.shape
    half = fit.half
    device, dtype = state.z.device, state.log_prior.dtype
    inside_rate = torch.ones(2, B, dtype=dtype, device=device)
    top = state.log_weights.amax(-1, keepdim=True)
    raw = torch.exp(state.log_weights - torch.where(torch.isfinite(top), top, 0.0))
    weights = raw / raw.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    gain = held_out_gain(state.z, state.log_weights, fit).to(dtype)  # [B, K]
    if rule.min_gain is None:  # every particle may take more than num_steps steps
        balance = torch.ones_like(state.log_prior, dtype=torch.bool)
    else:  # read from the other particles of the side, as the moved share is
        balance = _mean_of_others(raw, gain, half) >= rule.min_gain
    log_g = log_proposal(state.z, None)  # [B, K], cached for the current particles
    accepted = torch.zeros_like(state.log_prior)
    tried = torch.zeros_like(state.log_prior)  # steps each particle used
    jump = torch.zeros_like(state.log_prior)
    moved = torch.zeros_like(state.log_prior)  # 1 where a chain accepted in this call
    acc_run = torch.zeros_like(state.log_prior)  # acceptances of the running chains
    stopped = torch.zeros_like(state.log_prior, dtype=torch.bool)
    out = state  # each particle's state at its own stopping step
    moved_out = moved
    steps = torch.zeros(B, dtype=torch.int64, device=device)
    tagged = torch.zeros(B, dtype=dtype, device=device)
    tagged_accepted = torch.zeros_like(tagged)
    any_tag = False
    active = torch.arange(B, device=device)
    for step in range(rule.max_steps):
        everyone = active.numel() == B
        rows = None if everyone else active

        def part(t: Tensor, everyone: bool = everyone, active: Tensor = active) -> Tensor:
            return t if everyone else t[active]

        sub = state if everyone else _rows(state, active)
        sub_target = target if everyone else target.select(active)
        z_new, tag, lp, rate = _proposals_in_support(
            sample_side,
            rows,
            sub_target,
            K,
            half,
            inside_rate if everyone else inside_rate[:, active],
            rule.max_oversampling,
        )
        ll = target.model.log_likelihood(z_new, sub_target.x, sub_target.rows, log_prior=lp)
        log_g_new = log_proposal(z_new, rows)
        acc = accept(log_target_ratio(sub, lp, ll) + part(log_g) - log_g_new, generator)
        used = (~part(stopped)).to(dtype)  # the steps that count for the returned particles
        acc_f = acc.to(dtype)
        sq = acc_f * used * whitened_sq_norm(z_new - sub.z, part(chol))
        sub = update_where(sub, acc, z_new, lp, ll)
        moved_now = torch.maximum(part(moved), acc_f)
        acc_run.index_add_(0, active, acc_f)
        if everyone:
            state, moved, inside_rate = sub, moved_now, rate
            log_g = torch.where(acc, log_g_new, log_g)
        else:
            state = _put_rows(state, active, sub)
            moved = moved.index_copy(0, active, moved_now)
            inside_rate = inside_rate.index_copy(1, active, rate)
            log_g = log_g.index_copy(0, active, torch.where(acc, log_g_new, log_g[active]))
        accepted.index_add_(0, active, acc_f * used)
        tried.index_add_(0, active, used)
        jump.index_add_(0, active, sq)
        steps[active] += 1
        if tag is not None:
            any_tag = True
            tagged.index_add_(0, active, (tag.to(dtype) * used).sum(-1))
            tagged_accepted.index_add_(0, active, (acc_f * used * tag.to(dtype)).sum(-1))
        if not rule.adaptive or step + 1 < rule.num_steps:
            continue
        done = _mean_of_others(part(raw), moved_now, half) >= rule.min_moved
        rate_others = _mean_of_others(torch.ones_like(moved_now), part(acc_run), half)
        done = done | (rate_others < _FUTILE_ACCEPTANCE * (step + 1)) | ~part(balance)
        if step + 1 == rule.max_steps:
            done = torch.ones_like(done)
        newly = done & ~part(stopped)  # particles that stop here keep this step's state
        out_sub = update_where(
            out if everyone else _rows(out, active), newly, sub.z, sub.log_prior, sub.loglik
        )
        moved_out_sub = torch.where(newly, moved_now, part(moved_out))
        stopped_sub = part(stopped) | newly
        if everyone:
            out, moved_out, stopped = out_sub, moved_out_sub, stopped_sub
        else:
            out = _put_rows(out, active, out_sub)
            moved_out = moved_out.index_copy(0, active, moved_out_sub)
            stopped = stopped.index_copy(0, active, stopped_sub)
        active = active[~stopped_sub.all(-1)]
        if active.numel() == 0:
            break
    if not rule.adaptive:
        out, moved_out = state, moved
    total = tried.sum(-1).clamp_min(1)
    extra = {
        "independence/acceptance": accepted.sum(-1) / total,
        "independence/moved": (weights * moved_out).sum(-1),
        "independence/steps": steps.to(dtype),
        "independence/gain": (weights * gain).sum(-1),
    }
    if any_tag:
        extra["acceptance/from_encoder"] = tagged_accepted / tagged.clamp_min(1)
    evals = steps.to(torch.float64) if rule.adaptive else rule.num_steps
    info = MoveInfo(extra["independence/acceptance"], evals, jump.sum(-1) / total, extra)
    return out, info


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

    Jumps between modes need no path through the low-density gaps: a proposal lands in each mode
    with about that mode's share of the cloud, and the ratio corrects the shares toward pi_tau.
    Each accepted proposal is a fresh draw, so a mode's share relaxes toward pi_tau about as
    fast as particles accept; what is left of an imbalance after a call is roughly the share of
    particles that never accepted. Hence the number of steps: after ``num_steps`` steps, a
    particle keeps stepping until a weighted share ``min_moved`` of the *other* particles of its
    half have accepted at least once in this call, or until those accept under 5% of their
    proposals per step, at most ``max_steps`` steps. Where g fits pi_tau well this stops at
    ``num_steps``; on curved or heavy-tailed modes, where acceptance is lower, it spends the
    steps that the mode masses need (on the SLCP model of ``docs/KERNELS.md``, two fixed steps
    left mode masses off by 0.11 on average, the adaptive rule by 0.01). The other particles of
    a half never see the particle (their proposals come from a g fitted to the other half), so
    its number of steps is a stopping time of chains independent of its own: given them, it
    makes a fixed number of exact steps, and the move is exact at every K
    (:func:`_independence_steps`). ``min_moved=0`` gives exactly ``num_steps`` steps.

    The extra steps are taken where the cloud shows modes: where, for the other particles of
    the half, the mixture beats one Gaussian fitted to the same points by at least
    ``min_gain`` nats per particle out of sample (:func:`held_out_gain`). On a single lump
    (a Gaussian-like posterior in any dimension) there are no modes to balance, the local
    steps mix the cloud, and more steps would only cost evaluations (2.7 times on a 10-d
    Gaussian at K = 300); there the move makes ``num_steps`` steps. ``min_gain=None`` applies
    the rule everywhere. The gain is read from particles other than the one that moves, so
    the step count stays a stopping time of chains independent of its own.

    Proposals outside the prior's support are drawn again, up to ``max_oversampling`` draws
    per particle (:func:`_proposals_in_support`): g restricted to the support has the density
    g / g(support), a constant that cancels from the ratio, so the move stays exact and spends
    its likelihood evaluations inside the support (on the SLCP model, a posterior cut by a box
    prior, about a tenth of the draws fall outside). ``max_oversampling=1`` turns this off.

    Acceptance is high where g matches pi_tau and falls with the dimension when it does not, so
    pair it with local moves (:func:`~smcwake.smc.composite.compose`). It does not read
    ``state.scale``.

    ``fit_points`` caps the particles each half-cloud's fit uses (drawn by weight), and with it
    the components (at least 20 d points each): fewer points fit faster but can leave fewer
    components than modes. On the 6-d model with 8 modes of ``benchmarks/multimodal.py``, 512
    points per fit lost up to half of a mode's mass where the default kept every mode within
    0.01.

    ``MoveInfo.extra`` reports per observation ``"independence/acceptance"``,
    ``"independence/moved"`` (the weighted share of particles that accepted at least once) and
    ``"independence/steps"``; :func:`check_mode_mixing` reads them from ``SMCResult.kernel_info``.
    ``MoveInfo.evals_per_particle`` is the number of steps per observation (a float64 tensor
    [B]) when the number adapts.

    Args:
        num_steps: independence steps per call, at least.
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
        Beskos, Jasra, Kantas & Thiery (2016), On the convergence of adaptive sequential Monte
        Carlo methods, Ann. Appl. Probab.
        Papamakarios, Sterratt & Murray (2019), Sequential neural likelihood, AISTATS (the SLCP
        model).

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
    _check_common(num_steps, num_components, em_iterations)
    _check_fraction("defensive_weight", defensive_weight, closed_low=True)
    if defensive_scale <= 0:
        raise ValueError(f"defensive_scale: expected > 0, received {defensive_scale!r}")
    rule = _step_rule(num_steps, min_moved, max_steps, max_oversampling, min_gain)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = cross_fit(
            state.z,
            state.log_weights,
            num_components=num_components,
            em_iterations=em_iterations,
            fit_points=fit_points,
            defensive_weight=defensive_weight,
            defensive_scale=defensive_scale,
            generator=generator,
        )
        return _independence_steps(
            state,
            target,
            generator,
            chol,
            rule,
            fit,
            lambda side, rows, n: (fit.select(rows).sample_side(side, n, generator), None),
            lambda z, rows: fit.select(rows).apply(mixture_log_prob, z),
        )

    return make_kernel(move, num_steps=num_steps, name="mixture", uses_scale=False)
