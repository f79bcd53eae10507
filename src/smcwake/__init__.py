"""smcwake: amortized inference by inclusive-KL minimization with likelihood-tempered SMC.

The short path is :func:`fit`; the pieces under it stay importable: :func:`run_smc` (batched
likelihood-tempered SMC), :class:`ParticleBank` (per-observation SMC runs and the evidence-weighted
views of SMC-Wake), :mod:`smcwake.objectives` (every method's loss as a plain function),
:mod:`smcwake.encoders` and :mod:`smcwake.diagnostics`. :func:`fit_distributed` (several
processes, :mod:`smcwake.distributed`) is imported on first use.
"""

from typing import Any

from smcwake.bank import ParticleBank
from smcwake.encoders import (
    Encoder,
    FlowEncoder,
    GaussianEncoder,
    MixtureDensityEncoder,
    build_encoder,
)
from smcwake.model import Model
from smcwake.objectives import METHOD_NAMES, get_objective
from smcwake.smc import SMCResult, run_smc
from smcwake.train import FitResult, SMCOptions, TrainConfig, fit

__all__ = [
    "METHOD_NAMES",
    "Encoder",
    "FitResult",
    "FlowEncoder",
    "GaussianEncoder",
    "MixtureDensityEncoder",
    "Model",
    "ParticleBank",
    "SMCOptions",
    "SMCResult",
    "TrainConfig",
    "build_encoder",
    "fit",
    "fit_distributed",
    "get_objective",
    "run_smc",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "fit_distributed":
        from smcwake.distributed import fit_distributed

        return fit_distributed
    if name == "OBJECTIVES":
        from smcwake.objectives import _deprecated_registry

        return _deprecated_registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
