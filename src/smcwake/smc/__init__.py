"""Batched likelihood-tempered sequential Monte Carlo."""

from smcwake.smc.kernels import (
    KERNEL_NAMES,
    adaptive_steps,
    compose,
    encoder_independence,
    get_kernel,
    hmc,
    local_random_walk,
    mala,
    mixture_independence,
    mixture_then_rwmh,
    random_walk_metropolis,
    weighted_cholesky,
)
from smcwake.smc.mh import Kernel, MoveInfo, Target
from smcwake.smc.resampling import (
    RESAMPLERS,
    ess,
    get_resampler,
    multinomial,
    residual,
    stratified,
    systematic,
)
from smcwake.smc.sampler import SMCResult, SMCState, run_smc, smc_stage
from smcwake.smc.tempering import conditional_ess, next_temperature, tempered

__all__ = [
    "KERNEL_NAMES",
    "Kernel",
    "MoveInfo",
    "Target",
    "adaptive_steps",
    "compose",
    "encoder_independence",
    "local_random_walk",
    "mixture_independence",
    "mixture_then_rwmh",
    "RESAMPLERS",
    "SMCResult",
    "SMCState",
    "conditional_ess",
    "ess",
    "get_kernel",
    "get_resampler",
    "hmc",
    "mala",
    "multinomial",
    "next_temperature",
    "random_walk_metropolis",
    "residual",
    "run_smc",
    "smc_stage",
    "stratified",
    "systematic",
    "tempered",
    "weighted_cholesky",
]
