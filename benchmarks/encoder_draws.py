"""Time and memory of drawing from the default (flow) encoder, by latent dimension.

    python benchmarks/encoder_draws.py       # about a minute; rewrites its section of
                                             # docs/PERFORMANCE.md

A flow encoder is sampled by inverting its autoregressive transforms, d passes of the hyper
network each, so ``posterior.sample`` costs about d times a ``log_prob`` of the same points. For
each dimension a fresh process builds an untrained default ``FlowEncoder`` (the cost of a draw
does not depend on the weights), draws ``--draws`` samples for each of ``--observations``
observations, and reports the time and the growth of its peak resident set size (VmHWM) over
the resident size before the draw, next to the size of the draws themselves. It does so twice:
with Python's cycle collector on, and off; memory that only the collector frees shows up as the
difference (a reference cycle per pass once held every pass's spline knots until it ran).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

from _common import parser, table, write_section
from memory import _status_bytes


def measure(d: int, observations: int, draws: int, x_dim: int, collector: bool) -> dict:
    """Draw once in this process; return seconds and bytes."""
    import torch

    from smcwake.encoders import FlowEncoder

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    encoder = FlowEncoder(x_dim, d).eval()
    x = torch.randn(observations, x_dim, generator=g)
    encoder.sample(x[:2], 2, generator=g)  # warm-up: first-call allocations
    gc.collect()
    if not collector:
        gc.disable()
    rss_before, peak_before = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    start = time.perf_counter()
    z = encoder.sample(x, draws, generator=g)
    seconds = time.perf_counter() - start
    peak_after = _status_bytes("VmHWM")
    return {
        "seconds": seconds,
        "peak_growth": peak_after - max(peak_before, rss_before),
        "draw_bytes": z.numel() * z.element_size(),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--dims", default="10,20,40", help="latent dimensions, comma-separated")
    p.add_argument("--observations", type=int, default=60)
    p.add_argument("--draws", type=int, default=200, help="draws per observation")
    p.add_argument("--x-dim", type=int, default=50, help="observation dimension")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        d, collector = args.child.split(",")
        result = measure(int(d), args.observations, args.draws, args.x_dim, collector == "on")
        print(json.dumps(result))
        return
    rows = []
    for d in (int(v) for v in args.dims.split(",")):
        cells = {}
        for collector in ("on", "off"):
            cmd = [sys.executable, __file__, "--child", f"{d},{collector}"]
            cmd += ["--observations", str(args.observations), "--draws", str(args.draws)]
            cmd += ["--x-dim", str(args.x_dim)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            cells[collector] = json.loads(out.strip().splitlines()[-1])
        on, off = cells["on"], cells["off"]
        rows.append(
            [
                d,
                on["seconds"],
                f"{on['draw_bytes'] / 1e6:.1f}",
                f"{on['peak_growth'] / 1e6:.0f}",
                f"{off['peak_growth'] / 1e6:.0f}",
                off["peak_growth"] / max(on["peak_growth"], 1),
            ]
        )
    body = table(
        [
            "d",
            "seconds",
            "draws (MB)",
            "peak growth (MB)",
            "peak growth, collector off (MB)",
            "off / on",
        ],
        rows,
    )
    write_section(
        "encoder-draws",
        f"`FlowEncoder(x_dim={args.x_dim}, d)` with its default architecture (3 transforms, "
        f"hidden (64, 64), 8 bins), untrained; {args.observations} observations x {args.draws} "
        "draws each, one call of `sample`, one thread. Peak growth: the process's peak resident "
        "set size after the draw minus its resident size before it.\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
