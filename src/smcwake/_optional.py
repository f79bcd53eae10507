"""Optional dependencies: imported on first use, with an error that names the extra to install.

The core (``import smcwake``, :func:`smcwake.run_smc`, :func:`smcwake.fit`) needs only torch,
zuko, numpy, scipy, tqdm and threadpoolctl. Figures need matplotlib (``smcwake[plot]``), the C2ST
metric and the digits task scikit-learn (``smcwake[sklearn]``), and :mod:`smcwake.interop` ArviZ
(``smcwake[arviz]``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "plot"),
    "sklearn": ("scikit-learn", "sklearn"),
    "arviz": ("arviz", "arviz"),
}
"""Top-level module -> (distribution name on PyPI, smcwake extra that installs it)."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``; if its package is not installed, raise an ImportError naming the extra.

    An ImportError raised *inside* an installed package (one of its own dependencies missing)
    is passed on unchanged, since installing the extra again would not fix it.

    Args:
        module: a dotted module name whose top level is a key of :data:`EXTRAS`.
        purpose: what needs it, for the message (``"smcwake.plot.pairplot"``).

    >>> require("math", "a doctest").sqrt(4.0)
    2.0
    """
    top = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None)
        if top not in EXTRAS or (missing is not None and missing.partition(".")[0] != top):
            raise
        package, extra = EXTRAS[top]
        raise ImportError(
            f"{purpose} needs {package}, which is not installed. Install it with "
            f"`pip install 'smcwake[{extra}]'` (or `pip install {package}`)."
        ) from err
