"""Memory of the particle bank per observation, for estimators a, b and c, against the formula.

    python benchmarks/memory.py              # under a minute; rewrites its section of
                                             # docs/PERFORMANCE.md

For each estimator a fresh process builds a ParticleBank for n observations and fills every slot
(M runs of K particles, as after M refreshes of ``--chunk`` observations each). It reports the
bytes held by the bank's tensors (``ParticleBank.nbytes``), the growth of the process's resident
set size (VmRSS) once the bank is built and filled, and the growth of its peak (VmHWM) meanwhile,
which adds the temporaries of ``ParticleBank.add``; all divided by n, next to
``smcwake.bank.bank_bytes_per_observation``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

from _common import parser, table, write_section

ESTIMATORS = ["a", "b", "c"]


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def measure(estimator: str, n: int, K: int, d: int, M: int, R: int, chunk: int) -> dict:
    """Build and fill one bank in this process; return its sizes."""
    import torch

    from smcwake.bank import ParticleBank, bank_bytes_per_observation

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # inputs for one refresh of every observation, allocated before the baseline is read
    idx = torch.arange(n)
    particles = torch.randn(n, K, d, generator=g)
    log_weights = torch.log_softmax(torch.randn(n, K, generator=g), -1)
    log_evidence = torch.randn(n, generator=g, dtype=torch.float64)
    gc.collect()
    rss_before, peak_before = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    bank = ParticleBank(n, K, d, estimator=estimator, max_runs=M, num_resampled=R)
    runs = M if estimator in ("a", "b") else 1
    for _ in range(runs):  # one refresh of `chunk` observations at a time, as in training
        for start in range(0, n, chunk):
            rows = idx[start : start + chunk]
            bank.add(rows, particles[rows], log_weights[rows], log_evidence[rows], generator=g)
    del particles, log_weights
    gc.collect()
    rss_after, peak_after = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    return {
        "tensor_bytes": bank.nbytes() / n,
        "rss_bytes": (rss_after - rss_before) / n,
        "peak_bytes": (peak_after - max(peak_before, rss_before)) / n,
        "formula": bank_bytes_per_observation(
            estimator, K, d, max_runs=M, num_resampled=R, bytes_per_float=4
        ),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=500, help="observations in the bank")
    p.add_argument("-K", type=int, default=1000, help="particles per run")
    p.add_argument("-d", type=int, default=2, help="latent dimension")
    p.add_argument("-M", type=int, default=50, help="max_runs (estimators a, b)")
    p.add_argument("-R", type=int, default=100, help="num_resampled (estimator b)")
    p.add_argument("--chunk", type=int, default=32, help="observations per refresh")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = measure(args.child, args.n, args.K, args.d, args.M, args.R, args.chunk)
        print(json.dumps(result))
        return
    rows = []
    for est in ESTIMATORS:
        cmd = [sys.executable, __file__, "--child", est, "-n", str(args.n), "-K", str(args.K)]
        cmd += ["-d", str(args.d), "-M", str(args.M), "-R", str(args.R)]
        cmd += ["--chunk", str(args.chunk)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(
            [
                est,
                f"{r['formula']:,}",
                f"{r['tensor_bytes']:,.0f}",
                f"{r['rss_bytes']:,.0f}",
                f"{r['peak_bytes']:,.0f}",
                r["tensor_bytes"] / r["formula"],
                r["rss_bytes"] / r["formula"],
            ]
        )
    body = table(
        [
            "estimator",
            "formula (bytes/obs)",
            "tensor bytes/obs",
            "RSS growth/obs",
            "peak RSS growth/obs",
            "tensors / formula",
            "RSS / formula",
        ],
        rows,
    )
    write_section(
        "memory",
        f"n = {args.n} observations, K = {args.K}, d = {args.d}, M = {args.M} runs kept (a, b), "
        f"R = {args.R} resampled particles per run (b), float32 particles. Every slot is filled, "
        f"{args.chunk} observations per `add` (one refresh), before measuring.\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
