"""Batched likelihood-tempered sequential Monte Carlo."""

from smcwake.smc.auto import auto_kernel, probe_gradients
from smcwake.smc.base import Kernel, MoveInfo, MoveKernel, SMCState, Target, make_kernel
from smcwake.smc.crosswise import crosswise
from smcwake.smc.kernels import (
    DEFAULT_KERNEL,
    ENCODER_KERNEL_NAMES,
    KERNEL_NAMES,
    adaptive_steps,
    compose,
    encoder_independence,
    encoder_then_mala,
    encoder_then_rwmh,
    get_kernel,
    hmc,
    local_random_walk,
    mala,
    mixture_independence,
    mixture_then_rwmh,
    random_walk_metropolis,
    weighted_cholesky,
)
from smcwake.smc.mixing import start_end_correlation, until_decorrelated
from smcwake.smc.options import SMCOptions
from smcwake.smc.precondition import shrunk_cholesky, shrunk_covariance
from smcwake.smc.resampling import (
    RESAMPLERS,
    ess,
    get_resampler,
    multinomial,
    residual,
    stratified,
    systematic,
)
from smcwake.smc.sampler import SMCResult, run_smc, smc_stage
from smcwake.smc.steppers import (
    Stepper,
    fixed_steps,
    hmc_stepper,
    mala_stepper,
    random_walk_stepper,
)
from smcwake.smc.tempering import conditional_ess, next_temperature, tempered
from smcwake.smc.wastefree import waste_free

__all__ = [
    "DEFAULT_KERNEL",
    "ENCODER_KERNEL_NAMES",
    "KERNEL_NAMES",
    "Kernel",
    "MoveInfo",
    "MoveKernel",
    "make_kernel",
    "Target",
    "adaptive_steps",
    "auto_kernel",
    "crosswise",
    "fixed_steps",
    "hmc_stepper",
    "mala_stepper",
    "probe_gradients",
    "random_walk_stepper",
    "shrunk_cholesky",
    "shrunk_covariance",
    "start_end_correlation",
    "Stepper",
    "until_decorrelated",
    "waste_free",
    "compose",
    "encoder_independence",
    "encoder_then_mala",
    "encoder_then_rwmh",
    "local_random_walk",
    "mixture_independence",
    "mixture_then_rwmh",
    "RESAMPLERS",
    "SMCOptions",
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
