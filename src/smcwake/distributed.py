"""Data-parallel SMC-Wake on ``torch.distributed``: sharded observations and banks, shared encoder.

With W processes (ranks), rank r keeps only its block of the n observations
(:func:`shard_indices`), and the particle bank of that block. Every step, each rank

1. runs its SMC refreshes on its own observations (no communication),
2. computes the objective on a minibatch of ``batch_size`` of its own observations,
3. averages the encoder's gradients with the other ranks (one all-reduce of a flat buffer),
4. takes the same optimizer step, so the encoder stays identical on every rank.

The global minibatch is therefore ``W * batch_size`` observations, and the averaged gradient is
the gradient of the mean loss over it. Banks never move: memory per rank is ``n / W`` bank
entries, SMC time per rank is ``1 / W`` of the single-process time for the initial runs, and the
only traffic per step is the encoder's gradient (plus two one-element all-reduces that keep the
skip and stop decisions of :func:`~smcwake.train.fit` in agreement).

:func:`fit_distributed` wraps :func:`~smcwake.train.fit` with this scheme; the command
``smcwake distributed`` (:mod:`smcwake.cli`) runs it on a built-in task under ``torchrun``::

    torchrun --nproc-per-node 2 -m smcwake distributed \\
        --task two-moons --method smc-wake-a --steps 2000 --out runs/moons

Run folder layout: ``<run_dir>/rank-<r>/`` holds rank r's checkpoint, ``history.json`` and
``distributed.json`` (world size and shard); after training rank 0 writes
``<run_dir>/summary.json`` with the history combined over ranks. ``docs/SCALING.md`` describes
multi-node launches and the measured speed-up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smcwake.encoders import Encoder
from smcwake.model import Model
from smcwake.train import (
    CHECKPOINT_NAME,
    Callback,
    FitResult,
    TrainConfig,
    check_run_dir,
    fit,
    initial_encoder,
)

__all__ = [
    "DistributedSynchronizer",
    "LAYOUT_NAME",
    "SUMMARY_NAME",
    "default_device",
    "fit_distributed",
    "rank_seed",
    "shard_indices",
]

logger = logging.getLogger(__name__)

LAYOUT_NAME = "distributed.json"
"""Per-rank record of the world size and shard, written in ``<run_dir>/rank-<r>/``."""

SUMMARY_NAME = "summary.json"
"""Rank 0's summary of a finished run (settings, shard sizes, combined history)."""

_SEED_STRIDE = 1000
"""Rank r draws its SMC and minibatch randomness from seed ``seed + 1000 * r``."""

_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------- sharding
def shard_indices(
    n: int, rank: int, world_size: int, *, device: torch.device | str | None = None
) -> Tensor:
    """The observations of one rank: a contiguous block, sizes differing by at most one.

    Rank r gets ``[start_r, start_r + n_r)`` with ``n_r = n // W + (r < n % W)``; the blocks
    are disjoint, cover ``0 .. n-1`` and are in rank order. Contiguous blocks let each process
    read only its rows from a file. With W > n some ranks get an empty block.

    Shapes: -> [n_r] int64.

    >>> shard_indices(10, 0, 3), shard_indices(10, 1, 3), shard_indices(10, 2, 3)
    (tensor([0, 1, 2, 3]), tensor([4, 5, 6]), tensor([7, 8, 9]))
    """
    for name, value, low in (("n", n, 0), ("world_size", world_size, 1), ("rank", rank, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, received {value!r}")
    if rank >= world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, received {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return torch.arange(start, stop, dtype=torch.int64, device=device)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s SMC and minibatch randomness: ``seed + 1000 * rank``.

    Rank 0 keeps ``seed``. The encoder's initial parameters do not depend on it (they come from
    ``seed`` on every rank).

    >>> rank_seed(7, 0), rank_seed(7, 2)
    (7, 2007)
    """
    return seed + _SEED_STRIDE * rank


def default_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (one GPU per process), else the CPU.

    >>> default_device().type in ("cpu", "cuda")
    True
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ---------------------------------------------------------------------------- synchronizer
class DistributedSynchronizer:
    """:class:`~smcwake.train.Synchronizer` over an initialized ``torch.distributed`` group.

    ``agree`` is a one-element all-reduce (MAX). ``average_gradients`` concatenates every
    gradient into one flat buffer per dtype, all-reduces it (SUM) once and divides by the world
    size. A parameter without a gradient on some ranks counts as a zero gradient there; one
    without a gradient on every rank keeps ``grad = None``, as in a single process (Adam then
    skips it). A presence flag per parameter travels in the same buffer, so this costs one
    collective.

    Why not ``DistributedDataParallel``: DDP arms its gradient hooks in ``DDP.forward``, while
    the objectives call ``encoder.log_prob``, ``sample`` and ``rsample_and_log_prob`` on the
    bare encoder, so every one of them would have to be routed through a forward shim of a
    wrapper, and ``fit`` would have to hold the wrapper
    instead of the :class:`~smcwake.encoders.Encoder` it checks, checkpoints and returns. With
    an explicit call after ``loss.backward()`` the same object also serves any other module
    ``fit`` trains (a learned likelihood). What DDP would buy, overlapping communication with
    the backward pass bucket by bucket, matters little here: encoders have 10^4 to 10^6
    parameters and a step's time is dominated by SMC and the objective, so a single flat
    all-reduce after the backward costs one latency plus ``2 (W - 1) / W`` times the gradient's
    bytes per rank (ring algorithm).

    Args:
        group: the process group (default: the world).
        device: where collective buffers live: the current CUDA device for NCCL, else the CPU.
            Gradients on another device are copied there and back.

    Example, inside a process started by torchrun::

        torch.distributed.init_process_group("gloo")
        sync = DistributedSynchronizer()
        loss.backward()
        sync.average_gradients(encoder)  # every rank now holds the mean gradient
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistributedSynchronizer: no process group; call "
                "torch.distributed.init_process_group first (torchrun sets the environment)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if device is None:
            nccl = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu"
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, "
            f"device={self.device})"
        )

    def agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (a collective call)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def average_gradients(self, module: nn.Module) -> None:
        """Replace each gradient of ``module`` by its mean over ranks (a collective call).

        Every rank must hold the same parameters in the same order (same module structure).
        """
        if self.world_size == 1:
            return
        for params in _by_dtype([p for p in module.parameters() if p.requires_grad]):
            for p in params:
                if p.grad is not None and p.grad.is_sparse:
                    raise TypeError("average_gradients: sparse gradients are not supported")
            like = params[0]
            pieces = [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self.device)
                for p in params
            ]
            present = torch.tensor(
                [p.grad is not None for p in params], dtype=like.dtype, device=self.device
            )
            flat = torch.cat([*pieces, present])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            counts = flat[-len(params) :].tolist()
            grads = (flat[: -len(params)] / self.world_size).split([p.numel() for p in params])
            for p, grad, count in zip(params, grads, counts, strict=True):
                if count == 0:
                    continue  # no rank produced a gradient: leave it None everywhere
                grad = grad.view_as(p).to(p.device)
                if p.grad is None:
                    p.grad = grad.clone()
                else:
                    p.grad.copy_(grad)

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Overwrite every parameter and buffer with rank ``src``'s values (a collective call).

        ``src`` is a rank within the group. One broadcast per dtype, of all tensors of that
        dtype concatenated.
        """
        tensors = list(module.parameters()) + list(module.buffers())
        root = src if self.group is None else dist.get_global_rank(self.group, src)
        for group in _by_dtype(tensors):
            flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in group])
            dist.broadcast(flat, src=root, group=self.group)
            for t, value in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(value.view_as(t))

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order (a collective call)."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks, returned on ``t``'s device (a collective call)."""
        buf = t.detach().to(self.device).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        return buf.to(t.device)


def _by_dtype(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """Group tensors by dtype, in order of first appearance (the same on every rank)."""
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


# ---------------------------------------------------------------------------- internals
def _init_from_env(device: torch.device) -> bool:
    """Initialize the default group from torchrun's variables; False if one already exists."""
    if dist.is_initialized():
        return False
    missing = [name for name in _ENV_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            "fit_distributed: no process group and no torchrun environment (missing "
            f"{', '.join(missing)}); launch with `torchrun --nproc-per-node N ...` or call "
            "torch.distributed.init_process_group first"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def _global_location_scale(
    x: Tensor, sync: DistributedSynchronizer, total: int
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the union of every rank's ``x``, in float64.

    Two all-reduces: the sum, then the squared deviations from the global mean (numerically
    stable). Identical on every rank. Shapes: x [n_r, p] -> ([p], [p]).
    """
    x64 = x.detach().to(torch.float64)
    loc = sync.all_sum(x64.sum(0)) / total
    m2 = sync.all_sum((x64 - loc).square().sum(0))
    return loc, (m2 / total).sqrt()


def _standardization_rows(loc: Tensor, scale: Tensor) -> Tensor:
    """Two rows whose mean is ``loc`` and population standard deviation ``scale``.

    :meth:`~smcwake.encoders.Encoder.set_standardization` applied to them gives the same buffers
    (constant columns included) as applied to the full data. Shapes: [p], [p] -> [2, p].
    """
    return torch.stack([loc - scale, loc + scale])


def _checkpoint_step(path: Path) -> int:
    """The step a rank's checkpoint reached (0 without a checkpoint), read lazily."""
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(state["counters"][0])
    except Exception:  # unreadable: fit reports it with the reason
        return -1


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _raise_if_any(sync: DistributedSynchronizer, problem: str | None) -> None:
    """Raise on every rank, with the first rank's message, if any rank found a problem."""
    problems = sync.all_gather_object(problem)
    for rank, message in enumerate(problems):
        if message is not None:
            raise ValueError(f"rank {rank}: {message}")


def _combine_histories(histories: list[dict[str, list]], sizes: list[int]) -> dict[str, list]:
    """One history for the run: rows are logged at the same steps on every rank.

    ``loss`` and ``decoder_loss``: mean over ranks (the global-minibatch loss); counters
    (``likelihood_evals``, ``simulations``, ``smc_runs``, ``unmixed_runs``): sums;
    ``runs_per_obs``: mean weighted by shard size; ``wall_time``: maximum; ``step`` and
    ``skipped_steps`` agree on every rank and are rank 0's.
    """
    lengths = {len(h["step"]) for h in histories}
    if len(lengths) != 1 or any(h["step"] != histories[0]["step"] for h in histories):
        raise RuntimeError(
            f"rank histories logged different steps (lengths {sorted(lengths)}); "
            "the ranks went out of step"
        )
    total = sum(sizes)
    combined: dict[str, list] = {}
    for key, column in histories[0].items():
        columns = [h[key] for h in histories]
        if key in ("likelihood_evals", "simulations", "smc_runs", "unmixed_runs"):
            combined[key] = [sum(values) for values in zip(*columns, strict=True)]
        elif key == "runs_per_obs":
            combined[key] = [
                sum(v * s for v, s in zip(values, sizes, strict=True)) / max(total, 1)
                for values in zip(*columns, strict=True)
            ]
        elif key == "wall_time":
            combined[key] = [max(values) for values in zip(*columns, strict=True)]
        elif key in ("loss", "decoder_loss") and all(
            isinstance(v, int | float) for c in columns for v in c
        ):
            combined[key] = [sum(values) / len(values) for values in zip(*columns, strict=True)]
        else:
            combined[key] = list(column)
    return combined


# ---------------------------------------------------------------------------- fit
def fit_distributed(
    model: Model,
    x: Tensor,
    *,
    encoder: Encoder | str | None = None,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    sharded: bool = False,
    decoder: nn.Module | None = None,
    group: dist.ProcessGroup | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> FitResult:
    """:func:`~smcwake.train.fit` on every rank, each on its shard, with averaged gradients.

    Call it on every rank with the same arguments. It uses the default process group, or
    initializes it from torchrun's environment (``gloo`` on CPU, ``nccl`` on CUDA; destroyed
    again on return). Each rank

    - takes its block ``x[shard_indices(n, rank, W)]`` (or, with ``sharded=True``, ``x`` is
      already its block and ranks may hold different numbers of rows);
    - builds the encoder from ``seed`` exactly as ``fit`` would, standardized with the mean and
      standard deviation of the whole data set (all-reduced) and 10,000 prior draws from
      ``seed``, then takes rank 0's parameters and buffers (a broadcast);
    - runs ``fit`` with seed :func:`rank_seed` ``(seed, rank)`` for its SMC and minibatches,
      ``run_dir/rank-<rank>`` for checkpoints, and a progress bar only on rank 0.

    ``batch_size`` and ``refresh_size`` are per rank: a step sees ``W * batch_size``
    observations. ``resume=True`` needs the same world size (and every rank's checkpoint at the
    same step); a different one is refused. As with ``fit``, a ``run_dir`` whose rank folders
    already hold a run is refused (on every rank) unless ``resume`` or ``overwrite`` is set.
    After training, rank 0 writes ``run_dir/summary.json``.

    Args:
        model: the prior and likelihood (the same on every rank).
        x: the whole data set, the same on every rank; with ``sharded=True``, this rank's rows.
        encoder: an :class:`~smcwake.encoders.Encoder` (rank 0's parameters are broadcast; its
            standardization is kept), or a kind for :func:`~smcwake.encoders.build_encoder`.
        config: a :class:`~smcwake.train.TrainConfig`; ``overrides`` replace its fields.
        run_dir: the run folder; each rank writes to ``run_dir/rank-<rank>``.
        resume: continue every rank from its checkpoint.
        overwrite: replace the run in ``run_dir`` (each rank's checkpoint and history).
        callbacks: passed to ``fit`` on every rank; they see that rank's history rows. A stop
            on any rank stops every rank.
        sharded: ``x`` holds only this rank's observations.
        decoder: a learned likelihood for ``fit``; rank 0's parameters are broadcast.
        group: the process group (default: the world).

    Returns:
        A :class:`~smcwake.train.FitResult` on every rank: the encoder (identical on every
        rank), the history combined over ranks (losses averaged, counters summed), this rank's
        bank (rows in shard order) and this rank's config (with its seed).

    Shapes: x [n, p] (or [n_r, p] with ``sharded=True``).

    Example, in a script ``train.py`` run as ``torchrun --nproc-per-node 4 train.py``::

        task = smcwake.tasks.get("two-moons")
        _, x = task.observations(100_000, seed=0)
        result = fit_distributed(task.model, x, steps=2000, run_dir="runs/moons")
    """
    if isinstance(encoder, str):
        overrides["encoder"] = encoder
        encoder = None
    config = (config or TrainConfig()).replace(**overrides)
    device = torch.device(config.device) if config.device else default_device()
    created = _init_from_env(device) if group is None else False
    try:
        sync = DistributedSynchronizer(group)
        rank = sync.rank
        shard = _take_shard(model, x, sync, sharded)
        rank_dir = _prepare_run_dir(run_dir, shard, sync, resume, overwrite)
        local = shard.x.to(device)
        encoder = _shared_modules(model, local, shard.total, config, sync, encoder, decoder)
        rank_config = _rank_config(config, sync, shard, device)
        result = fit(
            model,
            local,
            encoder=encoder,
            config=rank_config,
            run_dir=rank_dir,
            resume=resume,
            overwrite=overwrite,
            callbacks=callbacks,
            sync=sync,
            decoder=decoder,
        )
        history = _combine_histories(sync.all_gather_object(result.history), shard.sizes)
        if rank == 0 and run_dir is not None:
            _write_summary(Path(run_dir), sync.world_size, shard, config, history)
        # leave together: a rank that tears the group down (or exits) while another is still
        # working can abort that process (gloo); a caller that made the group should also meet
        # at a barrier right before destroy_process_group
        dist.barrier(group=sync.group)
        return result._replace(history=history)
    finally:
        if created:
            dist.destroy_process_group()


def _rank_config(
    config: TrainConfig, sync: DistributedSynchronizer, shard: _Shard, device: torch.device
) -> TrainConfig:
    """This rank's settings: its own seed, a progress bar on rank 0 only, the device."""
    rank = sync.rank
    rank_config = dataclasses.replace(
        config,
        seed=rank_seed(config.seed, rank),
        progress=config.progress and rank == 0,
        device=str(device),
    )
    logger.info(
        "rank %d of %d: observations [%d, %d) of %d, seed %d",
        rank,
        sync.world_size,
        shard.start,
        shard.start + shard.sizes[rank],
        shard.total,
        rank_config.seed,
    )
    return rank_config


def _write_summary(
    run_dir: Path, world_size: int, shard: _Shard, config: TrainConfig, history: dict
) -> None:
    """Rank 0's ``summary.json``: world size, shards, seeds, settings, combined history."""
    summary = {
        "world_size": world_size,
        "num_observations": shard.total,
        "shard_sizes": shard.sizes,
        "seeds": [rank_seed(config.seed, r) for r in range(world_size)],
        "config": config.to_dict(),
        "encoder_checkpoint": f"rank-0/{CHECKPOINT_NAME}",
        "history": history,
    }
    _write_json(run_dir / SUMMARY_NAME, summary)


class _Shard(NamedTuple):
    """This rank's observations and where they sit in the whole data set."""

    x: Tensor  # [n_r, p]
    start: int  # global index of the first row
    sizes: list[int]  # n_r of every rank
    total: int  # n


def _take_shard(model: Model, x: Tensor, sync: DistributedSynchronizer, sharded: bool) -> _Shard:
    """Check that the ranks' x agree in shape and cut this rank's block. Shapes: x [n, p]."""
    model.check_x(x)
    rank, world = sync.rank, sync.world_size
    shapes = sync.all_gather_object(tuple(x.shape))
    if len({p for _, p in shapes}) != 1:
        raise ValueError(f"x: ranks hold observations of different sizes p: {shapes}")
    if sharded:
        sizes = [n for n, _ in shapes]
        local, start = x, sum(sizes[:rank])
    else:
        if len({n for n, _ in shapes}) != 1:
            raise ValueError(
                f"x: expected the whole data set on every rank, received shapes {shapes} "
                "(pass sharded=True if each rank holds only its rows)"
            )
        sizes = [shard_indices(x.shape[0], r, world).numel() for r in range(world)]
        idx = shard_indices(x.shape[0], rank, world, device=x.device)
        local, start = x[idx], sum(sizes[:rank])
    if min(sizes) == 0:
        raise ValueError(
            f"x: {sum(sizes)} observations for {world} processes leave a rank without data; "
            "use fewer processes"
        )
    return _Shard(local, start, sizes, sum(sizes))


def _prepare_run_dir(
    run_dir: str | os.PathLike | None,
    shard: _Shard,
    sync: DistributedSynchronizer,
    resume: bool,
    overwrite: bool,
) -> Path | None:
    """Create ``run_dir/rank-<r>``; refuse (on every rank) a folder fit would refuse on any
    rank, and on resume another world size or unequal steps."""
    if run_dir is None:
        check_run_dir(None, resume=resume, overwrite=overwrite)  # the same on every rank
        return None
    rank, world = sync.rank, sync.world_size
    rank_dir = Path(run_dir) / f"rank-{rank}"
    problem = None
    try:
        check_run_dir(rank_dir, resume=resume, overwrite=overwrite)
    except ValueError as err:
        problem = str(err)
    layout = {
        "world_size": world,
        "rank": rank,
        "num_observations": shard.total,
        "shard_start": shard.start,
        "shard_size": shard.sizes[rank],
    }
    layout_path = rank_dir / LAYOUT_NAME
    if problem is None and resume and layout_path.exists():
        saved = json.loads(layout_path.read_text())
        if saved.get("world_size") != world:
            problem = (
                f"{run_dir} was trained on {saved.get('world_size')} processes and this launch "
                f"has {world}; resume with {saved.get('world_size')} processes (the particle "
                "banks are sharded per process)"
            )
        elif saved != layout:
            problem = f"{layout_path} records the shard {saved}; this launch gives {layout}"
    _raise_if_any(sync, problem)
    if resume:
        steps = sync.all_gather_object(_checkpoint_step(rank_dir / CHECKPOINT_NAME))
        if len(set(steps)) != 1:
            raise ValueError(
                f"cannot resume {run_dir}: the ranks' checkpoints are at steps {steps} and must "
                "agree; restart without resume"
            )
    _write_json(layout_path, layout)
    return rank_dir


def _shared_modules(
    model: Model,
    local: Tensor,
    total: int,
    config: TrainConfig,
    sync: DistributedSynchronizer,
    encoder: Encoder | None,
    decoder: nn.Module | None,
) -> Encoder:
    """The encoder (built as :func:`~smcwake.train.fit` does, standardized with the global x,
    when not given) with rank 0's parameters on every rank, and the decoder's likewise.

    Shapes: local [n_r, p] (on the run's device).
    """
    if encoder is None:
        generator = torch.Generator(device=local.device).manual_seed(config.seed)
        loc, scale = _global_location_scale(local, sync, total)
        rows = _standardization_rows(loc, scale).to(device=local.device, dtype=local.dtype)
        encoder = initial_encoder(model, rows, config, generator)
    sync.broadcast_module(encoder.to(device=local.device))
    if decoder is not None:
        sync.broadcast_module(decoder)
    return encoder


# ---------------------------------------------------------------------------- command line
if __name__ == "__main__":  # deprecated entry: torchrun ... -m smcwake.distributed ...
    import warnings

    from smcwake import cli

    warnings.warn(
        "`-m smcwake.distributed` is deprecated since smcwake 0.1.0 and will be removed in "
        "0.2.0: launch `torchrun --nproc-per-node N -m smcwake distributed ...` (the same "
        "options)",
        FutureWarning,
        stacklevel=1,
    )
    sys.exit(cli.main(["distributed", *sys.argv[1:]]))
