"""smcwake's SMC engine beside BlackJAX, particles and PyMC, on problems with exact answers.

    python benchmarks/peers_smc.py             # rewrites its section of docs/PEERS.md and
                                               # docs/peers-smc.png
    python benchmarks/peers_smc.py --kernel rwmh --no-write     # explore another smcwake kernel
    python benchmarks/peers_smc.py --compare-with main --problems two-moons --batches 32
                                               # smcwake against an earlier revision of itself
    python benchmarks/peers_smc.py --op-profile box-10d --batches 32
                                               # smcwake's torch operations by self CPU time

Every tool runs likelihood-tempered SMC with K particles in all, the same ESS target for its
adaptive temperatures, its own recommended move kernel and its own defaults otherwise (see
``benchmarks/_peers/`` for each tool's settings), on the problems of
``benchmarks/_peers/problems.py`` (two-moons, linear-Gaussian d = 10 and 50, the four-mode
squares model) with B observations. smcwake runs ``run_smc(model, x, K, ess_target=...)`` on all
B observations at once, with its default kernel unless ``--kernel`` names another; BlackJAX runs
``jit(vmap(...))`` over the observations; particles and PyMC have no batching and loop over them.

Per cell (problem, B, tool): the median wall time of ``--repeats`` runs, the tools timed in
alternation; the error of log Zhat and of the posterior means (in posterior standard deviations)
against the exact answers; likelihood evaluations per observation; each tool's time over
smcwake's. Before timing, each tool runs once on the same observations (BlackJAX: compiles for
that B), reported separately. A looping tool that would take longer than ``--loop-budget``
seconds per run stops after the observation that crosses it, and its time is extrapolated to B
(the table says from how many). All tools run on one thread (``OMP_NUM_THREADS=1``, XLA without
its thread pool, torch ``set_num_threads(1)``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers.report import DOC, ensure_doc, fmt, one_thread  # noqa: E402

one_thread()  # before numpy, torch or jax are imported

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine, write_section  # noqa: E402
from _peers import PEER_MODULES, load_peer  # noqa: E402
from _peers.problems import OTHER_PROBLEMS, PROBLEMS, build_problem, errors  # noqa: E402

SECTION = "smc-engine"
PLOT = DOC.parent / "peers-smc.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--problems",
        default=",".join(PROBLEMS),
        help=f"comma-separated; {', '.join(OTHER_PROBLEMS)} only with --compare-with or a profile",
    )
    p.add_argument("--batches", default="1,32,128", help="observations per cell, comma-separated")
    p.add_argument(
        "--batches-50d",
        default=None,
        help="observations per cell for linear-gaussian-50d (default: --batches)",
    )
    p.add_argument("--peers", default=",".join(m.removesuffix("_peer") for m in PEER_MODULES))
    p.add_argument("--num-particles", type=int, default=1000, help="K for every tool")
    p.add_argument("--ess-target", type=float, default=0.5, help="for every tool")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kernel", default=None, help="smcwake kernel (default: run_smc's)")
    p.add_argument(
        "--blackjax-steps",
        type=int,
        default=None,
        help="BlackJAX's random-walk steps per stage (default: its own, 10); to trace its "
        "time against its error, not for the table",
    )
    p.add_argument(
        "--particles-steps",
        type=int,
        default=None,
        help="run particles as standard SMC (N = K) with this many random-walk steps per "
        "stage instead of its waste-free default; to trace its time against its error, not "
        "for the table",
    )
    p.add_argument(
        "--loop-budget",
        type=float,
        default=30.0,
        help="seconds per run after which a looping tool stops and its time is extrapolated",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the observations")
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--plot", type=Path, default=PLOT)
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.add_argument(
        "--keep-other-rows",
        action="store_true",
        help="keep the rows of the problems not run from the section already in --out (to "
        "re-run some problems only); the table says which rows were kept and from which run",
    )
    p.add_argument(
        "--compare-with",
        metavar="REVISION",
        default=None,
        help="instead of the comparison: smcwake at this git revision against the working "
        "tree (A..B: revision A against revision B), in one process, CPU seconds and errors "
        "over --repeats seeds, on --problems with the largest of --batches observations "
        "(see _peers/compare.py)",
    )
    p.add_argument(
        "--profile",
        metavar="PROBLEM",
        default=None,
        help="instead of the comparison: cProfile smcwake on PROBLEM with the largest of "
        "--batches observations and print where the time goes",
    )
    p.add_argument(
        "--op-profile",
        metavar="PROBLEM",
        default=None,
        help="instead of the comparison: torch.profiler on smcwake on PROBLEM with the largest "
        "of --batches observations; prints torch operations by self CPU time, with their "
        "shapes and time per element of the largest operand",
    )
    args = p.parse_args(argv)
    for name in ("blackjax_steps", "particles_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, received {value}")
    return args


def profile_smcwake(args) -> None:
    """Print a cProfile of one ``run_smc`` call (after a warm-up), by own and cumulative time."""
    import cProfile
    import pstats

    from _peers.smcwake_peer import Runner

    B = max(int(b) for b in args.batches.split(","))
    problem = build_problem(args.profile, B, args.seed)
    runner = Runner(problem, args.num_particles, args.ess_target, kernel=args.kernel)
    runner.warm_up(problem.x)
    profiler = cProfile.Profile()
    profiler.enable()
    out = runner.run(problem.x, seed=1000)
    profiler.disable()
    print(
        f"{args.profile}, B = {B}, K = {args.num_particles}: {out.seconds:.2f} s, "
        f"{out.evals.mean():,.0f} likelihood evaluations per observation"
    )
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def run_cell(runners: dict, problem, x: np.ndarray, repeats: int, budget: float) -> dict:
    """Warm every tool up on x, then time them in alternation; one summary row per tool."""
    B = x.shape[0]
    rows: dict[str, dict] = {}
    for name, runner in runners.items():
        if isinstance(runner, str):
            rows[name] = {"status": runner}
            continue
        try:
            start = time.perf_counter()
            compiled = runner.warm_up(x)
            warm = compiled if compiled is not None else time.perf_counter() - start
            rows[name] = {"status": "ok", "warm_up": warm, "runs": []}
        except Exception as err:  # a tool that fails is reported, not fatal
            rows[name] = {"status": f"fails: {type(err).__name__}: {str(err)[:160]}"}
            traceback.print_exc()
    for r in range(repeats):
        for name, runner in runners.items():
            row = rows[name]
            if row["status"] != "ok":
                continue
            try:
                out = runner.run(x, seed=1000 + r, budget=budget)
            except Exception as err:
                row["status"] = f"fails: {type(err).__name__}: {str(err)[:160]}"
                traceback.print_exc()
                continue
            row["runs"].append((out, errors(problem, out.log_evidence, out.mean)))
    for row in rows.values():
        if row["status"] != "ok":
            continue
        runs = row.pop("runs")
        b = min(out.observations for out, _ in runs)
        row["observations"] = b
        row["seconds"] = statistics.median(out.seconds * B / out.observations for out, _ in runs)
        row["evals"] = float(np.mean([out.evals.mean() for out, _ in runs]))
        for key in ("log_z_error", "mean_error"):
            row[key] = float(np.nanmean([e[key] for _, e in runs]))
        row["failed"] = sum(e["failed"] for _, e in runs)
    return rows


def make_runners(problem, peers: list[str], args) -> tuple[dict, dict]:
    """Each tool's runner for the problem (or why it cannot run), and its settings."""
    runners: dict = {}
    notes: dict = {}
    for peer in peers:
        module = load_peer(f"{peer}_peer")
        kernel = args.kernel if peer == "smcwake" else None
        if peer == "blackjax" and args.blackjax_steps is not None:
            module.NUM_MCMC_STEPS = args.blackjax_steps  # read by its settings and runner
        if peer == "particles" and args.particles_steps is not None:
            module.STANDARD_STEPS = args.particles_steps  # read by its settings and runner
        notes[module.NAME] = module.settings(kernel)
        reason = module.unavailable()
        if reason is not None:
            runners[module.NAME] = reason
            continue
        try:
            runners[module.NAME] = module.Runner(
                problem, args.num_particles, args.ess_target, kernel=kernel
            )
        except Exception as err:
            runners[module.NAME] = f"fails: {type(err).__name__}: {str(err)[:160]}"
            traceback.print_exc()
    return runners, notes


def kept_rows(path: Path, rerun: list[str]) -> tuple[list[str], dict[str, str]]:
    """The table rows of the problems not in ``rerun`` from the section already in ``path``,
    and for each of their problems the command and machine line of the run that made its rows
    (a "Rows of ... are from ..." note of the section where it has one, else the section's
    own "Generated by" line)."""
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- begin {SECTION} -->", f"<!-- end {SECTION} -->"
    if start not in text:
        return [], {}
    section = text.split(start, 1)[1].split(end, 1)[0]
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| ")
        and line.split("|")[1].strip() in PROBLEMS
        and line.split("|")[1].strip() not in rerun
    ]
    lines = section.splitlines()
    made = next((ln for ln in lines if ln.startswith("_Generated by")), "")
    made = made.removeprefix("_Generated by ").rstrip("_").rstrip(".")
    origin = {}
    for line in lines:
        if line.startswith("Rows of ") and " are from " in line:
            names, source = line.removeprefix("Rows of ").split(" are from ", 1)
            origin.update(dict.fromkeys(names.split(", "), source.rstrip(".")))
    problems = dict.fromkeys(line.split("|")[1].strip() for line in rows)
    return rows, {name: origin.get(name, made) for name in problems}


def plot_points(kept: list[str]) -> list[tuple[str, int, dict]]:
    """Kept table rows as results with what :func:`plot` reads (seconds, mean error)."""
    out = []
    for line in kept:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        try:
            row = {"status": "ok", "seconds": float(cells[3]), "mean_error": float(cells[6])}
        except ValueError:  # a tool that did not run
            continue
        out.append((cells[0], int(cells[1]), {cells[2]: row}))
    return out


def table(results: list[tuple[str, int, dict]], kept: list[str] = ()) -> str:
    lines = [
        "| problem | B | tool | seconds | × smcwake | \\|Δ log Z\\| | mean err (sd) | "
        "evals / obs | warm-up s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_problem: dict[str, list[str]] = {}
    for line in kept:
        by_problem.setdefault(line.split("|")[1].strip(), []).append(line)
    done = set()
    for problem, B, rows in results:
        for name in PROBLEMS[: PROBLEMS.index(problem)]:  # kept rows of problems listed before
            if name not in done:
                lines += by_problem.pop(name, [])
                done.add(name)
        done.add(problem)
        base = rows.get("smcwake", {}).get("seconds")
        for tool, row in rows.items():
            if row["status"] != "ok":
                lines.append(
                    f"| {problem} | {B} | {tool} | – | – | – | – | – | – | {row['status']} |"
                )
                continue
            notes = []
            if row["observations"] < B:
                notes.append(f"time extrapolated from {row['observations']} of {B} observations")
            if row["failed"]:
                notes.append(f"{row['failed']} runs without a finite log Zhat")
            ratio = row["seconds"] / base if base else None
            lines.append(
                f"| {problem} | {B} | {tool} | {fmt(row['seconds'])} | {fmt(ratio, '.2f')} | "
                f"{fmt(row['log_z_error'])} | {fmt(row['mean_error'])} | "
                f"{fmt(row['evals'], ',.0f')} | {fmt(row['warm_up'], '.1f')} | "
                f"{'; '.join(notes)} |"
            )
    for name in PROBLEMS:
        lines += by_problem.pop(name, [])
    return "\n".join(lines)


def plot(results: list[tuple[str, int, dict]], path: Path) -> None:
    """Seconds per observation against posterior-mean error, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = {p for p, _, _ in results}
    problems = [p for p in PROBLEMS if p in shown]
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 3.8), squeeze=False)
    tools_order = ["smcwake", "BlackJAX", "particles", "PyMC"]
    markers = dict(zip(tools_order, "o^sD", strict=True))
    colors = dict(zip(tools_order, ["C0", "C1", "C2", "C3"], strict=True))
    for ax, name in zip(axes[0], problems, strict=True):
        tools: dict[str, list] = {}
        for problem, B, rows in results:
            if problem != name:
                continue
            for tool, row in rows.items():
                if row["status"] == "ok" and np.isfinite(row["mean_error"]):
                    tools.setdefault(tool, []).append((row["seconds"] / B, row["mean_error"], B))
        for tool, pts in tools.items():
            pts.sort()
            xs, ys, bs = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=markers.get(tool, "x"), color=colors.get(tool), label=tool)
            for xv, yv, b in pts:
                ax.annotate(
                    f"B={b}", (xv, yv), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        # minor-tick labels of a log axis spanning about a decade run into each other
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("seconds per observation")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("posterior-mean error (posterior sd)")
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles))
    fig.suptitle(" ", fontsize=4)  # room for the legend above the panels
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def op_profile_smcwake(args, rows: int = 40) -> None:
    """Print the torch operations of one ``run_smc`` call (after a warm-up) by self CPU time,
    grouped by input shapes, with the time per call and per element of the largest input:
    an operation whose time per element is far above its neighbours' is a candidate for an
    equivalent, faster formulation. The profiler's own bookkeeping inflates the times of
    small operations and of large fresh tensors (page faults): check a candidate with a
    microbenchmark before changing it."""
    from _peers.smcwake_peer import Runner
    from torch.profiler import ProfilerActivity, profile

    B = max(int(b) for b in args.batches.split(","))
    problem = build_problem(args.op_profile, B, args.seed)
    runner = Runner(problem, args.num_particles, args.ess_target, kernel=args.kernel)
    runner.warm_up(problem.x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        runner.run(problem.x, seed=1000)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.op_profile}, B = {B}, K = {args.num_particles}: {total / 1e6:.2f} s self CPU")
    print(f"{'share':>6} {'ms':>8} {'calls':>7} {'us/call':>8} {'ns/elem':>8}  operation, shapes")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        sizes = [
            math.prod(s)
            for s in e.input_shapes
            if isinstance(s, list) and s and all(isinstance(v, int) for v in s)
        ]
        per_call = e.self_cpu_time_total / e.count
        per_elem = 1000 * per_call / max(sizes) if sizes else math.nan
        print(
            f"{e.self_cpu_time_total / total:6.1%} {e.self_cpu_time_total / 1000:8.1f} "
            f"{e.count:7d} {per_call:8.1f} {per_elem:8.2f}  {e.key} {e.input_shapes}"
        )


def main(argv: list[str] | None = None) -> list[tuple[str, int, dict]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.profile:
        profile_smcwake(args)
        return []
    if args.op_profile:
        op_profile_smcwake(args)
        return []
    if args.compare_with:
        from _peers.compare import compare

        compare(args)
        return []
    others = [p for p in args.problems.split(",") if p.strip() in OTHER_PROBLEMS]
    if others:
        raise SystemExit(f"{', '.join(others)}: only with --compare-with or a profile")
    started = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    batches_50 = [int(b) for b in (args.batches_50d or args.batches).split(",")]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    notes: dict[str, str] = {}
    results = []
    for name in [p.strip() for p in args.problems.split(",") if p.strip()]:
        sizes = batches_50 if name == "linear-gaussian-50d" else batches
        problem = build_problem(name, max(sizes), args.seed)
        runners, settings = make_runners(problem, peers, args)
        notes.update(settings)
        for B in sizes:
            rows = run_cell(runners, problem, problem.x[:B], args.repeats, args.loop_budget)
            results.append((name, B, rows))
            for tool, row in rows.items():
                if row["status"] == "ok":
                    print(
                        f"{name:20s} B={B:4d} {tool:10s} {row['seconds']:8.3f}s "
                        f"dlogZ {row['log_z_error']:.3g} mean {row['mean_error']:.3g} "
                        f"evals {row['evals']:,.0f} warm {row['warm_up']:.1f}s "
                        f"(obs run {row['observations']})",
                        flush=True,
                    )
                else:
                    print(f"{name:20s} B={B:4d} {tool:10s} {row['status']}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    rerun = list(dict.fromkeys(name for name, _, _ in results))
    kept, made = kept_rows(args.out, rerun) if args.keep_other_rows else ([], {})
    kept_note = []
    for source in dict.fromkeys(made.values()):
        names = ", ".join(name for name, s in made.items() if s == source)
        kept_note += ["", f"Rows of {names} are from {source}."]
    body = "\n".join(
        [
            "## SMC engine: `run_smc` against BlackJAX, particles and PyMC",
            "",
            f"K = {args.num_particles} particles per observation for every tool, ESS target "
            f"{args.ess_target}, median of {args.repeats} timed runs after a warm-up run; "
            f"{machine()}; {minutes:.0f} minutes in all. "
            "\"× smcwake\" is the tool's time over smcwake's in the same cell; mean err is the "
            "root mean square over coordinates of the posterior-mean error in posterior "
            "standard deviations, averaged over observations; evals counts likelihood "
            "evaluations per observation.",
            "",
            table(results, kept),
            *kept_note,
            "",
            "Settings per tool:",
            "",
            *[f"* {tool}: {text}" for tool, text in notes.items()],
            "",
            f"![time against error]({args.plot.name})",
        ]
    )
    if not args.no_write:
        ensure_doc(args.out)
        plot(results + plot_points(kept), args.plot)
    write_section(SECTION, body, args.out, write=not args.no_write)
    return results


if __name__ == "__main__":
    main()
