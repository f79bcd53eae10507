"""Overhead ratio: run_smc's time over the time of only the likelihood evaluations it makes.

    python benchmarks/overhead.py            # about 5 minutes; rewrites its section of
                                             # docs/PERFORMANCE.md

One run per (task, kernel) records every call of the model's likelihood: the shape of z, the
observations and whether a gradient was taken (MALA and HMC differentiate the tempered log
target). The calls are then replayed alone, in the same batch shapes, on prior draws (a fresh
input tensor per call, as in the run): the user's likelihood function only (no validation, prior
or kernel arithmetic), plus ``autograd.grad`` of its sum for the calls that took a gradient. The
ratio is run_smc time / replay time; everything above 1 is the sampler's own cost. Target: at
most 1.5 for the random walk.
"""

from __future__ import annotations

import time

import torch
from _common import best_of, parser, setup, table, write_section
from torch.distributions import Independent, Normal

from smcwake import Model, run_smc
from smcwake.tasks import get

CASES = [("two-moons", 1000, 128), ("linear-gaussian", 100, 128), ("emulator", 300, 32)]
KERNELS = ["rwmh", "mala", "hmc"]
POOL = 64  # distinct replay inputs per shape


def emulator(B: int) -> tuple[Model, torch.Tensor]:
    """A likelihood as costly as a small neural emulator, and B observations from it.

    z ~ N(0, I_10), x | z ~ N(f(z), 0.5^2 I_100), f an MLP 10 -> 256 -> 256 -> 100 (tanh) with
    fixed random weights: about 93,000 multiply-adds per point z, where two-moons needs a few.
    """
    g = torch.Generator().manual_seed(0)
    sizes = [10, 256, 256, 100]
    weights = [
        torch.randn(a, b, generator=g) / a**0.5 for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]

    def f(z):
        h = torch.tanh(z @ weights[0])
        h = torch.tanh(h @ weights[1])
        return h @ weights[2]

    def log_likelihood(z, x):
        return Normal(f(z), 0.5).log_prob(x[:, None, :]).sum(-1)

    prior = Independent(Normal(torch.zeros(10), torch.ones(10)), 1)
    z = torch.randn(B, 10, generator=g)
    x = f(z) + 0.5 * torch.randn(B, 100, generator=g)
    return Model(prior, log_likelihood, name="emulator"), x


def case(name: str, B: int) -> tuple[Model, torch.Tensor]:
    """The model and B observations of a benchmark case."""
    if name == "emulator":
        return emulator(B)
    task = get(name)
    return task.model, task.observations(B, 0)[1]


Call = tuple[torch.Size, torch.Tensor, bool]


def record_calls(model: Model, x, K: int, kernel: str) -> tuple[list[Call], float]:
    """The likelihood calls of one seeded run: (z shape, x, whether a gradient was taken).

    Also returns the time spent inside the likelihood during that run (a cross-check).
    """
    raw = model._log_likelihood  # the user's function, without the library's validation
    calls = []
    inside = [0.0]

    def recording(z, x_batch):
        calls.append((z.shape, x_batch.detach().clone(), z.requires_grad))
        start = time.perf_counter()
        out = raw(z, x_batch)
        inside[0] += time.perf_counter() - start
        return out

    recorder = Model(model.prior, recording, name=model.name)
    run_smc(recorder, x, K, kernel=kernel, generator=torch.Generator().manual_seed(1))
    return calls, inside[0]


def replayer(model: Model, calls: list[Call], pool: int = POOL):
    """A function replaying ``calls`` on prior draws of the recorded shapes.

    Each call gets its own input tensor, as in the run (up to ``pool`` distinct tensors per
    shape, then reused in turn): replaying on one tensor that stays in cache would time the
    likelihood faster than the run can see it.
    """
    raw = model._log_likelihood
    g = torch.Generator().manual_seed(2)
    inputs = []
    drawn: dict[torch.Size, list[torch.Tensor]] = {}
    for shape, _, _ in calls:
        have = drawn.setdefault(shape, [])
        if len(have) < pool:
            have.append(model.sample_prior(tuple(shape[:2]), generator=g))
            inputs.append(have[-1])
        else:
            inputs.append(have[len(inputs) % pool])

    def replay():
        for (_, x_batch, grad), z in zip(calls, inputs, strict=True):
            if grad:
                zg = z.detach().requires_grad_(True)
                torch.autograd.grad(raw(zg, x_batch).sum(), zg)
            else:
                raw(z, x_batch)

    return replay


def draws_replayer(calls: list[Call]):
    """A function drawing the random numbers a random-walk run needs for ``calls``: for every
    likelihood call after the first (which scores the prior draws), one standard normal per
    coordinate of the proposal and one uniform for its acceptance, in the call's batch shape.
    Timed with the likelihood replay, it is what no implementation of the random walk on these
    shapes can avoid: a floor for run_smc's time."""
    g = torch.Generator().manual_seed(3)

    def draw():
        for b, K, d in (shape for shape, _, _ in calls[1:]):
            torch.randn((b, d, K), generator=g)
            torch.rand((b, K), generator=g)

    return draw


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--kernels", nargs="+", default=KERNELS)
    p.add_argument("--cases", nargs="+", default=[c[0] for c in CASES])
    args = p.parse_args()
    setup(args.threads)
    rows = []
    for name, K, B in CASES:
        if name not in args.cases:
            continue
        model, x = case(name, B)
        for kernel in args.kernels:
            calls, in_run = record_calls(model, x, K, kernel)

            def full(model=model, x=x, K=K, kernel=kernel):
                g = torch.Generator().manual_seed(1)
                run_smc(model, x, K, kernel=kernel, generator=g)

            variants = {"run_smc": full, "likelihood": replayer(model, calls)}
            # the floor counts one proposal per likelihood call: true of the random walk only
            # (HMC calls the likelihood at every leapfrog step of one proposal)
            if kernel == "rwmh":
                variants["draws"] = draws_replayer(calls)
            best = best_of(variants, args.repeats)
            ratio = best["run_smc"] / best["likelihood"]
            if kernel == "rwmh":
                floor = (best["likelihood"] + best["draws"]) / best["likelihood"]
                draws, floor_cell = best["draws"], floor
            else:
                draws = floor_cell = "–"
            points = sum(shape[0] * shape[1] for shape, _, _ in calls)
            rows.append(
                [
                    name,
                    kernel,
                    K,
                    B,
                    len(calls),
                    f"{points:,}",
                    best["run_smc"],
                    best["likelihood"],
                    in_run,
                    draws,
                    ratio,
                    floor_cell,
                    "yes" if ratio <= 1.5 else "no",
                ]
            )
    body = table(
        [
            "task",
            "kernel",
            "K",
            "B",
            "likelihood calls",
            "points z",
            "run_smc (s)",
            "likelihood only (s)",
            "likelihood in the run (s)",
            "random draws only (s)",
            "ratio",
            "floor: (likelihood + draws) / likelihood",
            "<= 1.5",
        ],
        rows,
    )
    write_section(
        "overhead",
        f"Fastest of {args.repeats} alternated repeats. Ratio = run_smc / likelihood only (the "
        "replay). For MALA and HMC the replay includes the likelihood's gradient. The column "
        "'likelihood in the run' is the time spent inside the likelihood during the recording "
        "run (one run, a cross-check of the replay). `emulator` is a synthetic likelihood as "
        "costly as a small neural network (see `emulator` in the script). 'random draws only' "
        "times the normal and uniform draws of the random walk's proposals and acceptance tests "
        "in the run's shapes (`draws_replayer`, random walk rows only); with the likelihood "
        "they make a floor that no random-walk implementation in torch goes below, so the "
        "last ratio is the best reachable one.\n\n" + body,
        args.out,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
