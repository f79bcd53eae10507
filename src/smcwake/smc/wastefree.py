"""Waste-free SMC (Dau & Chopin, 2022): keep every state of short MCMC chains as a particle.

A standard stage resamples K particles and moves each with n MCMC steps, keeping only the last
state of each chain: n K likelihood evaluations for K particles. Waste-free SMC resamples only
M = K / P ancestors and runs each for P - 1 steps, keeping all P states of every chain as the K
particles of the next stage: about K evaluations per stage. The states of one chain are
correlated, but each is marginally distributed as the tempered target when its ancestor is, so
the equally weighted K states are a valid (correlated) particle system, and the product of the
evidence increments stays an unbiased estimate of p(x) (Dau & Chopin, 2022).

:func:`waste_free` is a kernel that does this. It draws its own ancestors (``resamples = True``
tells the sampler to skip its resampling step), so every stage resamples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from smcwake.smc.auto import probe_gradients
from smcwake.smc.base import make_kernel
from smcwake.smc.crosswise import fold_count, fold_mean, join_folds, split_folds
from smcwake.smc.mh import Kernel, MoveInfo, Target
from smcwake.smc.mixing import correlation_noise, start_end_correlation
from smcwake.smc.resampling import systematic
from smcwake.smc.steppers import Stepper, mala_stepper, random_walk_stepper

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["waste_free"]


def _chains(stepper: Stepper, chain_length: int) -> Kernel:
    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        B, K, d = state.z.shape
        P = min(chain_length, K)
        M = math.ceil(K / P)
        ancestors = systematic(state.log_weights, M, generator=generator)  # [B, M]
        sub = state._replace(
            z=torch.gather(state.z, 1, ancestors[..., None].expand(-1, -1, d)),
            log_prior=torch.gather(state.log_prior, 1, ancestors),
            loglik=torch.gather(state.loglik, 1, ancestors),
            log_weights=torch.full(
                (B, M), -math.log(M), dtype=state.log_weights.dtype, device=state.z.device
            ),
        )
        start = sub.z
        # chains move crosswise: each fold of ancestors with the metric of the other folds
        F = fold_count(M)
        if F > 1:
            folds = split_folds(sub, target, F)
            work, work_target, work_chol = folds.state, folds.target, folds.chol
        else:
            work, work_target, work_chol = sub, target, chol
        zs, lps, lls = [sub.z], [sub.log_prior], [sub.loglik]
        carry = stepper.start(work, work_target, work_chol)
        accepted = torch.zeros(work.z.shape[0], dtype=sub.log_prior.dtype, device=sub.z.device)
        jump = torch.zeros_like(accepted)
        for _ in range(P - 1):
            work, carry, acc, step_jump = stepper.step(
                work, carry, work_target, generator, work_chol
            )
            accepted += acc.to(accepted.dtype).mean(-1)
            jump += step_jump.mean(-1)
            sub = join_folds(folds, work, sub) if F > 1 else work
            zs.append(sub.z)
            lps.append(sub.log_prior)
            lls.append(sub.loglik)
        if F > 1:
            accepted, jump = fold_mean(accepted, B, F), fold_mean(jump, B, F)
        steps = max(P - 1, 1)
        correlation = start_end_correlation(start, sub.z, sub.log_weights)
        noise = correlation_noise(start, sub.log_weights)
        state = state._replace(
            z=torch.stack(zs, 2).reshape(B, M * P, d)[:, :K],  # chain by chain
            log_prior=torch.stack(lps, 2).reshape(B, M * P)[:, :K],
            loglik=torch.stack(lls, 2).reshape(B, M * P)[:, :K],
            log_weights=torch.full_like(state.log_weights, -math.log(K)),
        )
        evals = M * (stepper.start_evals + (P - 1) * stepper.step_evals) / K
        if F > 1:  # the padding of the last fold of ancestors is evaluated too
            evals = evals * F * folds.size / M
        info = MoveInfo(
            (accepted / steps).to(state.z.dtype),
            torch.full((B,), evals, dtype=torch.float64, device=state.z.device),
            (jump / steps).to(state.z.dtype),
            {"start_end_correlation": correlation, "correlation_noise": noise},
        )
        return state, info

    return make_kernel(
        move,
        target_acceptance=stepper.target_acceptance,
        initial_scale=stepper.initial_scale,
        num_steps=chain_length,
        name=f"waste-free({stepper.name})",
        adaptation_gain=stepper.adaptation_gain,
        resamples=True,
    )


def waste_free(chain_length: int = 10, *, local: str | Stepper = "auto") -> Kernel:
    """Waste-free move: M = ceil(K / P) ancestors by weight, each run for P - 1 steps, all kept.

    P = ``chain_length``. The K particles of the next stage are the P states of each of the M
    chains, equally weighted (the last chain is cut short when P does not divide K). The chains
    move crosswise (:mod:`smcwake.smc.crosswise`): the ancestors are cut into folds, each moved
    with the shrunk covariance of the other folds' ancestors. ``local``
    is the step: "mala", "rwmh", a :class:`~smcwake.smc.steppers.Stepper`, or "auto" (MALA when
    the likelihood is differentiable, the random walk otherwise; ``run_smc`` decides at the
    first evaluation, as for the default kernel). The stage's start/end correlation is that of
    each chain's first and last state. Likelihood evaluations per stage: M (P - 1) (plus M for
    MALA's gradients at the ancestors), about K.

    Shapes: as for any kernel.

    References:
        Dau & Chopin (2022), Waste-free sequential Monte Carlo, J. R. Stat. Soc. B.

    >>> waste_free(10, local="mala").name
    'waste-free(mala)'
    """
    if chain_length < 1:
        raise ValueError(f"chain_length: expected >= 1, received {chain_length!r}")
    steppers = {"mala": mala_stepper, "rwmh": random_walk_stepper}
    if isinstance(local, Stepper):
        return _chains(local, chain_length)
    if local in steppers:
        return _chains(steppers[local](), chain_length)
    if local != "auto":
        raise ValueError(
            f"local: expected 'auto', 'mala', 'rwmh' or a Stepper, received {local!r}"
        )
    built = {
        True: _chains(mala_stepper(), chain_length),
        False: _chains(random_walk_stepper(), chain_length),
    }

    def move(state, target, generator, chol):
        return built[probe_gradients(target, state.z).usable](state, target, generator, chol)

    lead = built[True]
    return make_kernel(
        move,
        target_acceptance=lead.target_acceptance,
        initial_scale=lead.initial_scale,
        num_steps=lead.num_steps,
        name="waste-free",
        uses_scale=lead.uses_scale,
        adaptation_gain=lead.adaptation_gain,
        resamples=lead.resamples,
        choose=lambda usable: built[bool(usable)],
    )
