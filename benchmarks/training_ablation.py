"""Where the gap between a trained encoder and its own SMC comes from: a training ablation.

Models (100 observations each, data seed 0):

- ``two-moons`` (built-in task; reference: the task's dense grid);
- ``spike-slab`` (built-in task: a 2-D location on U[-5, 5]^2 whose likelihood is a 50/50
  mixture of N(z, 1) and N(z, 0.05^2); reference: exact draws);
- ``decay`` (held out, never tuned on: counts x_t ~ Poisson(A exp(-k t) + b) at ten times,
  A, k, b with Gamma priors, d = 3; reference: a long SMC run, K = 50,000, checked against a
  second independent one).

Each run calls ``fit`` with the settings of one row (one factor changed from a base), on one
thread, alone, and scores the encoder with :func:`smcwake.bench.evaluate`: C2ST against the
reference on the first 10 observations, 1,000 draws per side (the setting of docs/RESULTS.md),
plus coverage and the grid forward KL where available. A few checkpoints during training are
scored too (their time is left out of the wall-clock). The floor is the C2ST of ``run_smc``'s
own particles (default kernel, K = 5,000) on the same observations.

Results are appended to a JSON-lines file (runs already there are skipped); ``write`` renders
the tables into docs/RESULTS.md between ``<!-- begin training-ablation -->`` markers.

    python benchmarks/training_ablation.py floor two-moons spike-slab decay
    python benchmarks/training_ablation.py plan --models two-moons spike-slab
    python benchmarks/training_ablation.py run spike-slab my-row --set lr=3e-3 --set steps=4000
    python benchmarks/training_ablation.py write

Times: each run records its wall-clock and its CPU time (one thread, so CPU time is the
wall-clock it would take on an unloaded core). The machine these tables come from was shared,
so the tables give CPU minutes; compare rows, not seconds across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, table, write_section
from torch.distributions import Gamma, Independent, Poisson

from smcwake import Model, fit, run_smc
from smcwake.bench import EvalOptions, evaluate
from smcwake.diagnostics import c2st
from smcwake.tasks import Task, get
from smcwake.train import TrainConfig

RESULTS = ROOT / "docs" / "results" / "training-ablation.jsonl"
FIGURE = ROOT / "docs" / "results" / "training-ablation-convergence.png"
MODELS = ("two-moons", "spike-slab", "decay")
REFERENCE_CACHE = ROOT / "runs" / "training-ablation" / "decay-reference.pt"
NUM_OBSERVATIONS = 100
SCORED = 10  # observations scored by C2ST (the first ones), as in docs/RESULTS.md
EVAL = EvalOptions(num_samples=1000, c2st_observations=SCORED, c2st_samples=1000)

OLD_DEFAULTS: dict[str, Any] = {"support_transform": False}
"""The base of the one-factor rows: TrainConfig as it was before this ablation (the library's
defaults then: 2,000 steps, batch 32, lr 1e-3 constant, 256 particles per step, estimator (a)
with 50 runs, a refresh of 32 observations every 10 steps, NSF with 3 transforms of (64, 64)
hidden units and 8 bins, on R^d)."""
OLD_FLOW = {"transforms": 3, "hidden": [64, 64], "bins": 8}


# ------------------------------------------------------------------------------- models
TIMES = torch.arange(10, dtype=torch.float64) * 0.5
DECAY_CONCENTRATION = torch.tensor([4.0, 4.0, 4.0])
DECAY_RATE = torch.tensor([0.4, 8.0, 2.0])  # means: A = 10, k = 0.5, b = 2


def decay_model() -> Model:
    """Counts x_t ~ Poisson(A exp(-k t) + b), t = 0, 0.5, ..., 4.5; A, k, b ~ Gamma."""
    prior = Independent(Gamma(DECAY_CONCENTRATION, DECAY_RATE), 1)
    times = TIMES.float()

    def rate(z: torch.Tensor) -> torch.Tensor:
        amplitude, decay, background = z[..., :1], z[..., 1:2], z[..., 2:]
        return amplitude * torch.exp(-decay * times.to(z)) + background

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Poisson(rate(z), validate_args=False).log_prob(x[:, None, :]).sum(-1)

    def simulate(z: torch.Tensor) -> torch.Tensor:
        return torch.poisson(rate(z))

    return Model(prior, log_likelihood, simulate=simulate, name="decay")


def decay_task() -> Task:
    """The held-out model as a Task whose reference is a long SMC run (cached on disk)."""
    model = decay_model()

    def observations(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        z = model.sample_prior((n,), generator=g)
        return z, model.simulate(z, generator=g)

    def reference_posterior(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        draws = _decay_reference(x)
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(0, draws.shape[1], (x.shape[0], n), generator=g)
        return torch.gather(draws, 1, pick[..., None].expand(-1, -1, draws.shape[-1]))

    return Task(
        name="decay",
        model=model,
        description="Poisson counts of a decay on a background; A, k, b ~ Gamma (d = 3)",
        observations=observations,
        reference_posterior=reference_posterior,
        defaults={"num_observations": NUM_OBSERVATIONS, "num_particles": 1000},
    )


def _decay_reference(x: torch.Tensor, num_particles: int = 50_000) -> torch.Tensor:
    """Equally weighted draws from a long SMC run per observation (K = 50,000, 20 moves per
    stage, in float64), cached. Shapes: x [B, 10] -> [B, 20000, 3]."""
    key = x.double().tolist()
    if REFERENCE_CACHE.exists():
        cached = torch.load(REFERENCE_CACHE)
        if cached["x"] == key:
            return cached["draws"]
    draws = _long_smc(x, num_particles, seed=123)
    REFERENCE_CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": key, "draws": draws}, REFERENCE_CACHE)
    return draws


def _long_smc(x: torch.Tensor, num_particles: int, seed: int) -> torch.Tensor:
    model = decay_model()
    result = run_smc(
        model,
        x.double(),
        num_particles,
        num_mcmc_steps=20,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    if not bool(result.converged.all()):
        raise RuntimeError("the reference SMC did not reach tau = 1")
    return result.sample(20_000, generator=torch.Generator().manual_seed(seed)).float()


def load(name: str) -> tuple[Task, torch.Tensor, torch.Tensor]:
    """(task, z_true [100, d], x [100, p]) for a model name."""
    task = decay_task() if name == "decay" else get(name)
    z, x = task.observations(NUM_OBSERVATIONS, 0)
    return task, z, x


# ------------------------------------------------------------------------------- runs
def _done(model: str, name: str) -> bool:
    if not RESULTS.exists():
        return False
    for line in RESULTS.read_text().splitlines():
        record = json.loads(line)
        if record["model"] == model and record["name"] == name:
            return True
    return False


def _append(record: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _score(task: Task, encoder, z: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    metrics, arrays = evaluate(task, encoder, z, x, options=EVAL, seed=0)
    keep = ("c2st", "coverage_error", "forward_kl", "log_q_true")
    out = {k: metrics[k] for k in keep if k in metrics}
    out["c2st_per_observation"] = arrays.get("c2st_per_observation")
    return out


def run_one(model: str, name: str, settings: dict[str, Any], curve_points: int = 4) -> dict:
    """Train with ``settings`` (TrainConfig fields over the old defaults), score, record."""
    task, z, x = load(model)
    merged = {**OLD_DEFAULTS, "encoder_options": dict(OLD_FLOW), **settings}
    if "flow" in settings:  # capacity rows change some of the flow's options
        merged["encoder_options"] = {**OLD_FLOW, **merged.pop("flow")}
    config = TrainConfig(**merged, progress=False, checkpoint_every=10**9)
    marks = sorted(
        {max(1, round(config.steps * k / curve_points)) for k in range(1, curve_points)}
    )
    curve: list[dict[str, Any]] = []
    scoring = [0.0, 0.0]  # wall and CPU seconds spent scoring checkpoints (left out)
    start = (time.perf_counter(), time.process_time())

    def elapsed() -> tuple[float, float]:
        return (
            time.perf_counter() - start[0] - scoring[0],
            time.process_time() - start[1] - scoring[1],
        )

    def callback(step: int, encoder, row: dict) -> None:
        if marks and step >= marks[0]:
            marks.pop(0)
            wall, cpu = elapsed()
            begin = (time.perf_counter(), time.process_time())
            was_training = encoder.training
            encoder.eval()
            scores = _score(task, encoder, z, x)
            encoder.train(was_training)
            curve.append({"step": step, "wall_time": wall, "cpu_time": cpu, **scores})
            scoring[0] += time.perf_counter() - begin[0]
            scoring[1] += time.process_time() - begin[1]

    out = fit(task.model, x, config=config, callbacks=[callback])
    wall, cpu = elapsed()
    h = out.history
    record = {
        "model": model,
        "name": name,
        "settings": settings,
        "wall_time": wall,
        "cpu_time": cpu,
        "steps": h["step"][-1],
        "likelihood_evals": h["likelihood_evals"][-1],
        **_score(task, out.encoder, z, x),
        "curve": curve,
        "monitor": [
            {"step": s, "bank_forward_kl": k, "bank_ess": e}
            for s, k, e in zip(h["step"], h["bank_forward_kl"], h["bank_ess"], strict=True)
            if k is not None
        ],
    }
    record["curve"].append(
        {"step": record["steps"], "wall_time": wall, "cpu_time": cpu, "c2st": record["c2st"]}
    )
    _append(record)
    print(  # noqa: T201
        f"{model} {name}: C2ST {record['c2st']:.3f} in {cpu:.0f} CPU s ({wall:.0f} s)", flush=True
    )
    return record


def floor(model: str) -> dict[str, Any]:
    """C2ST of run_smc's own particles (default kernel, K = 5,000) on the scored observations."""
    task, _, x = load(model)
    ref = task.reference_posterior(x[:SCORED], EVAL.c2st_samples, 10_000)
    start = (time.perf_counter(), time.process_time())
    result = run_smc(task.model, x[:SCORED], 5000, generator=torch.Generator().manual_seed(0))
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    draws = result.sample(EVAL.c2st_samples, generator=torch.Generator().manual_seed(1))
    scores = [c2st(ref[i], draws[i], seed=0) for i in range(SCORED)]
    record = {
        "model": model,
        "name": "floor: run_smc, K = 5000",
        "settings": {},
        "wall_time": wall,
        "cpu_time": cpu,
        "c2st": statistics.fmean(scores),
        "c2st_per_observation": scores,
    }
    if model == "decay":  # the reference against a second, independent long run
        other = _long_smc(x[:SCORED], 50_000, seed=321)
        record["reference_check"] = statistics.fmean(
            c2st(ref[i], other[i, : EVAL.c2st_samples], seed=0) for i in range(SCORED)
        )
    _append(record)
    print(f"{model} floor: C2ST {record['c2st']:.3f}", flush=True)  # noqa: T201
    return record


# ------------------------------------------------------------------------------- the plan
FACTORS: list[tuple[str, str, dict[str, Any]]] = [
    ("base", "old defaults", {}),
    ("support transform", "on", {"support_transform": True}),
    # a constant learning rate makes the first 2,000 steps of this run those of the base: its
    # checkpoints give the C2ST after 1,000 ... 8,000 steps
    ("steps", "8000 (checkpoints every 1000)", {"steps": 8000}),
    ("peak lr", "3e-4", {"lr": 3e-4}),
    ("peak lr", "3e-3", {"lr": 3e-3}),
    ("schedule", "cosine", {"lr_schedule": "cosine"}),
    ("schedule", "warm-up 100 + cosine", {"lr_schedule": "cosine", "warmup_steps": 100}),
    ("schedule", "step decay", {"lr_schedule": "step"}),
    ("batch size", "16", {"batch_size": 16}),
    ("batch size", "64", {"batch_size": 64}),
    ("particles per step", "64", {"particles_per_step": 64}),
    ("particles per step", "1024", {"particles_per_step": 1024}),
    ("refresh", "every 50 steps", {"refresh_every": 50}),
    ("flow transforms", "5", {"flow": {"transforms": 5}}),
    ("flow hidden", "(128, 128)", {"flow": {"hidden": [128, 128]}}),
    ("flow bins", "16", {"flow": {"bins": 16}}),
    ("estimator", "(b)", {"method": "smc-wake-b"}),
    ("estimator", "(c)", {"method": "smc-wake-c"}),
    ("runs kept (a)", "10", {"max_runs": 10}),
    ("runs kept (a)", "200", {"max_runs": 200}),
]
"""One factor at a time from the old defaults: (factor, setting, TrainConfig overrides)."""


def _label(factor: str, setting: str) -> str:
    return f"{factor}: {setting}"


def plan(models: list[str], only: list[str] | None) -> None:
    for factor, setting, overrides in FACTORS:
        name = _label(factor, setting)
        if only and factor not in only and name not in only:
            continue
        for model in models:
            if not _done(model, name):
                points = max(4, overrides.get("steps", 2000) // 1000)
                run_one(model, name, overrides, curve_points=points)


# ------------------------------------------------------------------------------- tables
def _records() -> list[dict[str, Any]]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines()]


def _standard_error(record: dict[str, Any]) -> float | None:
    """Standard error of the mean C2ST over the scored observations (their spread / sqrt(n))."""
    scores = record.get("c2st_per_observation") or []
    return statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else None


def _paired_difference(record: dict[str, Any], base: dict[str, Any] | None) -> str:
    """Mean C2ST difference to the base row over the same observations, with its standard
    error (the spread of the per-observation differences / sqrt(n)): the classifier's and the
    observations' noise, not the training seed's."""
    if base is None or record is base or record["name"].startswith("floor"):
        return ""
    diff = [
        a - b
        for a, b in zip(record["c2st_per_observation"], base["c2st_per_observation"], strict=True)
    ]
    return f"{statistics.fmean(diff):+.3f} ± {statistics.stdev(diff) / len(diff) ** 0.5:.3f}"


def write(out: Path, figure: Path) -> None:
    """The ablation tables (one per model) into ``out`` and the convergence figure."""
    records = _records()
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    blocks = []
    for model in models:
        lines = []
        rows = [r for r in records if r["model"] == model]
        base = next((r for r in rows if r["name"].startswith("base")), None)
        for r in rows:
            se = _standard_error(r)
            coverage = r.get("coverage_error")
            last = r["monitor"][-1] if r.get("monitor") else None
            lines.append(
                (
                    r["name"],
                    f"{r['c2st']:.3f}" + ("" if se is None else f" ± {se:.3f}"),
                    _paired_difference(r, base),
                    "" if coverage is None else f"{coverage:.3f}",
                    "" if last is None else f"{last['bank_forward_kl']:.2f}",
                    "" if last is None else f"{last['bank_ess']:.2f}",
                    f"{r.get('cpu_time', r['wall_time']) / 60:.1f}",
                    f"{r['wall_time'] / 60:.1f}",
                    f"{r['steps']:,}" if "steps" in r else "",
                )
            )
        header = ["row", "C2ST ± se", "minus base", "coverage error", "bank KL", "bank ESS"]
        header += ["CPU min", "wall min", "steps"]
        blocks.append(f"**{model}**\n\n" + table(header, lines))
    blocks.append(f"![convergence]({figure.relative_to(out.parent).as_posix()})")
    write_section("training-ablation", "\n\n".join(blocks), out)
    plot_convergence(records, figure)


def plot_convergence(records: list[dict[str, Any]], path: Path) -> None:
    """C2ST at the checkpoints and the convergence signal of the history, per step; and the
    gap to the floor against the ESS signal at every checkpoint of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floors = {r["model"]: r["c2st"] for r in records if r["name"].startswith("floor")}
    shown = [r for r in records if r.get("monitor") and r["steps"] >= 4000]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for r in shown:
        label = f"{r['model']}: {r['name']}"
        steps = [c["step"] for c in r["curve"]]
        (line,) = axes[0].plot(steps, [c["c2st"] for c in r["curve"]], "o-", label=label)
        monitor_steps = [m["step"] for m in r["monitor"]]
        color = line.get_color()
        axes[1].plot(monitor_steps, [m["bank_forward_kl"] for m in r["monitor"]], color=color)
        axes[2].plot(monitor_steps, [m["bank_ess"] for m in r["monitor"]], color=color)
    for value in floors.values():
        axes[0].axhline(value, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="step", ylabel="C2ST (10 observations)", title="C2ST; dotted: SMC floor")
    axes[1].set(xlabel="step", ylabel="nats", title="bank_forward_kl")
    axes[2].set(xlabel="step", ylabel="fraction", title="bank_ess")
    axes[0].legend(fontsize=6)
    for model, marker in zip(MODELS, "os^", strict=True):
        points = []
        for r in records:
            if r["model"] != model or not r.get("monitor"):
                continue
            for c in r["curve"]:  # ESS: the mean of the last five values up to the checkpoint
                last = [m["bank_ess"] for m in r["monitor"] if m["step"] <= c["step"]][-5:]
                points.append((statistics.fmean(last), c["c2st"] - floors[model]))
        if points:
            axes[3].scatter(*zip(*points, strict=True), marker=marker, label=model, alpha=0.7)
    axes[3].axhline(0.02, color="grey", lw=0.8, ls=":")
    axes[3].set(xlabel="bank_ess (last five)", ylabel="C2ST - floor", title="every checkpoint")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- command line
def _parse_settings(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = json.loads(value)
    return out


def main(argv: list[str] | None = None) -> None:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one row: a model, a name and TrainConfig overrides")
    r.add_argument("model")
    r.add_argument("name")
    r.add_argument("--set", action="append", metavar="KEY=JSON")
    r.add_argument(
        "--checkpoints", type=int, default=4, help="score at every 1/N of the steps (default 4)"
    )
    f = sub.add_parser("floor", help="C2ST of run_smc's own particles")
    f.add_argument("models", nargs="+")
    pl = sub.add_parser("plan", help="every one-factor row not yet in the results")
    pl.add_argument("--models", nargs="+", default=["two-moons", "spike-slab"])
    pl.add_argument("--only", nargs="+", help="factors or row names to run")
    w = sub.add_parser("write", help="render the tables into docs/RESULTS.md")
    w.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    w.add_argument("--figure", type=Path, default=FIGURE)
    p.add_argument("--results", type=Path, help="JSON-lines file of the runs (default: docs/)")
    args = p.parse_args(argv)
    RESULTS = args.results or RESULTS
    torch.set_num_threads(1)
    if args.command == "run":
        if not _done(args.model, args.name):
            run_one(args.model, args.name, _parse_settings(args.set), args.checkpoints)
    elif args.command == "floor":
        for model in args.models:
            floor(model)
    elif args.command == "plan":
        plan(args.models, args.only)
    else:
        write(args.out, args.figure)


if __name__ == "__main__":
    sys.exit(main())
