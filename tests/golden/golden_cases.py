"""Seeded cases whose outputs the golden-file test pins (see ``test_golden.py``).

Every case is a function ``case(workdir) -> summary``: it runs one piece of the library with
every setting written out (kernel, step counts, encoder kind, sizes, seeds, float64 where the
entry point lets us choose) and returns a few JSON numbers: log-evidences, loss histories,
parameter checksums, metric values, or the whole ``results.json`` of a benchmark with the
fields that vary between runs (wall time, creation time, torch version, thread count)
removed. Long arrays are replaced by their length, sum and a hash of their values
(:func:`compact`), which keeps the data file small and the comparison exact.

Settings are pinned here, never taken from the library's defaults: a deliberate change of a
default must not move these numbers, and a change that does move them is a change of
behaviour, to be recorded by regenerating ``golden.json`` in a commit of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smcwake import cli, fit, run_smc
from smcwake.bench import EvalOptions, run_bench
from smcwake.tasks import get
from smcwake.train import SMCOptions, TrainConfig

DATA = Path(__file__).with_name("golden.json")

# ------------------------------------------------------------------------- pinned settings
SMC = SMCOptions(
    ess_target=0.5,
    resample_threshold=0.5,
    resampling="systematic",
    kernel="rwmh",
    num_mcmc_steps=2,
    max_stages=500,
)

TRAIN: dict[str, Any] = {
    "steps": 4,
    "batch_size": 4,
    "num_particles": 64,
    "num_proposals": 16,
    "refresh_every": 2,
    "refresh_size": 4,
    "lr": 1e-2,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "seed": 0,
    "encoder": "gaussian",
    "encoder_options": {},
    "support_transform": True,
    "max_runs": 3,
    "num_resampled": 8,
    "runs_per_step": 2,
    "particles_per_step": 32,
    "smc": SMC,
    "smc_batch_size": 256,
    "use_unconverged": False,
    "grad_clip": 10.0,
    "max_bad_steps": 20,
    "max_evals": None,
    "decoder_lr": 1e-3,
    "decoder_proposals": 16,
    "stale_after": None,
    "checkpoint_every": 250,
    "log_every": 1,
    "monitor_every": 2,
    "monitor_size": 16,
    "progress": False,
    "device": None,
}
"""Every :class:`~smcwake.train.TrainConfig` field (``method`` is set per case)."""

EVAL = EvalOptions(
    num_samples=100,
    c2st_observations=0,
    c2st_samples=50,
    mmd_samples=50,
    sbc_samples=49,
    grid_size=64,
    curve_observations=4,
    heldout_particles=30,
)
"""Every :class:`~smcwake.bench.EvalOptions` field (C2ST, a second per run, only where asked)."""

_BENCH_TRAIN = {k: v for k, v in TRAIN.items() if k not in ("steps", "seed", "progress")}
"""The overrides a benchmark takes (it sets steps, seeds and progress itself)."""

_F64 = {"dtype": torch.float64}
_LG = {"d": 2, "p": 3}  # linear-gaussian in 2-D with 3-D observations
_VOLATILE = {"wall_time", "created", "torch", "threads"}
_LONG = 32  # lists of more numbers than this are stored as (length, sum, hash)


# ------------------------------------------------------------------------------- summaries
def _flat(obj: Any) -> list[float] | None:
    """The numbers of a nested list of numbers, or None if it holds anything else."""
    if isinstance(obj, bool) or obj is None:
        return None
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, list):
        out: list[float] = []
        for item in obj:
            sub = _flat(item)
            if sub is None:
                return None
            out.extend(sub)
        return out
    return None


def digest(values: list[float]) -> dict[str, Any]:
    """Length, float64 sum and a hash of the exact values (NaN and infinities included)."""
    packed = b"".join(struct.pack("<d", v) for v in values)
    finite = [v for v in values if math.isfinite(v)]
    return {
        "len": len(values),
        "sum": math.fsum(finite),
        "sha256": hashlib.sha256(packed).hexdigest()[:16],
    }


def compact(obj: Any) -> Any:
    """JSON-ready copy of ``obj``: volatile keys dropped, long number lists digested."""
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): compact(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list | tuple):
        flat = _flat(list(obj))
        if flat is not None and len(flat) > _LONG:
            return digest(flat)
        return [compact(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return compact(dataclasses.asdict(obj))
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    return obj


def _parameters(module: torch.nn.Module) -> dict[str, Any]:
    values = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    return digest(values.tolist())


# ------------------------------------------------------------------------------- run_smc
def _smc_case(task_name: str, kernel: str, steps: int, resampling: str, **task_options):
    def case(workdir: Path) -> dict[str, Any]:
        task = get(task_name, dtype=torch.float64, **task_options)
        _, x = task.observations(4, 0)
        result = run_smc(
            task.model,
            x,
            200,
            ess_target=0.5,
            resample_threshold=0.5,
            resampling=resampling,
            kernel=kernel,
            num_mcmc_steps=steps,
            max_stages=500,
            min_increment=1e-9,
            generator=torch.Generator().manual_seed(0),
        )
        weights = result.log_weights.exp()
        return {
            "log_evidence": result.log_evidence.tolist(),
            "converged": result.converged.tolist(),
            "num_stages": result.num_stages.tolist(),
            "num_likelihood_evals": result.num_likelihood_evals.tolist(),
            "acceptance_rate": result.acceptance_rate.tolist(),
            "ess": result.ess.tolist(),
            "posterior_mean": (weights[..., None] * result.particles).sum(1).tolist(),
            "particles": digest(result.particles.flatten().tolist()),
        }

    return case


# ------------------------------------------------------------------------------- fit
def _fit_case(method: str, *, task_name: str = "linear-gaussian", **changes: Any):
    def case(workdir: Path) -> dict[str, Any]:
        options = _LG if task_name == "linear-gaussian" else {}
        task = get(task_name, dtype=torch.float64, **options)
        _, x = task.observations(8, 0)
        config = TrainConfig(method=method, **{**TRAIN, **changes})
        out = fit(task.model, x, config=config)
        history = {k: v for k, v in out.history.items() if k != "wall_time"}
        summary: dict[str, Any] = {"history": history, "encoder": _parameters(out.encoder)}
        if out.bank is not None:
            summary["log_zbar"] = out.bank.log_zbar.tolist()
        return summary

    return case


# ------------------------------------------------------------------------------- bench
def _bench_case(
    task_name: str,
    methods: list[str] | None,
    seeds: list[int],
    eval_options: EvalOptions = EVAL,
    **kwargs: Any,
):
    def case(workdir: Path) -> dict[str, Any]:
        results = run_bench(
            task_name,
            methods,
            seeds=seeds,
            out=workdir,
            eval_options=eval_options,
            progress=False,
            command="golden",
            **kwargs,
        )
        on_disk = json.loads((workdir / "results.json").read_text())
        # what run_bench returns is what it wrote (tensors as lists)
        assert compact(results) == compact(on_disk)
        return compact(on_disk)

    return case


def _bench_resume(workdir: Path) -> dict[str, Any]:
    """A finished run is reused, a new seed trained, with the first run's budget."""
    kwargs = {
        "steps": 4,
        "budget": None,
        "num_observations": 10,
        "encoder": "gaussian",
        "overrides": _BENCH_TRAIN,
        "task_options": _F64,
        "out": workdir,
        "eval_options": EVAL,
        "progress": False,
        "command": "golden",
    }
    run_bench("toy-collapse", ["smc-wake-c"], seeds=[0], **kwargs)
    run_bench("toy-collapse", ["smc-wake-c"], seeds=[0, 1], resume=True, **kwargs)
    return compact(json.loads((workdir / "results.json").read_text()))


def _cli(args: list[str], workdir: Path, *files: str) -> dict[str, Any]:
    code = cli.main(["--threads", "1", *args, "--out", str(workdir), "--no-progress"])
    out = {"exit": code}
    for name in files:
        record = json.loads((workdir / name).read_text())
        if "command" in record:  # the command line names the (temporary) output folder
            record["command"] = record["command"].replace(str(workdir), "OUT")
        out[name] = compact(record)
    return out


# fmt: off
_CLI_TRAIN = [
    "--num-observations", "10", "--num-particles", "64", "--batch-size", "5",
    "--num-proposals", "16", "--refresh-every", "2", "--lr", "0.01", "--encoder", "gaussian",
    "--kernel", "rwmh", "--mcmc-steps", "2",
    "--set", "refresh_size=5", "--set", "max_runs=3", "--set", "num_resampled=8",
    "--set", "runs_per_step=2", "--set", "particles_per_step=32",
    "--set", "smc.ess_target=0.5", "--set", "smc.resample_threshold=0.5",
    "--set", "smc.resampling=systematic", "--set", "smc.max_stages=500",
    "--set", "grad_clip=10.0", "--set", "max_bad_steps=20", "--set", "log_every=1",
    "--c2st-observations", "0", "--c2st-samples", "50", "--num-samples", "100",
]
# fmt: on
"""Every option of the command line (it has no dtype option: the tasks run in float32)."""


def _cli_bench(workdir: Path) -> dict[str, Any]:
    args = ["bench", "toy-collapse", "--methods", "smc-wake-c,wake,elbo", "--seeds", "2"]
    return _cli([*args, "--steps", "4", *_CLI_TRAIN], workdir, "results.json")


def _cli_fit(workdir: Path) -> dict[str, Any]:
    args = ["fit", "--task", "toy-collapse", "--method", "smc-wake-a", "--seed", "1"]
    return _cli([*args, "--steps", "4", *_CLI_TRAIN], workdir, "results.json", "metrics.json")


# ------------------------------------------------------------------------------- registry
_BASELINES = ["wake", "defensive-wake", "sleep", "elbo", "iwae", "msc"]
_SMC_WAKE = ["smc-wake-a", "smc-wake-b", "smc-wake-c", "smc-wake-naive", "smc-wake-pimh"]

CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "run_smc/linear-gaussian/rwmh": _smc_case("linear-gaussian", "rwmh", 3, "systematic", **_LG),
    "run_smc/linear-gaussian/mala": _smc_case("linear-gaussian", "mala", 3, "stratified", **_LG),
    "run_smc/linear-gaussian/hmc": _smc_case("linear-gaussian", "hmc", 2, "multinomial", **_LG),
    "run_smc/two-moons/mixture+rwmh": _smc_case("two-moons", "mixture+rwmh", 4, "residual"),
    "run_smc/toy-collapse/mixture+local_rwmh": _smc_case(
        "toy-collapse", "mixture+local_rwmh", 3, "systematic"
    ),
    **{f"fit/{m}": _fit_case(m) for m in _SMC_WAKE + _BASELINES},
    "fit/smc-wake-a/flow/encoder+rwmh": _fit_case(
        "smc-wake-a", encoder="flow", smc=dataclasses.replace(SMC, kernel="encoder+rwmh")
    ),
    "fit/wake/mdn": _fit_case("wake", encoder="mdn"),
    "fit/smc-wake-b/gaussian-diag/two-moons": _fit_case(
        "smc-wake-b", task_name="two-moons", encoder="gaussian-diag"
    ),
    "bench/toy-collapse": _bench_case(
        "toy-collapse",
        ["smc-wake-a", "wake", "sleep", "elbo", "msc"],
        [0, 1],
        steps=5,
        budget=None,
        num_observations=20,
        encoder="gaussian",
        overrides=_BENCH_TRAIN,
        task_options=_F64,
        curve_points=3,
        data_seed=0,
    ),
    "bench/two-moons": _bench_case(
        "two-moons",
        ["smc-wake-b", "elbo"],
        [0],
        dataclasses.replace(EVAL, c2st_observations=1),
        steps=3,
        budget=None,
        num_observations=10,
        encoder="gaussian",
        overrides=_BENCH_TRAIN,
        task_options=_F64,
        curve_points=2,
        data_seed=1,
    ),
    "bench/digits": _bench_case(
        "digits",
        ["smc-wake-c", "wake"],
        [0],
        steps=3,
        budget=None,
        num_observations=16,
        overrides={
            **_BENCH_TRAIN,
            "num_particles": 30,
            "refresh_size": 8,
            "stale_after": 2,
            # two random-walk steps do not mix in the digits latent space: every run is flagged
            # unmixed, and the pipeline is what this case pins
            "use_unconverged": True,
        },
    ),
    "bench/resume": _bench_resume,
    "cli/bench": _cli_bench,
    "cli/fit": _cli_fit,
}
"""The fast cases: all of them together take a few seconds on one core."""

SLOW_CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "bench/many-samplers": _bench_case(
        "many-samplers",
        None,
        [0],
        steps=2,
        # one random-walk step per stage does not mix in 50-D: the runs are flagged unmixed and
        # kept, since this case pins the runner, not the sampler
        overrides={**_BENCH_TRAIN, "smc.num_mcmc_steps": 1, "use_unconverged": True},
        curve_points=2,
    ),
}
"""Cases that take more than ten seconds (the task fixes K = 10,000 particles in 50-D)."""
