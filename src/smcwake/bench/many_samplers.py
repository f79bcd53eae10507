"""The many-samplers experiment: one big SMC run per observation against many small ones.

The ``many-samplers`` task names :func:`bench_runner` as its benchmark runner
(``task.defaults["runners"]``): its rows are SMC budgets (``task.defaults["settings"]``), not
methods.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from smcwake.bench.evaluate import EvalOptions
from smcwake.bench.grid import BenchRequest, header, run_grid
from smcwake.bench.results import Results, RunRecord
from smcwake.bench.settings import base_settings
from smcwake.bench.training import bench_data, train_and_evaluate
from smcwake.tasks import Task, get
from smcwake.train import TrainConfig

__all__ = ["bench_runner", "run_many_samplers"]


def run_many_samplers(
    *,
    steps: int = 1000,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    eval_options: EvalOptions | None = None,
    overrides: dict[str, Any] | None = None,
    curve_points: int = 10,
) -> dict[str, Any]:
    """One big SMC run per observation against many small ones, at equal particle totals.

    On ``many-samplers`` (linear Gaussian, A scaled by 10, 10 observations) SMC-Wake (estimator
    (a), every retained run weighted by its evidence) trains the same Gaussian encoder with
    either M = 1 run of K = 10,000 particles per observation, made before training, or M = 100
    runs of K = 100, one per observation every ``steps / 100`` steps as SMC-Wake refreshes its
    bank. The forward KL to the exact posterior is tracked over training.
    """
    task = get("many-samplers")
    options = eval_options or EvalOptions(c2st_observations=0)
    n = task.defaults["num_observations"]
    z_true, x = task.observations(n, 0)
    base = base_settings(task, steps=steps, encoder=None, overrides=overrides, progress=progress)
    base.update(batch_size=n, refresh_size=n, runs_per_step=None, seed=seed)
    data = bench_data(task, z_true, x, options, 0, curve_points)
    results = header(
        task,
        "many-samplers",
        command=command,
        methods={},
        seeds=[seed],
        settings={
            "steps": steps,
            "num_observations": n,
            "train": base,
            "eval": dataclasses.asdict(options),
        },
    )
    settings = {setting["label"]: setting for setting in task.defaults["settings"]}

    def train(label: str, seed: int, run_dir: Path | None, budget: None) -> RunRecord:
        runs, particles = settings[label]["num_runs"], settings[label]["num_particles"]
        refresh = steps + 1 if runs == 1 else max(1, steps // runs)
        config = TrainConfig(
            **{
                **base,
                "method": task.defaults.get("method", "smc-wake-a"),
                "num_particles": particles,
                "max_runs": runs,
                "refresh_every": refresh,
            }
        )
        record = train_and_evaluate(data, label, seed, config, run_dir, resume)
        record.update(num_runs=runs, num_particles=particles, refresh_every=refresh)
        return record

    return run_grid(
        results,
        list(settings),
        [seed],
        train,
        out=Path(out) if out is not None else None,
        resume=resume,
        run_folder=lambda out, label, _: out / "runs" / label.replace(" ", "").replace(",", "_"),
    )


def bench_runner(request: BenchRequest, task: Task) -> Results:
    """:func:`run_many_samplers` with the arguments of :func:`smcwake.bench.run_bench`: the
    first training seed (0 for a count), no methods, budget or dataset options."""
    passed = ("steps", "out", "resume", "progress", "command", "eval_options", "overrides")
    seeds = request.seeds
    return run_many_samplers(
        **request.subset(*passed, "curve_points"),
        seed=0 if isinstance(seeds, int) else seeds[0],
    )
