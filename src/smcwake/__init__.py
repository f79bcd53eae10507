"""smcwake: amortized inference by inclusive-KL minimization with likelihood-tempered SMC.

The short path is :func:`fit`; the pieces under it stay importable: :func:`run_smc` (batched
likelihood-tempered SMC), :class:`ParticleBank` (per-observation SMC runs and the evidence-weighted
views of SMC-Wake), :mod:`smcwake.objectives` (every method's loss as a plain function),
:mod:`smcwake.encoders` and :mod:`smcwake.diagnostics`. After training:
:func:`check_calibration` (SBC, expected coverage and TARP in one call), :mod:`smcwake.plot`
(pairplot, coverage curves, rank histograms; needs ``smcwake[plot]``) and
:func:`to_inference_data` (ArviZ; needs ``smcwake[arviz]``).
"""

from smcwake import plot
from smcwake.bank import ParticleBank
from smcwake.calibration import CalibrationResult, check_calibration
from smcwake.distributed import fit_distributed
from smcwake.encoders import (
    Encoder,
    FlowEncoder,
    GaussianEncoder,
    MixtureDensityEncoder,
    build_encoder,
)
from smcwake.interop import to_inference_data
from smcwake.model import Model
from smcwake.objectives import OBJECTIVES, get_objective
from smcwake.smc import SMCResult, run_smc
from smcwake.train import FitResult, SMCOptions, TrainConfig, fit

__all__ = [
    "OBJECTIVES",
    "CalibrationResult",
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
    "check_calibration",
    "fit",
    "fit_distributed",
    "get_objective",
    "plot",
    "run_smc",
    "to_inference_data",
]
__version__ = "0.1.0"
