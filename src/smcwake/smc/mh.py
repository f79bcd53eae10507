"""Metropolis-Hastings building blocks shared by every move kernel.

A kernel is built by a function and is itself a function::

    move = random_walk_metropolis(num_steps=5)
    state, info = move(state, target, generator, chol)

``state`` is an :class:`~smcwake.smc.sampler.SMCState` whose ``tau`` is the temperature to target
and whose ``scale`` [B] is the kernel's step scale for each observation (held fixed during one
call; the sampler adapts it between stages from the returned acceptance rate). ``target``
evaluates the model at new points; ``chol`` [B, d, d] is the Cholesky factor of the weighted
particle covariance, computed once per stage by the sampler (:func:`weighted_cholesky`).

The tempered target is pi_tau(z) ∝ p(z) p(x | z)^tau. Every move accepts a proposal z' from z
with probability min(1, pi_tau(z') q(z | z') / (pi_tau(z) q(z' | z))) (Metropolis et al., 1953;
Hastings, 1970), which satisfies detailed balance for pi_tau. Log-densities of the current
particles are cached in the state and never recomputed. Proposals are never clamped to the prior
support: outside it the log prior is ``-inf`` and the move is rejected (the log-likelihood there
is ``-inf`` as well, whatever the user's function returns; see ``Model.log_likelihood``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor

from smcwake._ops import select
from smcwake.model import Model
from smcwake.smc.tempering import tempered

if TYPE_CHECKING:
    from smcwake.smc.sampler import SMCState

__all__ = [
    "Target",
    "MoveInfo",
    "Kernel",
    "weighted_cholesky",
    "regularized_cholesky",
    "weighted_mean",
    "standard_normal",
    "accept",
    "whitened_sq_norm",
    "log_target_ratio",
    "update_where",
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
    (whether the move reads ``state.scale``).
    """

    target_acceptance: float
    initial_scale: float
    num_steps: int

    def __call__(
        self, state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]: ...


def weighted_mean(z: Tensor, log_weights: Tensor) -> Tensor:
    """Weighted mean of a particle cloud. Shapes: z [B, K, d], log_weights [B, K] -> [B, d]."""
    w = torch.softmax(log_weights, dim=-1)[..., None]
    return (w * z).sum(1)


def weighted_cholesky(z: Tensor, log_weights: Tensor, jitter: float = 1e-6) -> Tensor:
    """Cholesky factor of the weighted covariance of a particle cloud, regularized.

    A relative ridge (``jitter`` times the mean variance) keeps it positive definite; rows whose
    factorization still fails fall back to the diagonal.

    Shapes: z [B, K, d], log_weights [B, K] -> [B, d, d].
    """
    w = torch.softmax(log_weights, dim=-1)[..., None]  # [B, K, 1]
    mean = (w * z).sum(1, keepdim=True)
    centred = z - mean
    return regularized_cholesky((w * centred).mT @ centred, jitter)


def regularized_cholesky(cov: Tensor, jitter: float = 1e-6) -> Tensor:
    """Cholesky factor of ``cov`` plus a ridge of ``jitter`` times its mean variance.

    Rows whose factorization still fails fall back to the square root of the diagonal.

    Shapes: cov [B, d, d] -> [B, d, d].
    """
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    ridge = jitter * var.mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)[:, None, None]
    tiny = torch.finfo(cov.dtype).eps * eye
    cov = cov + ridge * eye + tiny
    chol, info = torch.linalg.cholesky_ex(cov)
    diag = torch.diag_embed(torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1)))
    return torch.where((info == 0)[:, None, None], chol, diag)


def standard_normal(
    like: Tensor, generator: torch.Generator | None, shape: tuple[int, ...] | None = None
) -> Tensor:
    """Standard normal draws with the dtype and device of ``like``, and its shape unless
    ``shape`` is given."""
    shape = like.shape if shape is None else shape
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def accept(log_ratio: Tensor, generator: torch.Generator | None) -> Tensor:
    """Metropolis-Hastings decisions: log U < log_ratio, with NaN read as a rejection.

    Shapes: log_ratio [B, K] -> bool [B, K].
    """
    u = torch.rand(
        log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device
    )
    return torch.log(u) < torch.nan_to_num(log_ratio, nan=-math.inf)


def whitened_sq_norm(step: Tensor, chol: Tensor) -> Tensor:
    """Squared length of ``step`` in the metric of the cloud covariance L L^T.

    Shapes: step [B, K, d], chol [B, d, d] -> [B, K].
    """
    white = torch.linalg.solve_triangular(chol, step.mT, upper=False).mT
    return white.square().sum(-1)


def log_target_ratio(state: SMCState, log_prior: Tensor, loglik: Tensor) -> Tensor:
    """log pi_tau(z') - log pi_tau(z) for proposals with the given log prior and log-likelihood.

    A proposal outside the support (log prior ``-inf``) gives ``-inf`` (a rejection).

    Shapes: log_prior [B, K], loglik [B, K] (at z') -> [B, K].
    """
    return (
        log_prior
        + tempered(loglik, state.tau)
        - state.log_prior
        - tempered(state.loglik, state.tau)
    )


def update_where(
    state: SMCState, accepted: Tensor, z: Tensor, log_prior: Tensor, loglik: Tensor
) -> SMCState:
    """Move the accepted particles to their proposals, with their cached log-densities.

    Shapes: accepted [B, K] bool, z [B, K, d], log_prior [B, K], loglik [B, K].
    """
    return state._replace(
        z=select(accepted[..., None], z, state.z),
        log_prior=select(accepted, log_prior, state.log_prior),
        loglik=select(accepted, loglik, state.loglik),
    )
