"""The digits experiment: wake against SMC-Wake with a decoder learned jointly with the encoder.

The ``digits`` task names :func:`bench_runner` and :func:`fit_runner` as its runners
(``task.defaults["runners"]``): its likelihood changes during training, so every run builds a
fresh task and decoder, and runs are scored on held-out images rather than against a reference
posterior.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from smcwake.bench.evaluate import EvalOptions, importance_log_evidence, mean_finite
from smcwake.bench.grid import BenchRequest, header, run_grid, seed_list
from smcwake.bench.results import Results, RunRecord
from smcwake.bench.settings import apply_overrides, base_settings
from smcwake.bench.training import Checkpoints
from smcwake.objectives import SMC_WAKE_METHODS
from smcwake.smc.sampler import run_smc
from smcwake.tasks import Task
from smcwake.tasks.digits import digits_task
from smcwake.train import SMCOptions, TrainConfig, fit

__all__ = ["bench_runner", "fit_runner", "heldout_log_likelihood", "run_digits"]


def heldout_log_likelihood(
    model, x: Tensor, num_particles: int = 1000, *, smc: SMCOptions | None = None, seed: int = 0
) -> Tensor:
    """log p(x) of held-out observations, estimated by likelihood-tempered SMC.

    The SMC evidence estimate is unbiased for p(x), so its log is a slightly low (Jensen) but
    consistent estimate of log p(x); runs that did not reach tau = 1 are NaN.

    Shapes: x [M, p] -> [M] float64.
    """
    smc = smc or SMCOptions(kernel="mala", num_mcmc_steps=5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        result = run_smc(model, x, num_particles, options=smc, generator=g)
    return torch.where(result.converged, result.log_evidence, math.nan)


def _heldout_bound(model, encoder, x: Tensor, num_samples: int, seed: int) -> Tensor:
    """The importance-weighted bound on log p(x) with q as proposal, per image [M]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = encoder.sample(x, num_samples, generator=g)
        return importance_log_evidence(model, z, encoder.log_prob(z, x), x)


def run_digits(
    *,
    methods: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 1,
    steps: int = 1000,
    budget: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    eval_options: EvalOptions | None = None,
    overrides: dict[str, Any] | None = None,
    num_observations: int | None = None,
    digit: int | None = None,
) -> dict[str, Any]:
    """Wake against SMC-Wake on binarized handwritten digits, the decoder learned jointly.

    Each run builds a fresh task (the same initial decoder for every method) and calls
    ``fit(..., decoder=decoder)``: every step takes an encoder step with the method and a
    decoder step on the importance-weighted bound with the encoder as proposal. SMC-Wake drops
    bank runs older than ``stale_after`` steps, since they target the posterior of an older
    decoder. Scored on held-out images: log p(x) by SMC under the learned decoder
    (:func:`heldout_log_likelihood`), the importance-weighted bound with q as proposal, and
    reconstructions (decoder mean at q's mean). SMC-Wake methods train first, so with
    ``budget=None`` the baselines get their number of likelihood evaluations.
    """
    options = eval_options or EvalOptions()
    seeds = seed_list(seeds)
    task, _ = digits_task(digit=digit)
    methods = list(methods or task.defaults["methods"])
    smc_first = sorted(methods, key=lambda m: m not in SMC_WAKE_METHODS)
    n = num_observations or task.defaults["num_observations"]
    _, x = task.observations(n, 0)
    heldout = task.defaults["held_out"]()
    base = base_settings(task, steps=steps, encoder=None, overrides=None, progress=progress)
    base.update(refresh_every=1, refresh_size=64, stale_after=100, lr=3e-3, decoder_lr=3e-3)
    apply_overrides(base, overrides)
    results = header(
        task,
        "digits",
        command=command,
        methods={},
        seeds=seeds,
        settings={
            "steps": steps,
            "budget": budget,
            "num_observations": n,
            "heldout": heldout.shape[0],
            "train": base,
            "eval": dataclasses.asdict(options),
        },
        reconstruction_targets=heldout[:8],
    )

    def train(method: str, seed: int, run_dir: Path | None, budget: int | None) -> RunRecord:
        settings = {**base, "method": method, "seed": seed, "max_evals": budget}
        return _digits_run(settings, x, heldout, run_dir, resume, options, digit)

    return run_grid(
        results,
        smc_first,
        seeds,
        train,
        out=Path(out) if out is not None else None,
        resume=resume,
        budgets={s: budget for s in seeds},
    )


def _digits_run(settings, x, heldout, run_dir, resume, options, digit) -> RunRecord:
    """Train one method with a fresh decoder; score it on the held-out images."""
    task, decoder = digits_task(digit=digit)
    if settings["method"] not in SMC_WAKE_METHODS:
        settings = {**settings, "stale_after": None}
    config = TrainConfig(**settings)
    curve: dict[str, list] = {"step": [], "likelihood_evals": [], "wall_time": [], "iwbo": []}
    points = Checkpoints(max(1, round(config.steps * k / 8)) for k in range(1, 9))
    probe = heldout[:100]

    def callback(step, encoder, row):
        if points.due(step):
            curve["step"].append(step)
            curve["likelihood_evals"].append(row["likelihood_evals"])
            curve["wall_time"].append(row["wall_time"])
            curve["iwbo"].append(float(_heldout_bound(task.model, encoder, probe, 100, 0).mean()))

    result = fit(
        task.model,
        x,
        config=config,
        run_dir=run_dir,
        resume=resume and run_dir is not None,
        overwrite=not resume,  # a run that is not resumed starts afresh
        callbacks=[callback],
        decoder=decoder,
    )
    final = {k: v[-1] for k, v in result.history.items() if v}
    encoder = result.encoder
    seed = config.seed
    heldout_ll = heldout_log_likelihood(task.model, heldout, options.heldout_particles, seed=seed)
    bound = _heldout_bound(task.model, encoder, heldout, options.num_samples, seed)
    with torch.no_grad():
        mean, _ = encoder.gaussian_params(heldout[:8])
        recon = decoder.mean(mean)
    return {
        "seed": seed,
        "steps": final.get("step", 0),
        "likelihood_evals": final.get("likelihood_evals", 0),
        "simulations": 0,
        "smc_runs": final.get("smc_runs", 0),
        "skipped_steps": final.get("skipped_steps", 0),
        "wall_time": final.get("wall_time", 0.0),
        "stopped_by": "steps" if final.get("step", 0) >= config.steps else "budget",
        "metrics": {
            "heldout_loglik": mean_finite(heldout_ll),
            "heldout_iwbo": mean_finite(bound),
            "heldout_unconverged": int(torch.isnan(heldout_ll).sum()),
        },
        "curve": curve,
        "reconstructions": recon,
    }


def bench_runner(request: BenchRequest, task: Task) -> Results:
    """:func:`run_digits` with the arguments of :func:`smcwake.bench.run_bench`; of
    ``task_options`` it uses ``digit`` (each run builds its own task)."""
    passed = ("methods", "seeds", "steps", "budget", "out", "resume", "progress", "command")
    return run_digits(
        **request.subset(*passed, "eval_options", "overrides", "num_observations"),
        digit=(request.task_options or {}).get("digit"),
    )


def fit_runner(request: BenchRequest, task: Task) -> Results:
    """What :func:`smcwake.bench.run_fit` runs on digits: one method and seed, 1000 steps by
    default."""
    return bench_runner(dataclasses.replace(request, steps=request.steps or 1000), task)
