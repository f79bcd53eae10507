"""The ``smcwake`` command: ``fit``, ``bench``, ``report``, ``demo`` and ``distributed``.

::

    smcwake demo --out runs/demo                      # SMC-Wake on two moons, a few minutes
    smcwake fit --task two-moons --method smc-wake-a --steps 2000 --out runs/tm
    smcwake fit --task two-moons --method smc-wake-a --steps 4000 --out runs/tm --resume
    smcwake fit --model mypkg.models:build --data x.pt --steps 2000 --out runs/mine
    smcwake bench linear-gaussian --methods smc-wake-a,wake --seeds 3 --steps 500 --out runs/lg
    smcwake report runs/lg                            # rebuild report.md and PNGs from JSON
    torchrun --nproc-per-node 2 -m smcwake distributed --task two-moons --steps 2000 --out runs/d

Every command writes ``results.json``, ``report.md`` and PNG figures into its output folder;
``fit`` also writes ``metrics.json`` and its checkpoint (``--resume`` continues from it).
``fit --model`` trains on your own model (see :mod:`smcwake._cli_model`) and writes its
checkpoint, ``summary.json`` and ``posterior.png``; with ``--calibration N`` also
``calibration.json`` and ``calibration.png`` from :func:`smcwake.check_calibration`.
``fit`` and ``bench`` refuse an output folder that already holds a run unless told what to do
with it: ``--resume`` (continue it, reusing finished runs) or ``--overwrite`` (start afresh).
``demo`` continues an earlier or interrupted demo in its folder; ``--overwrite`` starts afresh.
``distributed`` trains on a built-in task on every process of a ``torchrun`` launch
(:func:`smcwake.fit_distributed`) and writes ``summary.json`` (see docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "DEMO_SETTINGS", "DEMO_EVAL"]

DEMO_SETTINGS: dict[str, Any] = {
    "task": "two-moons",
    "method": "smc-wake-b",
    "steps": 4000,
    "num_observations": 100,
    "overrides": {
        "num_particles": 1000,
        "batch_size": 32,
        "refresh_every": 50,
        "max_runs": 10,
        "num_resampled": 10,
        "lr": 1e-3,
    },
}
"""What ``smcwake demo`` trains: two moons, NSF encoder, SMC-Wake estimator (b).

Estimator (b) keeps R = 10 particles resampled from each of the last M = 10 SMC runs of an
observation (K = 1000 particles each), so a step scores 100 particles per observation: as cheap
as wake with 100 proposals, where estimator (a) would score K per retained run.
"""

DEMO_EVAL: dict[str, Any] = {}
"""``EvalOptions`` fields for the demo's evaluation (empty: the defaults)."""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _settings(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["lr=0.01", "smc.kernel=mala"]`` -> ``{"lr": 0.01, "smc.kernel": "mala"}``."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set: expected KEY=VALUE, received {pair!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given as options (None = the task's or the library's default)."""
    out = {
        key: getattr(args, key)
        for key in ("batch_size", "num_particles", "refresh_every", "lr", "num_proposals")
        if getattr(args, key, None) is not None
    }
    if getattr(args, "kernel", None) is not None:
        out["smc.kernel"] = args.kernel
    if getattr(args, "mcmc_steps", None) is not None:
        out["smc.num_mcmc_steps"] = args.mcmc_steps
    out.update(_settings(getattr(args, "set", None)))
    return out


def _eval_options(args: argparse.Namespace):
    """EvalOptions from the options given, or None (the runner's own defaults)."""
    from smcwake.bench import EvalOptions

    fields = {}
    if getattr(args, "c2st_observations", None) is not None:
        fields["c2st_observations"] = args.c2st_observations
    if getattr(args, "c2st_samples", None) is not None:
        fields["c2st_samples"] = args.c2st_samples
    if getattr(args, "num_samples", None) is not None:
        fields["num_samples"] = args.num_samples
    return EvalOptions(**fields) if fields else None


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the task's suggestions, then TrainConfig's)")
    g.add_argument("--steps", type=int, help="gradient steps")
    g.add_argument("--batch-size", type=int, help="observations per minibatch")
    g.add_argument("--num-particles", type=int, help="K, particles per SMC run")
    g.add_argument("--num-proposals", type=int, help="proposals per observation (wake, msc, ...)")
    g.add_argument("--refresh-every", type=int, help="steps between SMC refreshes")
    g.add_argument("--lr", type=float, help="Adam learning rate")
    g.add_argument("--encoder", help="flow (nsf), mdn, gaussian, gaussian-diag")
    g.add_argument("--num-observations", type=int, help="dataset size")
    g.add_argument("--kernel", help="SMC move: rwmh, mala, hmc, mixture+rwmh, ...")
    g.add_argument("--mcmc-steps", type=int, help="MCMC steps per SMC stage")
    g.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="another TrainConfig field (JSON value): runs_per_step=1, smc.ess_target=0.7",
    )
    g.add_argument("--c2st-observations", type=int, help="observations scored by C2ST and MMD")
    g.add_argument("--c2st-samples", type=int, help="samples per side for C2ST (default 1000)")
    g.add_argument("--num-samples", type=int, help="q samples per observation for the metrics")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    m.add_argument("--overwrite", action="store_true", help="replace the run(s) already in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``smcwake`` command."""
    from smcwake.bench import ALL_METHODS

    parser = argparse.ArgumentParser(
        prog="smcwake",
        description="Amortized inference by inclusive-KL minimization with likelihood-tempered "
        "SMC (SMC-Wake; McNamara, Loper & Regier, AISTATS 2024).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: small tensors gain nothing from more, and on a busy "
        "machine extra threads can slow a run tenfold)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "fit",
        help="train one method on a built-in task or your own model",
        description="Train one method on a built-in task (--task; evaluated and reported) or on "
        "your own model (--model MODULE:FUNCTION with --data, or data returned by FUNCTION).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a built-in task, e.g. two-moons")
    source.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        help="your model: FUNCTION() in MODULE (importable, or a path/to/file.py) returns an "
        "smcwake.Model or a tuple (Model, x); e.g. mypkg.models:build",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="with --model: the observations, a float tensor [n, p] saved with torch.save (or "
        "a .npy array); replaces x returned by FUNCTION",
    )
    p.add_argument(
        "--calibration",
        type=int,
        metavar="N",
        help="with --model: after training, check calibration on N simulations (needs the "
        "model's simulator; see smcwake.check_calibration)",
    )
    p.add_argument("--method", default="smc-wake-a", help="e.g. smc-wake-a, wake, sleep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, help="stop after this many likelihood evaluations")
    p.add_argument("--out", required=True, help="run folder (checkpoint, metrics, report)")
    _add_training_options(p)

    p = sub.add_parser("bench", help="compare methods at a matched budget over seeds")
    p.add_argument("task", help="a built-in task (many-samplers, digits: their own experiment)")
    p.add_argument(
        "--methods",
        help="comma-separated methods (default: the task's list, else "
        + ",".join(ALL_METHODS)
        + ")",
    )
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    p.add_argument(
        "--budget",
        type=int,
        help="likelihood evaluations per run (default: what the first method uses in --steps)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep finished checkpoints")
    _add_training_options(p)

    p = sub.add_parser("report", help="rebuild report.md and PNGs from DIR/results.json")
    p.add_argument("dir", help="a folder written by fit, bench or demo")

    p = sub.add_parser("demo", help="SMC-Wake on two moons with a report, in a few minutes")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=DEMO_SETTINGS["steps"], help="gradient steps")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a demo in --out, not continue it"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_distributed_parser(sub)
    return parser


def _add_distributed_parser(sub) -> None:
    p = sub.add_parser(
        "distributed",
        help="data-parallel training on a built-in task (launch with torchrun)",
        description="Data-parallel SMC-Wake training on a built-in task, launched as "
        "torchrun --nproc-per-node N -m smcwake distributed ...",
    )
    p.add_argument("--task", default="two-moons", help="a name from smcwake.tasks")
    p.add_argument("--method", default="smc-wake-a")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--num-observations", type=int, help="default: the task's")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the observations")
    p.add_argument("--seed", type=int, default=0, help="seed of the training run")
    p.add_argument("--encoder", help="encoder kind (default: the task's)")
    p.add_argument("--num-particles", type=int, help="default: the task's")
    p.add_argument("--batch-size", type=int, help="observations per step, per process")
    p.add_argument("--refresh-every", type=int)
    p.add_argument("--refresh-size", type=int, help="observations per refresh, per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--device", help="default: cuda:<LOCAL_RANK> if available, else cpu")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    again.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--no-progress", action="store_true")


def _command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return "smcwake " + " ".join(shlex.quote(a) for a in args)


def _print_summary(results: dict[str, Any], report: Path) -> None:
    from smcwake.report import metric_table

    print()
    print(metric_table(results))
    print()
    print(f"report: {report}")


# what fit, bench and demo leave in their folder; one of them there means a run was made
_RUN_FILES = ("checkpoint.pt", "history.json", "results.json", "runs")


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an --out that holds a run unless --resume or --overwrite says what to do."""
    out = Path(args.out)
    held = [name for name in _RUN_FILES if (out / name).exists()]
    if held and not (args.resume or args.overwrite):
        raise ValueError(
            f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


def _cmd_fit(args: argparse.Namespace, command: str) -> int:
    if args.model is not None:
        return _cmd_fit_model(args, command)
    for option in ("data", "calibration"):
        if getattr(args, option) is not None:
            raise ValueError(f"--{option} goes with --model (a built-in task brings its own)")
    from smcwake.bench import run_fit

    _require_report_extras("smcwake fit --task")
    _check_out(args)
    results = run_fit(
        args.task,
        args.method,
        args.out,
        steps=args.steps,
        seed=args.seed,
        budget=args.budget,
        num_observations=args.num_observations,
        encoder=args.encoder,
        overrides=_train_overrides(args),
        eval_options=_eval_options(args),
        resume=args.resume,
        progress=not args.no_progress,
        command=command,
    )
    _print_summary(results, Path(args.out) / "report.md")
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


# ---------------------------------------------------------------- fit --model (your own model)
def _fit_fields(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields from the command line (``smc.*`` keys become SMCOptions fields)."""
    from smcwake.train import SMCOptions

    fields: dict[str, Any] = {}
    smc: dict[str, Any] = {}
    for key, value in _train_overrides(args).items():
        if key.startswith("smc."):
            smc[key[4:]] = value
        else:
            fields[key] = value
    if smc:
        fields["smc"] = SMCOptions(**smc)
    fields.update(method=args.method, seed=args.seed, progress=not args.no_progress)
    optional = {"steps": args.steps, "encoder": args.encoder, "max_evals": args.budget}
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields


def _cmd_fit_model(args: argparse.Namespace, command: str) -> int:
    import torch

    from smcwake._cli_model import load_data, load_model
    from smcwake.train import fit

    model, x = load_model(args.model)
    if args.data is not None:
        x = load_data(args.data)
    if x is None:
        raise ValueError(
            f"--model {args.model}: no observations; pass --data FILE, or return (model, x) "
            "from the function"
        )
    if args.num_observations is not None:
        x = x[: args.num_observations]
    if args.calibration is not None:
        if args.calibration < 20:
            raise ValueError(f"--calibration: expected at least 20, received {args.calibration}")
        if not model.can_simulate:
            raise ValueError(
                f"--calibration needs simulations, but the model of {args.model} has no "
                "simulator; build it with Model(prior, log_likelihood, simulate=fn)"
            )
    _check_out(args)
    out = Path(args.out)
    result = fit(
        model,
        x,
        run_dir=out,
        resume=args.resume,
        overwrite=args.overwrite,
        **_fit_fields(args),
    )
    history = result.history
    summary = {
        "kind": "fit-model",
        "command": command,
        "model": args.model,
        "data": args.data or "returned by the model function",
        "num_observations": int(x.shape[0]),
        "x_dim": int(x.shape[1]),
        "z_dim": model.dim,
        "method": result.config.method,
        "encoder": result.config.encoder,
        "steps": history["step"][-1] if history["step"] else 0,
        "likelihood_evals": history["likelihood_evals"][-1] if history["step"] else 0,
        "final_loss": history["loss"][-1] if history["step"] else None,
        "wall_time": history["wall_time"][-1] if history["step"] else 0.0,
    }
    print(
        f"trained {summary['method']} on {args.model}: {summary['num_observations']} "
        f"observations (p = {summary['x_dim']}), d = {model.dim}, {summary['steps']} steps, "
        f"{summary['likelihood_evals']:,} likelihood evaluations"
    )
    figures = []
    plot_error = None
    try:
        from smcwake import plot

        with torch.no_grad():
            draws = result.encoder.sample(x[:1], 1000, generator=torch.Generator().manual_seed(0))
        shown = range(min(model.dim, plot.MAX_DIMS))
        fig = plot.pairplot(draws[0], dims=shown)
        more = (
            f" (first {len(shown)} of {model.dim} coordinates)" if model.dim > len(shown) else ""
        )
        fig.suptitle(f"posterior of observation 0{more}")
        fig.savefig(out / "posterior.png", dpi=110)
        figures.append(out / "posterior.png")
        _close(fig)
    except ImportError as err:
        plot_error = str(err)
    if args.calibration is not None:
        from smcwake.calibration import check_calibration

        check = check_calibration(result.encoder, model, args.calibration, seed=args.seed)
        summary["calibration"] = check.to_dict()
        (out / "calibration.json").write_text(json.dumps(check.to_dict(), indent=1))
        print(check.summary())
        if plot_error is None:
            fig = check.plot()
            fig.savefig(out / "calibration.png", dpi=110)
            figures.append(out / "calibration.png")
            _close(fig)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"run folder: {out} (checkpoint.pt: continue with --resume; summary.json)")
    for figure in figures:
        print(f"figure: {figure}")
    if plot_error is not None:
        print(f"no figures: {plot_error}")
    return 0


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _require_report_extras(purpose: str) -> None:
    """Fail before training when a command that writes a report lacks its optional packages."""
    from smcwake._optional import require

    require("matplotlib", f"{purpose} (its report's figures)")
    require("sklearn", f"{purpose} (its C2ST metric)")


def _demo_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """The demo's user-facing figures: a pairplot of observation 0 against the reference, and
    the expected coverage over all observations with its calibrated band."""
    from smcwake import plot

    run = results["methods"][DEMO_SETTINGS["method"]]["runs"][0]
    written = []
    if "panel_samples" in run:
        reference = results.get("panel_reference")
        fig = plot.pairplot(
            run["panel_samples"][0],
            reference=reference[0] if reference is not None else None,
            labels=["theta1", "theta2"],
            sample_label="SMC-Wake q",
            reference_label="dense-grid reference",
        )
        fig.suptitle("two moons: posterior of observation 0")
        fig.savefig(out / "pairplot.png", dpi=110)
        _close(fig)
        written.append(out / "pairplot.png")
    if "coverage" in run:
        fig = plot.coverage(
            run["coverage"]["level"],
            run["coverage"]["coverage"],
            labels=["SMC-Wake q"],
            num_simulations=int(results["settings"]["num_observations"]),
            title="two moons: expected coverage of q's HPD regions",
        )
        fig.savefig(out / "coverage_band.png", dpi=110)
        _close(fig)
        written.append(out / "coverage_band.png")
    return written


def _cmd_bench(args: argparse.Namespace, command: str) -> int:
    from smcwake.bench import run_bench

    _check_out(args)
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()] or None

    def on_run(method: str, seed: int, record: dict[str, Any]) -> None:
        if "failed" in record:
            print(f"  {method} seed {seed}: failed ({record['failed']})", flush=True)
            return
        print(
            f"  {method} seed {seed}: {record['steps']} steps, "
            f"{record['likelihood_evals']:,} likelihood evaluations, "
            f"{record['wall_time']:.1f} s",
            flush=True,
        )

    results = run_bench(
        args.task,
        methods,
        seeds=args.seeds,
        steps=args.steps or 1000,
        budget=args.budget,
        out=args.out,
        num_observations=args.num_observations,
        encoder=args.encoder,
        overrides=_train_overrides(args),
        eval_options=_eval_options(args),
        resume=args.resume,
        progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints,
        command=command,
        on_run=on_run,
    )
    _print_summary(results, Path(args.out) / "report.md")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from smcwake.report import write_report

    path = write_report(args.dir)
    print(f"report: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace, command: str) -> int:
    from smcwake.bench import EvalOptions, run_fit

    s = DEMO_SETTINGS
    _require_report_extras("smcwake demo")
    out = Path(args.out)
    earlier = out / "results.json"
    kind = json.loads(earlier.read_text()).get("kind") if earlier.exists() else None
    if kind not in (None, "demo") and not args.overwrite:
        raise ValueError(
            f"{out} holds a {kind} run, not a demo; pass --overwrite to replace it, or choose "
            "another --out"
        )
    resume = not args.overwrite
    if resume and (out / "checkpoint.pt").exists():
        print(f"continuing the demo in {out} (--overwrite starts afresh)", flush=True)
    print(
        f"SMC-Wake ({s['method']}) on {s['task']}: {s['num_observations']} observations, "
        f"neural spline flow encoder, K = {s['overrides']['num_particles']} particles, "
        f"{args.steps} steps; then C2ST, coverage and plots against a dense-grid reference.",
        flush=True,
    )
    start = time.perf_counter()
    results = run_fit(
        s["task"],
        s["method"],
        args.out,
        steps=args.steps,
        num_observations=s["num_observations"],
        overrides=dict(s["overrides"]),
        eval_options=EvalOptions(**DEMO_EVAL),
        resume=resume,
        progress=not args.no_progress,
        command=command,
        kind="demo",
    )
    elapsed = time.perf_counter() - start
    metrics = results["methods"][s["method"]]["runs"][0]["metrics"]
    _print_summary(results, Path(args.out) / "report.md")
    for figure in _demo_figures(results, out):
        print(f"figure: {figure}")
    print(
        f"C2ST {metrics.get('c2st', float('nan')):.3f} (0.5 = indistinguishable from the "
        f"reference), coverage error {metrics.get('coverage_error', float('nan')):.3f}; "
        f"total {elapsed / 60:.1f} min"
    )
    return 0


def _cmd_distributed(args: argparse.Namespace, rank: int) -> int:
    from smcwake import tasks
    from smcwake.distributed import SUMMARY_NAME, fit_distributed

    task = tasks.get(args.task)
    n = args.num_observations or int(task.defaults.get("num_observations", 100))
    _, x = task.observations(n, args.data_seed)
    overrides = {
        "method": args.method,
        "steps": args.steps,
        "seed": args.seed,
        "encoder": args.encoder or task.defaults.get("encoder"),
        "num_particles": args.num_particles or task.defaults.get("num_particles"),
        "batch_size": args.batch_size,
        "refresh_every": args.refresh_every,
        "refresh_size": args.refresh_size,
        "lr": args.lr,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "device": args.device,
        "progress": False if args.no_progress else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    result = fit_distributed(
        task.model, x, run_dir=args.out, resume=args.resume, overwrite=args.overwrite, **overrides
    )
    if rank == 0:
        h = result.history
        world = json.loads((Path(args.out) / SUMMARY_NAME).read_text())["world_size"]
        print(
            f"{args.task}: {h['step'][-1]} steps on {world} process{'es' if world > 1 else ''} "
            f"in {h['wall_time'][-1]:.1f} s, final loss {h['loss'][-1]:.4g}; "
            f"summary in {Path(args.out) / SUMMARY_NAME}"
        )
    return 0


def _setup_logging(args: argparse.Namespace) -> int:
    """Configure logging; return this process's rank (0 unless launched by torchrun)."""
    rank = 0
    if args.command == "distributed":  # every process logs warnings, rank 0 its progress
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
        level = logging.INFO if rank == 0 or args.verbose else logging.WARNING
        logging.basicConfig(
            level=level, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
        )
        return rank
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    return rank


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smcwake`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = _setup_logging(args)
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    command = _command_line(argv)
    try:
        if args.command == "fit":
            return _cmd_fit(args, command)
        if args.command == "bench":
            return _cmd_bench(args, command)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "distributed":
            return _cmd_distributed(args, rank)
        return _cmd_demo(args, command)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as err:
        if args.verbose:
            raise
        print(f"smcwake {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)


if __name__ == "__main__":
    sys.exit(main())
