"""Benchmarks: train several methods on a built-in task at a matched budget and score them.

:func:`run_bench` trains every method with :func:`smcwake.fit` on the same observations, encoder
kind, optimizer and seeds, and stops each run at the same number of gradient steps or the same
number of likelihood evaluations, whichever comes first (``TrainConfig.max_evals``). It records
both counts, evaluates the metrics of :func:`evaluate` at a few checkpoints during training and at
the end, and writes ``results.json`` (everything the report needs) and the report of
:mod:`smcwake.report` to the output folder. :func:`run_fit` does the same for one method (the
``smcwake fit`` command). A task whose experiment is not a comparison of methods on fixed
observations supplies its own runner: :func:`run_many_samplers` (one big SMC run per observation
against many small ones) and :func:`run_digits` (wake against SMC-Wake with a decoder learned
jointly with the encoder).

The modules, from the bottom up:

=================== ========================================================================
``results``         the run record and ``results.json``: types and JSON reading and writing
``evaluate``        the metrics of a trained encoder against what the task knows
``settings``        methods, per-task settings, why a method cannot run on a task
``training``        one run: train with fit, track a metric over training, evaluate
``grid``            the loop over methods x seeds, resumable, and the runner a task supplies
``runners``         :func:`run_bench`, :func:`run_fit` and the comparison of methods
``many_samplers``   the runner of the ``many-samplers`` task
``digits``          the runners of the ``digits`` task
=================== ========================================================================

A method that cannot run on a task (``sleep`` without a simulator; ``elbo`` and ``iwae`` with
the mixture-density encoder, or on a bounded prior when the encoder is not kept on its support
by ``support_transform``) is kept in the results with the reason (:func:`unavailable_reason`),
never dropped.

References:
    McNamara, Loper & Regier (2024), Sequential Monte Carlo for Inclusive KL Minimization in
    Amortized Variational Inference, AISTATS.
"""

from __future__ import annotations

from typing import Any

from smcwake.bench.evaluate import EvalOptions, evaluate, grid_log_evidence
from smcwake.bench.results import RunRecord, load_results, save_results
from smcwake.bench.settings import ALL_METHODS, RECOMMENDED_SMC, unavailable_reason

__all__ = [
    "ALL_METHODS",
    "RECOMMENDED_SMC",
    "EvalOptions",
    "RunRecord",
    "evaluate",
    "grid_log_evidence",
    "heldout_log_likelihood",
    "load_results",
    "run_bench",
    "run_digits",
    "run_fit",
    "run_many_samplers",
    "save_results",
    "unavailable_reason",
]


def __getattr__(name: str) -> Any:
    # The runners write reports and smcwake.report reads this package's records: the runners
    # are imported on first use, so that importing the records does not import the report.
    if name in ("run_bench", "run_fit"):
        from smcwake.bench import runners

        return getattr(runners, name)
    if name == "run_many_samplers":
        from smcwake.bench import many_samplers

        return many_samplers.run_many_samplers
    if name in ("run_digits", "heldout_log_likelihood"):
        from smcwake.bench import digits

        return getattr(digits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
