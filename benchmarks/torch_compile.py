"""Does torch.compile pay on CPU? The temperature search's inner evaluation, eager vs compiled.

    python benchmarks/torch_compile.py       # about 2 minutes; rewrites its section of
                                             # docs/PERFORMANCE.md

The evaluation of log CESS and its derivative (one exponential and four weighted sums over
[B, K]) is the temperature search's whole per-iteration cost and has no data-dependent control
flow, so it is the part of the sampler that compiles without graph breaks. The script reports the
one-off compilation time (``dynamic=True``, since B shrinks as observations finish), the time per
evaluation both ways, and how many evaluations it takes to repay the compilation.
"""

from __future__ import annotations

import math
import time

import torch
from _common import best_of, parser, setup, table, write_section

from smcwake.smc.tempering import _LogCESS

SIZES = [(128, 1000), (32, 1000), (128, 100)]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=200, help="evaluations per timed repeat")
    args = p.parse_args()
    setup(args.threads)
    g = torch.Generator().manual_seed(0)
    evaluate = _LogCESS.__call__
    start = time.perf_counter()
    compiled = torch.compile(evaluate, dynamic=True)
    B, K = SIZES[0]
    ll = -50 * torch.rand(B, K, generator=g, dtype=torch.float64) ** 2
    lw = torch.full((B, K), -math.log(K), dtype=torch.float64)
    compiled(_LogCESS(ll, lw), torch.full((B,), -3.0, dtype=torch.float64))
    compile_seconds = time.perf_counter() - start
    rows = []
    for B, K in SIZES:
        ll = -50 * torch.rand(B, K, generator=g, dtype=torch.float64) ** 2
        lw = torch.full((B, K), -math.log(K), dtype=torch.float64)
        state = _LogCESS(ll, lw)
        s = torch.full((B,), -3.0, dtype=torch.float64)

        def eager(state=state, s=s):
            for _ in range(args.calls):
                evaluate(state, s)

        def fused(state=state, s=s):
            for _ in range(args.calls):
                compiled(state, s)

        best = best_of({"eager": eager, "compiled": fused}, args.repeats)
        t_eager, t_comp = best["eager"] / args.calls, best["compiled"] / args.calls
        saved = t_eager - t_comp
        rows.append(
            [
                f"{B} x {K}",
                t_eager * 1e3,
                t_comp * 1e3,
                t_eager / t_comp,
                f"{compile_seconds / saved:,.0f}" if saved > 0 else "never",
            ]
        )
    body = table(["B x K", "eager (ms)", "compiled (ms)", "speedup", "evaluations to repay"], rows)
    write_section(
        "compile",
        f"Compilation took {compile_seconds:.1f} s (first call, `dynamic=True`). A two-moons run "
        "with B = 128, K = 1000 makes about 6 stages x 5 evaluations.\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
