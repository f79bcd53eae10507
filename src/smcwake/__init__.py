"""smcwake: amortized inference by inclusive-KL minimization with likelihood-tempered SMC.

The short path is :func:`fit`; the pieces under it stay importable: :func:`run_smc` (batched
likelihood-tempered SMC), :class:`ParticleBank` (per-observation SMC runs and the evidence-weighted
views of SMC-Wake), :mod:`smcwake.objectives` (every method's loss as a plain function),
:mod:`smcwake.encoders` and :mod:`smcwake.diagnostics`. After training: ``fit(...).posterior``
(a :class:`Posterior`: sample, ``save``, ``refine`` for exact SMC started from the encoder) and
:func:`load` (a saved posterior in a fresh process, without the model or the data),
:func:`check_calibration` (SBC, expected coverage and TARP in one call), :mod:`smcwake.plot`
(pairplot, coverage curves, rank histograms; needs ``smcwake[plot]``) and
:func:`to_inference_data` (ArviZ; needs ``smcwake[arviz]``). :func:`fit_distributed` (several
processes, :mod:`smcwake.distributed`) is imported on first use.
"""

from typing import Any

from smcwake import plot
from smcwake.bank import ParticleBank
from smcwake.calibration import CalibrationResult, check_calibration
from smcwake.encoders import (
    Encoder,
    FlowEncoder,
    GaussianEncoder,
    MixtureDensityEncoder,
    build_encoder,
)
from smcwake.interop import to_inference_data
from smcwake.model import Model
from smcwake.objectives import METHOD_NAMES, get_objective
from smcwake.posterior import Posterior, RefinedPosterior, load
from smcwake.smc import SMCResult, run_smc
from smcwake.train import FitResult, SMCOptions, TrainConfig, fit

__all__ = [
    "METHOD_NAMES",
    "CalibrationResult",
    "Encoder",
    "FitResult",
    "FlowEncoder",
    "GaussianEncoder",
    "MixtureDensityEncoder",
    "Model",
    "ParticleBank",
    "Posterior",
    "RefinedPosterior",
    "SMCOptions",
    "SMCResult",
    "TrainConfig",
    "build_encoder",
    "check_calibration",
    "fit",
    "fit_distributed",
    "get_objective",
    "load",
    "plot",
    "run_smc",
    "to_inference_data",
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
