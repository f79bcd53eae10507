"""The settings of an SMC run as one value: :class:`SMCOptions`.

``run_smc(model, x, options=SMCOptions(kernel="mala"))`` runs with them, and
``TrainConfig(smc=SMCOptions(...))`` makes :func:`smcwake.fit` use them for every SMC run of
training. The fields are checked when the options are made, so a typo fails before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from smcwake.smc.kernels import DEFAULT_KERNEL, ENCODER_KERNEL_NAMES, get_kernel
from smcwake.smc.resampling import get_resampler
from smcwake.smc.unconstrained import DEFAULT_SPACE, check_space

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from smcwake.smc.base import Kernel

__all__ = ["SMCOptions", "OPTION_NAMES"]


@dataclass(frozen=True)
class SMCOptions:
    """Settings of an SMC run (see :func:`smcwake.run_smc`, which accepts them as ``options=``).

    ``kernel`` is a name :func:`smcwake.run_smc` accepts, or ``"encoder+rwmh"`` /
    ``"encoder+mala"``, which also propose from the encoder being trained (defensively mixed
    with a mixture fitted to the particles; see docs/KERNELS.md), or a built kernel.

    ``space`` says in which coordinates the particles move: "auto" (the default) moves them in
    u = T^{-1}(z), T = ``torch.distributions.biject_to(prior.support)``, when the prior's
    support is a half-line per coordinate and the kernel is given by name, or an interval or
    box of 6 or more dimensions and the kernel is "auto", and in the prior's own coordinates z
    otherwise;
    "unconstrained" and "constrained" force one of the two (see
    :mod:`smcwake.smc.unconstrained` and docs/KERNELS.md).

    >>> SMCOptions(kernel="mala", num_mcmc_steps=5).max_stages
    500
    >>> SMCOptions(kernel="rwm")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: kernel: unknown name 'rwm'; expected one of [...]
    """

    ess_target: float = 0.5
    resample_threshold: float = 0.5
    resampling: str = "systematic"
    kernel: str | Kernel = DEFAULT_KERNEL
    num_mcmc_steps: int | None = None
    max_stages: int = 500
    space: str = DEFAULT_SPACE

    def __post_init__(self) -> None:
        check_space(self.space)
        _check_fraction("smc.ess_target", self.ess_target, open_interval=True)
        _check_fraction("smc.resample_threshold", self.resample_threshold, open_interval=False)
        if (
            isinstance(self.max_stages, bool)
            or not isinstance(self.max_stages, int)
            or (self.max_stages < 1)
        ):
            raise ValueError(
                f"smc.max_stages: expected an integer >= 1, received {self.max_stages!r}"
            )
        get_resampler(self.resampling)
        # an encoder kernel is built during training with the encoder; build it here with a
        # stand-in that is never called, so the name and the step count are checked by the
        # same code that will build it
        encoder = _StandInEncoder() if self.kernel in ENCODER_KERNEL_NAMES else None
        get_kernel(self.kernel, self.num_mcmc_steps, encoder=encoder)


OPTION_NAMES = tuple(f.name for f in fields(SMCOptions))
"""The fields of :class:`SMCOptions`, which are also keyword arguments of ``run_smc``."""


class _StandInEncoder:
    """Has the methods an encoder kernel checks for; validation never calls them."""

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        raise RuntimeError("a stand-in encoder used only to check SMCOptions")

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        raise RuntimeError("a stand-in encoder used only to check SMCOptions")


def _check_fraction(name: str, value: object, *, open_interval: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number, received {value!r}")
    ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name}: expected a fraction in {interval}, received {value!r}")
