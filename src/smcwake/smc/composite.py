"""Kernels built from kernels: a fixed sequence of moves, and a number of steps set by mixing.

A composition of Markov kernels that each leave pi_tau invariant leaves pi_tau invariant (Tierney,
1994), so moves with complementary strengths can run one after the other within a stage: jumps
between modes (:func:`~smcwake.smc.multimodal.mixture_independence`) followed by local steps
(:func:`~smcwake.smc.multimodal.local_random_walk` or the plain random walk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from smcwake.smc.base import make_kernel
from smcwake.smc.mh import ADAPTATION_GAIN, Kernel, MoveInfo, Target

if TYPE_CHECKING:
    from smcwake.smc.base import SMCState

__all__ = ["compose", "adaptive_steps"]


def _uses_scale(kernel: Kernel) -> bool:
    return bool(getattr(kernel, "uses_scale", True))


def _unique_names(kernels: tuple[Kernel, ...]) -> list[str]:
    names: list[str] = []
    for i, k in enumerate(kernels):
        base = str(getattr(k, "name", f"kernel{i}"))
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def compose(*kernels: Kernel) -> Kernel:
    """Run the given kernels one after the other in every call.

    Each sub-kernel is invariant for pi_tau, hence so is their product (Tierney, 1994). All
    sub-kernels receive the same cloud Cholesky factor and step scale. The step scale is adapted
    by the sampler from the acceptance of the first sub-kernel that reads ``state.scale`` (the
    *lead*), so the composite reports the lead's acceptance as its ``acceptance_rate`` and takes
    its ``target_acceptance`` and ``initial_scale``; when no sub-kernel reads the scale, the first
    one leads. ``MoveInfo.extra`` carries ``"acceptance/<name>"`` and ``"sq_jump/<name>"`` for
    every sub-kernel (names from each kernel's ``name``, numbered when repeated) and passes on
    the sub-kernels' own diagnostics.

    Shapes: as for any kernel.

    References:
        Tierney (1994), Markov chains for exploring posterior distributions, Ann. Statist.

    >>> from smcwake.smc.kernels import random_walk_metropolis
    >>> from smcwake.smc.multimodal import mixture_independence
    >>> move = compose(mixture_independence(3), random_walk_metropolis(5))
    >>> move.name, move.num_steps, move.target_acceptance
    ('mixture+rwmh', 8, 0.234)
    """
    if not kernels:
        raise ValueError("compose: expected at least one kernel, received none")
    for i, k in enumerate(kernels):
        if not callable(k) or not hasattr(k, "num_steps"):
            raise TypeError(
                f"compose: argument {i} is not a built kernel (a callable with num_steps, "
                f"target_acceptance and initial_scale), received {type(k).__name__}; call the "
                "kernel's factory first, e.g. random_walk_metropolis(5)"
            )
    names = _unique_names(kernels)
    scaled = [i for i, k in enumerate(kernels) if _uses_scale(k)]
    lead = scaled[0] if scaled else 0

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        extra: dict[str, Tensor] = {}
        evals = 0
        jump = torch.zeros_like(state.scale)
        lead_rate = jump
        for i, (name, kernel) in enumerate(zip(names, kernels, strict=True)):
            state, info = kernel(state, target, generator, chol)
            extra[f"acceptance/{name}"] = info.acceptance_rate
            extra[f"sq_jump/{name}"] = info.sq_jump
            for key, value in (info.extra or {}).items():
                extra[key if key not in extra else f"{key}/{name}"] = value
            evals += info.evals_per_particle
            jump = jump + info.sq_jump * kernel.num_steps
            if i == lead:
                lead_rate = info.acceptance_rate
        total_steps = sum(k.num_steps for k in kernels)
        return state, MoveInfo(lead_rate, evals, jump / total_steps, extra)

    return make_kernel(
        move,
        target_acceptance=kernels[lead].target_acceptance,
        initial_scale=kernels[lead].initial_scale,
        num_steps=sum(k.num_steps for k in kernels),
        name="+".join(names),
        uses_scale=bool(scaled),
        adaptation_gain=getattr(kernels[lead], "adaptation_gain", ADAPTATION_GAIN),
    )


def _rows(state: SMCState, idx: Tensor) -> SMCState:
    return type(state)(*(t[idx] for t in state))


def _put_rows(full: SMCState, idx: Tensor, part: SMCState) -> SMCState:
    return type(full)(*(f.index_copy(0, idx, p) for f, p in zip(full, part, strict=True)))


def adaptive_steps(kernel: Kernel, *, min_moved: float = 0.9, max_calls: int = 10) -> Kernel:
    """Repeat ``kernel`` until a share ``min_moved`` of the particles has moved, per observation.

    After each call of ``kernel``, an observation whose share of particles that moved at least
    once in this stage (accepted any proposal) reaches ``min_moved`` stops; the others get
    another call, up to ``max_calls``. This is the rule of Drovandi & Pettitt (2011), who set the
    number of steps so that a particle stays put with probability at most 1 - ``min_moved``,
    measured directly. Copies made by resampling thus separate before the next reweighting.

    Exactness: every call is invariant for pi_tau, so any fixed number of calls is. Here the
    number is chosen from the share of moved particles, a cloud average in which each particle
    counts 1/K: like the cloud-fitted proposals, the rule adapts the kernel to the particle
    system and leaves the method consistent as K grows (Beskos, Jasra, Kantas & Thiery, 2016).
    Use a fixed number of steps where an exactly fixed kernel is required.

    Observations that stop are not evaluated again, and ``evals_per_particle`` is counted per
    observation (a float64 tensor [B]: crosswise kernels report fractions when their folds
    differ); ``MoveInfo.extra`` adds ``"calls"`` and ``"moved"`` (the
    number of calls and the final share of moved particles, per observation), and averages the
    inner kernel's diagnostics over its calls.

    Shapes: as for any kernel.

    References:
        Drovandi & Pettitt (2011), Estimation of parameters for macroparasite population
        evolution using approximate Bayesian computation, Biometrics.
        Beskos, Jasra, Kantas & Thiery (2016), On the convergence of adaptive sequential Monte
        Carlo methods, Ann. Appl. Probab.
    """
    if not 0.0 < min_moved <= 1.0:
        raise ValueError(f"min_moved: expected a fraction in (0, 1], received {min_moved!r}")
    if max_calls < 1:
        raise ValueError(f"max_calls: expected >= 1, received {max_calls!r}")

    def move(
        state: SMCState, target: Target, generator: torch.Generator | None, chol: Tensor
    ) -> tuple[SMCState, MoveInfo]:
        B = state.z.shape[0]
        start = state.z
        dtype = state.scale.dtype
        calls = torch.zeros(B, dtype=dtype, device=start.device)
        acc_sum = torch.zeros(B, dtype=dtype, device=start.device)
        jump_sum = torch.zeros_like(acc_sum)
        extra_sum: dict[str, Tensor] = {}
        active = torch.arange(B, device=start.device)
        evals = torch.zeros(B, dtype=torch.float64, device=start.device)
        for _ in range(max_calls):
            everyone = active.numel() == B
            part = state if everyone else _rows(state, active)
            sub_target = target if everyone else target.select(active)
            part, info = kernel(part, sub_target, generator, chol[active])
            state = part if everyone else _put_rows(state, active, part)
            evals[active] += info.evals_per_particle
            calls[active] += 1
            acc_sum[active] += info.acceptance_rate.to(dtype)
            jump_sum[active] += info.sq_jump.to(dtype)
            for key, value in (info.extra or {}).items():
                total = extra_sum.setdefault(key, torch.zeros_like(acc_sum))
                total[active] += value.to(dtype)
            moved = (state.z[active] != start[active]).any(-1).to(dtype).mean(-1)
            active = active[moved < min_moved]
            if active.numel() == 0:
                break
        moved = (state.z != start).any(-1).to(dtype).mean(-1)
        extra = {key: value / calls for key, value in extra_sum.items()}
        extra.update(calls=calls, moved=moved)
        return state, MoveInfo(acc_sum / calls, evals, jump_sum / calls, extra)

    return make_kernel(
        move,
        target_acceptance=kernel.target_acceptance,
        initial_scale=kernel.initial_scale,
        num_steps=kernel.num_steps,
        name=f"adaptive({getattr(kernel, 'name', 'kernel')})",
        uses_scale=_uses_scale(kernel),
        adaptation_gain=getattr(kernel, "adaptation_gain", ADAPTATION_GAIN),
    )
