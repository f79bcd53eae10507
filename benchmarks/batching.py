"""Batching ratio: run_smc on B observations at once against B calls with one observation each.

    python benchmarks/batching.py            # about 3 minutes; rewrites its section of
                                             # docs/PERFORMANCE.md

Tasks and sizes: two-moons with K = 1000 particles, linear-gaussian (d = 50, p = 100) with K = 100,
B = 128 observations, the random-walk kernel and the default ``mixture+rwmh``. The ratio is
(time of one batched call) / (time of the B single-observation calls); the target is at most
1/20. ``--loop-calls`` times only that many single-observation calls and scales the time up to
B (said so in the table).
"""

from __future__ import annotations

import itertools

import torch
from _common import best_of, parser, setup, table, write_section
from overhead import draws_replayer, record_calls, replayer

from smcwake import run_smc
from smcwake.tasks import get

CASES = [("two-moons", {}, 1000), ("linear-gaussian", {}, 100)]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=128, help="B, observations per batched call")
    p.add_argument("--loop-calls", type=int, default=None, help="time this many B=1 calls")
    p.add_argument("--kernels", nargs="+", default=["rwmh", "mixture+rwmh"])
    args = p.parse_args()
    setup(args.threads)
    B = args.batch
    calls = min(args.loop_calls or B, B)
    rows = []
    for (name, options, K), kernel in itertools.product(CASES, args.kernels):
        task = get(name, **options)
        _, x = task.observations(B, 0)
        stages = {}

        def batched(task=task, x=x, K=K, stages=stages, kernel=kernel):
            g = torch.Generator().manual_seed(1)
            result = run_smc(task.model, x, K, kernel=kernel, generator=g)
            stages["batched"] = result.num_stages.float().mean().item()

        def looped(task=task, x=x, K=K, stages=stages, kernel=kernel):
            g = torch.Generator().manual_seed(1)
            total = 0
            for b in range(calls):
                result = run_smc(task.model, x[b : b + 1], K, kernel=kernel, generator=g)
                total += int(result.num_stages[0])
            stages["looped"] = total / calls

        recorded, _ = record_calls(task.model, x, K, kernel)
        variants = {
            "batched": batched,
            "looped": looped,
            "likelihood": replayer(task.model, recorded),
            "draws": draws_replayer(recorded),
        }
        best = best_of(variants, args.repeats)
        loop_time = best["looped"] * B / calls
        floor = best["likelihood"] + best["draws"]
        rows.append(
            [
                name,
                kernel,
                K,
                B,
                best["batched"],
                loop_time,
                f"1/{loop_time / best['batched']:.1f}",
                "yes" if best["batched"] / loop_time <= 1 / 20 else "no",
                floor,
                f"1/{loop_time / floor:.1f}",
                f"{stages['batched']:.1f} / {stages['looped']:.1f}",
            ]
        )
    note = (
        ""
        if calls == B
        else f"\n\nThe loop column times {calls} single-observation calls, scaled up to {B}."
    )
    note += (
        "\n\nThe batched floor is the time of the batched run's likelihood calls replayed "
        "alone plus the random numbers its proposals and acceptance tests need (see "
        "overhead.py): even a sampler with no other cost could not beat the last ratio."
    )
    body = table(
        [
            "task",
            "kernel",
            "K",
            "B",
            "batched (s)",
            f"{B} x B=1 (s)",
            "ratio",
            "<= 1/20",
            "batched floor (s)",
            "floor / 128 x B=1",
            "mean stages batched / B=1",
        ],
        rows,
    )
    write_section(
        "batching",
        f"Fastest of {args.repeats} alternated repeats.\n\n{body}{note}",
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
