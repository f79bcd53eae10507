"""The default move: gradients when the likelihood has them, mixture jumps, steps set by mixing.

``run_smc(model, x)`` and ``fit`` use :func:`auto_kernel` unless told otherwise. It is

    until_decorrelated(local, jumps=mixture_independence(4))

with ``local`` a preconditioned Langevin step (MALA) when the likelihood is differentiable and a
random-walk step when it is not:

* the mixture-independence jumps keep every mode of a multimodal posterior (docs/KERNELS.md):
  at least four per stage, and where the particle cloud shows modes (the fitted mixture beats
  one Gaussian out of sample) more, until 95% of the particles have accepted one, since only
  particles that jump rebalance the modes' masses after each reweighting
  (:func:`~smcwake.smc.multimodal.mixture_independence`); on an interval or box prior, in a
  run in unconstrained coordinates u, the jumps act in the prior's coordinates z, where
  modes cut by a wall keep a shape Gaussian components fit
  (:func:`~smcwake.smc.unconstrained.in_prior_coordinates`);
* the local steps continue, per observation, until the particles have decorrelated from where
  the stage started (:func:`~smcwake.smc.mixing.until_decorrelated`), so the number of steps
  follows what mixing needs: a few in low dimension, more as the dimension grows, most for the
  random walk, whose steps shrink as 1/sqrt(d) where Langevin's shrink as d^(-1/6)
  (Roberts & Rosenthal, 1998).

Whether the likelihood is differentiable is decided once per run, at its first evaluation
(:func:`probe_gradients`): the initial particles are evaluated with autograd and the gradient of
the log target is taken. Gradients are used only if that works and gives usable values; a
likelihood computed in numpy, under ``torch.no_grad``, through ``detach`` or through a
piecewise-constant operation (rounding, comparisons) falls back to the random walk. The choice is
logged at INFO level by ``smcwake.smc.auto``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.mh import Kernel, MoveInfo, Target
from smcwake.smc.mixing import until_decorrelated
from smcwake.smc.multimodal import mixture_independence
from smcwake.smc.steppers import mala_stepper, random_walk_stepper
from smcwake.smc.unconstrained import in_prior_coordinates

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["GradientProbe", "probe_gradients", "auto_kernel"]

logger = logging.getLogger(__name__)


class GradientProbe(NamedTuple):
    """The first evaluation of a run, and whether its gradients are usable."""

    log_prior: Tensor  # [B, K]
    loglik: Tensor  # [B, K]
    usable: bool
    reason: str  # why not (empty when usable)
    evaluations: int  # likelihood evaluations per particle it took (1, or 2 after a retry)


def probe_gradients(target: Target, z: Tensor) -> GradientProbe:
    """Evaluate the model at z with autograd, and check the gradient of the log target.

    The gradients are usable when the log-likelihood has an autograd graph, the backward pass
    runs, every gradient at a point of positive likelihood is finite, and the gradients are not
    all zero while the log-likelihood varies between particles (which a piecewise-constant or
    detached computation gives). If evaluating with autograd raises, the model is evaluated again
    without it (and an error then is raised as it is).

    Shapes: z [B, K, d] -> GradientProbe with [B, K] tensors.
    """
    try:
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            log_prior, loglik = target.evaluate(zg)
            if not loglik.requires_grad:
                return GradientProbe(
                    log_prior.detach(),
                    loglik.detach(),
                    False,
                    "the log-likelihood carries no autograd graph (computed outside torch, "
                    "under no_grad or detached)",
                    1,
                )
            finite = torch.isfinite(loglik)
            (grad,) = torch.autograd.grad(
                torch.where(finite, loglik, 0.0).sum(), zg, allow_unused=True
            )
    except Exception as err:  # noqa: BLE001 - any failure means: no gradients
        log_prior, loglik = target.evaluate(z.detach())
        reason = f"evaluating it with autograd raised {type(err).__name__}: {err}"
        return GradientProbe(log_prior, loglik, False, reason, 2)
    log_prior, loglik = log_prior.detach(), loglik.detach()
    if grad is None:
        grad = torch.zeros_like(z)
    at = finite[..., None].expand_as(grad)
    bad = int((~torch.isfinite(grad) & at).any(-1).sum())
    if bad:
        return GradientProbe(
            log_prior, loglik, False, f"non-finite gradients at {bad} initial particles", 1
        )
    top = torch.where(finite, loglik, -math.inf).amax(-1)
    bottom = torch.where(finite, loglik, math.inf).amin(-1)
    varies = bool((top > bottom).any())
    if varies and bool((torch.where(at, grad, 0.0) == 0).all()):
        return GradientProbe(
            log_prior,
            loglik,
            False,
            "its gradient is zero everywhere although it varies (a piecewise-constant or "
            "detached computation)",
            1,
        )
    return GradientProbe(log_prior, loglik, True, "", 1)


def auto_kernel(
    num_steps: int | None = None,
    *,
    target_correlation: float = 0.1,
    num_jumps: int = 4,
) -> Kernel:
    """The default kernel: mixture jumps, then Langevin or random-walk steps until decorrelated.

    ``run_smc`` calls ``kernel.choose(differentiable)`` once, after :func:`probe_gradients` on
    the initial particles, and runs the kernel it returns:

    * differentiable: ``until_decorrelated(mala_stepper(), jumps=mixture_independence(
      num_jumps), target_correlation=target_correlation, max_steps=num_steps or 50)``;
    * otherwise the same with ``random_walk_stepper()`` and ``max_steps=num_steps or 250``
      (random-walk steps shrink as 1 / sqrt(d): 100 dimensions need about 150 per stage).

    Called directly (outside ``run_smc``), the kernel probes the gradients at every call.
    ``num_jumps = 0`` leaves the mixture jumps out (for posteriors known to be unimodal). Four
    jumps rather than two: on two-moons, where about 60% of the jumps are accepted, the
    particles that two jumps left in place needed 18 local steps per stage to decorrelate, with
    four 7 (2.3 instead of 4.2 times the evaluations of the previous default); where the jumps
    are never accepted (50 Gaussian dimensions) the two extra cost about 10%. ``num_jumps`` is
    the least number: where the cloud shows modes, the jumps continue until 95% of the
    particles have moved (at most 30 per stage). On the four curved modes of the SLCP model
    four fixed jumps left mode masses up to 4.9 binomial standard errors off, and the local
    steps, which cannot cross between modes, ran to their cap of 50 per stage; the adaptive
    jumps (19 per stage) keep the masses within 2 standard errors at about half the
    evaluations (docs/KERNELS.md). On unimodal posteriors the jumps stay at four.

    Shapes: as for any kernel.

    >>> move = auto_kernel()
    >>> move.choose(True).name, move.choose(False).name
    ('mixture+mala*', 'mixture+rwmh*')
    """
    if num_jumps < 0:
        raise ValueError(f"num_jumps: expected >= 0, received {num_jumps!r}")
    if num_steps is not None and num_steps < 1:
        raise ValueError(
            f"num_steps: expected >= 1 (the most local steps per stage), received {num_steps!r}"
        )
    # on an interval or box run in u, the mixture is fitted to the particles in z
    jumps = in_prior_coordinates(mixture_independence(num_jumps)) if num_jumps else None
    built = {
        True: until_decorrelated(
            mala_stepper(),
            jumps=jumps,
            target_correlation=target_correlation,
            max_steps=num_steps or 50,
        ),
        False: until_decorrelated(
            random_walk_stepper(),
            jumps=jumps,
            target_correlation=target_correlation,
            max_steps=num_steps or 250,
        ),
    }

    def choose(differentiable: bool) -> Kernel:
        return built[bool(differentiable)]

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        probe = probe_gradients(target, state.z)
        return choose(probe.usable)(state, target, generator, chol)

    return make_kernel(
        move,
        target_acceptance=built[True].target_acceptance,
        initial_scale=built[True].initial_scale,
        num_steps=built[True].num_steps,
        name="auto",
        adaptation_gain=built[True].adaptation_gain,
        choose=choose,
    )
