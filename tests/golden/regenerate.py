"""Rewrite ``golden.json`` from the current code: ``python tests/golden/regenerate.py``.

Run it only when a change of the library's results is intended (a new default, a fixed bug), in
a commit of its own that says why the numbers moved. ``--only NAME`` (repeatable) rewrites the
named cases and keeps the others as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from golden_cases import CASES, DATA, SLOW_CASES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="a case name (default: every case)")
    args = parser.parse_args(argv)
    every = {**CASES, **SLOW_CASES}
    unknown = sorted(set(args.only or ()) - set(every))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {sorted(every)}")
    torch.set_num_threads(1)
    stored = json.loads(DATA.read_text()) if DATA.exists() else {}
    for name in args.only or every:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir, torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # as the tests' autouse fixture does
            stored[name] = json.loads(json.dumps(every[name](Path(workdir))))
        print(f"{name}: {time.perf_counter() - start:.1f} s")  # noqa: T201
    ordered = {name: stored[name] for name in every if name in stored}
    DATA.write_text(json.dumps(ordered, indent=1, sort_keys=False) + "\n")
    print(f"wrote {DATA}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
