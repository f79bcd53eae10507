"""The entry points: :func:`run_bench` compares methods on a task, :func:`run_fit` trains one.

Both look up the runner the task supplies (``task.defaults["runners"]``, see
:func:`~smcwake.bench.grid.task_runner`) and otherwise run the comparison of methods on fixed
observations that suits every task with a fixed likelihood (:func:`compare_methods`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smcwake.bench.evaluate import EvalOptions
from smcwake.bench.grid import BenchRequest, header, run_grid, seed_list, task_runner
from smcwake.bench.results import Results, RunRecord, failed_record, save_results
from smcwake.bench.settings import (
    ALL_METHODS,
    base_settings,
    config_for,
    observations,
    unavailable_reason,
)
from smcwake.bench.training import bench_data, train_and_evaluate
from smcwake.report import write_report
from smcwake.tasks import Task, get
from smcwake.train import TrainConfig

__all__ = ["compare_methods", "run_bench", "run_fit"]

logger = logging.getLogger(__name__)


def run_bench(
    task_name: str,
    methods: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 3,
    steps: int = 1000,
    budget: int | None = None,
    out: str | os.PathLike | None = None,
    *,
    num_observations: int | None = None,
    encoder: str | None = None,
    overrides: dict[str, Any] | None = None,
    eval_options: EvalOptions | None = None,
    curve_points: int = 8,
    data_seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    keep_checkpoints: bool = False,
    command: str | None = None,
    task_options: dict[str, Any] | None = None,
    on_run: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train every method on one task at a matched budget; evaluate; write results and report.

    Every method trains the same encoder kind on the same observations (drawn with
    ``data_seed``) with the same optimizer settings, for each training seed, and stops after
    ``steps`` gradient steps or ``budget`` likelihood evaluations, whichever comes first (sleep
    counts simulations instead). With ``budget=None`` the budget is what the first listed method
    uses in ``steps`` steps with the same seed (list an SMC-Wake method first to give the
    baselines its number of evaluations). Tasks with their own experiment run it instead:
    ``many-samplers`` (:func:`~smcwake.bench.many_samplers.run_many_samplers`) and ``digits``
    (:func:`~smcwake.bench.digits.run_digits`).

    Args:
        task_name: a built-in task (see :func:`smcwake.tasks.names`).
        methods: method names (:data:`smcwake.objectives.METHOD_NAMES`, and ``oracle``, the
            encoder trained on exact posterior draws: :mod:`smcwake.bench.oracle`); default:
            the task's ``defaults["methods"]``, else :data:`~smcwake.bench.settings.ALL_METHODS`.
        seeds: a count (0..n-1) or explicit training seeds.
        steps: gradient steps per run.
        budget: likelihood evaluations per run (None: see above).
        out: output folder: ``results.json``, ``report.md``, PNGs, and ``runs/<method>/seed<s>``.
        num_observations: dataset size (default: the task's).
        encoder: encoder kind (default: the task's).
        overrides: other :class:`~smcwake.train.TrainConfig` fields; ``"smc.<field>"`` keys set
            :class:`~smcwake.train.SMCOptions` fields.
        eval_options: how much work evaluation does.
        curve_points: checkpoints at which the tracked metric is evaluated during training.
        resume: reuse finished runs found in ``out`` and continue interrupted ones; without it,
            every run starts afresh and replaces what ``out`` held for it.
        keep_checkpoints: keep each finished run's checkpoint (they can be large).
        command: the command line, recorded in the report.
        task_options: options of the task's builder (:func:`smcwake.tasks.get`).
        on_run: called as ``on_run(method, seed, record)`` after each run.

    Returns:
        The results dictionary written to ``out/results.json``.
    """
    request = BenchRequest(
        task_name,
        methods,
        seeds,
        steps,
        budget,
        out,
        num_observations=num_observations,
        encoder=encoder,
        overrides=overrides,
        eval_options=eval_options,
        curve_points=curve_points,
        data_seed=data_seed,
        resume=resume,
        progress=progress,
        keep_checkpoints=keep_checkpoints,
        command=command,
        task_options=task_options,
        on_run=on_run,
    )
    task = get(task_name, **(task_options or {}))
    runner = task_runner(task, "bench") or compare_methods
    return runner(request, task)


def compare_methods(request: BenchRequest, task: Task) -> Results:
    """The benchmark of :func:`run_bench` for a task with a fixed likelihood: every method x
    every seed on the same observations, at a matched budget."""
    methods = list(request.methods or task.defaults.get("methods", ALL_METHODS))
    seeds = seed_list(request.seeds)
    options = request.eval_options or EvalOptions()
    n = request.num_observations or task.defaults.get("num_observations", 100)
    z_true, x = observations(task, n, request.data_seed)
    base = base_settings(
        task,
        steps=request.steps,
        encoder=request.encoder,
        overrides=request.overrides,
        progress=request.progress,
    )
    data = bench_data(task, z_true, x, options, request.data_seed, request.curve_points)
    results = header(
        task,
        "bench",
        command=request.command,
        methods={},
        seeds=seeds,
        settings={
            "steps": request.steps,
            "budget": request.budget,
            "num_observations": n,
            "data_seed": request.data_seed,
            "train": {k: v for k, v in base.items() if k not in ("progress",)},
            "eval": dataclasses.asdict(options),
        },
    )
    if data.panel_obs and data.reference.samples is not None:
        results["panel_reference"] = data.reference.samples[: data.panel_obs, :500]
        results["panel_x"] = x[: data.panel_obs]
    extras = task.defaults.get("bench_extras")
    if extras is not None:
        results.update(extras())

    def train(method: str, seed: int, run_dir: Path | None, budget: int | None) -> RunRecord:
        config = config_for(method, {**base, "seed": seed}, budget, n)
        try:
            return train_and_evaluate(data, method, seed, config, run_dir, request.resume)
        except (FloatingPointError, RuntimeError, ValueError) as err:
            logger.warning("%s seed %d failed: %s", method, seed, err)
            return failed_record(seed, err)

    return run_grid(
        results,
        methods,
        seeds,
        train,
        out=Path(request.out) if request.out is not None else None,
        resume=request.resume,
        budgets={s: request.budget for s in seeds},
        keep_checkpoints=request.keep_checkpoints,
        unavailable=lambda method: unavailable_reason(
            task, method, base["encoder"], support_transform=base.get("support_transform", True)
        ),
        on_run=request.on_run,
    )


def run_fit(
    task_name: str,
    method: str,
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    seed: int = 0,
    budget: int | None = None,
    num_observations: int | None = None,
    encoder: str | None = None,
    overrides: dict[str, Any] | None = None,
    eval_options: EvalOptions | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    kind: str = "fit",
    curve_points: int = 8,
) -> dict[str, Any]:
    """Train one method on a task with ``run_dir=out``, evaluate it, write results and report.

    ``out`` receives fit's checkpoint and ``history.json`` (so ``resume=True`` continues the
    run, possibly with more ``steps``), ``metrics.json`` (the scalar metrics),
    ``results.json`` and the report of :mod:`smcwake.report`. A task that supplies its own
    ``"fit"`` runner (``digits``) runs it instead, for this one method and seed.
    """
    task = get(task_name)
    runner = task_runner(task, "fit")
    if runner is not None:
        request = BenchRequest(
            task_name,
            [method],
            [seed],
            steps,
            budget,
            out,
            num_observations=num_observations,
            overrides=overrides,
            eval_options=eval_options,
            resume=resume,
            progress=progress,
            command=command,
        )
        results = runner(request, task)
        _write_metrics(results, method, Path(out))
        return results
    encoder = encoder or task.defaults.get("encoder", "flow")
    transform = (overrides or {}).get("support_transform", True)
    reason = unavailable_reason(task, method, encoder, support_transform=transform)
    if reason is not None:
        raise ValueError(f"{method} cannot run on {task_name}: {reason}")
    options = eval_options or EvalOptions()
    steps = steps or TrainConfig.steps
    n = num_observations or task.defaults.get("num_observations", 100)
    z_true, x = observations(task, n, 0)
    base = base_settings(
        task, steps=steps, encoder=encoder, overrides=overrides, progress=progress
    )
    config = config_for(method, {**base, "seed": seed}, budget, n)
    out_path = Path(out)
    data = bench_data(task, z_true, x, options, 0, curve_points)
    record = train_and_evaluate(data, method, seed, config, out_path, resume)
    results = header(
        task,
        kind,
        command=command,
        seeds=[seed],
        methods={method: {"status": "ok", "reason": None, "runs": [record]}},
        settings={
            "steps": steps,
            "budget": budget,
            "num_observations": n,
            "train": {k: v for k, v in base.items() if k != "progress"},
            "eval": dataclasses.asdict(options),
        },
    )
    if data.panel_obs and data.reference.samples is not None:
        results["panel_reference"] = data.reference.samples[: data.panel_obs, :500]
    save_results(results, out_path)
    _write_metrics(results, method, out_path)
    write_report(out_path, results)
    return results


def _write_metrics(results: Results, method: str, out: Path) -> None:
    """``out/metrics.json``: the one run's counts and scalar metrics."""
    run = results["methods"][method]["runs"][0]
    keep = ("seed", "steps", "likelihood_evals", "simulations", "wall_time", "stopped_by")
    payload = {
        "task": results["task"],
        "method": method,
        **{k: run.get(k) for k in keep},
        "metrics": run["metrics"],
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=1))
