"""smcwake: amortized inference by inclusive-KL minimization with likelihood-tempered SMC."""

from smcwake.model import Model
from smcwake.smc import SMCResult, run_smc

__all__ = ["Model", "SMCResult", "run_smc"]
__version__ = "0.1.0"
