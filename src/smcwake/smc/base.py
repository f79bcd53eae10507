"""The contract between the sampler and its move kernels: state, target, kernel, move report.

:func:`~smcwake.smc.sampler.run_smc` carries an :class:`SMCState` from stage to stage and hands
it to a :class:`Kernel` together with a :class:`Target` (the likelihood of the observations still
running); the kernel returns a new state and a :class:`MoveInfo`. The run returns an
:class:`SMCResult`, which diagnostics such as
:func:`~smcwake.smc.multimodal.check_mode_mixing` read. Kernels import this module, not
the sampler. Between stages the sampler adapts each kernel's step scale,
``scale * exp(gain * (acceptance - target_acceptance))`` clamped to ``[MIN_SCALE, MAX_SCALE]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from smcwake.model import Model
from smcwake.smc.resampling import multinomial
from smcwake.smc.tempering import tempered

__all__ = [
    "SMCState",
    "SMCResult",
    "Target",
    "MoveInfo",
    "Kernel",
    "MoveKernel",
    "make_kernel",
    "ADAPTATION_GAIN",
    "MIN_SCALE",
    "MAX_SCALE",
]

ADAPTATION_GAIN = 2.0
"""Default gain of the sampler's step-scale adaptation between stages.

After each stage the scale becomes ``scale * exp(gain * (acceptance - target_acceptance))``, a
Robbins-Monro style step on log scale. A kernel may set its own ``adaptation_gain``; 2 keeps the
random walk's scale moving over the few stages of an easy run (with 1 it lost its adaptation on a
four-mode model), while MALA and HMC use 1 (see
:data:`~smcwake.smc.steppers.GRADIENT_ADAPTATION_GAIN`). The scale is held fixed within a stage,
so every stage is an exact Metropolis-Hastings kernel whatever the gain.
"""

MIN_SCALE = 1e-3
"""Smallest step scale the adaptation may reach.

A stage with an acceptance rate near 0 shrinks the scale geometrically; the floor keeps a run
that met one hard stage able to recover in the next ones instead of freezing its particles.
"""

MAX_SCALE = 20.0
"""Largest step scale the adaptation may reach.

Scales are relative to the cloud covariance (the random walk starts at 2.38), so a scale of 20
already proposes steps far outside the cloud; the cap stops a stage that accepts nearly every
proposal (e.g. a flat likelihood) from growing the scale without bound.
"""


class SMCState(NamedTuple):
    """B independent samplers at one stage; every stage returns a new state."""

    z: Tensor  # [B, K, d]
    log_weights: Tensor  # [B, K] normalized: logsumexp over K is 0
    log_prior: Tensor  # [B, K] cached; -inf outside the support
    loglik: Tensor  # [B, K] cached; -inf is a valid zero likelihood
    tau: Tensor  # [B] float64, current temperature
    log_evidence: Tensor  # [B] float64, running log Zhat
    scale: Tensor  # [B] the kernel's step scale (adapted between stages)


class SMCResult(NamedTuple):
    """The output of :func:`run_smc`, per observation.

    ``particles`` with ``log_weights`` are a weighted sample from p(z | x_b) when ``converged[b]``
    and ``mixed[b]``. Rows that stopped at ``max_stages`` (tau < 1) or whose likelihood was zero
    at every particle (``zero_likelihood``) are *not* posterior samples and are flagged
    ``converged = False``. Rows in which the moves of some stage left the particles correlated
    with their starting points (start/end correlation above ``max_correlation``, see
    ``correlation_history``) reached tau = 1 but may not have reached the posterior: they are
    flagged ``mixed = False`` (``converged`` keeps its meaning and does not include this).
    """

    particles: Tensor  # [B, K, d]
    log_weights: Tensor  # [B, K] normalized (logsumexp over K is 0)
    log_evidence: Tensor  # [B] float64 log Zhat; -inf where zero_likelihood
    converged: Tensor  # [B] bool: tau reached 1
    zero_likelihood: Tensor  # [B] bool
    num_stages: Tensor  # [B] int64
    temperatures: Tensor  # [B, S + 1] float64 schedule from 0, NaN after an observation stopped
    acceptance_rate: Tensor  # [B] mean acceptance over stages
    acceptance_history: Tensor  # [B, S] NaN after an observation stopped
    ess: Tensor  # [B] ESS of the final weights
    num_likelihood_evals: Tensor  # [B] int64 likelihood evaluations (points z) per observation
    loglik: Tensor  # [B, K] log-likelihood of the final particles
    distinct_fraction: Tensor  # [B] share of distinct particles after the last move
    kernel_info: dict[str, Tensor]  # [B] each: kernel diagnostics averaged over stages
    mixed: Tensor  # [B] bool: no stage above max_correlation (by two standard errors)
    correlation_history: Tensor  # [B, S] start/end correlation of each stage, NaN after stop

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw n equally weighted particles per observation (multinomial on the weights).

        Shapes: -> [B, n, d].
        """
        idx = multinomial(self.log_weights, n, generator=generator)
        return torch.gather(
            self.particles, 1, idx[..., None].expand(-1, -1, self.particles.shape[-1])
        )


class Target(NamedTuple):
    """The likelihood of B observations, with their dataset indices for error messages."""

    model: Model
    x: Tensor  # [B, p]
    rows: Tensor | None = None  # [B]

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Log prior and log-likelihood, the latter ``-inf`` outside the prior's support.

        Shapes: z [B, K, d] -> ([B, K], [B, K]).
        """
        log_prior = self.model.log_prior(z)
        return log_prior, self.model.log_likelihood(z, self.x, self.rows, log_prior=log_prior)

    def evaluate_with_grad(self, z: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log prior, log-likelihood and the gradient of the tempered log target.

        Gradients at points of zero target density are set to 0 (such points are never kept).

        Shapes: z [B, K, d], tau [B] -> ([B, K], [B, K], [B, K, d]).
        """
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            lp, ll = self.evaluate(zg)
            log_target = lp + tempered(ll, tau)
            finite = torch.isfinite(log_target)
            (grad,) = torch.autograd.grad(torch.where(finite, log_target, 0.0).sum(), zg)
        grad = torch.where(torch.isfinite(grad) & finite[..., None], grad, 0.0)
        return lp.detach(), ll.detach(), grad

    def select(self, idx: Tensor) -> Target:
        """The same target restricted to the observations ``idx``. Shapes: idx [B'] int64."""
        return Target(self.model, self.x[idx], None if self.rows is None else self.rows[idx])


class MoveInfo(NamedTuple):
    """What one kernel call did, per observation."""

    acceptance_rate: Tensor  # [B] mean over steps and particles
    evals_per_particle: int | Tensor  # evaluations per particle in this call (or [B], may be
    # fractional: a mean over particles that were not all evaluated equally often)
    sq_jump: Tensor  # [B] mean squared jump distance in whitened units, per step
    extra: dict[str, Tensor] | None = None  # [B] each, e.g. acceptance of each sub-kernel


class Kernel(Protocol):
    """``move(state, target, generator, chol) -> (state, MoveInfo)``.

    Attributes: ``target_acceptance`` and ``initial_scale`` (for the sampler's adaptation of
    ``state.scale``; optionally ``adaptation_gain``, 2 by default), ``num_steps`` (proposals
    per particle and call), ``name`` (a short label used in diagnostics) and ``uses_scale``
    (whether the move reads ``state.scale``). Every kernel of this package is a
    :class:`MoveKernel` built by :func:`make_kernel`; any callable with these attributes works.
    """

    target_acceptance: float
    initial_scale: float
    num_steps: int

    def __call__(
        self, state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]: ...


Move = Callable[[SMCState, Target, "torch.Generator | None", Tensor], tuple[SMCState, MoveInfo]]


@dataclass(frozen=True)
class MoveKernel:
    """A built kernel: its move function and what the sampler needs to know about it.

    Calling it calls ``move``, so it satisfies :class:`Kernel`; build one with
    :func:`make_kernel`. ``resamples``: the move draws its own ancestors (waste-free SMC), so
    the sampler does not resample before it. ``choose``: for a kernel that picks gradient-based
    or gradient-free moves, ``choose(differentiable)`` returns the kernel to use once the
    sampler has probed the likelihood.
    """

    move: Move = field(repr=False)
    target_acceptance: float
    initial_scale: float
    num_steps: int
    name: str
    uses_scale: bool = True
    adaptation_gain: float = ADAPTATION_GAIN
    resamples: bool = False
    choose: Callable[[bool], Kernel] | None = field(default=None, repr=False)

    def __call__(
        self, state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        return self.move(state, target, generator, chol)


def make_kernel(
    move: Move,
    *,
    num_steps: int,
    name: str,
    target_acceptance: float | None = None,
    initial_scale: float | None = None,
    uses_scale: bool = True,
    adaptation_gain: float = ADAPTATION_GAIN,
    resamples: bool = False,
    choose: Callable[[bool], Kernel] | None = None,
) -> MoveKernel:
    """A :class:`MoveKernel` from a move function ``move(state, target, generator, chol)``.

    ``target_acceptance`` and ``initial_scale`` drive the sampler's adaptation of
    ``state.scale`` (with ``adaptation_gain``) and are required when the move reads the scale.
    A move with ``uses_scale=False`` leaves them out: the sampler still adapts ``state.scale``,
    from placeholders (0.5 and 1), but nothing reads it. ``num_steps`` is the number of
    proposals per particle and call, ``name`` a short label for diagnostics.

    >>> kernel = make_kernel(lambda *args: None, target_acceptance=0.234, initial_scale=2.38,
    ...                      num_steps=1, name="noop")
    >>> kernel.name, kernel.uses_scale, kernel.adaptation_gain
    ('noop', True, 2.0)
    """
    if uses_scale and (target_acceptance is None or initial_scale is None):
        raise TypeError(
            f"make_kernel: a move that reads state.scale needs target_acceptance and "
            f"initial_scale, received {target_acceptance!r} and {initial_scale!r}"
        )
    return MoveKernel(
        move,
        0.5 if target_acceptance is None else target_acceptance,
        1.0 if initial_scale is None else initial_scale,
        num_steps,
        name,
        uses_scale,
        adaptation_gain,
        resamples,
        choose,
    )
