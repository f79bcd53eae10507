"""MCMC move kernels, each invariant for the tempered target pi_tau(z) ∝ p(z) p(x | z)^tau.

A kernel is built by a function and is itself a function::

    move = random_walk_metropolis(num_steps=5)
    state, info = move(state, target, generator)

``state`` is an :class:`~smcwake.smc.sampler.SMCState` whose ``tau`` is the temperature to target
and whose ``scale`` [B] is the kernel's step scale for each observation (held fixed during one
call, so each call is an exact Metropolis-Hastings kernel; the sampler adapts it between stages
from the returned acceptance rate). Log-densities of the current particles are cached in the state
and never recomputed. Proposals are never clamped to the prior support: outside it the log prior
is ``-inf`` and the move is rejected.

All kernels precondition with the Cholesky factor of the weighted particle covariance, which the
sampler computes once per stage (``weighted_cholesky``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from smcwake.model import Model
from smcwake.smc.tempering import tempered

__all__ = [
    "Target",
    "MoveInfo",
    "Kernel",
    "weighted_cholesky",
    "random_walk_metropolis",
    "mala",
    "hmc",
    "get_kernel",
]


class Target(NamedTuple):
    """The likelihood of B observations, with their dataset indices for error messages."""

    model: Model
    x: Tensor  # [B, p]
    rows: Tensor | None = None  # [B]

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Log prior and log-likelihood. Shapes: z [B, K, d] -> ([B, K], [B, K])."""
        return self.model.log_prior(z), self.model.log_likelihood(z, self.x, self.rows)

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


class MoveInfo(NamedTuple):
    """What one kernel call did, per observation."""

    acceptance_rate: Tensor  # [B] mean over steps and particles
    evals_per_particle: int  # likelihood evaluations per particle in this call
    sq_jump: Tensor  # [B] mean squared jump distance in whitened units, per step
    extra: dict[str, Tensor] | None = None  # [B] each, e.g. acceptance of each sub-kernel


class Kernel(Protocol):
    """``move(state, target, generator, chol) -> (state, MoveInfo)``."""

    target_acceptance: float
    initial_scale: float

    def __call__(self, state, target: Target, generator: torch.Generator | None, chol: Tensor): ...


def weighted_cholesky(z: Tensor, log_weights: Tensor, jitter: float = 1e-6) -> Tensor:
    """Cholesky factor of the weighted covariance of a particle cloud, regularized.

    A relative ridge (``jitter`` times the mean variance) keeps it positive definite; rows whose
    factorization still fails fall back to the diagonal.

    Shapes: z [B, K, d], log_weights [B, K] -> [B, d, d].
    """
    w = torch.softmax(log_weights, dim=-1)[..., None]  # [B, K, 1]
    mean = (w * z).sum(1, keepdim=True)
    centred = z - mean
    cov = (w * centred).mT @ centred  # [B, d, d]
    d = z.shape[-1]
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    ridge = jitter * var.mean(-1).clamp_min(torch.finfo(z.dtype).tiny)[:, None, None]
    tiny = torch.finfo(z.dtype).eps * eye
    cov = cov + ridge * eye + tiny
    chol, info = torch.linalg.cholesky_ex(cov)
    diag = torch.diag_embed(torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1)))
    return torch.where((info == 0)[:, None, None], chol, diag)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def _accept(log_ratio: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(
        log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device
    )
    return torch.log(u) < torch.nan_to_num(log_ratio, nan=-math.inf)


def _whitened_sq(step: Tensor, chol: Tensor) -> Tensor:
    """Squared length of ``step`` [B, K, d] in the metric of the cloud covariance -> [B, K]."""
    white = torch.linalg.solve_triangular(chol, step.mT, upper=False).mT
    return white.square().sum(-1)


def random_walk_metropolis(num_steps: int = 5, target_acceptance: float = 0.234) -> Kernel:
    """Random-walk Metropolis with proposal N(z, (scale^2 / d) Sigma), Sigma the cloud covariance.

    The proposal is symmetric, so the acceptance ratio is pi_tau(z') / pi_tau(z); the kernel
    satisfies detailed balance for pi_tau at fixed ``scale``. Initial scale 2.38 (Roberts,
    Gelman & Gilks, 1997), adapted between stages toward ``target_acceptance``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, received {num_steps}")

    def move(state, target: Target, generator, chol: Tensor):
        d = state.z.shape[-1]
        step_chol = chol * (state.scale.to(chol.dtype) / math.sqrt(d))[:, None, None]
        accepted = torch.zeros_like(state.log_prior)
        jump = torch.zeros_like(state.log_prior)
        for _ in range(num_steps):
            step = _randn(state.z, generator) @ step_chol.mT
            z_new = state.z + step
            lp, ll = target.evaluate(z_new)
            log_ratio = (
                lp + tempered(ll, state.tau) - state.log_prior - tempered(state.loglik, state.tau)
            )
            acc = _accept(log_ratio, generator)
            state = state._replace(
                z=torch.where(acc[..., None], z_new, state.z),
                log_prior=torch.where(acc, lp, state.log_prior),
                loglik=torch.where(acc, ll, state.loglik),
            )
            accepted += acc
            jump += torch.where(acc, _whitened_sq(step, chol), 0.0)
        info = MoveInfo((accepted / num_steps).mean(-1), num_steps, (jump / num_steps).mean(-1))
        return state, info

    move.target_acceptance = target_acceptance
    move.initial_scale = 2.38
    move.num_steps = num_steps
    return move


def mala(num_steps: int = 5, target_acceptance: float = 0.574) -> Kernel:
    """Preconditioned Metropolis-adjusted Langevin: z' = z + (h/2) Sigma grad + sqrt(h) L xi.

    h = scale^2 / d^(1/3), Sigma = L L^T the cloud covariance. The Metropolis-Hastings ratio uses
    both proposal densities, so the kernel is exact for pi_tau; needs a differentiable likelihood.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, received {num_steps}")

    def move(state, target: Target, generator, chol: Tensor):
        d = state.z.shape[-1]
        h = (state.scale.to(chol.dtype) ** 2 / d ** (1 / 3))[:, None, None]  # [B, 1, 1]
        sigma = chol @ chol.mT

        def drift(z, grad):
            return z + 0.5 * h * (grad @ sigma.mT)

        def log_q(to, frm_drift):  # log N(to; drift, h Sigma) up to a constant shared by both
            return -0.5 * _whitened_sq(to - frm_drift, chol) / h[..., 0]

        _, _, grad = target.evaluate_with_grad(state.z, state.tau)
        accepted = torch.zeros_like(state.log_prior)
        jump = torch.zeros_like(state.log_prior)
        for _ in range(num_steps):
            mean_fwd = drift(state.z, grad)
            z_new = mean_fwd + torch.sqrt(h) * (_randn(state.z, generator) @ chol.mT)
            lp, ll, grad_new = target.evaluate_with_grad(z_new, state.tau)
            log_ratio = (
                lp
                + tempered(ll, state.tau)
                - state.log_prior
                - tempered(state.loglik, state.tau)
                + log_q(state.z, drift(z_new, grad_new))
                - log_q(z_new, mean_fwd)
            )
            acc = _accept(log_ratio, generator)
            jump += torch.where(acc, _whitened_sq(z_new - state.z, chol), 0.0)
            state = state._replace(
                z=torch.where(acc[..., None], z_new, state.z),
                log_prior=torch.where(acc, lp, state.log_prior),
                loglik=torch.where(acc, ll, state.loglik),
            )
            grad = torch.where(acc[..., None], grad_new, grad)
            accepted += acc
        info = MoveInfo(
            (accepted / num_steps).mean(-1), num_steps + 1, (jump / num_steps).mean(-1)
        )
        return state, info

    move.target_acceptance = target_acceptance
    move.initial_scale = 1.0
    move.num_steps = num_steps
    return move


def hmc(num_steps: int = 2, num_leapfrog: int = 5, target_acceptance: float = 0.65) -> Kernel:
    """Hamiltonian Monte Carlo with mass matrix Sigma^-1 (Sigma the cloud covariance).

    Leapfrog integration in whitened coordinates u = L^-1 z with step size scale / d^(1/4);
    the integrator is volume preserving and reversible, so the Metropolis correction on the
    Hamiltonian makes the kernel exact for pi_tau. Needs a differentiable likelihood.
    """
    if num_steps < 1 or num_leapfrog < 1:
        raise ValueError(
            f"num_steps, num_leapfrog: expected >= 1, received {num_steps}, {num_leapfrog}"
        )

    def move(state, target: Target, generator, chol: Tensor):
        d = state.z.shape[-1]
        eps = (state.scale.to(chol.dtype) / d**0.25)[:, None, None]  # [B, 1, 1]
        _, _, grad = target.evaluate_with_grad(state.z, state.tau)
        accepted = torch.zeros_like(state.log_prior)
        jump = torch.zeros_like(state.log_prior)
        for _ in range(num_steps):
            p0 = _randn(state.z, generator)
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
            acc = _accept(log_ratio, generator)
            jump += torch.where(acc, _whitened_sq(z_new - state.z, chol), 0.0)
            state = state._replace(
                z=torch.where(acc[..., None], z_new, state.z),
                log_prior=torch.where(acc, lp, state.log_prior),
                loglik=torch.where(acc, ll, state.loglik),
            )
            grad = torch.where(acc[..., None], g_new, grad)
            accepted += acc
        info = MoveInfo(
            (accepted / num_steps).mean(-1),
            num_steps * num_leapfrog + 1,
            (jump / num_steps).mean(-1),
        )
        return state, info

    move.target_acceptance = target_acceptance
    move.initial_scale = 0.5
    move.num_steps = num_steps
    return move


_KERNELS = {"rwmh": random_walk_metropolis, "mala": mala, "hmc": hmc}


def get_kernel(kernel: str | Kernel, num_mcmc_steps: int | None = None) -> Kernel:
    """Build a kernel by name ("rwmh", "mala", "hmc") or pass a built kernel through."""
    if callable(kernel):
        return kernel
    if kernel not in _KERNELS:
        raise ValueError(f"kernel: unknown name {kernel!r}; expected one of {sorted(_KERNELS)}")
    return _KERNELS[kernel]() if num_mcmc_steps is None else _KERNELS[kernel](num_mcmc_steps)
