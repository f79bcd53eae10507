"""Does torch.compile pay on CPU? Two candidates, eager against compiled.

    python benchmarks/torch_compile.py       # about 1 minute; rewrites its section of
                                             # docs/PERFORMANCE.md

1. The temperature search's inner evaluation (log CESS and its derivative: one exponential and
   four weighted sums over [B, K]), the search's whole per-iteration cost, free of data-dependent
   control flow.
2. One random-walk Metropolis step on two-moons written out as a single function (proposal,
   box prior, likelihood, tempered ratio, acceptance, selection), with the normal and uniform
   draws made outside it (a ``torch.Generator`` does not go through the compiler).

For each: the one-off compilation time (with the compiler's on-disk caches disabled, so a second
run of the script measures the same thing), the time per call both ways, and how many calls repay
the compilation. For reference, one step of the library's own random-walk kernel is timed eager,
with and without its random draws. ``dynamic=True`` is what the sampler would need (B shrinks as
observations finish); the step is also compiled with ``dynamic=False`` (one fixed shape) for
comparison.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from _common import best_of, parser, setup, table, write_section

from smcwake.smc.kernels import random_walk_metropolis
from smcwake.smc.mh import Target
from smcwake.smc.sampler import SMCState
from smcwake.smc.tempering import _LogCESS
from smcwake.tasks import get
from smcwake.tasks.two_moons import log_likelihood

SIZES = [(128, 1000), (32, 1000), (128, 100)]


def rwmh_step(z, log_prior, loglik, noise, u, step_chol, tau, x):
    """One random-walk step for two-moons (uniform prior on [-1, 1]^2), draws given."""
    z_new = z + noise @ step_chol.mT
    inside = ((z_new >= -1) & (z_new < 1)).all(-1)
    lp = torch.where(inside, -math.log(4.0), -math.inf)
    ll = log_likelihood(z_new, x[:, None, :])
    t = tau[:, None]
    current = log_prior + torch.where(t == 0, 0.0, t * loglik)
    proposed = lp + torch.where(t == 0, 0.0, t * ll)
    accept = torch.log(u) < torch.nan_to_num(proposed - current, nan=-math.inf)
    return (
        torch.where(accept[..., None], z_new, z),
        torch.where(accept, lp, log_prior),
        torch.where(accept, ll, loglik),
    )


def timed_compile(fn, *inputs, dynamic: bool):
    """(compiled function, seconds of its first call)."""
    start = time.perf_counter()
    compiled = torch.compile(fn, dynamic=dynamic)
    compiled(*inputs)
    return compiled, time.perf_counter() - start


def row(label, eager, compiled, compile_seconds, calls, repeats):
    best = best_of({"eager": eager, "compiled": compiled}, repeats)
    t_eager, t_comp = best["eager"] / calls, best["compiled"] / calls
    saved = t_eager - t_comp
    return [
        label,
        compile_seconds,
        t_eager * 1e3,
        t_comp * 1e3,
        t_eager / t_comp,
        f"{compile_seconds / saved:,.0f}" if saved > 0 else "never",
    ]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=100, help="calls per timed repeat")
    args = p.parse_args()
    setup(args.threads)
    torch._inductor.config.force_disable_caches = True  # time real compilations, every run
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    g = torch.Generator().manual_seed(0)
    rows = []

    # 1. the temperature search's evaluation
    evaluate = _LogCESS.__call__
    compiled_eval, seconds = None, 0.0
    for B, K in SIZES:
        ll = -50 * torch.rand(B, K, generator=g, dtype=torch.float64) ** 2
        lw = torch.full((B, K), -math.log(K), dtype=torch.float64)
        state = _LogCESS(ll, lw)
        s = torch.full((B,), -3.0, dtype=torch.float64)
        if compiled_eval is None:
            compiled_eval, seconds = timed_compile(evaluate, state, s, dynamic=True)

        def eager(state=state, s=s):
            for _ in range(args.calls):
                evaluate(state, s)

        def fused(state=state, s=s, compiled_eval=compiled_eval):
            for _ in range(args.calls):
                compiled_eval(state, s)

        rows.append(
            row(
                f"search evaluation, {B} x {K}, dynamic",
                eager,
                fused,
                seconds,
                args.calls,
                args.repeats,
            )
        )

    # 2. one random-walk step on two-moons, B = 128, K = 1000
    B, K = 128, 1000
    task = get("two-moons")
    _, x = task.observations(B, 0)
    z = task.model.sample_prior((B, K), generator=g)
    log_prior = task.model.log_prior(z)
    loglik = log_likelihood(z, x[:, None, :])
    step_chol = 0.1 * torch.eye(2).expand(B, 2, 2)
    tau = torch.full((B,), 0.1)
    noise = [torch.randn(B, K, 2, generator=g) for _ in range(args.calls)]
    uniforms = [torch.rand(B, K, generator=g) for _ in range(args.calls)]

    def steps(fn):
        def run():
            for n, u in zip(noise, uniforms, strict=True):
                fn(z, log_prior, loglik, n, u, step_chol, tau, x)

        return run

    inputs = (z, log_prior, loglik, noise[0], uniforms[0], step_chol, tau, x)
    for dynamic in (True, False):
        torch._dynamo.reset()
        compiled_step, seconds = timed_compile(rwmh_step, *inputs, dynamic=dynamic)
        rows.append(
            row(
                f"random-walk step, two-moons {B} x {K}, " + ("dynamic" if dynamic else "static"),
                steps(rwmh_step),
                steps(compiled_step),
                seconds,
                args.calls,
                args.repeats,
            )
        )
    # 3. the library's random-walk kernel, one step per call, eager, with and without its draws
    move = random_walk_metropolis(num_steps=1)
    state = SMCState(
        z,
        torch.full((B, K), -math.log(K)),
        log_prior,
        loglik,
        tau.double(),
        torch.zeros(B, dtype=torch.float64),
        torch.full((B,), 0.1 * math.sqrt(2)),  # step scale / sqrt(d) = 0.1, as above
    )
    target, chol = Target(task.model, x), torch.eye(2).expand(B, 2, 2)

    def library():
        for _ in range(args.calls):
            move(state, target, g, chol)

    def draws():
        for _ in range(args.calls):
            torch.randn(B, 2, K, generator=g), torch.rand(B, K, generator=g)

    best = best_of({"library": library, "draws": draws}, args.repeats)
    t_lib, t_draws = (best[k] / args.calls * 1e3 for k in ("library", "draws"))
    body = table(
        ["function", "compile (s)", "eager (ms)", "compiled (ms)", "speedup", "calls to repay"],
        rows,
    )
    write_section(
        "compile",
        "A two-moons `run_smc` with B = 128, K = 1000 makes about 6 stages x 5 search "
        "evaluations and 6 x 5 random-walk steps.\n\n" + body + "\n\n"
        f"For comparison, one step of the library's random-walk kernel "
        f"(`random_walk_metropolis`, same shapes, eager) takes {t_lib:.2f} ms, of which "
        f"{t_draws:.2f} ms are its normal and uniform draws: {t_lib - t_draws:.2f} ms without "
        "them, against the compiled step's time above, which receives its draws ready-made. "
        "Timed alone like this, every step also pays page faults for its fresh temporaries "
        "(the allocator returns freed memory to the system between calls); inside a whole "
        '`run_smc` it mostly does not (section "Where the time goes").',
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
