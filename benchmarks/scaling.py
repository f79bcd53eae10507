"""Scaling: time per training step and per SMC refresh as B, K, d and n grow.

    python benchmarks/scaling.py             # about 10 minutes; rewrites its section of
                                             # docs/PERFORMANCE.md, and the plot
                                             # docs/performance_scaling.png

The model is the linear-gaussian task with d latents and p = 2 d observations, the encoder the
full-rank Gaussian, the method SMC-Wake (a) with 4 runs drawn per step. One variable moves at a
time from the base point B = 32 (observations per refresh and per minibatch), K = 300 particles,
d = 10, n = 256 observations in the data set. A refresh is what ``fit`` does every
``refresh_every`` steps: ``run_smc`` on B observations (random walk) and ``ParticleBank.add``. A
step is the SMC-Wake loss on a minibatch of B observations drawn from the bank, its backward pass
and an Adam update. The growth exponent is the least-squares slope of log time on log size.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import DOC, best_of, parser, setup, table, write_section  # noqa: E402

from smcwake import run_smc  # noqa: E402
from smcwake.bank import ParticleBank  # noqa: E402
from smcwake.encoders import build_encoder  # noqa: E402
from smcwake.objectives import Batch, Context, get_objective  # noqa: E402
from smcwake.tasks import get  # noqa: E402

BASE = {"B": 32, "K": 300, "d": 10, "n": 256}
GRID = {
    "B": [8, 16, 32, 64, 128, 256],
    "K": [100, 300, 1000, 3000],
    "d": [2, 5, 10, 20, 50],
    "n": [64, 256, 1024, 4096],
}
RUNS_PER_STEP = 4
STEPS_TIMED = 10


def measure(B: int, K: int, d: int, n: int, repeats: int) -> tuple[float, float, float]:
    """(seconds per refresh, seconds per step, mean SMC stages) at one point."""
    task = get("linear-gaussian", d=d, p=2 * d)
    model = task.model
    _, x = task.observations(n, 0)
    g = torch.Generator().manual_seed(0)
    bank = ParticleBank(n, K, d, estimator="a", max_runs=RUNS_PER_STEP)
    # fill the bank with copies of one SMC run per observation (only the shapes matter here)
    with torch.no_grad():
        first = run_smc(model, x[:B], K, generator=g)
    for start in range(0, n, B):
        rows = torch.arange(start, min(n, start + B))
        src = torch.arange(rows.numel()) % B
        for _ in range(RUNS_PER_STEP):
            bank.add(rows, first.particles[src], first.log_weights[src], first.log_evidence[src])
    stages = float(first.num_stages.float().mean())

    def refresh():
        pick = torch.randperm(n, generator=g)[:B]
        with torch.no_grad():
            result = run_smc(model, x[pick], K, generator=g)
        bank.add(pick, result.particles, result.log_weights, result.log_evidence, generator=g)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = build_encoder("gaussian", 2 * d, d)
    encoder.set_standardization(x=x, z=model.sample_prior((10_000,), generator=g))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    objective = get_objective("smc-wake-a")
    ctx = Context(model, 100, g, bank, None, RUNS_PER_STEP)

    def steps():
        for _ in range(STEPS_TIMED):
            idx = torch.randperm(n, generator=g)[:B]
            loss, _ = objective(encoder, Batch(idx, x[idx]), ctx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    best = best_of({"refresh": refresh, "steps": steps}, repeats)
    return best["refresh"], best["steps"] / STEPS_TIMED, stages


def slope(sizes: list[float], times: list[float]) -> float:
    """Least-squares slope of log(time) on log(size)."""
    lx = [math.log(s) for s in sizes]
    ly = [math.log(t) for t in times]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--plot", type=Path, default=DOC.parent / "performance_scaling.png")
    p.add_argument("--vary", nargs="+", default=list(GRID), choices=list(GRID))
    args = p.parse_args()
    setup(args.threads)
    start = time.perf_counter()
    results: dict[str, list[tuple[int, float, float, float]]] = {}
    for var in args.vary:
        results[var] = []
        for value in GRID[var]:
            point = {**BASE, var: value}
            # n must hold at least one minibatch
            point["n"] = max(point["n"], point["B"])
            r, s, st = measure(point["B"], point["K"], point["d"], point["n"], args.repeats)
            results[var].append((value, r, s, st))
            print(f"{var}={value}: refresh {r:.3f}s, step {s * 1e3:.1f}ms, {st:.1f} stages")
    rows = []
    for var, pts in results.items():
        sizes = [v for v, *_ in pts]
        for v, r, s, st in pts:
            rows.append([var, v, r, s * 1e3, f"{st:.1f}"])
        rows.append(
            [
                f"**{var}: exponent**",
                "",
                f"**{slope(sizes, [r for _, r, _, _ in pts]):.2f}**",
                f"**{slope(sizes, [s for _, _, s, _ in pts]):.2f}**",
                "",
            ]
        )
    columns = 2 if len(results) > 1 else 1
    nrows = math.ceil(len(results) / columns)
    fig, axes = plt.subplots(nrows, columns, figsize=(5 * columns, 3.4 * nrows), squeeze=False)
    for ax, (var, pts) in zip(axes.flat, results.items(), strict=False):
        sizes = [v for v, *_ in pts]
        ax.loglog(sizes, [r for _, r, _, _ in pts], "o-", label="refresh (s)")
        ax.loglog(sizes, [s for _, _, s, _ in pts], "s-", label="step (s)")
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(var)
        ax.set_title(
            f"{var}: slopes {slope(sizes, [r for _, r, _, _ in pts]):.2f} (refresh), "
            f"{slope(sizes, [s for _, _, s, _ in pts]):.2f} (step)",
            fontsize=9,
        )
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(results) :]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=8)
    base = ", ".join(f"{k} = {v}" for k, v in BASE.items())
    fig.suptitle(f"linear-gaussian, SMC-Wake (a); base point {base}", fontsize=10)
    fig.tight_layout()
    if not args.no_write:
        fig.savefig(args.plot, dpi=110)
    body = table(["varied", "value", "refresh (s)", "step (ms)", "SMC stages"], rows)
    write_section(
        "scaling",
        f"Base point {base}; fastest of {args.repeats} alternated repeats; "
        f"{time.perf_counter() - start:.0f} s in all. Plot: "
        f"[{Path(args.plot).name}]({Path(args.plot).name}).\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
