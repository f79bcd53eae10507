"""What the runs of a benchmark share: the methods compared, per-task settings, availability.

:func:`base_settings` gathers the :class:`~smcwake.train.TrainConfig` fields every method of a
benchmark trains with (the task's suggestions, :data:`RECOMMENDED_SMC`, the caller's
overrides); :func:`config_for` adds one method's own (its name and the evaluation cap).
:func:`unavailable_reason` says why a method cannot run on a task, so the benchmark keeps it in
its results with that reason instead of dropping it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from smcwake.bench.oracle import ORACLE, oracle_unavailable_reason
from smcwake.objectives import get_objective
from smcwake.tasks import Task
from smcwake.train import SMCOptions, TrainConfig

__all__ = [
    "ALL_METHODS",
    "RECOMMENDED_SMC",
    "apply_overrides",
    "base_settings",
    "config_for",
    "observations",
    "unavailable_reason",
]

ALL_METHODS = (
    "smc-wake-a",
    "smc-wake-b",
    "smc-wake-c",
    "smc-wake-pimh",
    "wake",
    "defensive-wake",
    "sleep",
    "elbo",
    "msc",
)
"""The methods :func:`~smcwake.bench.run_bench` compares by default."""

RECOMMENDED_SMC: dict[str, SMCOptions] = {
    "linear-gaussian": SMCOptions(kernel="mala", num_mcmc_steps=5),
    "many-samplers": SMCOptions(kernel="mala", num_mcmc_steps=5),
    "digits": SMCOptions(kernel="mala", num_mcmc_steps=5),
}
"""SMC settings used by default per task (others: :class:`~smcwake.train.SMCOptions`' defaults).

The 50- and 8-dimensional tasks have differentiable likelihoods; a gradient-based move (MALA,
preconditioned by the particle covariance) mixes where a random walk does not: with K = 1000 on
``linear-gaussian``, five RWMH steps per stage leave an L1 error of the posterior mean of about 14
(summed over 50 dimensions) and a log-evidence error of about -240, five MALA steps about 0.2 and
-0.3, for about the same number of likelihood evaluations.
"""

_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear-gaussian": {"lr": 3e-3},
    "many-samplers": {"lr": 3e-3},
}


def _bounded_support(task: Task) -> str | None:
    """A description of the prior's support when it is not all of R^d, else None."""
    support = task.model.prior.support
    base = getattr(support, "base_constraint", support)
    if base is constraints.real or isinstance(base, type(constraints.real)):
        return None
    low, high = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    if isinstance(low, Tensor) and isinstance(high, Tensor):
        lo, hi = low.unique(), high.unique()
        if lo.numel() == 1 and hi.numel() == 1:
            return f"[{float(lo):g}, {float(hi):g}]^{task.model.dim}"
    return str(base)


def unavailable_reason(
    task: Task, method: str, encoder: str, *, support_transform: bool = True
) -> str | None:
    """Why ``method`` cannot train ``encoder`` on ``task``, or None when it can.

    ``support_transform``: whether the encoder maps onto the prior's support (the default of
    :class:`~smcwake.train.TrainConfig`); without it, the ELBO and IWAE are undefined on a
    bounded prior.

    >>> from smcwake.tasks import get
    >>> unavailable_reason(get("two-moons"), "elbo", "flow", support_transform=False)[:29]
    'the prior has bounded support'
    >>> unavailable_reason(get("two-moons"), "elbo", "flow") is None
    True
    >>> unavailable_reason(get("two-moons"), "oracle", "flow")[:39]
    'the task has no exact posterior sampler'
    """
    if method == ORACLE:
        return oracle_unavailable_reason(task)
    get_objective(method)  # unknown names raise
    if method == "sleep" and not task.model.can_simulate:
        return "the model has no simulator (sleep trains on simulated pairs (z, x))"
    if method in ("elbo", "iwae"):
        if encoder == "mdn":
            return "the mixture-density encoder has no reparameterized sampler"
        support = _bounded_support(task)
        if support is not None and not support_transform:
            return (
                f"the prior has bounded support ({support}): q, supported on all of R^d, puts "
                "mass where log p(z) = -inf, so the bound is -inf and its gradient undefined "
                "(support_transform=True keeps q on the support)"
            )
    return None


def observations(task: Task, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The dataset (z_true, x): for toy-collapse with one observation, the paper's x = 12.

    There z_true is drawn from the exact posterior p(z | x = 12), which is what calibration
    checks conditional on x need.

    Shapes: -> (z_true [n, d], x [n, p]).
    """
    observed = task.defaults.get("observed")
    if n == 1 and observed is not None and task.reference_posterior is not None:
        x = torch.full((1, task.model.dim), float(observed))
        return task.reference_posterior(x, 1, seed)[:, 0, :], x
    return task.observations(n, seed)


def base_settings(
    task: Task,
    *,
    steps: int,
    encoder: str | None,
    overrides: dict[str, Any] | None,
    progress: bool,
) -> dict[str, Any]:
    """The TrainConfig fields shared by every run of a benchmark on ``task``.

    ``overrides`` replace any field; ``"smc.<field>"`` keys replace one SMCOptions field.
    """
    defaults = task.defaults
    base: dict[str, Any] = {
        "steps": steps,
        "encoder": encoder or defaults.get("encoder", "flow"),
        "num_particles": defaults.get("num_particles", 1000),
        "smc": RECOMMENDED_SMC.get(task.name, SMCOptions()),
        "log_every": 1,  # a history row every step: exact counts when a budget stops a run
        "checkpoint_every": max(1, steps // 10),
        "progress": progress,
        **_TASK_DEFAULTS.get(task.name, {}),
    }
    apply_overrides(base, overrides)
    if isinstance(base["smc"], dict):
        base["smc"] = SMCOptions(**base["smc"])
    return base


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Set TrainConfig fields in ``base``; a ``"smc.<field>"`` key sets one SMCOptions field."""
    for key, value in (overrides or {}).items():
        if key.startswith("smc."):
            base["smc"] = dataclasses.replace(base["smc"], **{key[4:]: value})
        else:
            base[key] = value


def config_for(method: str, base: dict[str, Any], budget: int | None, n: int) -> TrainConfig:
    """The TrainConfig of one method: shared settings, the evaluation cap, sleep's step cap.

    The ``oracle`` (:mod:`smcwake.bench.oracle`) is not an objective of fit: its config keeps
    TrainConfig's default method, which the oracle does not read.
    """
    settings = {**base, "max_evals": budget}
    if method != ORACLE:
        settings["method"] = method
    if method == "sleep" and budget is not None:
        # sleep makes simulations, not likelihood evaluations: one simulation counts as one
        batch = min(settings.get("batch_size", TrainConfig.batch_size), n)
        per_step = batch * settings.get("num_proposals", TrainConfig.num_proposals)
        settings["steps"] = max(1, min(settings["steps"], math.ceil(budget / per_step)))
    return TrainConfig(**settings)
