"""Local Metropolis-Hastings moves one step at a time: random walk, MALA and HMC.

A :class:`Stepper` splits a local kernel into ``start`` (what one call computes once: the step
size from ``state.scale``, the metric from the cloud's Cholesky factor, MALA's gradients at the
current points) and ``step`` (one proposal per particle and its accept / reject decision). The
*carry* holds what ``start`` computed and what a step updates (the cached log target, the
gradients at the current points); every tensor in it has the observations first, so the drivers
can drop observations that are done (:func:`carry_rows`).

Drivers turn a stepper into a kernel: :func:`fixed_steps` runs a set number of steps (this is
what ``random_walk_metropolis``, ``mala`` and ``hmc`` are), and
:func:`~smcwake.smc.mixing.until_decorrelated` runs steps until the particles have moved away
from where the stage started. Each step is an exact Metropolis-Hastings step for pi_tau at the
step size and metric fixed at ``start``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from smcwake._ops import select
from smcwake.smc.base import make_kernel
from smcwake.smc.mh import (
    ADAPTATION_GAIN,
    Kernel,
    MoveInfo,
    Target,
    accept,
    sq_norm,
    standard_normal,
    update_where,
    whitened_sq_norm,
)
from smcwake.smc.tempering import tempered

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = [
    "Stepper",
    "carry_rows",
    "fixed_steps",
    "random_walk_stepper",
    "mala_stepper",
    "hmc_stepper",
    "RANDOM_WALK_INITIAL_SCALE",
    "GRADIENT_ADAPTATION_GAIN",
]

RANDOM_WALK_INITIAL_SCALE = 2.38
"""First step scale of random-walk moves, whose proposal covariance is (scale^2 / d) Sigma.

2.38^2 / d is the asymptotically optimal random-walk scaling for a Gaussian-like target with
covariance Sigma (Roberts, Gelman & Gilks, 1997); the sampler adapts it from the first stage on.
"""

GRADIENT_ADAPTATION_GAIN = 1.0
"""Gain of the step-scale adaptation for MALA and HMC (half the default :data:`ADAPTATION_GAIN`).

At d = 50 MALA's acceptance falls from 0.9 to 0.3 when the scale grows by 40%, and with gain 2
it alternated between the two from stage to stage.
"""

Carry = tuple[Tensor, ...]
StepResult = tuple["SMCState", Carry, Tensor, Tensor]


class Stepper(NamedTuple):
    """A local move split into ``start`` and ``step`` (see the module docstring).

    ``start(state, target, chol) -> carry``; ``step(state, carry, target, generator, chol) ->
    (state, carry, accepted [B, K] bool, sq_jump [B, K])``, ``sq_jump`` the squared length of
    each accepted step in the metric of the cloud covariance (0 where rejected).
    ``start_evals`` and ``step_evals`` are the likelihood evaluations per particle of each.
    ``adaptation_gain`` is the gain of the sampler's adaptation of the step scale between
    stages (``scale *= exp(gain (acceptance - target_acceptance))``).
    """

    name: str
    start: Callable[..., Carry]
    step: Callable[..., StepResult]
    start_evals: int
    step_evals: int
    target_acceptance: float
    initial_scale: float
    adaptation_gain: float = ADAPTATION_GAIN


def carry_rows(carry: Carry, idx: Tensor) -> Carry:
    """The carry of the observations ``idx``. Shapes: idx [B'] int64."""
    return tuple(t[idx] for t in carry)


def random_walk_stepper(target_acceptance: float = 0.234) -> Stepper:
    """Random-walk Metropolis with proposal N(z, (scale^2 / d) Sigma), Sigma = L L^T.

    The proposal is symmetric, so the acceptance ratio is pi_tau(z') / pi_tau(z). Initial scale
    2.38 (Roberts, Gelman & Gilks, 1997).
    """

    def start(state: SMCState, target: Target, chol: Tensor) -> Carry:
        d = state.z.shape[-1]
        step_scale = state.scale.to(chol.dtype) / math.sqrt(d)  # [B]
        # log pi_tau of the current particles, kept up to date instead of recomputed per step
        current = state.log_prior + tempered(state.loglik, state.tau)
        return chol * step_scale[:, None, None], step_scale, current

    def step(state, carry: Carry, target: Target, generator, chol: Tensor) -> StepResult:
        step_chol, step_scale, current = carry
        B, K, d = state.z.shape
        # noise drawn as [B, d, K]: L @ noise is a product with a long inner row, which runs
        # many times faster than noise @ L^T when d is small
        noise = standard_normal(state.z, generator, (B, d, K))
        z_new = state.z + (step_chol @ noise).mT
        lp, ll = target.evaluate(z_new)
        proposed = lp + tempered(ll, state.tau)
        acc = accept(proposed - current, generator)
        state = update_where(state, acc, z_new, lp, ll)
        current = select(acc, proposed, current)
        # the step is step_scale * L @ noise, so its whitened length needs no solve
        jump = acc.to(current.dtype) * noise.square().sum(1) * step_scale[:, None] ** 2
        return state, (step_chol, step_scale, current), acc, jump

    return Stepper("rwmh", start, step, 0, 1, target_acceptance, RANDOM_WALK_INITIAL_SCALE)


def mala_stepper(target_acceptance: float = 0.574) -> Stepper:
    """Preconditioned Langevin: z' = z + (h/2) Sigma grad + sqrt(h) L xi, h = scale^2 / d^(1/3).

    The Metropolis-Hastings ratio uses both proposal densities N(z'; drift(z), h Sigma) and
    N(z; drift(z'), h Sigma), so each step is exact for pi_tau. ``start`` evaluates the gradient
    at the current points (one evaluation per particle); each step one more.

    Everything is computed in the whitened coordinates of the metric, where it needs no linear
    solve: with g~ = L^T grad (kept for the current points), the step is
    z' - z = sqrt(h) L w, w = xi + (sqrt(h) / 2) g~; the forward density's quadratic form is
    |xi|^2, the reverse one's |xi + (sqrt(h) / 2) (g~ + g~')|^2 (since
    L^-1 (z - drift(z')) = -sqrt(h) w - (h / 2) g~'), and the squared jump in the metric of the
    cloud is h |w|^2.
    """

    def start(state: SMCState, target: Target, chol: Tensor) -> Carry:
        d = state.z.shape[-1]
        h = (state.scale.to(chol.dtype) ** 2 / d ** (1 / 3))[:, None, None]  # [B, 1, 1]
        _, _, grad = target.evaluate_with_grad(state.z, state.tau)
        # log pi_tau of the current particles, kept up to date instead of recomputed per step
        current = state.log_prior + tempered(state.loglik, state.tau)
        return torch.sqrt(h), grad @ chol, current

    def step(state, carry: Carry, target: Target, generator, chol: Tensor) -> StepResult:
        root_h, white_grad, current = carry  # [B, 1, 1], [B, K, d] (L^T grad), [B, K]
        xi = standard_normal(state.z, generator)
        w = xi + (0.5 * root_h) * white_grad
        z_new = state.z + root_h * (w @ chol.mT)
        lp, ll, grad_new = target.evaluate_with_grad(z_new, state.tau)
        white_new = grad_new @ chol
        proposed = lp + tempered(ll, state.tau)
        back = xi + (0.5 * root_h) * (white_grad + white_new)
        # log q(z | z') - log q(z' | z) = (|xi|^2 - |back|^2) / 2
        log_ratio = proposed - current + 0.5 * (sq_norm(xi) - sq_norm(back))
        acc = accept(log_ratio, generator)
        jump = acc.to(current.dtype) * sq_norm(w) * root_h[..., 0].square()
        state = update_where(state, acc, z_new, lp, ll)
        white_grad = select(acc[..., None], white_new, white_grad)
        current = select(acc, proposed, current)
        return state, (root_h, white_grad, current), acc, jump

    gain = GRADIENT_ADAPTATION_GAIN
    return Stepper("mala", start, step, 1, 1, target_acceptance, 1.0, adaptation_gain=gain)


def hmc_stepper(num_leapfrog: int = 5, target_acceptance: float = 0.65) -> Stepper:
    """Hamiltonian Monte Carlo with mass matrix Sigma^-1: one trajectory per step.

    Leapfrog integration in whitened coordinates u = L^-1 z with step size scale / d^(1/4);
    the integrator is volume preserving and reversible, so the Metropolis correction on the
    Hamiltonian makes each step exact for pi_tau. ``num_leapfrog`` evaluations per step.
    """
    if num_leapfrog < 1:
        raise ValueError(f"num_leapfrog: expected >= 1, received {num_leapfrog}")

    def start(state: SMCState, target: Target, chol: Tensor) -> Carry:
        d = state.z.shape[-1]
        eps = (state.scale.to(chol.dtype) / d**0.25)[:, None, None]  # [B, 1, 1]
        _, _, grad = target.evaluate_with_grad(state.z, state.tau)
        return eps, grad

    def step(state, carry: Carry, target: Target, generator, chol: Tensor) -> StepResult:
        eps, grad = carry
        p0 = standard_normal(state.z, generator)
        z_new, g_new = state.z, grad
        p = p0 + 0.5 * eps * (g_new @ chol)  # L^T grad, row-vector form
        for i in range(num_leapfrog):
            z_new = z_new + eps * (p @ chol.mT)
            lp, ll, g_new = target.evaluate_with_grad(z_new, state.tau)
            half = 0.5 if i == num_leapfrog - 1 else 1.0
            p = p + half * eps * (g_new @ chol)
        log_ratio = (
            lp
            + tempered(ll, state.tau)
            - state.log_prior
            - tempered(state.loglik, state.tau)
            - 0.5 * (p.square().sum(-1) - p0.square().sum(-1))
        )
        acc = accept(log_ratio, generator)
        jump = torch.where(acc, whitened_sq_norm(z_new - state.z, chol), 0.0)
        state = update_where(state, acc, z_new, lp, ll)
        grad = torch.where(acc[..., None], g_new, grad)
        return state, (eps, grad), acc, jump

    gain = GRADIENT_ADAPTATION_GAIN
    return Stepper("hmc", start, step, 1, num_leapfrog, target_acceptance, 0.5, gain)


def fixed_steps(stepper: Stepper, num_steps: int) -> Kernel:
    """A kernel that makes ``num_steps`` steps of ``stepper`` per call.

    ``MoveInfo.acceptance_rate`` is the mean acceptance over steps and particles,
    ``sq_jump`` the mean whitened squared jump per step.

    Shapes: as for any kernel.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, received {num_steps}")

    def move(state, target: Target, generator, chol: Tensor):
        carry = stepper.start(state, target, chol)
        accepted = torch.zeros_like(state.log_prior)
        jump = torch.zeros_like(state.log_prior)
        for _ in range(num_steps):
            state, carry, acc, step_jump = stepper.step(state, carry, target, generator, chol)
            accepted += acc.to(accepted.dtype)
            jump += step_jump
        evals = stepper.start_evals + num_steps * stepper.step_evals
        info = MoveInfo((accepted / num_steps).mean(-1), evals, (jump / num_steps).mean(-1))
        return state, info

    return make_kernel(
        move,
        target_acceptance=stepper.target_acceptance,
        initial_scale=stepper.initial_scale,
        num_steps=num_steps,
        name=stepper.name,
        adaptation_gain=stepper.adaptation_gain,
    )
