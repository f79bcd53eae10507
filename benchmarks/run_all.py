"""Regenerate every measured section of docs/PERFORMANCE.md, one script after the other.

    python benchmarks/run_all.py                  # about 1 hour on 2 CPU cores
    python benchmarks/run_all.py --skip end_to_end scaling

Each script runs in its own process with the shared options (``--threads``, ``--repeats``) and
rewrites only its own section; text outside the sections is kept. On a machine shared with other
jobs, set ``OMP_WAIT_POLICY=PASSIVE`` so that waiting OpenMP threads do not spin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _common import DOC, parser

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "profile_smc": [],
    "speedup": ["--base", "34e4c9a~1"],
    "batching": [],
    "overhead": [],
    "memory": [],
    "encoder_draws": [],
    "scaling": [],
    "torch_compile": [],
    "end_to_end": ["--rounds", "2"],
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--skip", nargs="*", default=[], choices=list(SCRIPTS))
    args = p.parse_args()
    shared = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    if args.out != DOC:
        shared += ["--out", str(args.out)]
    if args.no_write:
        shared.append("--no-write")
    for name, extra in SCRIPTS.items():
        if name in args.skip:
            continue
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), *shared, *extra], check=True)


if __name__ == "__main__":
    main()
