"""Built-in tasks: the models and data sets of the paper's experiments (the paper's experiments).

A task bundles a :class:`~smcwake.model.Model`, a seeded way to draw observations, and whatever
ground truth is known for it: exact posterior samples (or samples from a dense grid), exact
posterior moments, exact log evidence. Tasks are plain :class:`Task` instances built by functions,
one module per task; :func:`get` builds one by name.

=================== ============================================================================
name                what it is
=================== ============================================================================
``toy-collapse``    z ~ N(0, 10^2), x | z ~ N(z, 1); exact posterior; :func:`collapse_table`
``two-moons``       the two-moons simulator with its exact likelihood; dense-grid reference
``linear-gaussian`` z in R^50, x in R^100 = A z + noise; exact posterior and evidence
``many-samplers``   linear-gaussian with A scaled by 10: one big SMC run vs many small ones
``digits``          scikit-learn's 8x8 handwritten digits, binarized; learned linear decoder
``galaxy-spectra``  a slot for a user-supplied spectrum emulator (none is shipped)
``spike-slab``      2-D location on a wide box, likelihood a broad + very narrow Gaussian; exact
=================== ============================================================================

Every builder takes ``dtype=`` (default ``torch.float32``) and ``device=`` options; random draws
are made on the CPU in float64 from ``torch.Generator().manual_seed(seed)`` and then cast, so a
task gives the same data (up to rounding) whatever its dtype and device.

>>> from smcwake import tasks
>>> task = tasks.get("toy-collapse")
>>> z_true, x = task.observations(3, 0)
>>> z_true.shape, x.shape
(torch.Size([3, 1]), torch.Size([3, 1]))
>>> "two-moons" in tasks.names()
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from smcwake.model import Model

__all__ = ["Task", "get", "names"]


@dataclass(frozen=True)
class Task:
    """A model, a seeded data source and the ground truth known for it.

    Attributes:
        name: the registry name (``get(name)`` rebuilds it).
        model: prior and batched likelihood (and a simulator where one exists).
        description: one paragraph: the model, the data, what reference is available.
        observations: ``(n, seed) -> (z_true [n, d], x [n, p])``, deterministic given the seed.
            ``z_true`` is NaN where the latent values are unknown (real data).
        reference_posterior: ``(x [B, p], n, seed) -> z [B, n, d]`` exact posterior samples or
            samples from a dense grid; ``None`` when no reference is available.
        posterior_moments: ``x [B, p] -> (mean [B, d], cov [B, d, d])``, exact only, else None.
        log_evidence: ``x [B, p] -> log p(x) [B]``, exact only, else None.
        defaults: suggested settings for ``fit`` and benchmarks (``num_observations``,
            ``num_particles``, ``encoder``, ``num_steps``, ...) and task-specific extras; every
            module documents its keys.

    Shapes: observations -> ([n, d], [n, p]); reference_posterior -> [B, n, d].
    """

    name: str
    model: Model
    description: str
    observations: Callable[[int, int], tuple[Tensor, Tensor]]
    reference_posterior: Callable[[Tensor, int, int], Tensor] | None = None
    posterior_moments: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
    log_evidence: Callable[[Tensor], Tensor] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


# name -> (module, builder); modules are imported on first use (digits imports scikit-learn).
_REGISTRY: dict[str, tuple[str, str]] = {
    "toy-collapse": ("toy_collapse", "toy_collapse"),
    "two-moons": ("two_moons", "two_moons"),
    "linear-gaussian": ("linear_gaussian", "linear_gaussian"),
    "many-samplers": ("many_samplers", "many_samplers"),
    "digits": ("digits", "digits"),
    "galaxy-spectra": ("galaxy_spectra", "galaxy_spectra"),
    "spike-slab": ("spike_slab", "spike_slab"),
}


def names() -> list[str]:
    """The names of the built-in tasks: the paper's experiments in its order, then the others.

    >>> names()[:2]
    ['toy-collapse', 'two-moons']
    """
    return list(_REGISTRY)


def _builder(name: str) -> Callable[..., Task]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(names())}")
    module, function = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def get(name: str, **options: Any) -> Task:
    """Build the task called ``name``; ``options`` go to its builder (e.g. ``d=``, ``dtype=``).

    Raises ``ValueError`` for an unknown name (listing the available ones) and ``TypeError`` for
    an option the task does not take (listing the ones it does).

    >>> task = get("linear-gaussian", d=3, p=4)
    >>> task.model.dim
    3
    >>> get("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'nope'; available tasks: toy-collapse, two-moons, ...
    """
    builder = _builder(name)
    accepted = [
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"task {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted options: {', '.join(accepted)}"
        )
    return builder(**options)
