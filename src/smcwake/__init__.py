"""smcwake: amortized inference by inclusive-KL minimization with likelihood-tempered SMC."""

from smcwake.model import Model

__all__ = ["Model"]
__version__ = "0.1.0"
