"""Where run_smc spends its time: a function-level profile of one batched call.

    python benchmarks/profile_smc.py         # about 2 minutes; rewrites its section of
                                             # docs/PERFORMANCE.md

Profiles (with the standard library's cProfile) ``run_smc`` on two-moons (B = 128, K = 1000) and
linear-gaussian (d = 50, p = 100, B = 128, K = 100) with the random-walk kernel, after one warm-up
call, and reports the cumulative time of the parts of a stage: the temperature search, the
reweighting and resampling, the covariance factor, and inside the MCMC move the prior, the
likelihood (the user's function and its validation), the random draws and the rest of the kernel.
Shares are of the whole call; parts nest as indented.
"""

from __future__ import annotations

import cProfile
import pstats

import torch
from _common import parser, setup, table, write_section

from smcwake import run_smc
from smcwake.tasks import get

CASES = [("two-moons", 1000), ("linear-gaussian", 100)]

# (label, indentation, function names whose cumulative times are summed)
PARTS = [
    ("run_smc", 0, ["run_smc"]),
    ("temperature search (next_temperature)", 1, ["next_temperature"]),
    ("resampling (_resample_rows)", 1, ["_resample_rows"]),
    ("covariance factor (weighted_cholesky)", 1, ["weighted_cholesky"]),
    ("MCMC move (kernel)", 1, ["move"]),
    ("log prior (Model.log_prior)", 2, ["log_prior"]),
    ("likelihood with validation (Model.log_likelihood)", 2, ["log_likelihood"]),
    ("validation (check_log_likelihood)", 3, ["check_log_likelihood"]),
    ("whitened jump length (solve_triangular)", 2, ["whitened_sq_norm", "_whitened_sq"]),
    ("normal draws", 2, ["standard_normal"]),
    ("accept / reject draws", 2, ["accept", "_accept"]),
    ("final summaries (distinct_fraction)", 1, ["distinct_fraction"]),
]


def cumulative(stats: pstats.Stats, names: list[str]) -> float:
    """Sum of the cumulative times of the named functions, counting each call tree once."""
    total = 0.0
    for (_, _, func), (_, _, _, cum, callers) in stats.stats.items():
        if func in names and not any(c[2] in names for c in callers):
            total += cum
    return total


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--kernel", default="rwmh")
    args = p.parse_args()
    setup(args.threads)
    sections = []
    for name, K in CASES:
        task = get(name)
        _, x = task.observations(args.batch, 0)
        run_smc(task.model, x, K, kernel=args.kernel, generator=torch.Generator().manual_seed(0))
        profiler = cProfile.Profile()
        profiler.enable()
        run_smc(task.model, x, K, kernel=args.kernel, generator=torch.Generator().manual_seed(1))
        profiler.disable()
        stats = pstats.Stats(profiler)
        whole = cumulative(stats, ["run_smc"])
        rows = []
        for label, depth, names in PARTS:
            t = cumulative(stats, names)
            if t == 0 and depth:
                continue
            rows.append(["&nbsp;" * 4 * depth + label, t, f"{100 * t / whole:.0f}%"])
        sections.append(
            f"**{name}**, B = {args.batch}, K = {K}, kernel `{args.kernel}`:\n\n"
            + table(["part", "seconds", "share"], rows)
        )
    write_section("profile", "\n\n".join(sections), args.out, write=not args.no_write)


if __name__ == "__main__":
    main()
