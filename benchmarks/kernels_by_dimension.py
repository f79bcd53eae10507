"""Move kernels against the dimension, on a model whose evidence and posterior are exact.

The paper's linear Gaussian: z ~ N(0, I_d), x | z ~ N(A z, I_p), p = 2 d, A = G + 0.01 [I; 0], G
iid N(0, 1) (``smcwake.tasks.linear_gaussian``), float64, observations from seed 1. Every kernel
runs one sampler per observation; reported per dimension and kernel:

* |Δ log Z|: mean over observations of |log Zhat - log p(x)|, and the signed range;
* mean err: root mean square over coordinates of (weighted mean - exact mean) / posterior sd,
  averaged over observations (Monte Carlo error alone gives about 1 / sqrt(ESS), 0.06 to 0.08
  at K = 300);
* var ratio: weighted variance / exact variance, averaged over coordinates and observations;
* evals: likelihood evaluations per observation (a gradient evaluation counts as one);
* seconds: wall time of the batch, one torch thread (ratios within a run are meaningful, absolute
  times depend on the machine's load);
* mixed / converged: runs flagged ``SMCResult.mixed`` and ``converged``.

Sections (``--sections``, all by default):

* ``dimension``: d in {2, 10, 30, 50, 100} x kernels, K = 300, 6 observations; waste-free SMC
  runs with the particles and chain length that spend the default's likelihood evaluations.
* ``issue``: the configurations of the report that opened this work (old default, random walk,
  MALA, HMC at d = 10, 30, 50), with the new default beside them. It runs against any version of
  the library that has the named kernels, so ``PYTHONPATH=<old checkout>/src python
  benchmarks/kernels_by_dimension.py --sections issue --no-write`` gives the "before" column.
* ``multimodal``: the new default on the multimodal models of ``benchmarks/multimodal.py``
  (imported from there), beside the previous default.
* ``cost``: likelihood evaluations and time of the new default against the previous default at
  low dimension (two-moons, d = 2; linear Gaussian, d = 10); written to docs/PERFORMANCE.md.

    python benchmarks/kernels_by_dimension.py     # about 11 minutes; writes docs/KERNELS.md
                                                  # and a section of docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from smcwake import run_smc
from smcwake.tasks import get
from smcwake.tasks.linear_gaussian import linear_gaussian

ROOT = Path(__file__).resolve().parents[1]
KERNELS_DOC = ROOT / "docs" / "KERNELS.md"
PERFORMANCE_DOC = ROOT / "docs" / "PERFORMANCE.md"
DT = torch.float64


# ------------------------------------------------------------------------------- one run


def measure(
    d: int, K: int, kernel: object, *, B: int, steps: int | None = None, seed: int = 0
) -> dict[str, float]:
    """Run ``kernel`` on B observations of the d-dimensional linear Gaussian; the metrics."""
    task = linear_gaussian(d=d, p=2 * d, dtype=DT)
    _, x = task.observations(B, seed=1)
    mean, cov = task.posterior_moments(x)
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    log_z = task.log_evidence(x)
    start = time.perf_counter()
    result = run_smc(
        task.model,
        x,
        K,
        kernel=kernel,
        num_mcmc_steps=steps,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = time.perf_counter() - start
    w = result.log_weights.exp()[..., None]
    m = (w * result.particles).sum(1)
    v = (w * (result.particles - m[:, None]) ** 2).sum(1)
    err = result.log_evidence - log_z
    mixed = getattr(result, "mixed", torch.ones(B, dtype=torch.bool))
    return {
        "abs_log_z": float(err.abs().mean()),
        "low": float(err.min()),
        "high": float(err.max()),
        "mean_err": float(((m - mean) / sd).square().mean(-1).sqrt().mean()),
        "var_ratio": float((v / sd.square()).mean()),
        "evals": float(result.num_likelihood_evals.double().mean()),
        "stages": float(result.num_stages.double().mean()),
        "seconds": seconds,
        "mixed": int(mixed.sum()),
        "converged": int(result.converged.sum()),
        "B": B,
    }


def row(label: str, r: dict[str, float], *, d: int | None = None, K: int | None = None) -> str:
    head = [] if d is None else [str(d)]
    head += [] if K is None else [str(K)]
    return (
        "| "
        + " | ".join(
            head
            + [
                label,
                f"{r['abs_log_z']:.2f} ({r['low']:+.2f} .. {r['high']:+.2f})",
                f"{r['mean_err']:.3f}",
                f"{r['var_ratio']:.3f}",
                f"{r['evals'] / 1e3:.1f} k",
                f"{r['seconds']:.1f}",
                f"{r['mixed']}/{r['B']}",
                f"{r['converged']}/{r['B']}",
            ]
        )
        + " |"
    )


HEADER = (
    "| |Δ log Z| (range) | mean err (sd) | var ratio | evals / obs | seconds | mixed | converged |"
)


def header(*first: str) -> str:
    cols = list(first) + ["kernel"]
    head = "| " + " | ".join(cols) + " " + HEADER
    return head + "\n|" + "---|" * (len(cols) + 7)


def log(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------ the sections


def waste_free_equal_budget(default: dict[str, float]) -> tuple[object, int, int]:
    """A waste-free kernel and K that spend about the default's evaluations per observation.

    Waste-free SMC evaluates about K (1 + 1 / P) points per stage (MALA's gradients at the M =
    K / P ancestors included) and takes about as many stages as the default: K is the default's
    evaluations over its stages plus one, P is chosen for about 300 chains.
    """
    from smcwake.smc.wastefree import waste_free

    K = max(300, round(default["evals"] / (default["stages"] + 1)))
    P = max(2, round(K / 300))
    return waste_free(P), K, P


DIMENSION_KERNELS: list[tuple[str, object, int | None]] = [
    ("auto (default)", "auto", None),
    ("mixture+rwmh (previous default, 5)", "mixture+rwmh", None),
    ("rwmh (5)", "rwmh", None),
    ("mala (5)", "mala", None),
    ("hmc (2 x 5 leapfrog)", "hmc", None),
]


def gradient_free_default() -> object:
    """The default kernel as it runs on a likelihood without gradients."""
    from smcwake.smc.auto import auto_kernel

    return auto_kernel().choose(False)


def section_dimension(args: argparse.Namespace) -> str:
    K, B = args.particles, args.observations
    lines = [header("d")]
    for d in args.dims:
        runs = {}
        for label, kernel, steps in DIMENSION_KERNELS + [
            ("auto, gradient-free (random walk)", gradient_free_default(), None)
        ]:
            runs[label] = measure(d, K, kernel, B=B, steps=steps)
            log(f"d={d} {label}: {runs[label]}")
            lines.append(row(label, runs[label], d=d))
        kernel, K_wf, P = waste_free_equal_budget(runs["auto (default)"])
        r = measure(d, K_wf, kernel, B=B)
        log(f"d={d} waste-free K={K_wf} P={P}: {r}")
        lines.append(row(f"waste-free (K = {K_wf}, P = {P}: equal evals)", r, d=d))
    return "\n".join(lines)


ISSUE_CASES = [
    (10, 1000, "mixture+rwmh", None),
    (30, 1000, "mixture+rwmh", None),
    (50, 300, "mixture+rwmh", None),
    (50, 300, "rwmh", None),
    (50, 300, "mala", 5),
    (50, 300, "mala", 20),
    (50, 1000, "mala", 5),
    (50, 300, "hmc", None),
]


def section_issue(args: argparse.Namespace) -> str:
    B = args.observations_issue
    lines = [header("d", "K")]
    cases = list(ISSUE_CASES)
    if "auto" in _kernel_names():
        cases += [(10, 1000, "auto", None), (30, 1000, "auto", None), (50, 300, "auto", None)]
    for d, K, kernel, steps in cases:
        r = measure(d, K, kernel, B=B, steps=steps)
        label = kernel if steps is None else f"{kernel} ({steps})"
        log(f"d={d} K={K} {label}: {r}")
        lines.append(row(label, r, d=d, K=K))
    return "\n".join(lines)


def _kernel_names() -> tuple[str, ...]:
    from smcwake.smc.kernels import KERNEL_NAMES

    return KERNEL_NAMES


def section_multimodal(args: argparse.Namespace) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import multimodal

    lines = [
        "| model | kernel | mass err | distinct | C2ST | \\|Δ log Z\\| | evals | time (s) | "
        "mixed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = []

    def keep(*a, **kw):  # run_case's own call of run_smc, kept for the mixed flags
        results.append(run_smc(*a, **kw))
        return results[-1]

    multimodal.run_smc = keep
    for case in multimodal.cases():
        for label, kernel in [
            ("mixture+rwmh (previous default)", "mixture+rwmh"),
            ("auto", "auto"),
        ]:
            r = multimodal.run_case(case, kernel, args.samplers, args.seed)
            mass, dz = r.get("mass_err"), r.get("log_z_err")
            lines.append(
                f"| {case.name} | {label} | {'–' if mass is None else f'{mass:.3f}'} | "
                f"{r['distinct']:.3f} | {r['c2st']:.3f} | {'–' if dz is None else f'{dz:.3f}'} | "
                f"{r['evals'] / 1e6:.2f} M | {r['seconds']:.1f} | "
                f"{int(results[-1].mixed.sum())}/{args.samplers} |"
            )
            log(lines[-1])
    return "\n".join(lines)


def section_cost(args: argparse.Namespace) -> str:
    def moons() -> tuple[object, torch.Tensor]:
        task = get("two-moons")
        _, x = task.observations(32, seed=1)
        return task.model, x

    def lg10() -> tuple[object, torch.Tensor]:
        task = linear_gaussian(d=10, p=20, dtype=DT)
        _, x = task.observations(8, seed=1)
        return task.model, x

    cases: list[tuple[str, Callable[[], tuple[object, torch.Tensor]], int]] = [
        ("two-moons (d = 2), 32 obs.", moons, 1000),
        ("linear Gaussian d = 10, 8 obs.", lg10, 1000),
    ]
    lines = [
        "| model | K | kernel | evals / obs | stages | seconds | evals ratio | time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, build, K in cases:
        model, x = build()
        out = {}
        for kernel in ("mixture+rwmh", "auto"):
            best = math.inf
            for repeat in range(args.repeats):
                start = time.perf_counter()
                result = run_smc(
                    model, x, K, kernel=kernel, generator=torch.Generator().manual_seed(repeat)
                )
                best = min(best, time.perf_counter() - start)
            out[kernel] = (
                float(result.num_likelihood_evals.double().mean()),
                float(result.num_stages.double().mean()),
                best,
            )
        base = out["mixture+rwmh"]
        for kernel, (evals, stages, seconds) in out.items():
            lines.append(
                f"| {name} | {K} | {kernel} | {evals / 1e3:.1f} k | {stages:.1f} | "
                f"{seconds:.2f} | {evals / base[0]:.2f} | {seconds / base[2]:.2f} |"
            )
            log(lines[-1])
    return "\n".join(lines)


SECTIONS = {
    "dimension": section_dimension,
    "issue": section_issue,
    "multimodal": section_multimodal,
    "cost": section_cost,
}


def write(doc: Path, name: str, body: str, command: str) -> None:
    """Replace (or append) the block between the markers of ``name`` in ``doc``."""
    text = (
        f"<!-- begin {name} -->\n_Generated by `{command}`, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread._\n\n{body.strip()}\n<!-- end {name} -->"
    )
    old = doc.read_text()
    pattern = re.compile(
        rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S
    )
    new = (
        pattern.sub(lambda _: text, old)
        if pattern.search(old)
        else old.rstrip() + "\n\n" + text + "\n"
    )
    doc.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--dims", default="2,10,30,50,100")
    parser.add_argument("--particles", type=int, default=300)
    parser.add_argument("--observations", type=int, default=6)
    parser.add_argument("--observations-issue", type=int, default=8)
    parser.add_argument("--samplers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args()
    args.dims = [int(v) for v in args.dims.split(",")]
    torch.set_num_threads(1)
    command = "python benchmarks/kernels_by_dimension.py " + " ".join(sys.argv[1:])
    for name in args.sections.split(","):
        started = time.perf_counter()
        body = SECTIONS[name](args)
        minutes = (time.perf_counter() - started) / 60
        body += f"\n\nSection run time: {minutes:.1f} minutes."
        log(body)
        if not args.no_write:
            doc = PERFORMANCE_DOC if name == "cost" else KERNELS_DOC
            write(doc, f"kernels-{name}", body, command.strip())


if __name__ == "__main__":
    main()
