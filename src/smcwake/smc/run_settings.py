"""run_smc's settings: taken from ``options=`` or the keywords, and checked before a run starts.

:func:`resolve_settings` gives each :class:`~smcwake.smc.options.SMCOptions` field its value (a
keyword, the options' value or the default; never both a keyword and options) and
:func:`check_run_arguments` rejects what a run cannot use, naming the argument, what was expected
and what was received.
"""

from __future__ import annotations

from typing import Any

import torch

from smcwake.smc.options import OPTION_NAMES, SMCOptions

__all__ = ["resolve_settings", "check_run_arguments"]

_DEFAULT_OPTIONS = SMCOptions()  # the settings run_smc uses when neither options nor keywords


def _check_values(
    num_particles: int,
    ess_target: float,
    resample_threshold: float,
    max_stages: int,
    min_increment: float,
    num_mcmc_steps: object = None,
    generator: object = None,
    seed: object = None,
    dtype: object = None,
) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if generator is not None and not isinstance(generator, torch.Generator):
        hint = f" (for a seeded run pass seed={generator!r})" if is_int(generator) else ""
        raise TypeError(
            f"generator: expected a torch.Generator or None, received "
            f"{type(generator).__name__}{hint}"
        )
    if seed is not None and not is_int(seed):
        raise TypeError(f"seed: expected an integer or None, received {seed!r}")
    if seed is not None and generator is not None:
        raise ValueError("seed and generator: pass one of them, not both")
    if num_mcmc_steps is not None and not is_int(num_mcmc_steps):
        raise TypeError(
            f"num_mcmc_steps: expected None or an integer >= 1, received {num_mcmc_steps!r}"
        )
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"dtype: expected None (the prior's), torch.float32 or torch.float64, received "
            f"{dtype!r}"
        )

    for name, value in (
        ("ess_target", ess_target),
        ("resample_threshold", resample_threshold),
        ("min_increment", min_increment),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name}: expected a number, received {value!r}")
    if not is_int(num_particles) or num_particles < 2:
        raise ValueError(f"num_particles: expected an integer >= 2, received {num_particles!r}")
    if not 0.0 < ess_target < 1.0:
        raise ValueError(f"ess_target: expected a fraction in (0, 1), received {ess_target!r}")
    if not 0.0 <= resample_threshold <= 1.0:
        raise ValueError(
            f"resample_threshold: expected a fraction in [0, 1], received {resample_threshold!r}"
        )
    if not is_int(max_stages) or max_stages < 1:
        raise ValueError(f"max_stages: expected an integer >= 1, received {max_stages!r}")
    if not 0.0 < min_increment < 1.0:
        raise ValueError(f"min_increment: expected a number in (0, 1), received {min_increment!r}")


def resolve_settings(options: SMCOptions | None, *values: object) -> dict[str, Any]:
    """The SMCOptions fields of a run: from ``options`` or the keywords (None: not given).

    ``values`` are run_smc's keywords for the fields, in the order of ``OPTION_NAMES``.
    """
    given = dict(zip(OPTION_NAMES, values, strict=True))
    if options is None:
        defaults = _DEFAULT_OPTIONS
    elif not isinstance(options, SMCOptions):
        raise TypeError(f"options: expected SMCOptions or None, received {type(options).__name__}")
    else:
        both = [name for name, value in given.items() if value is not None]
        if both:
            raise ValueError(
                f"{both[0]}: given both as a keyword and in options=; pass "
                f"options=dataclasses.replace(options, {both[0]}=...) or leave it out of one"
            )
        defaults = options
    return {
        name: getattr(defaults, name) if given[name] is None else given[name]
        for name in OPTION_NAMES
    }


def _check_max_correlation(max_correlation: float) -> None:
    if isinstance(max_correlation, bool) or not isinstance(max_correlation, int | float):
        raise TypeError(f"max_correlation: expected a number, received {max_correlation!r}")
    if not -1.0 < max_correlation <= 1.0:
        raise ValueError(
            f"max_correlation: expected a number in (-1, 1], received {max_correlation!r}"
        )


def check_run_arguments(
    num_particles: int,
    settings: dict[str, Any],
    min_increment: float,
    max_correlation: float,
    generator: object,
    seed: object,
    dtype: object,
) -> None:
    """Raise a ``TypeError`` or ``ValueError`` for the first argument a run cannot use.

    ``settings`` as :func:`resolve_settings` returns them.
    """
    _check_values(
        num_particles,
        settings["ess_target"],
        settings["resample_threshold"],
        settings["max_stages"],
        min_increment,
        settings["num_mcmc_steps"],
        generator,
        seed,
        dtype,
    )
    _check_max_correlation(max_correlation)
