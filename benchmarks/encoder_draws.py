"""Time and memory of drawing from the default (flow) encoder, by latent dimension.

    python benchmarks/encoder_draws.py       # about 3 minutes; rewrites its section of
                                             # docs/PERFORMANCE.md

A flow encoder is sampled by inverting its autoregressive transforms, d passes each.
``Encoder.sample`` draws a large request in blocks of ``DRAW_BLOCK`` draws, and the flow
inverts one coordinate per pass (``smcwake.encoders._autoregressive_inverse``) where zuko's
own inverse reruns the whole hyper network and every coordinate's spline in each pass. For each
case a fresh process builds an untrained default ``FlowEncoder`` (the cost of a draw does not
depend on the weights), draws once, and reports the time and the growth of its peak resident
set size (VmHWM) over the resident size before the draw. Variants: as shipped; in one block
(``DRAW_BLOCK`` raised past the request); zuko's inverse in one block, which is how every
request was drawn before either change; and as shipped with Python's cycle collector off,
where memory that only the collector frees would show (a reference cycle per pass once held
every pass's spline knots until it ran).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

from _common import best_of, parser, setup, table, write_section
from memory import _status_bytes

VARIANTS = ("blocks", "one-block", "zuko-one-block", "collector-off")


def measure(d: int, observations: int, draws: int, x_dim: int, variant: str) -> dict:
    """Draw once in this process; return seconds and bytes."""
    import torch

    from smcwake import encoder_base
    from smcwake.encoder_base import Encoder
    from smcwake.encoders import FlowEncoder

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    encoder = FlowEncoder(x_dim, d).eval()
    x = torch.randn(observations, x_dim, generator=g)
    encoder.sample(x[:2], 2, generator=g)  # warm-up: first-call allocations
    if variant in ("one-block", "zuko-one-block"):
        encoder_base.DRAW_BLOCK = observations * draws
    if variant == "zuko-one-block":
        FlowEncoder._draw_given = Encoder._draw_given  # the distribution's own rsample
    gc.collect()
    if variant == "collector-off":
        gc.disable()
    rss_before, peak_before = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    start = time.perf_counter()
    encoder.sample(x, draws, generator=g)
    seconds = time.perf_counter() - start
    growth = _status_bytes("VmHWM") - max(peak_before, rss_before)
    return {"seconds": seconds, "peak_growth": growth}


def reparameterized_steps(dims: list[int], x_dim: int, repeats: int) -> list[list[object]]:
    """Seconds of one ELBO-like step (``rsample_and_log_prob`` of 32 draws for 32 observations,
    then backward) with the per-coordinate inverse and with zuko's, alternated in this process.
    """
    import torch

    from smcwake.encoder_base import Encoder
    from smcwake.encoders import FlowEncoder

    mine, theirs = FlowEncoder._rsample_given, Encoder._rsample_given
    rows = []
    for d in dims:
        encoder = FlowEncoder(x_dim, d)
        x = torch.randn(32, x_dim, generator=torch.Generator().manual_seed(0))

        def step(rsample_given, encoder=encoder, x=x):
            FlowEncoder._rsample_given = rsample_given
            try:
                z, log_q = encoder.rsample_and_log_prob(x, 32)
                (z.square().sum() + log_q.sum()).backward()
            finally:
                FlowEncoder._rsample_given = mine

        best = best_of(
            {"shipped": lambda: step(mine), "zuko": lambda: step(theirs)},
            repeats,
        )
        rows.append([d, best["shipped"], best["zuko"], best["zuko"] / best["shipped"]])
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--cases",
        default="2:1000:1000,10:100:1000,20:60:500,40:60:500",
        help="d:observations:draws, comma-separated",
    )
    p.add_argument("--x-dim", type=int, default=50, help="observation dimension")
    p.add_argument(
        "--step-dims", default="2,10,40", help="dimensions of the reparameterized-step table"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        d, b, n, variant = args.child.split(",")
        print(json.dumps(measure(int(d), int(b), int(n), args.x_dim, variant)))
        return
    rows = []
    for case in args.cases.split(","):
        d, b, n = (int(v) for v in case.split(":"))
        cells = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", f"{d},{b},{n},{variant}"]
            cmd += ["--x-dim", str(args.x_dim)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            cells[variant] = json.loads(out.strip().splitlines()[-1])
        blocks, one, zuko, off = (cells[v] for v in VARIANTS)
        rows.append(
            [
                d,
                f"{b:,} x {n:,}",
                blocks["seconds"],
                one["seconds"],
                zuko["seconds"],
                zuko["seconds"] / blocks["seconds"],
                f"{blocks['peak_growth'] / 1e6:,.0f}",
                f"{one['peak_growth'] / 1e6:,.0f}",
                f"{zuko['peak_growth'] / 1e6:,.0f}",
                f"{off['peak_growth'] / 1e6:,.0f}",
            ]
        )
    body = table(
        [
            "d",
            "observations x draws",
            "seconds",
            "one block (s)",
            "zuko, one block (s)",
            "zuko, one block / shipped",
            "peak growth (MB)",
            "one block (MB)",
            "zuko, one block (MB)",
            "collector off (MB)",
        ],
        rows,
    )
    setup(1)
    steps = reparameterized_steps(
        [int(v) for v in args.step_dims.split(",")], args.x_dim, args.repeats
    )
    body += (
        "\n\nReparameterized draws with their gradient (the ELBO and IWAE baselines): one "
        "`rsample_and_log_prob` of 32 draws for each of 32 observations, then `backward`, "
        f"fastest of {args.repeats} alternated repeats in one process.\n\n"
        + table(["d", "seconds", "zuko's inverse (s)", "zuko / shipped"], steps)
    )
    write_section(
        "encoder-draws",
        f"`FlowEncoder(x_dim={args.x_dim}, d)` with its default architecture (3 transforms, "
        "hidden (64, 64), 8 bins), untrained; one call of `sample` per process, one thread. "
        "Seconds and peak growth (the process's peak resident set size after the draw minus "
        "its resident size before it) as shipped: blocks of `DRAW_BLOCK` draws, one coordinate "
        "per pass. Then in one block; zuko's own inverse in one block (every coordinate in "
        "every pass: how every request was drawn before); and as shipped with Python's cycle "
        "collector off.\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
