"""Move kernels that keep every mode: mixture-based proposals fitted to the particle cloud.

Likelihood-tempered SMC starts from the prior, so its particles reach every mode; what can lose a
mode is the move step. A random walk preconditioned by the covariance of the whole cloud proposes
steps as wide as the gaps between modes, almost all of them rejected, so few particles move and
each mode's share of the cloud drifts with resampling noise. The kernels here adapt to the
cloud's modes instead, through Gaussian mixtures fitted to the weighted cloud at the start of
each call (:func:`~smcwake.smc.gmm.fit_mixture`) and held fixed during the call:

* :func:`mixture_independence` proposes from the mixture itself, independently of the current
  point, so a particle can jump between modes in one step (Chopin, 2002; South, Pettitt &
  Drovandi, 2019);
* :func:`encoder_independence` proposes from the amortized encoder q(z | x), mixed defensively
  with the cloud mixture (Hesterberg, 1995);
* :func:`local_random_walk` makes random-walk steps shaped by the covariance of the mode the
  particle is in, with the reverse proposal density in the acceptance ratio.

Each call is an exact Metropolis-Hastings kernel for pi_tau given its proposal. The proposals are
fitted *crosswise* (:func:`cross_fit`): the particles of one half of the cloud move with the
mixture fitted to the other half, so no particle's proposal depends on its own position, in the
manner of the complementary-ensemble moves of Goodman & Weare (2010). A fit to the whole cloud
would be tightest exactly where the particles sit; on a mode holding a few dozen particles this
measurably drains the mode's mass (a posterior mode of mass 0.10 fell to 0.065 after eight calls
of three steps at K = 500), and the crosswise fit removes the effect.

Where the cloud shows modes, the independence moves take as many steps as it needs to move most
particles (at least ``num_steps``; more while under 95% of the particles have accepted a
proposal): each stage's reweighting shifts mass between modes, and only particles that take a
fresh draw shift it back. On curved, heavy-tailed modes, which a mixture fits less closely, two
fixed steps left the mode masses of the SLCP model 0.11 off on average (``docs/KERNELS.md``).
Whether the cloud shows modes is read from the fits themselves (:func:`held_out_gain`: does the
mixture explain the other half of the cloud better than one Gaussian?); on a single lump the
moves keep ``num_steps`` steps, which the default kernel (:func:`~smcwake.smc.auto.auto_kernel`)
relies on in many dimensions. Each kernel reports per observation how many particles its
independence steps moved, at what acceptance, in how many steps and the held-out gain
(``SMCResult.kernel_info``); :func:`check_mode_mixing` reads these and flags the observations
whose modes may not have equilibrated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.composite import _put_rows, _rows
from smcwake.smc.gmm import (
    GaussianMixture,
    PreviousFits,
    add_component,
    apply_component,
    fit_mixture,
    log_responsibilities,
    log_sum_exp,
    mixture_log_prob,
    sample_mixture,
    step_log_prob,
)
from smcwake.smc.mh import (
    Kernel,
    MoveInfo,
    Target,
    accept,
    log_target_ratio,
    standard_normal,
    update_where,
    weighted_cholesky,
    weighted_mean,
    whitened_sq_norm,
)
from smcwake.smc.steppers import RANDOM_WALK_INITIAL_SCALE

if TYPE_CHECKING:
    from smcwake.smc.base import SMCResult, SMCState

logger = logging.getLogger(__name__)

__all__ = [
    "ProposalEncoder",
    "cloud_mixture",
    "CrossFit",
    "cross_fit",
    "mixture_independence",
    "encoder_independence",
    "local_random_walk",
    "held_out_gain",
    "check_mode_mixing",
]


MIN_MOVED = 0.95
"""Default share of the particles an independence move must have moved before it stops."""

MAX_STEPS = 30
"""Default cap on the independence steps of one call."""

MAX_OVERSAMPLING = 4.0
"""Default cap on the draws from the proposal per particle, to find points inside the support."""

MIN_GAIN = 0.15
"""Default held-out gain (nats per particle) of the fitted mixture over one Gaussian, under
which the cloud counts as having no modes to balance and the independence steps stay at
``num_steps`` (see :func:`held_out_gain`). Measured per stage: at most -0.03 on
linear-Gaussian posteriors (d = 2 to 50, K = 300 to 2,000), at least 0.35 on the SLCP
posteriors and 0.89 on the far-apart mixture once their modes have formed."""


class ProposalEncoder(Protocol):
    """What :func:`encoder_independence` needs: e.g. :class:`smcwake.encoders.Encoder`."""

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draws from q(z | x). Shapes: x [B, p] -> [B, n, d]."""
        ...

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z | x). Shapes: z [B, S, d], x [B, p] -> [B, S]."""
        ...


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


def cloud_mixture(
    z: Tensor,
    log_weights: Tensor,
    *,
    num_components: int,
    em_iterations: int,
    defensive_weight: float,
    defensive_scale: float,
    generator: torch.Generator | None,
    fit_points: int | None = 4096,
    init: GaussianMixture | None = None,
) -> GaussianMixture:
    """A Gaussian mixture fitted to a weighted cloud, plus a broad defensive component.

    The defensive component N(m, c^2 Sigma), m and Sigma the cloud's weighted mean and
    covariance, c = ``defensive_scale``, gets weight ``defensive_weight`` (none when 0): it keeps
    the proposal's tails at least as heavy as the cloud's, so a region the fit missed is still
    proposed. Rows whose weights are all zero are fitted with equal weights.

    ``fit_points``: clouds of more particles are fitted on this many, drawn by weight (see
    :func:`~smcwake.smc.gmm.fit_mixture`'s ``max_points``).

    Shapes: z [B, n, d], log_weights [B, n] -> mixture with [B, M (+1)] components.
    """
    empty = (log_weights == -math.inf).all(-1, keepdim=True)
    log_weights = torch.where(empty, torch.zeros_like(log_weights), log_weights)
    chol = weighted_cholesky(z, log_weights)
    mixture = fit_mixture(
        z,
        log_weights,
        num_components,
        num_iterations=em_iterations,
        max_points=fit_points,
        chol=chol,
        generator=generator,
        init=init,  # EM's start (see fit_mixture); the defensive component is not part of it
    )
    if defensive_weight > 0:
        mean = weighted_mean(z, log_weights)
        mixture = add_component(mixture, defensive_weight, mean, defensive_scale * chol)
    return mixture


class CrossFit(NamedTuple):
    """Proposal mixtures fitted crosswise: each half of the particles uses the other half's fit.

    ``first`` is fitted to particles ``[half:]`` and serves particles ``[:half]``; ``second`` is
    fitted to ``[:half]`` and serves ``[half:]``. Both have the same number of components.
    """

    first: GaussianMixture
    second: GaussianMixture
    half: int
    defensive_weight: float = 0.0  # as fitted (see :func:`cloud_mixture`)
    defensive_scale: float = 1.0

    def apply(self, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        """``fn(mixture, *tensors)`` on each half with its mixture, joined along the particles.

        Shapes: tensors [B, K, ...] -> [B, K, ...].
        """
        h = self.half
        return torch.cat(
            [
                fn(self.first, *(t[:, :h] for t in tensors)),
                fn(self.second, *(t[:, h:] for t in tensors)),
            ],
            1,
        )

    def select(self, rows: Tensor | None) -> CrossFit:
        """The fits of the observations ``rows`` (None: all). Shapes: rows [b] int64."""
        if rows is None:
            return self
        return self._replace(
            first=GaussianMixture(*(t[rows] for t in self.first)),
            second=GaussianMixture(*(t[rows] for t in self.second)),
        )

    def sample(self, num_particles: int, generator: torch.Generator | None) -> Tensor:
        """One draw per particle, each from its half's mixture. Shapes: -> [B, K, d]."""
        first = self.sample_side(0, self.half, generator)
        return torch.cat([first, self.sample_side(1, num_particles - self.half, generator)], 1)

    def sample_side(self, side: int, n: int, generator: torch.Generator | None) -> Tensor:
        """n draws from the mixture serving particles ``[:half]`` (side 0) or ``[half:]``
        (side 1). Shapes: -> [B, n, d]."""
        return sample_mixture(self.second if side else self.first, n, generator=generator)[0]


def cross_fit(
    z: Tensor,
    log_weights: Tensor,
    *,
    num_components: int,
    em_iterations: int,
    defensive_weight: float = 0.0,
    defensive_scale: float = 1.0,
    generator: torch.Generator | None = None,
    fit_points: int | None = 4096,
    init: tuple[GaussianMixture, GaussianMixture] | None = None,
) -> CrossFit:
    """Fit :func:`cloud_mixture` to each half of the cloud, for use by the other half.

    A proposal fitted to all particles depends on the very particle it moves. With a few
    particles per component (a small mode) that dependence is strong: the fit is tightest at the
    particles it was fitted to, and an independence sampler built on it drifts mass out of small
    modes. Fitting each half's proposal to the *other* half removes a particle's own position from
    its proposal: given the other half, every particle moves under a fixed pi_tau-invariant
    kernel, as in the complementary-ensemble moves of Goodman & Weare (2010). The halves are
    contiguous blocks of indices, so copies made by systematic resampling (adjacent indices)
    mostly stay on one side.

    Shapes: z [B, K, d] (K >= 2), log_weights [B, K] -> CrossFit.

    References:
        Goodman & Weare (2010), Ensemble samplers with affine invariance, Comm. App. Math. and
        Comp. Sci.
    """
    K, d = z.shape[1], z.shape[2]
    if K < 2:
        raise ValueError(f"num_particles: expected >= 2 to fit crosswise, received {K}")
    half = K // 2
    # the same number of components on both sides (the fit caps it at half / (20 d))
    used = half if fit_points is None else min(half, fit_points)
    components = max(1, min(num_components, used // (20 * d)))
    options = dict(
        fit_points=fit_points,
        num_components=components,
        em_iterations=em_iterations,
        defensive_weight=defensive_weight,
        defensive_scale=defensive_scale,
        generator=generator,
    )
    first_init, second_init = (None, None) if init is None else init  # EM starts, no defensive
    first = cloud_mixture(z[:, half:], log_weights[:, half:], init=first_init, **options)
    second = cloud_mixture(z[:, :half], log_weights[:, :half], init=second_init, **options)
    return CrossFit(first, second, half, defensive_weight, defensive_scale)


def held_out_gain(z: Tensor, log_weights: Tensor, fit: CrossFit) -> Tensor:
    """How much better each half's mixture explains the particles it serves than one Gaussian.

    For every particle, log m(z) - log n(z), with m the mixture that serves the particle's half
    (fitted to the *other* half, :func:`cross_fit`) and n what the fit gives with a single
    component: the Gaussian with the weighted mean and covariance of that same other half,
    widened by the same defensive component. Both densities are fitted without the particle,
    so the weighted mean of these values over a half is an out-of-sample comparison of the
    mixture's extra components: 0 when the fit has one component, about 0 or below when the
    cloud is one Gaussian-like lump (measured: -0.28 to -0.03 nats on linear-Gaussian
    posteriors in 2 to 50 dimensions), several nats when it holds separated modes (up to 11 on
    eight modes in 6-d), and in between for connected curved modes (0.35 to 3.4 on the SLCP
    posteriors of ``docs/KERNELS.md``).

    Shapes: z [B, K, d], log_weights [B, K] -> [B, K].
    """
    h = fit.half
    empty = (log_weights == -math.inf).all(-1, keepdim=True)
    log_weights = torch.where(empty, torch.zeros_like(log_weights), log_weights)
    log_n = []
    for served, fitted in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        zf, lw = z[:, fitted], log_weights[:, fitted]
        one = GaussianMixture(
            torch.zeros_like(lw[:, :1]),
            weighted_mean(zf, lw)[:, None],
            weighted_cholesky(zf, lw)[:, None],
        )
        if fit.defensive_weight > 0:
            widened = fit.defensive_scale * one.scale_tril[:, 0]
            one = add_component(one, fit.defensive_weight, one.loc[:, 0], widened)
        log_n.append(mixture_log_prob(one, z[:, served]))
    gain = fit.apply(mixture_log_prob, z) - torch.cat(log_n, 1)
    return torch.nan_to_num(gain, nan=0.0, posinf=0.0, neginf=0.0)


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
    previous = PreviousFits()  # EM starts from the last stage's fits (exact: see PreviousFits)

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
            init=previous.get(target.x, state.tau),
        )
        previous.keep(target.x, state.tau, (fit.first, fit.second), defensive_weight > 0)
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


def _float_dtype(module: object, default: torch.dtype) -> torch.dtype:
    """The floating dtype of a module's parameters or buffers (``default`` if none)."""
    if isinstance(module, torch.nn.Module):
        for t in chain(module.parameters(), module.buffers()):
            if t.is_floating_point():
                return t.dtype
    return default


def encoder_independence(
    encoder: ProposalEncoder,
    num_steps: int = 3,
    *,
    encoder_weight: float = 0.5,
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
    """Independence Metropolis-Hastings proposing from the encoder, mixed with the cloud mixture.

    The proposal is g(z) = a q(z | x) + (1 - a) m(z), a = ``encoder_weight``, q the amortized
    encoder and m the mixture fitted to the weighted cloud (as in :func:`mixture_independence`,
    defensive component included). Every particle draws z' ~ g (from q with probability a, else
    from m) and accepts with probability min(1, pi_tau(z') g(z) / (pi_tau(z) g(z'))), with the
    density of the whole mixture g in the ratio, never that of the part z' came from.

    Exactness: q is not trained during the call (it runs in ``eval`` mode under
    ``torch.no_grad``) and m is fitted once before any particle moves, so g is a fixed density
    and the detailed-balance argument of :func:`mixture_independence` applies unchanged. The
    number of steps (``num_steps`` at least, more while fewer than ``min_moved`` of the
    particles have accepted, at most ``max_steps``) and the redraws of proposals outside the
    prior's support (``max_oversampling``) follow :func:`mixture_independence`.
    Defensive mixing (Hesterberg, 1995) bounds the ratio where q is poor: g >= (1 - a) m, so an
    untrained encoder costs at most a share a of the proposals and never traps a particle where
    q has no mass. As q approaches p(z | x) the tempered target at tau = 1 is proposed directly.

    Args:
        encoder: has ``sample(x [B, p], n, generator=) -> [B, n, d]`` and
            ``log_prob(z [B, S, d], x [B, p]) -> [B, S]`` (e.g. :class:`smcwake.encoders.Encoder`).
        encoder_weight: a, the share of proposals drawn from the encoder.

    Shapes: state.z [B, K, d], target.x [B, p]; one likelihood evaluation per particle and step.

    References:
        Hesterberg (1995), Weighted average importance sampling and defensive mixture
        distributions, Technometrics.
        McNamara, Loper & Regier (2024), Sequential Monte Carlo for inclusive KL minimization in
        amortized variational inference, AISTATS.
    """
    _check_common(num_steps, num_components, em_iterations)
    _check_fraction("defensive_weight", defensive_weight, closed_low=True)
    if not 0.0 < encoder_weight < 1.0:
        raise ValueError(
            f"encoder_weight: expected a fraction in (0, 1) (the cloud mixture keeps the kernel "
            f"safe from a poor encoder), received {encoder_weight!r}"
        )
    for method in ("sample", "log_prob"):
        if not callable(getattr(encoder, method, None)):
            raise TypeError(
                f"encoder: expected an object with sample(x, n, generator=) and log_prob(z, x), "
                f"received {type(encoder).__name__} without {method}()"
            )
    log_a, log_1ma = math.log(encoder_weight), math.log1p(-encoder_weight)
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
        dtype = state.z.dtype
        enc_dtype = _float_dtype(encoder, dtype)
        x = target.x.to(enc_dtype)

        def sample_side(side: int, rows: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
            x_rows = x if rows is None else x[rows]
            shape = (x_rows.shape[0], n)
            use_q = torch.rand(shape, generator=generator, dtype=dtype, device=state.z.device)
            use_q = use_q < encoder_weight
            z_q = encoder.sample(x_rows, n, generator=generator).to(dtype)
            z_m = fit.select(rows).sample_side(side, n, generator)
            return torch.where(use_q[..., None], z_q, z_m), use_q

        def log_proposal(z: Tensor, rows: Tensor | None) -> Tensor:
            x_rows = x if rows is None else x[rows]
            log_q = encoder.log_prob(z.to(enc_dtype), x_rows).to(dtype)
            log_q = torch.nan_to_num(log_q, nan=-math.inf, posinf=-math.inf)
            log_m = fit.select(rows).apply(mixture_log_prob, z)
            return torch.logaddexp(log_a + log_q, log_1ma + log_m)

        was_training = getattr(encoder, "training", False)
        if isinstance(encoder, torch.nn.Module):
            encoder.eval()
        try:
            with torch.no_grad():
                return _independence_steps(
                    state,
                    target,
                    generator,
                    chol,
                    rule,
                    fit,
                    sample_side,
                    log_proposal,
                )
        finally:
            if isinstance(encoder, torch.nn.Module):
                encoder.train(was_training)

    return make_kernel(move, num_steps=num_steps, name="encoder", uses_scale=False)


def local_random_walk(
    num_steps: int = 5,
    *,
    num_components: int = 16,
    em_iterations: int = 10,
    fit_points: int | None = 4096,
    target_acceptance: float = 0.234,
) -> Kernel:
    """Random-walk Metropolis with the covariance of the mode each particle is in.

    A mixture sum_j pi_j N(mu_j, Sigma_j) is fitted to the weighted cloud at the start of the call
    (crosswise: each half of the particles uses the other half's fit, see :func:`cross_fit`) and
    held fixed; r_j(z) = pi_j N(z; mu_j, Sigma_j) / sum_i pi_i N(z; mu_i, Sigma_i) are its
    responsibilities. From z, draw a component j ~ r(z) and step z' = z + (s / sqrt(d)) L_j xi,
    xi ~ N(0, I), s = ``state.scale``, Sigma_j = L_j L_j^T. The proposal density is the mixture of
    random walks

        q(z' | z) = sum_j r_j(z) N(z' - z; 0, h Sigma_j),     h = s^2 / d,

    and the move is accepted with probability min(1, pi_tau(z') q(z | z') / (pi_tau(z) q(z' | z))).

    Exactness: this is the Metropolis-Hastings ratio for the proposal q, so the kernel satisfies
    detailed balance for pi_tau at fixed mixture and scale. Each N(.; 0, h Sigma_j) is symmetric,
    q(z | z') = sum_j r_j(z') N(z' - z; 0, h Sigma_j): the reverse density reuses the same
    Gaussian factors, weighted by the responsibilities at the *proposed* point. Choosing the
    covariance from the current point's component and accepting with pi_tau(z') / pi_tau(z)
    alone would not be exact, since r(z) != r(z'). The proposal is positive everywhere, so the
    chain is irreducible.

    Within a mode the steps follow that mode's shape and size rather than the span of the whole
    cloud, so acceptance stays near ``target_acceptance`` on well-separated modes. It does not
    jump between modes: pair it with :func:`mixture_independence`.

    Shapes: state.z [B, K, d]; one likelihood evaluation per particle and step.

    References:
        Hastings (1970), Monte Carlo sampling methods using Markov chains and their
        applications, Biometrika. Roberts, Gelman & Gilks (1997), Weak convergence and optimal
        scaling of random walk Metropolis algorithms, Ann. Appl. Probab.
    """
    _check_common(num_steps, num_components, em_iterations)

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        fit = cross_fit(
            state.z,
            state.log_weights,
            num_components=num_components,
            em_iterations=em_iterations,
            fit_points=fit_points,
            generator=generator,
        )
        d = state.z.shape[-1]
        root_h = (state.scale.to(state.z.dtype) / math.sqrt(d))[:, None, None, None]
        # the step covariances h Sigma_j, h = s^2 / d: a mixture of steps N(0, h Sigma_j)
        steps = CrossFit(
            fit.first._replace(scale_tril=root_h * fit.first.scale_tril),
            fit.second._replace(scale_tril=root_h * fit.second.scale_tril),
            fit.half,
        )
        log_r = fit.apply(log_responsibilities, state.z)  # [B, K, M]
        accepted = torch.zeros_like(state.log_prior)
        jump = torch.zeros_like(state.log_prior)
        for _ in range(num_steps):
            u = torch.rand(
                log_r.shape, generator=generator, dtype=log_r.dtype, device=log_r.device
            )
            comp = torch.argmax(log_r - torch.log(-torch.log(u)), -1)  # Gumbel-max: j ~ r(z)
            xi = standard_normal(state.z, generator)
            step = steps.apply(lambda m, c, v: apply_component(m.scale_tril, c, v), comp, xi)
            z_new = state.z + step
            log_r_new = fit.apply(log_responsibilities, z_new)
            # N(step; 0, h Sigma_j) for every j: the same for the step and its reverse (-step)
            log_phi = steps.apply(lambda m, v: step_log_prob(v, m.scale_tril), step)
            log_q_ratio = log_sum_exp(log_r_new + log_phi) - log_sum_exp(log_r + log_phi)
            lp, ll = target.evaluate(z_new)
            acc = accept(log_target_ratio(state, lp, ll) + log_q_ratio, generator)
            jump += torch.where(acc, whitened_sq_norm(step, chol), 0.0)
            state = update_where(state, acc, z_new, lp, ll)
            log_r = torch.where(acc[..., None], log_r_new, log_r)
            accepted += acc
        info = MoveInfo((accepted / num_steps).mean(-1), num_steps, (jump / num_steps).mean(-1))
        return state, info

    return make_kernel(
        move,
        target_acceptance=target_acceptance,
        initial_scale=RANDOM_WALK_INITIAL_SCALE,
        num_steps=num_steps,
        name="local_rwmh",
    )


def check_mode_mixing(
    result: SMCResult,
    *,
    min_moved: float = 0.85,
    min_acceptance: float = 0.05,
    min_distinct: float = 0.5,
    min_gain: float = MIN_GAIN,
    warn: bool = True,
) -> Tensor:
    """Flag the observations whose modes may not have equilibrated, and log a warning.

    Mode masses cannot be checked without knowing the modes. What a run does show is whether
    its moves could have redrawn the particles' allocation to modes at every stage: each
    reweighting shifts mass between modes (by more than binomial noise when the cloud holds
    copies or lagging particles), and only moves that carry particles between modes correct
    the shift. An observation is flagged when, averaged over its stages
    (``SMCResult.kernel_info``, filled by :func:`mixture_independence` and
    :func:`encoder_independence`),

    * under ``min_moved`` of its particles accepted an independence proposal per stage
      (``"independence/moved"``): at least the rest kept their mode from before the stage;
    * its independence acceptance is under ``min_acceptance`` (``"independence/acceptance"``):
      the moved share then rests on a few lucky proposals;

    or when under ``min_distinct`` of its final particles are distinct
    (``SMCResult.distinct_fraction``, for every kernel): the masses rest on few ancestors.

    The first two apply where the clouds showed modes: where the fitted mixture explained them
    better than one Gaussian by at least ``min_gain`` nats per particle out of sample, on
    average over the stages (``"independence/gain"``, :func:`held_out_gain`). Below that the
    independence moves have no modes to balance (the default then keeps them at ``num_steps``)
    and the local steps mix the cloud; a unimodal 50-dimensional posterior, whose mixture
    proposals are rarely accepted, is not flagged for it.

    The thresholds come from 720 observations with known mode masses
    (``benchmarks/multimodal.py``'s SLCP model and its asymmetric variants at K = 1,000 and
    5,000, the squared-coordinate models and the far-apart mixture; the default kernel, two or
    six fixed independence steps per stage, with random-walk or MALA local steps). Of the 143
    observations whose largest mass error exceeded 5 binomial standard errors, the rule flags
    139 (the four missed were 5 to 6 standard errors off, three of them on the corner
    variant); of the 508 within 3 standard errors it flags 156: 134 from the fixed-step
    kernels, whose balance there was luck rather than mixing (the same kernels exceed 5
    standard errors on other observations), and 22 adaptive runs at K = 1,000, where the
    30-step cap left under 85% moved. The moved share carries the signal: a threshold on the
    number of stages (the third quantity one might watch) caught 9 of the 143 at "under 5"
    while flagging 107 good ones, since the adaptive moves refresh the cloud at every stage
    however few there are, and distinct shares stay above 0.5 in nearly every run with
    mixture moves.

    Kernels without independence moves (``"rwmh"``, ``"mala"``, ``"hmc"``) report neither
    quantity: only the distinct share is checked for them, and they do not move particles
    between separated modes at all (see docs/KERNELS.md).

    Shapes: result with B observations -> bool [B].

    >>> from smcwake.smc.sampler import run_smc
    >>> from smcwake.model import Model
    >>> from torch.distributions import Independent, Normal, Uniform
    >>> box = Independent(Uniform(-torch.ones(2).double(), torch.ones(2).double()), 1)
    >>> ring = Model(box, lambda z, x: Normal(z.square().sum(-1), 0.05).log_prob(x))
    >>> res = run_smc(ring, torch.tensor([[0.5]]).double(), 1000,
    ...               generator=torch.Generator().manual_seed(0))
    >>> bool(res.kernel_info["independence/moved"][0] > 0.85), check_mode_mixing(res).tolist()
    (True, [False])
    """
    for name, value in (
        ("min_moved", min_moved),
        ("min_acceptance", min_acceptance),
        ("min_distinct", min_distinct),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1], received {value!r}")
    info = result.kernel_info
    distinct = result.distinct_fraction
    suspect = distinct < min_distinct
    moved = info.get("independence/moved")
    acceptance = info.get("independence/acceptance")
    gain = info.get("independence/gain")
    modes = torch.ones_like(suspect) if gain is None else gain.to(distinct.dtype) >= min_gain
    if moved is not None:
        suspect = suspect | (modes & (moved.to(distinct.dtype) < min_moved))
    if acceptance is not None:
        suspect = suspect | (modes & (acceptance.to(distinct.dtype) < min_acceptance))
    if warn and bool(suspect.any()):
        first = int(torch.nonzero(suspect)[0])
        details = f"distinct {float(distinct[first]):.2f}"
        if moved is not None and acceptance is not None:
            details = (
                f"moved by independence steps {float(moved[first]):.2f} per stage, "
                f"acceptance {float(acceptance[first]):.2f}, {details}"
            )
        logger.warning(
            "%d of %d observations: mode masses may not have equilibrated (first: observation "
            "%d, %s; flagged below %.2f moved, %.2f acceptance or %.2f distinct). Use more "
            "particles or allow more independence steps (mixture_independence(max_steps=...)); "
            "see smcwake.smc.multimodal.check_mode_mixing",
            int(suspect.sum()),
            suspect.numel(),
            first,
            details,
            min_moved,
            min_acceptance,
            min_distinct,
        )
    return suspect
