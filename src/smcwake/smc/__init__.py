"""Batched likelihood-tempered sequential Monte Carlo."""

from smcwake.smc.kernels import get_kernel, hmc, mala, random_walk_metropolis, weighted_cholesky
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
