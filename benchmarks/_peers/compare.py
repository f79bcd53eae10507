"""smcwake against an earlier version of itself, in one process: ``peers_smc.py --compare-with``.

A change to the SMC engine is timed against the code before it on the peers' problems. Wall
times move with the machine's other load by more than most single changes save, so both
versions run in the same process, alternately on the same observations and seeds, and the
times compared are CPU seconds of the one-thread process (``time.process_time``), which the
other processes on a shared machine disturb less than the wall clock.

The earlier version is the ``src/smcwake`` of a git revision, exported with ``git archive``
into a temporary directory and imported under another package name (its imports rewritten),
so that both versions are loaded side by side. Each version runs ``run_smc(model, x, K,
ess_target=...)`` with its default kernel on the problem's float32 model, rebuilt with that
version's ``Model``.
"""

from __future__ import annotations

import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import smcwake
from _peers.problems import Problem, build_problem, errors

__all__ = ["load_revision", "compare"]

ROOT = Path(__file__).resolve().parents[2]


def load_revision(revision: str) -> ModuleType:
    """The package ``src/smcwake`` at git ``revision``, imported under another name."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src/smcwake"],
        check=True,
        capture_output=True,
    ).stdout
    name = "smcwake_" + re.sub(r"\W", "_", revision)
    where = Path(tempfile.mkdtemp(prefix="smcwake-revision-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    package = where / name
    (where / "src" / "smcwake").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bsmcwake\.", f"{name}.", text)
        text = re.sub(r"\bfrom smcwake import\b", f"from {name} import", text)
        text = re.sub(r"\bimport smcwake\b", f"import {name}", text)
        path.write_text(text)
    sys.path.insert(0, str(where))
    return importlib.import_module(name)


def _runner(library: ModuleType, problem: Problem, num_particles: int, ess_target: float):
    """A function of (x, seed) running ``library``'s run_smc with its defaults."""
    model = problem.model
    own = library.Model(model.prior, model._log_likelihood, name=model.name)

    def run(x: torch.Tensor, seed: int):
        start = time.process_time()
        result = library.run_smc(
            own, x, num_particles=num_particles, ess_target=ess_target, seed=seed
        )
        seconds = time.process_time() - start
        w = result.log_weights.double().exp()
        mean = (w[..., None] * result.particles.double()).sum(1).numpy()
        log_z = result.log_evidence.double().numpy().copy()
        log_z[~result.converged.numpy()] = np.nan
        scores = errors(problem, log_z, mean)
        return seconds, scores, float(result.num_likelihood_evals.double().mean())

    return run


def compare(args) -> None:
    """Print, per problem, the CPU seconds (median over seeds) of ``args.compare_with`` and of
    the working tree, their ratio, and both versions' errors and evaluations (means over
    seeds); ``args.repeats`` seeds from 1000 on, as the table's timed runs.
    ``A..B`` compares revision A with revision B instead of the working tree."""
    torch.set_num_threads(1)
    first, _, second = args.compare_with.partition("..")
    before = load_revision(first)
    after = load_revision(second) if second else smcwake
    B = max(int(b) for b in args.batches.split(","))
    seeds = [1000 + r for r in range(args.repeats)]
    print(
        f"CPU seconds of one run_smc call, B = {B}, K = {args.num_particles}, seeds "
        f"{seeds[0]}-{seeds[-1]}: {first} -> {second or 'working tree'}"
    )
    for name in [p.strip() for p in args.problems.split(",") if p.strip()]:
        problem = build_problem(name, B, args.seed)
        x = torch.as_tensor(problem.x, dtype=torch.float32)
        runs = {}
        for label, library in (("before", before), ("after", after)):
            runs[label] = (_runner(library, problem, args.num_particles, args.ess_target), [])
            runs[label][0](x[:1], 12345)  # warm-up
        for seed in seeds:  # alternately, so both see the same load
            for run, out in runs.values():
                out.append(run(x, seed))
        (_, a), (_, b) = runs["before"], runs["after"]

        def summary(out, key):
            return float(np.mean([o[1][key] for o in out]))

        ta = statistics.median(o[0] for o in a)
        tb = statistics.median(o[0] for o in b)
        print(
            f"{name} B={B}: {ta:.3f} -> {tb:.3f} s (x{tb / ta:.3f}); "
            f"|dlogZ| {summary(a, 'log_z_error'):.4f} -> {summary(b, 'log_z_error'):.4f}; "
            f"mean err {summary(a, 'mean_error'):.4f} -> {summary(b, 'mean_error'):.4f} sd; "
            f"evals {np.mean([o[2] for o in a]):,.0f} -> {np.mean([o[2] for o in b]):,.0f}",
            flush=True,
        )
