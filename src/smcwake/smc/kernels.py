"""MCMC move kernels, each invariant for the tempered target pi_tau(z) ∝ p(z) p(x | z)^tau.

A kernel is built by a function and is called like a function (a
:class:`~smcwake.smc.base.MoveKernel`: the move and its settings, made by
:func:`~smcwake.smc.base.make_kernel`)::

    move = random_walk_metropolis(num_steps=5)
    state, info = move(state, target, generator, chol)

``state`` is an :class:`~smcwake.smc.base.SMCState` whose ``tau`` is the temperature to target
and whose ``scale`` [B] is the kernel's step scale for each observation (held fixed during one
call, so each call is an exact Metropolis-Hastings kernel; the sampler adapts it between stages
from the returned acceptance rate). Log-densities of the current particles are cached in the state
and never recomputed. Proposals are never clamped to the prior support: outside it the log prior
is ``-inf`` and the move is rejected. The contract lives in
:mod:`smcwake.smc.base`, the shared building blocks in :mod:`smcwake.smc.mh`.

All kernels precondition with the Cholesky factor of the weighted particle covariance, its
correlations shrunk when the cloud holds few distinct points for its dimension, which the sampler
computes once per stage (:func:`~smcwake.smc.precondition.shrunk_cholesky`). The random walk,
MALA and HMC move *crosswise* (:mod:`smcwake.smc.crosswise`): each fold of particles with the
metric of the other folds. This module holds those three and the registry of kernels by name
(:func:`get_kernel`); the default kernel is :func:`~smcwake.smc.auto.auto_kernel` ("auto"), the
single steps are in :mod:`smcwake.smc.steppers`, kernels for multimodal posteriors in
:mod:`smcwake.smc.multimodal`, combinators in :mod:`smcwake.smc.composite` and
:mod:`smcwake.smc.mixing`, waste-free SMC in :mod:`smcwake.smc.wastefree`.
"""

from __future__ import annotations

from smcwake.smc.auto import auto_kernel
from smcwake.smc.composite import adaptive_steps, compose
from smcwake.smc.crosswise import crosswise
from smcwake.smc.mh import Kernel, MoveInfo, Target, weighted_cholesky
from smcwake.smc.multimodal import (
    ProposalEncoder,
    encoder_independence,
    local_random_walk,
    mixture_independence,
)
from smcwake.smc.steppers import fixed_steps, hmc_stepper, mala_stepper, random_walk_stepper
from smcwake.smc.wastefree import waste_free

__all__ = [
    "Target",
    "MoveInfo",
    "Kernel",
    "weighted_cholesky",
    "random_walk_metropolis",
    "mala",
    "hmc",
    "mixture_independence",
    "encoder_independence",
    "local_random_walk",
    "compose",
    "adaptive_steps",
    "mixture_then_rwmh",
    "mixture_then_local",
    "encoder_then_rwmh",
    "encoder_then_mala",
    "KERNEL_NAMES",
    "ENCODER_KERNEL_NAMES",
    "get_kernel",
]


def random_walk_metropolis(num_steps: int = 5, target_acceptance: float = 0.234) -> Kernel:
    """Random-walk Metropolis with proposal N(z, (scale^2 / d) Sigma), Sigma the cloud covariance.

    The proposal is symmetric, so the acceptance ratio is pi_tau(z') / pi_tau(z); the kernel
    satisfies detailed balance for pi_tau at fixed ``scale``. Initial scale 2.38 (Roberts,
    Gelman & Gilks, 1997), adapted between stages toward ``target_acceptance``.
    """
    return crosswise(fixed_steps(random_walk_stepper(target_acceptance), num_steps))


def mala(num_steps: int = 5, target_acceptance: float = 0.574) -> Kernel:
    """Preconditioned Metropolis-adjusted Langevin: z' = z + (h/2) Sigma grad + sqrt(h) L xi.

    h = scale^2 / d^(1/3), Sigma = L L^T the cloud covariance. The Metropolis-Hastings ratio uses
    both proposal densities, so the kernel is exact for pi_tau; needs a differentiable likelihood.
    """
    return crosswise(fixed_steps(mala_stepper(target_acceptance), num_steps))


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
    return crosswise(fixed_steps(hmc_stepper(num_leapfrog, target_acceptance), num_steps))


def mixture_then_rwmh(num_steps: int = 5, mixture_share: float = 0.3) -> Kernel:
    """``compose(mixture_independence(m), random_walk_metropolis(num_steps - m))``.

    m = round(mixture_share * num_steps) (at least 1, at most num_steps - 1) independence steps
    from the crosswise-fitted cloud mixture, which carry particles between modes, then random-walk
    steps with the cloud covariance, which are cheap and mix locally. Registered as
    "mixture+rwmh" (the default before "auto", which adds steps until the particles decorrelate
    and uses gradients when it can): with the default 5 steps (2 + 3) it costs as many likelihood
    evaluations as the plain random walk's default and keeps every mode's mass (see
    ``docs/KERNELS.md``).

    >>> move = mixture_then_rwmh()
    >>> move.name, move.num_steps
    ('mixture+rwmh', 5)
    """
    m = _split(num_steps, mixture_share)
    return compose(mixture_independence(m), random_walk_metropolis(num_steps - m))


def mixture_then_local(num_steps: int = 5, mixture_share: float = 0.3) -> Kernel:
    """``compose(mixture_independence(m), local_random_walk(num_steps - m))``.

    m as in :func:`mixture_then_rwmh`; the local steps use the covariance of each particle's
    mixture component. Fewer likelihood evaluations wasted within modes than with the cloud
    covariance, at a higher cost per step in arithmetic.
    """
    m = _split(num_steps, mixture_share)
    return compose(mixture_independence(m), local_random_walk(num_steps - m))


def _split(num_steps: int, share: float) -> int:
    if num_steps < 2:
        raise ValueError(f"num_steps: expected >= 2 for a composite kernel, received {num_steps}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"mixture_share: expected a fraction in (0, 1), received {share!r}")
    return min(num_steps - 1, max(1, round(share * num_steps)))


_ENCODER_SHARE = 0.3  # share of an encoder composite's steps that propose from the encoder


def encoder_then_rwmh(
    encoder: ProposalEncoder, num_steps: int = 5, encoder_share: float = _ENCODER_SHARE
) -> Kernel:
    """``compose(encoder_independence(encoder, m), random_walk_metropolis(num_steps - m))``.

    m as in :func:`mixture_then_rwmh`. The independence steps propose from the defensive mixture
    of the encoder q(z | x) and the cloud mixture (see :func:`encoder_independence`), so an
    encoder that already covers the posterior moves particles between its modes in one step and
    a poor one costs only wasted proposals. Registered as "encoder+rwmh"; :func:`smcwake.fit`
    builds it with the encoder being trained.
    """
    m = _split(num_steps, encoder_share)
    return compose(encoder_independence(encoder, m), random_walk_metropolis(num_steps - m))


def encoder_then_mala(
    encoder: ProposalEncoder, num_steps: int = 5, encoder_share: float = _ENCODER_SHARE
) -> Kernel:
    """``compose(encoder_independence(encoder, m), mala(num_steps - m))``: as
    :func:`encoder_then_rwmh` with gradient-based local steps (differentiable likelihoods in
    higher dimensions). Registered as "encoder+mala"."""
    m = _split(num_steps, encoder_share)
    return compose(encoder_independence(encoder, m), mala(num_steps - m))


DEFAULT_KERNEL = "auto"
"""The kernel ``run_smc`` and ``fit`` use when none is named (:func:`auto_kernel`)."""

_KERNELS = {
    "auto": auto_kernel,
    "rwmh": random_walk_metropolis,
    "mala": mala,
    "hmc": hmc,
    "mixture": mixture_independence,
    "local_rwmh": local_random_walk,
    "mixture+rwmh": mixture_then_rwmh,
    "mixture+local_rwmh": mixture_then_local,
    "waste-free": waste_free,
}
KERNEL_NAMES = tuple(_KERNELS)
"""Kernels :func:`get_kernel` builds from a name alone."""

_ENCODER_KERNELS = {"encoder+rwmh": encoder_then_rwmh, "encoder+mala": encoder_then_mala}
ENCODER_KERNEL_NAMES = tuple(_ENCODER_KERNELS)
"""Kernels that also need the encoder (``get_kernel(name, encoder=...)``; ``fit`` passes it)."""


def get_kernel(
    kernel: str | Kernel,
    num_mcmc_steps: int | None = None,
    *,
    encoder: ProposalEncoder | None = None,
) -> Kernel:
    """Build a kernel by name or pass a built kernel through.

    Names: "auto" (the default, :func:`~smcwake.smc.auto.auto_kernel`; ``num_mcmc_steps`` is its
    cap on local steps per stage), "waste-free" (:func:`~smcwake.smc.wastefree.waste_free`;
    ``num_mcmc_steps`` is its chain length), "rwmh", "mala", "hmc", "mixture"
    (:func:`mixture_independence`), "local_rwmh"
    (:func:`local_random_walk`), "mixture+rwmh" (:func:`mixture_then_rwmh`),
    "mixture+local_rwmh" (:func:`mixture_then_local`), and, with ``encoder``, "encoder+rwmh"
    (:func:`encoder_then_rwmh`) and "encoder+mala" (:func:`encoder_then_mala`).
    ``num_mcmc_steps`` is the kernel's number of steps per call (for a composite: its total).

    >>> get_kernel("mixture+rwmh").name
    'mixture+rwmh'
    >>> get_kernel("encoder+rwmh")
    Traceback (most recent call last):
    ...
    ValueError: kernel 'encoder+rwmh' proposes from an encoder: pass encoder= (fit() does)
    """
    if callable(kernel):
        return kernel
    if kernel in _ENCODER_KERNELS:
        if encoder is None:
            raise ValueError(
                f"kernel {kernel!r} proposes from an encoder: pass encoder= (fit() does)"
            )
        build = _ENCODER_KERNELS[kernel]
        return build(encoder) if num_mcmc_steps is None else build(encoder, num_mcmc_steps)
    if kernel not in _KERNELS:
        known = sorted(_KERNELS) + sorted(_ENCODER_KERNELS)
        raise ValueError(f"kernel: unknown name {kernel!r}; expected one of {known}")
    return _KERNELS[kernel]() if num_mcmc_steps is None else _KERNELS[kernel](num_mcmc_steps)
