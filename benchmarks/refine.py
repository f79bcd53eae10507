"""Refined posteriors: ``posterior.refine(x)`` against a from-scratch ``run_smc``, same K.

For each task: fit an encoder with ``fit``'s defaults for ``--steps`` steps, then, on the
training observations, run (a) ``run_smc`` with its default kernel and (b) ``refine`` (SMC from
the encoder's defensive mixture) with the same number of particles, and score both against the
exact posterior (linear-Gaussian: log-evidence error, posterior-mean error in posterior standard
deviations, variance ratio) or against reference draws (two-moons: C2ST). The trained encoder
alone is scored too. Times of (a) and (b) are measured in alternation in the same run.

    python benchmarks/refine.py                 # writes the "refine" section of PERFORMANCE.md
    python benchmarks/refine.py --steps 200 --no-write   # a quick look
"""

from __future__ import annotations

import math
import time

import torch

import smcwake
from smcwake import tasks
from smcwake.diagnostics import c2st

try:  # run as a script (python benchmarks/refine.py) or imported as benchmarks.refine
    from _common import parser, setup, table, write_section
except ImportError:  # pragma: no cover
    from benchmarks._common import parser, setup, table, write_section


def exact_scores(task, x, particles, log_weights, log_evidence):
    """|log Zhat - log Z|, RMS posterior-mean error (posterior sd), mean variance ratio."""
    mean, cov = task.posterior_moments(x)
    w = log_weights.double().exp()
    z = particles.double()
    m = (w[..., None] * z).sum(1)
    var = (w[..., None] * (z - m[:, None]).square()).sum(1)
    sd = cov.double().diagonal(dim1=-2, dim2=-1).sqrt()
    err = ((m - mean.double()) / sd).square().mean(-1).sqrt().mean()
    ratio = (var / sd.square()).mean()
    dz = (log_evidence.double() - task.log_evidence(x).double()).abs().mean()
    return float(dz), float(err), float(ratio)


def reference_c2st(task, x, draws, n=1000):
    ref = task.reference_posterior(x, n, 7)
    return sum(c2st(ref[b], draws[b, :n]) for b in range(x.shape[0])) / x.shape[0]


def run_task(name, options, args):
    task = tasks.get(name, **options)
    _, x = task.observations(args.observations, 0)
    start = time.perf_counter()
    result = smcwake.fit(task.model, x, steps=args.steps, seed=0, progress=False)
    fit_seconds = time.perf_counter() - start
    posterior = result.posterior
    times = {"run_smc": [], "refine": []}
    for repeat in range(args.repeats):
        for label in ("run_smc", "refine"):
            start = time.perf_counter()
            if label == "run_smc":
                out = smcwake.run_smc(task.model, x, args.particles, seed=repeat)
            else:
                out = posterior.refine(x, args.particles, seed=repeat)
            times[label].append(time.perf_counter() - start)
            if repeat == 0:
                times[label + "_out"] = out
    rows = []
    g = torch.Generator().manual_seed(0)
    q_draws = posterior.sample(x, args.particles, generator=g)
    for label in ("run_smc", "refine"):
        out = times[label + "_out"]
        row = [name, label, f"{min(times[label]):.3g}"]
        row.append(f"{float(out.num_likelihood_evals.double().mean()):,.0f}")
        row.append(f"{float(out.num_stages.double().mean()):.1f}")
        if task.log_evidence is not None:
            row += [f"{v:.3g}" for v in exact_scores(task, x, *out[:2], out.log_evidence)]
            row.append("–")
        else:
            row += ["–", "–", "–", f"{reference_c2st(task, x, out.sample(1000, generator=g)):.3f}"]
        rows.append(row)
    enc = [name, f"encoder alone (fit: {args.steps} steps, {fit_seconds:.0f} s)", "–", "–", "–"]
    if task.posterior_moments is not None:
        flat = torch.full(q_draws.shape[:2], -math.log(args.particles), dtype=torch.float64)
        _, err, ratio = exact_scores(task, x, q_draws, flat, task.log_evidence(x))
        enc += ["–", f"{err:.3g}", f"{ratio:.3g}", "–"]
    else:
        enc += ["–", "–", "–", f"{reference_c2st(task, x, q_draws):.3f}"]
    rows.append(enc)
    ratio = min(times["run_smc"]) / min(times["refine"])
    return rows, ratio


READING = (
    "What refine saves is likelihood evaluations: with a trained encoder most observations "
    "need one importance-sampling step (K evaluations) where tempering from the prior needs "
    "tens per particle, at equal or better accuracy. Its time is mostly spent drawing from "
    "the encoder: a draw from an autoregressive flow costs d network passes, and these test "
    "likelihoods cost microseconds, so here it is slower in seconds. It saves time when one "
    "likelihood evaluation costs more than one encoder draw (simulators, ODE solves, large "
    "data sets per observation)."
)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="fit steps per task")
    p.add_argument("--observations", type=int, default=32)
    p.add_argument("--particles", type=int, default=1000)
    args = p.parse_args()
    setup(args.threads)
    rows, ratios = [], []
    for name, options in (("linear-gaussian", {"d": 10, "p": 20}), ("two-moons", {})):
        task_rows, ratio = run_task(name, options, args)
        rows += task_rows
        ratios.append(f"{name} {ratio:.1f}x")
    header = [
        "task",
        "method",
        "seconds",
        "evals / obs",
        "stages",
        "|Δ log Z|",
        "mean err (sd)",
        "var ratio",
        "C2ST",
    ]
    body = (
        f"Same K = {args.particles} particles per observation, {args.observations} training "
        "observations; seconds are the fastest of the repeats, measured in alternation. "
        f"Time of run_smc over refine: {', '.join(ratios)}.\n\n"
        + table(header, rows)
        + "\n\n"
        + READING
        + "\n"
    )
    write_section("refine", body, args.out, write=not args.no_write)


if __name__ == "__main__":
    main()
