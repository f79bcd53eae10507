"""SMC-Wake (``fit`` with its defaults) against sbi's neural posterior estimation (NPE).

    python benchmarks/peers_amortized.py       # rewrites its sections of docs/PEERS.md

Three parts, each its own section of docs/PEERS.md:

1. ``amortized``: two-moons (grid reference) and the linear-Gaussian task with d = 10, p = 20
   (exact posterior), 100 observations each (z_true, x drawn from the prior predictive).
   SMC-Wake is ``fit(model, x)`` with every default (estimator (a), flow encoder, K = 1000),
   scored each time its training time passes a mark (``--marks``, CPU minutes). NPE is sbi's
   ``NPE`` with its defaults (MAF, early stopping) trained on ``N`` prior simulations for each
   ``N`` of ``--simulations`` (stopping before a run whose time, extrapolated linearly in N
   from the previous one, would exceed 1.5 times the largest mark); its time includes
   simulating.
   Scores from smcwake's ``evaluate`` on the same data: C2ST (first 5 observations, 1,000
   draws), forward KL (exact posterior, or the grid for two-moons), expected-coverage error
   (100 observations). Matched budgets are read off one table: a time budget takes the
   best NPE run that finished within it; model calls are likelihood evaluations for SMC-Wake
   and simulations for NPE.
2. ``out-of-distribution``: the linear-Gaussian task with observations about 4 prior-predictive
   sd from the mean (x simulated from z_true = c eps, eps ~ N(0, I), c set for that distance).
   SMC-Wake trains on these x; NPE, trained on prior simulations in part 1, is evaluated on
   them as it is.
3. ``fit-speed``: steps per second of a default ``fit`` on a 10-d model built as a user would
   (box prior U[-1, 1]^10, x | z ~ N(z, 0.32^2 I), 100 observations), and a cProfile of
   ``--profile-seconds`` of training, grouped by what the time is spent on.

All on one thread (``torch.set_num_threads(1)``); times are the process's CPU time (on one
thread, the wall time on an otherwise idle core), so a shared machine slows the run but does not
move the figures much. ``--parts`` runs a subset. The raw rows go to
docs/results/peers_amortized-<tasks>.json; the time-to-accuracy figure, docs/peers-amortized.png,
is drawn from every such file (so runs of one task at a time add up to one figure).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers.report import DOC, ensure_doc, fmt, one_thread  # noqa: E402

one_thread()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from _common import machine, write_section  # noqa: E402
from _peers.amortized import (  # noqa: E402
    METRICS,
    default_eval_options,
    sbi_unavailable,
    score,
    train_npe,
    train_smc_wake,
)
from training_speed import box_model  # noqa: E402

from smcwake import TrainConfig, fit  # noqa: E402
from smcwake.bench.evaluate import Reference  # noqa: E402
from smcwake.tasks import get  # noqa: E402
from smcwake.tasks.linear_gaussian import linear_gaussian  # noqa: E402

TASKS = ("two-moons", "linear-gaussian-10d")
_STARTED = time.perf_counter()


def clock() -> str:
    """Minutes since the script started, for the progress lines."""
    return f"{(time.perf_counter() - _STARTED) / 60:5.1f} min"


OOD_DISTANCE = 4.0  # root-mean-square whitened coordinate of the out-of-distribution x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="amortized,out-of-distribution,fit-speed")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--marks", default="0.5,1,2,5,10,20", help="SMC-Wake scoring marks, CPU min")
    p.add_argument("--ood-marks", default="1,5", help="marks on the out-of-distribution x")
    p.add_argument("--budgets", default="1,5,20", help="time budgets compared, CPU minutes")
    p.add_argument("--simulations", default="1000,3000,10000,30000,100000", help="NPE's N")
    p.add_argument("--observations", type=int, default=100)
    p.add_argument("--profile-seconds", type=float, default=60.0)
    p.add_argument("--speed-seconds", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--reuse-npe",
        action="store_true",
        help="take each task's NPE rows from its last written results file instead of training "
        "NPE again (for re-running SMC-Wake alone after a change to smcwake)",
    )
    p.add_argument(
        "--fit-options",
        default="",
        help="extra fit settings as k=v,... (for quick tests only; the tables use none)",
    )
    return p.parse_args(argv)


def _fit_options(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return out


def build_task(name: str):
    if name == "two-moons":
        return get("two-moons")
    d = int(name.removeprefix("linear-gaussian-").removesuffix("d"))
    return linear_gaussian(d=d, p=2 * d)


def ood_data(task, n: int, seed: int):
    """(z_true, x, rms): x about 4 prior-predictive sd from the mean.

    z_true = c eps with eps ~ N(0, I) and x | z_true from the model. Whitened by the
    prior-predictive covariance A A^T + I, x has d coordinates of sd about sqrt(c^2 + ...) in
    the directions A reaches and p - d of sd 1 (noise only); c is chosen so that the
    root-mean-square whitened coordinate is about ``OOD_DISTANCE`` (1 for prior-predictive
    draws), and ``rms`` is the value measured on the draws.
    """
    g = torch.Generator().manual_seed(seed + 777)
    A = task.defaults["design_matrix"].double()
    p, d = A.shape
    c = math.sqrt((OOD_DISTANCE**2 * p - (p - d)) / d)
    z = c * torch.randn(n, d, generator=g, dtype=torch.float64)
    x = z @ A.mT + torch.randn(n, p, generator=g, dtype=torch.float64)
    cov = A @ A.mT + torch.eye(p, dtype=torch.float64)
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), x.mT, upper=False)
    rms = float(white.square().mean().sqrt())
    return z.float(), x.float(), rms, c


# ------------------------------------------------------------------------------- part 1 + 2


def run_npe_ladder(task, data: dict, sims: list[int], max_minutes: float, seed: int) -> list:
    """NPE for each N; each trained posterior scored on every dataset in ``data``."""
    rows = []
    for n in sims:
        if rows and rows[-1]["minutes"] * n / rows[-1]["N"] > 1.5 * max_minutes:
            print(
                f"  NPE N={n}: not run (time predicted from N={rows[-1]['N']:,} is over "
                f"1.5 x {max_minutes:g} min)",
                flush=True,
            )
            break
        posterior, seconds = train_npe(task, n, seed)
        scores = {
            name: score(task, posterior, z, x, ref, opts)
            for name, (z, x, ref, opts) in data.items()
        }
        rows.append({"N": n, "minutes": seconds / 60, "calls": n, "scores": scores})
        print(f"  [{clock()}] NPE N={n}: {seconds / 60:.2f} min {scores}", flush=True)
        if seconds / 60 > max_minutes:
            break
    return rows


def run_smc_wake(task, z, x, ref, opts, marks, fit_options, score_data=None) -> tuple[list, dict]:
    rows = []
    score_data = score_data or {"in": (z, x, ref, opts)}

    def on_mark(encoder, minutes, evals, step):
        scores = {
            name: score(task, encoder, zz, xx, rr, oo)
            for name, (zz, xx, rr, oo) in score_data.items()
        }
        rows.append({"minutes": minutes, "calls": evals, "step": step, "scores": scores})
        print(
            f"  [{clock()}] SMC-Wake {minutes:.2f} min, step {step}, {evals:,} evals: {scores}",
            flush=True,
        )

    summary = train_smc_wake(task.model, x, marks, on_mark, **fit_options)
    return rows, summary


def metric_cells(scores: dict) -> str:
    return " | ".join(fmt(scores.get(k), ".3f") for k in METRICS)


def forward_kl(row: dict) -> float:
    """A run's forward KL on the training-distribution observations (inf if missing)."""
    value = row["scores"]["in"].get("forward_kl", math.inf)
    return value if math.isfinite(value) else math.inf


def best_within(rows: list, budget: float) -> dict | None:
    """The NPE run with the lowest forward KL among those that finished within ``budget``."""
    done = [r for r in rows if r["minutes"] <= budget]
    return min(done, key=forward_kl) if done else None


def budget_cell(label: str, row: dict) -> str:
    """'label: forward KL / C2ST / coverage error' of one run."""
    keys = ("forward_kl", "c2st", "coverage_error")
    return f"{label}: " + " / ".join(fmt(row["scores"]["in"].get(k), ".3f") for k in keys)


def winner(npe: dict | None, smc: dict | None, key: str = "in") -> str:
    """Which of the two has the lower forward KL on dataset ``key`` (– if either is missing)."""
    if npe is None or smc is None:
        return "–"
    a = npe["scores"][key].get("forward_kl", math.nan)
    b = smc["scores"][key].get("forward_kl", math.nan)
    if not (math.isfinite(a) and math.isfinite(b)):
        return "–"
    return "NPE" if a < b else "SMC-Wake"


def amortized_section(args, task_name: str, res: dict, sbi_reason: str | None) -> str:
    """The section of one task: every run, then the comparisons at matched budgets."""
    budgets = [float(b) for b in args.budgets.split(",")]
    head = "| method | N / mark | CPU min | model calls | C2ST | forward KL | coverage err |"
    lines = [
        f"## Amortized inference on {task_name}: SMC-Wake against sbi's NPE",
        "",
        f"{args.observations} observations; {machine()}. SMC-Wake: `fit(model, x)` "
        "with every default, scored when its training time passed each mark (scoring time "
        "excluded); NPE: sbi's "
        "`NPE(prior)` with its defaults on N prior simulations (time includes simulating). "
        "Times are CPU minutes of the one-thread process. "
        "C2ST on the first 5 observations (0.5 is perfect), forward KL KL(p || q) per "
        "observation (exact posterior; two-moons: 1024^2 grid), expected-coverage error = mean "
        f"|coverage - level| over levels ({args.observations} observations). Model calls: "
        "likelihood evaluations for SMC-Wake, simulations for NPE. Budgets compared: "
        f"{', '.join(f'{b:g}' for b in budgets)} CPU minutes."
        + (REUSED_NPE if getattr(args, "reuse_npe", False) else ""),
        "",
    ]
    lines += [head, "|---|---|---|---|---|---|---|"]
    for r in res["npe"]:
        lines.append(
            f"| NPE | N = {r['N']:,} | {r['minutes']:.2f} | {r['calls']:,} | "
            f"{metric_cells(r['scores']['in'])} |"
        )
    if sbi_reason:
        lines.append(f"| NPE | – | – | – | – | – | {sbi_reason} |")
    for r in res["smc"]:
        lines.append(
            f"| SMC-Wake | step {r['step']:,} | {r['minutes']:.2f} | {r['calls']:,} | "
            f"{metric_cells(r['scores']['in'])} |"
        )
    lines += [
        "",
        "At matched time budgets:",
        "",
        "| budget (min) | NPE (best within budget) forward KL / C2ST / cov. err | "
        "SMC-Wake forward KL / C2ST / cov. err | lower forward KL |",
        "|---|---|---|---|",
    ]
    for b in budgets:
        npe = best_within(res["npe"], b)
        smc = [r for r in res["smc"] if r["minutes"] <= b * 1.05]
        smc = smc[-1] if smc else None
        cell_n = budget_cell(f"N = {npe['N']:,}", npe) if npe else "–"
        cell_s = budget_cell(f"step {smc['step']:,}", smc) if smc else "–"
        lines.append(f"| {b:g} | {cell_n} | {cell_s} | {winner(npe, smc)} |")
    lines += [
        "",
        "At matched model calls (the best NPE run with at most as many simulations as "
        "SMC-Wake made likelihood evaluations; NPE's largest N is far below them):",
        "",
        "| SMC-Wake calls | SMC-Wake forward KL | NPE N (best with no more calls) | "
        "NPE forward KL | lower forward KL |",
        "|---|---|---|---|---|",
    ]
    for r in res["smc"]:
        below = [n for n in res["npe"] if n["calls"] <= r["calls"]]
        npe = min(below, key=forward_kl) if below else None
        lines.append(
            f"| {r['calls']:,} | {fmt(r['scores']['in'].get('forward_kl'), '.3f')} | "
            f"{'–' if npe is None else format(npe['N'], ',')} | "
            f"{'–' if npe is None else fmt(npe['scores']['in'].get('forward_kl'), '.3f')} | "
            f"{winner(npe, r)} |"
        )
    lines.append("")
    return "\n".join(lines)


def ood_section(res: dict) -> str:
    lines = [
        "## Observations the prior predictive rarely reaches",
        "",
        f"linear-gaussian-10d, {res['n']} observations simulated from z_true = "
        f"{res['shift']:.2f} eps (eps ~ N(0, I)): whitened by the prior-predictive covariance, "
        f"their root-mean-square coordinate is {res['rms']:.1f} (1 for prior-predictive "
        "draws). NPE: the "
        "posteriors trained on prior simulations above, applied to these x. SMC-Wake: "
        "`fit(model, x)` on these x, with every default. Expected coverage is left out: "
        "z_true is not drawn from the prior, so even the exact posterior is not calibrated "
        "against it.",
        "",
        "| method | N / mark | CPU min | forward KL | C2ST |",
        "|---|---|---|---|---|",
    ]
    for r in res["npe"]:
        s = r["scores"].get("ood", {})
        lines.append(
            f"| NPE (trained on prior simulations) | N = {r['N']:,} | {r['minutes']:.2f} | "
            f"{fmt(s.get('forward_kl'), '.3f')} | {fmt(s.get('c2st'), '.3f')} |"
        )
    for r in res["smc"]:
        s = r["scores"]["in"]
        lines.append(
            f"| SMC-Wake (trained on these x) | step {r['step']:,} | {r['minutes']:.2f} | "
            f"{fmt(s.get('forward_kl'), '.3f')} | {fmt(s.get('c2st'), '.3f')} |"
        )
    kls = [r["scores"].get("ood", {}).get("forward_kl", math.nan) for r in res["npe"]]
    best_npe = min((k for k in kls if math.isfinite(k)), default=math.nan)
    last = res["smc"][-1]["scores"]["in"].get("forward_kl", math.nan) if res["smc"] else math.nan
    if math.isfinite(best_npe) and math.isfinite(last):
        who = "SMC-Wake" if last < best_npe else "NPE"
        lines += [
            "",
            f"Lower forward KL on these observations: **{who}** (SMC-Wake's last mark "
            f"{last:.3f}, NPE's best {best_npe:.3f}).",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ part 3


# (label, function names whose cumulative time is summed, counting each call tree once)
PROFILE_PARTS = [
    ("initial and refresh SMC runs (`_run_and_store`)", ["loop.py:_run_and_store"]),
    ("  of which `run_smc`", ["sampler.py:run_smc"]),
    ("SMC-Wake loss (`objective`)", ["objectives.py:objective"]),
    ("  of which drawing from the bank (`ParticleBank.view`)", ["bank.py:view"]),
    ("  of which the weighted encoder `log_prob`", ["objectives.py:_weighted_score_loss"]),
    ("backward + optimizer step (`_take_step`)", ["loop.py:_take_step"]),
    ("  of which `backward`", ["_tensor.py:backward"]),
    ("  of which Adam `step`", ["adam.py:step"]),
    ("convergence signal (`bank_monitor`)", ["loop.py:bank_monitor"]),
    ("checkpoints (`save_checkpoint`)", ["checkpoint.py:save_checkpoint"]),
]
"""(label, functions as "file name:function name") of the profile table, children indented."""


def cumulative(stats: pstats.Stats, names: list[str]) -> float:
    """Cumulative seconds in the functions ``names`` ("file:function"), outermost calls only."""

    def name(key: tuple) -> str:
        return f"{Path(key[0]).name}:{key[2]}"

    total = 0.0
    for key, (_, _, _, cum, callers) in stats.stats.items():
        if name(key) in names and not any(name(c) in names for c in callers):
            total += cum
    return total


def fit_speed_section(args) -> str:
    model, x = box_model(100, args.seed)
    rows = []
    # speed: a default fit stopped after --speed-seconds of steps (after its initial SMC)
    marks = {}

    def stop_after(step, encoder, row):
        marks.setdefault("first", (step, row["wall_time"]))
        marks["last"] = (step, row["wall_time"])
        return row["wall_time"] - marks["first"][1] >= args.speed_seconds

    fit(model, x, callbacks=[stop_after], progress=False, **_fit_options(args.fit_options))
    (s0, t0), (s1, t1) = marks["first"], marks["last"]
    steps_per_second = (s1 - s0) / max(t1 - t0, 1e-9)
    initial = t0 - s0 / steps_per_second  # wall time before the first step, estimated
    rows.append(("steps per second (after the initial SMC)", f"{steps_per_second:.2f}"))
    rows.append(("initial SMC pass over 100 observations (s)", f"{initial:.1f}"))
    steps = TrainConfig(**_fit_options(args.fit_options)).steps
    minutes = (initial + steps / steps_per_second) / 60
    rows.append((f"the whole default fit ({steps:,} steps) would take (min)", f"{minutes:.1f}"))
    rows.append(("steps measured", f"{s1 - s0}"))
    print(rows, flush=True)
    # profile: a fresh default fit, stopped after --profile-seconds of training steps
    first = {}

    def stop_profile(step, encoder, row):
        first.setdefault("t", row["wall_time"])
        return row["wall_time"] - first["t"] >= args.profile_seconds

    profiler = cProfile.Profile()
    profiler.enable()
    fit(model, x, callbacks=[stop_profile], progress=False, **_fit_options(args.fit_options))
    profiler.disable()
    stats = pstats.Stats(profiler)
    whole = cumulative(stats, ["train.py:fit"])
    parts = [(label, cumulative(stats, names)) for label, names in PROFILE_PARTS]
    prof = [
        "| part | seconds | share |",
        "|---|---|---|",
        f"| `fit` | {whole:.1f} | 100% |",
        *[
            f"| {label.replace('  ', '&nbsp;&nbsp;&nbsp;&nbsp;')} | {t:.1f} | "
            f"{100 * t / whole:.0f}% |"
            for label, t in parts
            if t > 0
        ],
    ]
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]  # by own time
    own = [
        "| function (own time) | seconds | share |",
        "|---|---|---|",
        *[
            f"| `{func}` ({Path(file).name}:{line}) | {tt:.1f} | {100 * tt / whole:.0f}% |"
            for (file, line, func), (_, _, tt, _, _) in top
        ],
    ]
    return "\n".join(
        [
            "## Training speed of a default `fit`",
            "",
            f"Model: box prior U[-1, 1]^10, x | z ~ N(z, 0.32^2 I), 100 observations; "
            f"`fit(model, x)` with every default; {machine()}.",
            "",
            "| measure | value |",
            "|---|---|",
            *[f"| {a} | {b} |" for a, b in rows],
            "",
            f"Where the time goes (cProfile of a fresh default run: its initial SMC, then "
            f"{args.profile_seconds:g} s of steps; cumulative times, a part's children indented; "
            "the profiler's own overhead inflates many small calls):",
            "",
            *prof,
            "",
            *own,
            "",
        ]
    )


def time_to_accuracy(results: dict, ood: dict, path: Path) -> None:
    """Forward KL against CPU minutes, one panel per task (and the out-of-distribution x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, res["npe"], res["smc"], "in") for name, res in results.items()]
    if ood:
        panels.append(("linear-gaussian-10d, x far out", ood["npe"], ood["smc"], "ood"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, npe, smc, key) in zip(axes[0], panels, strict=True):
        for label, rows, style, data in (
            ("NPE (N simulations)", npe, "s--", key),
            ("SMC-Wake (fit)", smc, "o-", "in"),
        ):
            pts = [(r["minutes"], r["scores"].get(data, {}).get("forward_kl")) for r in rows]
            pts = [(m, k) for m, k in pts if k is not None and math.isfinite(k)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
        ax.set(xscale="log", yscale="log", title=title, xlabel="CPU minutes (one thread)")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("forward KL(p || q), nats per observation")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REUSED_NPE = (
    " NPE's rows are those of the previous run of this task (`--reuse-npe`: NPE and its "
    "defaults did not change, smcwake did), with that run's times and load."
)


def earlier_npe_rows(out: Path, task_name: str, with_ood: bool) -> list[dict]:
    """The NPE rows of ``task_name`` from the results file an earlier run wrote beside ``out``."""
    path = out.parent / "results" / f"peers_amortized-{task_name}.json"
    if not path.exists():
        raise SystemExit(f"--reuse-npe: no earlier results for {task_name} at {path}")
    rows = json.loads(path.read_text())["tasks"][task_name]["npe"]
    if with_ood and any("ood" not in r["scores"] for r in rows):
        raise SystemExit(
            f"--reuse-npe: the earlier NPE rows of {task_name} have no scores on the "
            "out-of-distribution x; run without --reuse-npe"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    marks = [float(m) for m in args.marks.split(",")]
    sims = [int(s) for s in args.simulations.split(",")]
    fit_options = _fit_options(args.fit_options)
    sbi_reason = None if args.reuse_npe else sbi_unavailable()
    opts = default_eval_options()
    results: dict = {}
    ood: dict = {}
    if "amortized" in parts or "out-of-distribution" in parts:
        for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            task = build_task(name)
            z, x = task.observations(args.observations, args.seed)
            data = {"in": (z, x, Reference(task, x, opts, args.seed), opts)}
            with_ood = name.startswith("linear-gaussian") and "out-of-distribution" in parts
            if with_ood:
                z_o, x_o, rms, shift = ood_data(task, args.observations, args.seed)
                data["ood"] = (z_o, x_o, Reference(task, x_o, opts, args.seed), opts)
            if args.reuse_npe:
                npe = earlier_npe_rows(args.out, name, with_ood)
            else:
                print(f"{name}: NPE", flush=True)
                npe = [] if sbi_reason else run_npe_ladder(task, data, sims, max(marks), args.seed)
            smc = []
            if "amortized" in parts:
                print(f"{name}: SMC-Wake", flush=True)
                smc, _ = run_smc_wake(task, z, x, data["in"][2], opts, marks, fit_options)
            results[name] = {"npe": npe, "smc": smc}
            if with_ood:
                print(f"{name}: SMC-Wake on out-of-distribution x", flush=True)
                ood_marks = [float(m) for m in args.ood_marks.split(",")]
                smc_o, _ = run_smc_wake(
                    task, z_o, x_o, data["ood"][2], opts, ood_marks, fit_options
                )
                ood = {
                    "rms": rms,
                    "shift": shift,
                    "n": args.observations,
                    "npe": npe,
                    "smc": smc_o,
                }
    write = not args.no_write
    if write:
        ensure_doc(args.out)
    if "amortized" in parts:
        for name, res in results.items():
            section = amortized_section(args, name, res, sbi_reason)
            write_section(f"amortized-{name}", section, args.out, write=write)
    if ood:
        write_section("out-of-distribution", ood_section(ood), args.out, write=write)
    if write and (results or ood):
        folder = args.out.parent / "results"
        folder.mkdir(exist_ok=True)
        rows = {"tasks": results, "out_of_distribution": ood}
        (folder / f"peers_amortized-{'-'.join(results)}.json").write_text(json.dumps(rows))
        results, ood = {}, {}  # the figure shows every task's latest rows, this run's included
        for path in sorted(folder.glob("peers_amortized-*.json")):
            rows = json.loads(path.read_text())
            results.update(rows["tasks"])
            ood = rows["out_of_distribution"] or ood
        time_to_accuracy(results, ood, args.out.parent / "peers-amortized.png")
    if "fit-speed" in parts:
        write_section("fit-speed", fit_speed_section(args), args.out, write=write)


if __name__ == "__main__":
    main()
