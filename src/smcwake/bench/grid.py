"""The loop every benchmark runs: rows (methods or settings) x training seeds, resumable.

:func:`run_grid` trains each (row, seed) cell with a function the runner supplies, writes each
finished run's record to its own folder at once, reuses those records on ``resume``, passes the
first row's likelihood-evaluation count on to the later rows as their budget, and writes
``results.json`` after every row and the report at the end. :class:`BenchRequest` carries the
arguments of :func:`smcwake.bench.run_bench` to a task's own runner (see
:func:`task_runner`).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smcwake import diagnostics
from smcwake.bench.evaluate import EvalOptions
from smcwake.bench.results import (
    MethodEntry,
    Results,
    RunRecord,
    read_run,
    save_results,
    write_run,
)
from smcwake.report import write_report
from smcwake.tasks import Task
from smcwake.train import CHECKPOINT_NAME

__all__ = ["BenchRequest", "Runner", "header", "run_grid", "seed_list", "task_runner"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRequest:
    """The arguments of :func:`smcwake.bench.run_bench` (see there), as runners receive them."""

    task_name: str
    methods: Sequence[str] | None = None
    seeds: int | Sequence[int] = 3
    steps: int | None = 1000
    budget: int | None = None
    out: str | os.PathLike | None = None
    num_observations: int | None = None
    encoder: str | None = None
    overrides: dict[str, Any] | None = None
    eval_options: EvalOptions | None = None
    curve_points: int = 8
    data_seed: int = 0
    resume: bool = False
    progress: bool = True
    keep_checkpoints: bool = False
    command: str | None = None
    task_options: dict[str, Any] | None = None
    on_run: Callable[[str, int, RunRecord], None] | None = None

    def subset(self, *names: str) -> dict[str, Any]:
        """The named arguments, as keywords for a runner that takes only those."""
        return {name: getattr(self, name) for name in names}


Runner = Callable[[BenchRequest, Task], Results]
"""A benchmark runner: ``runner(request, task) -> results`` (``task`` built by name)."""


def task_runner(task: Task, purpose: str) -> Runner | None:
    """The runner ``task`` supplies for ``purpose`` ("bench" or "fit"), or None.

    A task whose experiment is not a comparison of methods on fixed observations names its
    runners in ``task.defaults["runners"]``, a dict of ``"package.module:function"`` strings:
    named rather than imported, so that tasks do not depend on the benchmark package.
    """
    name = task.defaults.get("runners", {}).get(purpose)
    if name is None:
        return None
    module, _, function = name.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"task {task.name!r}: its {purpose} runner {name!r} cannot be loaded ({err})"
        ) from err


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """A count of seeds (0..n-1) or explicit seeds, as a list."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def header(task: Task, kind: str, **fields: Any) -> Results:
    """The opening fields of ``results.json``: what ran, where and when, then ``fields``."""
    return {
        "kind": kind,
        "task": task.name,
        "description": task.description,
        "c2st_classifier": diagnostics.C2ST_CLASSIFIER,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **fields,
    }


def _seed_folder(out: Path, row: str, seed: int) -> Path:
    return out / "runs" / row / f"seed{seed}"


def run_grid(
    results: Results,
    rows: Sequence[str],
    seeds: Sequence[int],
    train: Callable[[str, int, Path | None, int | None], RunRecord],
    *,
    out: Path | None,
    resume: bool,
    budgets: dict[int, int | None] | None = None,
    keep_checkpoints: bool = False,
    unavailable: Callable[[str], str | None] | None = None,
    on_run: Callable[[str, int, RunRecord], None] | None = None,
    run_folder: Callable[[Path, str, int], Path] = _seed_folder,
) -> Results:
    """Train every (row, seed) cell; fill ``results["methods"]``; write results and report.

    Args:
        results: the results so far (a :func:`header`); rows are added to its ``"methods"``.
        rows: method names (or labels of settings), in the order they are trained.
        seeds: training seeds.
        train: ``train(row, seed, run_dir, budget) -> record`` trains and evaluates one cell.
        out: the output folder (None: nothing is written, nothing resumed).
        resume: reuse the record of every cell that finished in ``out``.
        budgets: per seed, the likelihood evaluations allowed (None: what the first row to
            finish with that seed used); updated in place and stored as ``results["budgets"]``.
            None: no budgets (``train`` receives None).
        keep_checkpoints: keep each finished run's checkpoint.
        unavailable: ``unavailable(row)`` is why the row cannot run, or None.
        on_run: called as ``on_run(row, seed, record)`` after each cell.
        run_folder: ``run_folder(out, row, seed)``, each cell's folder
            (default ``out/runs/<row>/seed<seed>``).
    """
    for row in rows:
        entry: MethodEntry = {"status": "ok", "reason": None, "runs": []}
        results["methods"][row] = entry
        reason = unavailable(row) if unavailable is not None else None
        if reason is not None:
            entry.update(status="unavailable", reason=reason)
            logger.info("%s: not run (%s)", row, reason)
            continue
        for seed in seeds:
            run_dir = run_folder(out, row, seed) if out is not None else None
            record = read_run(run_dir) if resume and run_dir is not None else None
            if record is None:
                record = train(row, seed, run_dir, budgets[seed] if budgets is not None else None)
                if run_dir is not None:
                    write_run(run_dir, record)
                    if not keep_checkpoints:
                        (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
            if budgets is not None and budgets[seed] is None and "failed" not in record:
                budgets[seed] = int(record["likelihood_evals"]) or None
            entry["runs"].append(record)
            if on_run is not None:
                on_run(row, seed, record)
        if entry["runs"] and all("failed" in r for r in entry["runs"]):
            entry.update(status="failed", reason=entry["runs"][0]["failed"])
        if budgets is not None:
            results["budgets"] = budgets
        if out is not None:
            save_results(results, out)
    if out is not None:
        save_results(results, out)
        write_report(out, results)
    return results
