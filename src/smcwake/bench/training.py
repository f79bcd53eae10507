"""One benchmark run: train a method with :func:`smcwake.fit`, track a metric, evaluate the end.

:func:`train_and_evaluate` builds the encoder as :func:`smcwake.fit` would, records the metric of
:func:`~smcwake.bench.evaluate.curve_metric` at a few checkpoints during training (written to
``curve.json`` as it grows, so a resumed run keeps its curve), scores the final encoder with
:func:`~smcwake.bench.evaluate.evaluate` and returns the run's :class:`RunRecord`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from smcwake.bench.evaluate import EvalOptions, Reference, curve_metric, evaluate
from smcwake.bench.oracle import ORACLE, oracle_trainer
from smcwake.bench.results import RunRecord
from smcwake.loop import initial_encoder
from smcwake.posterior import Posterior
from smcwake.tasks import Task
from smcwake.train import TrainConfig, fit

__all__ = ["BenchData", "Checkpoints", "bench_data", "train_and_evaluate"]

logger = logging.getLogger(__name__)

POSTERIOR_NAME = "posterior.pt"
"""The trained posterior in a run folder (:meth:`smcwake.Posterior.save`)."""


class BenchData(NamedTuple):
    """What every run of a benchmark shares: the task, the observations, their references."""

    task: Task
    z_true: Tensor  # [n, d], NaN when unknown
    x: Tensor  # [n, p]
    options: EvalOptions
    reference: Reference
    curve_points: int  # checkpoints at which the tracked metric is recorded
    panel_obs: int  # observations whose q draws are kept for the posterior panels (2-D tasks)


def bench_data(
    task: Task, z_true: Tensor, x: Tensor, options: EvalOptions, seed: int, curve_points: int
) -> BenchData:
    """The shared inputs of a benchmark's runs; references drawn with ``seed``.

    Shapes: z_true [n, d], x [n, p].
    """
    panel_obs = min(4, x.shape[0]) if task.model.dim == 2 else 0
    reference = Reference(task, x, options, seed)
    return BenchData(task, z_true, x, options, reference, curve_points, panel_obs)


class Checkpoints:
    """The steps at which a curve is recorded; :meth:`due` is True once per step reached."""

    def __init__(self, steps: Iterable[int]) -> None:
        self._pending = sorted(set(steps))

    def due(self, step: int) -> bool:
        """True when ``step`` reached one or more pending checkpoints (they are then done)."""
        if not self._pending or step < self._pending[0]:
            return False
        while self._pending and step >= self._pending[0]:
            self._pending.pop(0)
        return True


class _Curve:
    """The tracked metric (and q's scale at the observed x) against steps and evaluations."""

    def __init__(
        self,
        metric: tuple[str, Callable[[Any], float]] | None,
        observed: float | None,
        x_dim: int,
        path: Path | None,
        resume: bool,
    ) -> None:
        self.metric = metric
        self.observed = None if observed is None else float(observed)
        self.x_dim = x_dim
        self.path = path
        self.data: dict[str, list] = {"step": [], "likelihood_evals": [], "wall_time": []}
        if resume and path is not None and path.exists():
            self.data = json.loads(path.read_text())

    def record(self, step: int, encoder, row: dict) -> None:
        curve = self.data
        if curve["step"] and step <= curve["step"][-1]:
            return
        curve["step"].append(step)
        curve["likelihood_evals"].append(row.get("likelihood_evals", 0))
        curve["wall_time"].append(row.get("wall_time", 0.0))
        with torch.no_grad():
            if self.metric is not None:
                curve.setdefault(self.metric[0], []).append(self.metric[1](encoder))
            if self.observed is not None and hasattr(encoder, "gaussian_params"):
                _, cov = encoder.gaussian_params(torch.full((1, self.x_dim), self.observed))
                curve.setdefault("q_sd_at_observed", []).append(float(cov[0, 0, 0].sqrt()))
        if self.path is not None:
            self.path.write_text(json.dumps(curve))


def train_and_evaluate(
    data: BenchData,
    method: str,
    seed: int,
    config: TrainConfig,
    run_dir: Path | None,
    resume: bool,
) -> RunRecord:
    """Train one (method, seed) on ``data.x`` and evaluate it; returns the run's record.

    A run that stops with a FloatingPointError (``max_bad_steps`` non-finite gradients in a
    row, which leave the parameters untouched) is evaluated at its last finite state and
    marked ``diverged``. ``data.panel_obs`` observations get 500 q draws for the posterior
    panels. The ``oracle`` method trains with :func:`~smcwake.bench.oracle.fit_oracle` instead
    of fit.
    """
    task, z_true, x, options, reference, curve_points, panel_obs = data
    observed = task.defaults.get("observed")
    metric = curve_metric(task, reference, x, options)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    curve_file = run_dir / "curve.json" if run_dir is not None else None
    curve = _Curve(metric, observed, x.shape[1], curve_file, resume)
    points = Checkpoints(
        max(1, round(config.steps * k / curve_points)) for k in range(curve_points)
    )
    last_row: dict[str, Any] = {}

    def callback(step: int, encoder, row: dict) -> None:
        last_row.update(row)
        if points.due(step):
            curve.record(step, encoder, row)

    # the encoder fit would build (scored at step 0 before fit trains it)
    encoder = initial_encoder(task.model, x, config, torch.Generator().manual_seed(config.seed))
    if metric is not None or observed is not None:
        curve.record(0, encoder, {})
    diverged, bank = None, None
    trainer = oracle_trainer(task) if method == ORACLE else fit
    try:
        result = trainer(
            task.model,
            x,
            encoder=encoder,
            config=config,
            run_dir=run_dir,
            resume=resume and run_dir is not None,
            overwrite=not resume,  # a run that is not resumed starts afresh
            callbacks=[callback],
        )
        final_row = {k: v[-1] for k, v in result.history.items() if v}
        bank = result.bank
    except FloatingPointError as err:
        diverged = str(err)
        final_row = dict(last_row)
        logger.warning("%s seed %d diverged: %s", method, seed, err)
    steps = int(final_row.get("step", 0))
    curve.record(steps, encoder, final_row)
    if run_dir is not None:
        _save_posterior(encoder, run_dir / POSTERIOR_NAME)
    metrics, arrays = evaluate(
        task, encoder, z_true, x, options=options, seed=seed, bank=bank, reference=reference
    )
    stopped_by = "diverged" if diverged else "steps" if steps >= config.steps else "budget"
    record: RunRecord = {
        "seed": seed,
        "steps": steps,
        **_counts(final_row),
        "stopped_by": stopped_by,
        "metrics": metrics,
        "curve": curve.data,
        **arrays,
    }
    if diverged:
        record["diverged"] = diverged
    with torch.no_grad():
        if task.model.dim == 2 and panel_obs:
            g = torch.Generator().manual_seed(seed)
            record["panel_samples"] = encoder.sample(x[:panel_obs], 500, generator=g)
        if observed is not None and hasattr(encoder, "gaussian_params"):
            m, c = encoder.gaussian_params(torch.full((1, x.shape[1]), float(observed)))
            record["q_at_observed"] = {"mean": float(m[0, 0]), "sd": float(c[0, 0, 0].sqrt())}
    return record


def _save_posterior(encoder, path: Path) -> None:
    """The trained posterior next to the run's checkpoint (``smcwake.load(path)`` reads it)."""
    try:
        Posterior(encoder).save(path)
    except ValueError as err:  # an encoder family or support the file cannot describe
        logger.warning("the posterior was not saved to %s: %s", path, err)


def _counts(row: dict[str, Any]) -> dict[str, Any]:
    """The budget columns of a run's record, from the last history row of fit."""
    return {
        "likelihood_evals": row.get("likelihood_evals", 0),
        "simulations": row.get("simulations", 0),
        "smc_runs": row.get("smc_runs", 0),
        "skipped_steps": row.get("skipped_steps", 0),
        "wall_time": row.get("wall_time", 0.0),
    }
