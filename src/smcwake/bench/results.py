"""The benchmark's records and their JSON files, shared by the runners and :mod:`smcwake.report`.

A benchmark (or a ``fit`` / ``demo`` command) writes one ``results.json`` per output folder: a
header (task, settings, versions), then for every method a :class:`MethodEntry` whose ``runs``
are :class:`RunRecord` dictionaries, one per training seed. Each run's record is also written
on its own to ``runs/<method>/seed<s>/result.json`` as soon as the run ends, so an interrupted
benchmark resumes without training it again. The records are plain dictionaries typed by
:class:`~typing.TypedDict`: the JSON files are exactly their contents (tensors become lists).

>>> record = RunRecord(seed=0, steps=10, metrics={"forward_kl": 0.5})
>>> to_json_data({"runs": [record], "z": torch.zeros(2)})
{'runs': [{'seed': 0, 'steps': 10, 'metrics': {'forward_kl': 0.5}}], 'z': [0.0, 0.0]}
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import Tensor

__all__ = [
    "RESULTS_NAME",
    "RUN_RECORD_NAME",
    "MethodEntry",
    "Results",
    "RunRecord",
    "failed_record",
    "json_default",
    "load_results",
    "read_run",
    "save_results",
    "to_json_data",
    "write_run",
]

RESULTS_NAME = "results.json"
"""The file every runner writes into its output folder."""

RUN_RECORD_NAME = "result.json"
"""The file each finished run writes into its own folder (what ``resume`` reuses)."""


class RunRecord(TypedDict, total=False):
    """One training run, trained and evaluated: a row of the benchmark's tables.

    Counts are those of the last history row of :func:`smcwake.fit`. A run that raised is kept
    as ``{"seed": s, "failed": "<error>"}`` only.
    """

    seed: int
    steps: int  # gradient steps taken
    likelihood_evals: int  # points z at which the likelihood was evaluated
    simulations: int  # (z, x) pairs simulated (sleep)
    smc_runs: int
    skipped_steps: int  # steps with a non-finite loss or gradient
    wall_time: float  # seconds
    stopped_by: str  # "steps", "budget" or "diverged"
    metrics: dict[str, float]  # see smcwake.bench.evaluate
    curve: dict[str, list]  # "step", "likelihood_evals", "wall_time" and tracked metrics
    coverage: dict[str, list[float]]  # "level" and "coverage"
    sbc_p_values: list[float]  # one per dimension
    c2st_per_observation: list[float]
    metric_errors: list[str]  # metrics that could not be computed, and why
    diverged: str  # the error that stopped training early
    failed: str  # the error that prevented the run
    panel_samples: Tensor | list  # [P, 500, 2] q draws for the posterior panels (2-D tasks)
    q_at_observed: dict[str, float]  # "mean" and "sd" of a Gaussian q at the observed x
    reconstructions: Tensor | list  # [8, p] decoder means at q's mean (digits)
    num_runs: int  # many-samplers: M, SMC runs per observation
    num_particles: int  # many-samplers: K per run
    refresh_every: int  # many-samplers


class MethodEntry(TypedDict):
    """A method's row group: ``status`` is "ok", "unavailable" (``reason`` says why) or
    "failed" (every run failed; ``reason`` is the first error)."""

    status: str
    reason: str | None
    runs: list[RunRecord]


class Results(TypedDict, total=False):
    """The contents of ``results.json``; ``kind`` says which runner wrote it."""

    kind: str  # "bench", "fit", "demo", "many-samplers" or "digits"
    task: str
    description: str
    c2st_classifier: str
    created: str
    torch: str
    threads: int
    command: str | None
    methods: dict[str, MethodEntry]
    seeds: list[int]
    settings: dict[str, Any]  # steps, budget, dataset size, training and evaluation settings
    budgets: dict[int, int | None]  # likelihood evaluations per run, by seed
    panel_reference: Tensor | list  # [P, 500, 2] reference draws (2-D tasks)
    panel_x: Tensor | list  # [P, p]
    collapse: dict[str, Any]  # toy-collapse: the wake-collapse table
    reconstruction_targets: Tensor | list  # digits: [8, 64] held-out images


def failed_record(seed: int, err: Exception) -> RunRecord:
    """The record of a run that raised ``err``."""
    return {"seed": seed, "failed": f"{type(err).__name__}: {err}"}


def json_default(obj: Any) -> Any:
    """``json.dumps`` hook: tensors as nested lists, dtypes and devices as strings, dataclasses
    as dictionaries."""
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json_data(obj: Any) -> Any:
    """``obj`` as the JSON file holds it: tensors become lists, integer keys strings."""
    return json.loads(json.dumps(obj, default=json_default))


def save_results(results: Results, out: str | os.PathLike) -> Path:
    """Write ``results`` to ``out/results.json`` atomically; returns the path."""
    path = Path(out) / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1, default=json_default, allow_nan=True))
    os.replace(tmp, path)
    return path


def load_results(out: str | os.PathLike) -> Results:
    """Read ``out/results.json`` (written by :func:`run_bench`, the ``fit`` command, ...);
    ``out`` may also name the JSON file itself."""
    path = Path(out)
    path = path if path.suffix == ".json" else path / RESULTS_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results here (run `smcwake bench` or `smcwake fit`)")
    return json.loads(path.read_text())


def write_run(run_dir: Path, record: RunRecord) -> None:
    """Write one finished run's record to ``run_dir/result.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_RECORD_NAME).write_text(json.dumps(record, default=json_default))


def read_run(run_dir: Path) -> RunRecord | None:
    """The record a finished run left in ``run_dir``, or None if there is none."""
    path = run_dir / RUN_RECORD_NAME
    return json.loads(path.read_text()) if path.exists() else None
