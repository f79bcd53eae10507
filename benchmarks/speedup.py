"""Speedup of the SMC engine's own files against an earlier revision, everything else unchanged.

    python benchmarks/speedup.py --base 34e4c9a~1     # about 3 minutes; rewrites its section
                                                      # of docs/PERFORMANCE.md

Builds a copy of ``src/smcwake`` in a temporary folder in which ``smc/sampler.py``,
``smc/tempering.py`` and ``smc/resampling.py`` are taken from ``--base`` (``git show``), and times
``run_smc`` in fresh processes on that copy and on the working tree, in alternation; each process
reports the fastest of ``--repeats`` calls after a warm-up call. So the ratio isolates the changes
to those three files (kernels, model and tasks are the working tree's in both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, parser, table, write_section

FILES = ["smc/sampler.py", "smc/tempering.py", "smc/resampling.py"]
CASES = [("two-moons", 1000, 128, "rwmh"), ("linear-gaussian", 100, 128, "rwmh")]

CHILD = """
import json, sys, time, torch
torch.set_num_threads({threads})
import smcwake
from smcwake import run_smc
from smcwake.tasks import get
task = get({name!r})
_, x = task.observations({B}, 0)
run_smc(task.model, x, {K}, kernel={kernel!r}, generator=torch.Generator().manual_seed(0))
best = float("inf")
for r in range({repeats}):
    start = time.perf_counter()
    run_smc(task.model, x, {K}, kernel={kernel!r}, generator=torch.Generator().manual_seed(r))
    best = min(best, time.perf_counter() - start)
print(json.dumps({{"seconds": best, "module": smcwake.__file__}}))
"""


def child_time(src: Path, threads: int, repeats: int, case) -> float:
    name, K, B, kernel = case
    code = CHILD.format(threads=threads, name=name, K=K, B=B, kernel=kernel, repeats=repeats)
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["module"].startswith(str(src)):
        raise RuntimeError(f"the child imported {result['module']}, not the copy in {src}")
    return result["seconds"]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--base", required=True, help="git revision holding the earlier files")
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds of both trees")
    args = p.parse_args()
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.base],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src" / "smcwake", base_src / "smcwake")
        for f in FILES:
            old = subprocess.run(
                ["git", "show", f"{args.base}:src/smcwake/{f}"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (base_src / "smcwake" / f).write_text(old)
        for case in CASES:
            times = {"base": float("inf"), "now": float("inf")}
            for _ in range(args.rounds):
                times["base"] = min(
                    times["base"], child_time(base_src, args.threads, args.repeats, case)
                )
                times["now"] = min(
                    times["now"], child_time(ROOT / "src", args.threads, args.repeats, case)
                )
                print(case[0], times, flush=True)
            name, K, B, kernel = case
            rows.append(
                [name, K, B, kernel, times["base"], times["now"], times["base"] / times["now"]]
            )
    body = table(["task", "K", "B", "kernel", f"{rev} (s)", "working tree (s)", "speedup"], rows)
    write_section(
        "speedup",
        f"`run_smc` with {', '.join(f'`smc/{f[4:]}`' for f in FILES)} from `{rev}` against the "
        f"working tree; fastest of {args.rounds} x {args.repeats} calls each.\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
