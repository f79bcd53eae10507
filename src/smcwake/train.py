"""The training loop shared by every method: SGD steps interleaved with SMC refreshes.

``fit(model, x, method=...)`` is the short path. It

1. runs SMC for every observation (batched, ``smc_batch_size`` at a time) when the method is an
   SMC-Wake estimator, and stores the runs in a :class:`~smcwake.bank.ParticleBank`;
2. takes ``steps`` optimizer steps on the method's objective over minibatches of observations;
3. every ``refresh_every`` steps runs SMC again for ``refresh_size`` observations (one batch);
4. writes atomic checkpoints to ``run_dir`` every ``checkpoint_every`` steps, at the end, and on
   SIGINT/SIGTERM; ``resume=True`` continues a run exactly where it stopped, after checking that
   the observations, the settings and the model (see :func:`smcwake.model.model_fingerprint`)
   are the ones it was made with. A folder that already holds a run is never overwritten unless
   asked (``overwrite=True``).

All randomness flows from one ``torch.Generator`` seeded by ``seed``; its state is checkpointed,
so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from smcwake.bank import ParticleBank
from smcwake.encoders import ENCODER_KINDS, Encoder, build_encoder
from smcwake.model import Model, fingerprint_differences, forked_rng, model_fingerprint
from smcwake.objectives import SMC_WAKE_METHODS, Batch, Context, get_objective
from smcwake.smc.kernels import check_kernel_name, get_kernel
from smcwake.smc.resampling import get_resampler
from smcwake.smc.sampler import run_smc

__all__ = [
    "SMCOptions",
    "TrainConfig",
    "FitResult",
    "Synchronizer",
    "fit",
    "check_run_dir",
    "CHECKPOINT_NAME",
    "HISTORY_NAME",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
SUPPORTED_DTYPES = (torch.float32, torch.float64)
"""Floating-point types fit trains in (x's dtype); encoders and SMC need float32 or float64."""
_CHECKPOINT_VERSION = 1
_CHECKPOINT_KEYS = (
    "config",
    "data",
    "encoder",
    "optimizer",
    "bank",
    "chains",
    "generator",
    "history",
    "counters",
)


@dataclass(frozen=True)
class SMCOptions:
    """Settings of the SMC runs made during training (see :func:`smcwake.run_smc`).

    ``kernel`` is a name :func:`smcwake.run_smc` accepts, or ``"encoder+rwmh"`` /
    ``"encoder+mala"``, which also propose from the encoder being trained (defensively mixed
    with a mixture fitted to the particles; see docs/KERNELS.md).
    """

    ess_target: float = 0.5
    resample_threshold: float = 0.5
    resampling: str = "systematic"
    kernel: str = "auto"
    num_mcmc_steps: int | None = None
    max_stages: int = 500

    def __post_init__(self) -> None:
        _check_fraction("smc.ess_target", self.ess_target, open_interval=True)
        _check_fraction("smc.resample_threshold", self.resample_threshold, open_interval=False)
        if (
            isinstance(self.max_stages, bool)
            or not isinstance(self.max_stages, int)
            or (self.max_stages < 1)
        ):
            raise ValueError(
                f"smc.max_stages: expected an integer >= 1, received {self.max_stages!r}"
            )
        get_resampler(self.resampling)
        check_kernel_name(self.kernel, self.num_mcmc_steps)


def _check_fraction(name: str, value: object, *, open_interval: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number, received {value!r}")
    ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name}: expected a fraction in {interval}, received {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Defaults suit a few thousand steps on a laptop CPU.

    Args:
        method: one of :data:`smcwake.objectives.OBJECTIVES`.
        steps: optimizer steps.
        batch_size: observations per minibatch.
        num_particles: K, particles per SMC run.
        num_proposals: proposals per observation for the importance-sampling baselines (wake,
            defensive-wake, iwae, msc), samples for elbo, simulations per observation for sleep.
        refresh_every: steps between SMC refreshes (SMC-Wake methods).
        refresh_size: observations per refresh (default: batch_size).
        lr: Adam learning rate.
        seed: seeds every random choice of the run.
        encoder: kind for :func:`smcwake.encoders.build_encoder` when no encoder is given.
        max_runs: runs kept per observation by estimators (a) and (b).
        num_resampled: particles kept per run by estimator (b).
        runs_per_step: estimator (a) draws this many runs ~ Cat(omega) per step (None: all);
            used only when ``particles_per_step`` is None.
        particles_per_step: SMC-Wake methods score this many particles per observation and
            step, drawn in proportion to the estimator's weights from everything it keeps
            (same expected gradient; the encoder's cost per step no longer grows with the
            bank). None: every weighted particle (M * R per observation for (b), up to
            M * K for (a)).
        smc: SMC settings.
        smc_batch_size: observations per batched SMC call.
        use_unconverged: store SMC runs that stopped at max_stages, or whose particles did not
            decorrelate in some stage (``SMCResult.mixed``; off: both are dropped and counted
            in the history's ``unmixed_runs``).
        grad_clip: clip the gradient norm (None: off).
        max_bad_steps: stop after this many consecutive non-finite losses.
        max_evals: stop once this many likelihood evaluations were made (None: no cap).
        decoder_lr: Adam learning rate of a learned likelihood (``fit(..., decoder=...)``).
        decoder_proposals: K of the importance-weighted bound (IWBO) that trains the decoder,
            with the encoder as proposal.
        stale_after: with a decoder, drop bank runs made more than this many steps ago (they
            target the posterior of an older likelihood). None: keep every run.
        checkpoint_every: steps between checkpoints (with run_dir).
        log_every: steps between history rows.
        progress: show a progress bar.
        device: where to train (default: x's device).
    """

    method: str = "smc-wake-a"
    steps: int = 2000
    batch_size: int = 32
    num_particles: int = 1000
    num_proposals: int = 100
    refresh_every: int = 10
    refresh_size: int | None = None
    lr: float = 1e-3
    seed: int = 0
    encoder: str = "flow"
    max_runs: int = 50
    num_resampled: int = 100
    runs_per_step: int | None = 4
    particles_per_step: int | None = 256
    smc: SMCOptions = field(default_factory=SMCOptions)
    smc_batch_size: int = 256
    use_unconverged: bool = False
    grad_clip: float | None = 10.0
    max_bad_steps: int = 20
    max_evals: int | None = None
    decoder_lr: float = 1e-3
    decoder_proposals: int = 16
    stale_after: int | None = None
    checkpoint_every: int = 250
    log_every: int = 10
    progress: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        get_objective(self.method)  # raises on an unknown name
        for name in (
            "steps",
            "batch_size",
            "num_particles",
            "num_proposals",
            "refresh_every",
            "max_runs",
            "num_resampled",
            "smc_batch_size",
            "checkpoint_every",
            "log_every",
            "max_bad_steps",
        ):
            value = getattr(self, name)
            low = 0 if name == "steps" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, received {value!r}")
        if self.num_particles < 2:
            raise ValueError(f"num_particles: expected >= 2, received {self.num_particles}")
        for name in ("lr", "decoder_lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, received {value!r}")
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, int | float) and 0 < self.grad_clip < math.inf
        ):
            raise ValueError(
                f"grad_clip: expected None or a finite number > 0, received {self.grad_clip!r}"
            )
        for name, low in (
            ("refresh_size", 1),
            ("runs_per_step", 1),
            ("particles_per_step", 1),
            ("max_evals", 0),
            ("stale_after", 0),
            ("decoder_proposals", 1),
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(
                    f"{name}: expected None or an integer >= {low}, received {value!r}"
                )
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(
                f"encoder: unknown kind {self.encoder!r}; expected one of {list(ENCODER_KINDS)}"
            )
        if isinstance(self.smc, dict):
            object.__setattr__(self, "smc", SMCOptions(**self.smc))
        if not isinstance(self.smc, SMCOptions):
            raise TypeError(
                f"smc: expected SMCOptions or a dict of its fields, received {self.smc!r}"
            )

    @property
    def estimator(self) -> str | None:
        """The SMC-Wake estimator letter, or None for a baseline."""
        return SMC_WAKE_METHODS.get(self.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    encoder: Encoder
    history: dict[str, list]  # columns: step, loss, likelihood_evals, simulations, smc_runs, ...
    bank: ParticleBank | None
    config: TrainConfig


Callback = Callable[[int, Encoder, dict], bool | None]


class Synchronizer(Protocol):
    """What :func:`fit` needs from a data-parallel backend; a no-op when training alone."""

    def agree(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (a collective call)."""
        ...

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Replace each gradient of ``module`` by its mean over processes (a collective call)."""
        ...


# ---------------------------------------------------------------------------- helpers
def _fingerprint(x: Tensor) -> str:
    data = x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return f"{list(x.shape)}:{hashlib.sha256(data).hexdigest()[:16]}"


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _comparable(config: TrainConfig) -> dict[str, Any]:
    """Config fields that must match to resume (steps, budgets and display may change)."""
    d = config.to_dict()
    for free in ("steps", "max_evals", "progress", "checkpoint_every", "log_every", "device"):
        d.pop(free)
    return d


def check_run_dir(
    run_dir: str | os.PathLike | None, *, resume: bool = False, overwrite: bool = False
) -> Path | None:
    """Create ``run_dir`` if needed and check that :func:`fit` may use it; deletes nothing.

    Raises ``ValueError`` (before any likelihood evaluation) when ``resume=True`` without a
    folder, when both ``resume`` and ``overwrite`` are set, when the folder already holds a run
    (a checkpoint or a history) and neither is set, when ``resume=True`` finds a history but no
    checkpoint to continue from, or when the folder cannot be created or written to.

    Returns the folder as a ``Path`` (None without ``run_dir``).
    """
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True: choose one")
    if run_dir is None:
        if resume:
            raise ValueError(
                "resume=True needs run_dir, the folder holding the checkpoint to continue from"
            )
        return None
    path = Path(run_dir)
    held = [name for name in (CHECKPOINT_NAME, HISTORY_NAME) if (path / name).exists()]
    if held and not (resume or overwrite):
        raise ValueError(
            f"run_dir {path} already holds a run ({', '.join(held)}); pass resume=True to "
            "continue it, overwrite=True to replace it (command line: --resume or --overwrite), "
            "or choose another run_dir"
        )
    if resume and held == [HISTORY_NAME]:
        raise ValueError(
            f"run_dir {path} holds {HISTORY_NAME} but no {CHECKPOINT_NAME} to resume from; pass "
            "overwrite=True to start afresh there, or choose another run_dir"
        )
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"run_dir {path}: cannot write checkpoints there ({type(err).__name__}: {err}); "
            "choose a writable folder"
        ) from err
    return path


def _check_dtype(x: Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"x: fit trains in x's dtype, which must be torch.float32 or torch.float64; "
            f"received {x.dtype}. Convert it first, e.g. x.float()"
        )


def _check_model(
    checkpoint: dict, model: Model, x: Tensor, decoder: torch.nn.Module | None, path: Path
) -> dict | None:
    """Refuse a checkpoint made with another prior or likelihood; return the model's fingerprint.

    A learned likelihood (``decoder``) changes during training, so it is compared in the state
    the checkpoint stored (loaded here; put back if the check fails). Checkpoints written before
    fingerprints existed are accepted with a warning.
    """
    saved = checkpoint.get("model")
    if saved is None:
        logger.warning(
            "checkpoint in %s has no model fingerprint (written by an older smcwake): the prior "
            "and likelihood cannot be checked against the ones it was made with",
            path,
        )
        return None
    before = None
    if decoder is not None and checkpoint.get("decoder") is not None:
        before = {k: v.clone() for k, v in decoder.state_dict().items()}
        try:
            decoder.load_state_dict(checkpoint["decoder"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"checkpoint in {path} does not fit this decoder ({err}); use the decoder it "
                "was made with, or a new run_dir"
            ) from err
    current = model_fingerprint(model, x)
    differences = fingerprint_differences(saved, current)
    if differences:
        if before is not None:
            decoder.load_state_dict(before)
        more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ValueError(
            f"checkpoint in {path} was made with another model ({'; '.join(differences[:3])}"
            f"{more}). Resume with the model it was made with, or start afresh with "
            "overwrite=True or another run_dir"
        )
    return current


def _remove_run(path: Path) -> None:
    """Delete a previous run's checkpoint and history (``overwrite=True``)."""
    for name in (CHECKPOINT_NAME, HISTORY_NAME):
        if (path / name).exists():
            logger.info("overwrite=True: removing %s", path / name)
            (path / name).unlink()


class _Stop:
    """Records SIGINT/SIGTERM during fit so the loop can checkpoint before leaving."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: leave at once
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received signal %d: stopping after this step", signum)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------- SMC
def _smc(model: Model, x: Tensor, rows: Tensor, config: TrainConfig, generator, encoder: Encoder):
    opts = config.smc
    return run_smc(
        model,
        x,
        config.num_particles,
        ess_target=opts.ess_target,
        resample_threshold=opts.resample_threshold,
        resampling=opts.resampling,
        kernel=get_kernel(opts.kernel, opts.num_mcmc_steps, encoder=encoder),
        max_stages=opts.max_stages,
        generator=generator,
        rows=rows,
    )


def _decoder_loss(
    model: Model, encoder: Encoder, batch: Batch, num_proposals: int, generator
) -> Tensor:
    """Negative IWBO of a learned likelihood with the (fixed) encoder as proposal."""
    with torch.no_grad():
        z = encoder.sample(batch.x, num_proposals, generator=generator)
        log_q = encoder.log_prob(z, batch.x)
    log_w = model.log_prior(z) + model.log_likelihood(z, batch.x, batch.idx) - log_q
    return -(torch.logsumexp(log_w, -1) - math.log(num_proposals)).mean()


def _take_step(loss: Tensor, module: torch.nn.Module, optimizer, clip: float | None, sync) -> bool:
    """Backward and step unless the loss or the gradient is non-finite (on any process)."""
    finite = bool(torch.isfinite(loss.detach()))
    if sync is not None:  # every process must take the same branch
        finite = not sync.agree(not finite)
    if not finite:
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync.average_gradients(module)
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip or math.inf)
    if not bool(torch.isfinite(norm)):
        return False
    optimizer.step()
    return True


def _run_and_store(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    idx: Tensor,
    bank: ParticleBank,
    config: TrainConfig,
    generator: torch.Generator,
    step: int,
) -> tuple[int, int, int]:
    """SMC for observations ``idx`` in batches; store the usable runs.

    Returns (evals, stored runs, runs that reached tau = 1 unmixed).
    """
    evals = runs = unmixed = 0
    opts = config.smc
    for start in range(0, idx.numel(), config.smc_batch_size):
        chunk = idx[start : start + config.smc_batch_size]
        with torch.no_grad():  # a learned likelihood must not record a graph here
            result = _smc(model, x[chunk], chunk, config, generator, encoder)
        evals += int(result.num_likelihood_evals.sum())
        bank.excluded[chunk[result.zero_likelihood]] = True
        usable = (result.converged & result.mixed) | (
            config.use_unconverged & ~result.zero_likelihood
        )
        unmixed += int((result.converged & ~result.mixed).sum())
        keep = torch.nonzero(usable).flatten()
        bank.add(
            chunk[keep],
            result.particles[keep],
            result.log_weights[keep],
            result.log_evidence[keep],
            generator=generator,
            step=step,
        )
        runs += keep.numel()
        dropped = int((~usable & ~result.zero_likelihood).sum())
        if dropped:
            logger.warning(
                "dropped %d SMC runs that did not reach tau=1 (max_stages=%d) or whose "
                "particles did not decorrelate (SMCResult.mixed)",
                dropped,
                opts.max_stages,
            )
    return evals, runs, unmixed


# ---------------------------------------------------------------------------- fit
def fit(
    model: Model,
    x: Tensor,
    *,
    encoder: Encoder | str | None = None,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    sync: Synchronizer | None = None,
    decoder: torch.nn.Module | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> FitResult:
    """Train an encoder q(z | x) on the observations ``x`` with one method.

    Args:
        model: the prior and likelihood.
        x: the dataset, [n, p], in float32 or float64 (the precision of the whole run).
        encoder: an :class:`~smcwake.encoders.Encoder`, or a kind for
            :func:`~smcwake.encoders.build_encoder` ("flow", "mdn", "gaussian", ...); by default
            ``config.encoder``. A built one is initialised from ``seed`` and standardized with x
            and 10,000 prior draws.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields, e.g.
            ``fit(model, x, method="smc-wake-c", steps=500)``.
        run_dir: folder for checkpoints and ``history.json`` (created if missing). A folder
            that already holds a run is refused unless ``resume`` or ``overwrite`` is set.
        resume: continue from ``run_dir``'s checkpoint if there is one (same data, settings
            and model required, ``steps`` may grow); needs ``run_dir``. The model is checked
            by its fingerprint (:func:`smcwake.model.model_fingerprint`: the prior's class and
            parameters, the likelihood at fixed prior draws; with a ``decoder``, in the state
            the checkpoint stored); a checkpoint from before fingerprints is resumed with a
            logged warning.
        callbacks: called every ``log_every`` steps as ``cb(step, encoder, row)``; returning
            True stops training (a checkpoint is written).
        sync: for data-parallel training (see :mod:`smcwake.distributed`): averages gradients
            across processes and makes every process take the same skip and stop decisions.
        decoder: an ``nn.Module`` holding the learned parameters of the model's likelihood
            (e.g. a VAE decoder the log-likelihood reads). Each step it takes an Adam step on
            the importance-weighted bound with the encoder as proposal; SMC runs are stamped
            with their step and ``stale_after`` drops outdated ones.
        overwrite: replace the run in ``run_dir``: its checkpoint and history are deleted once
            every check has passed, before training starts.

    Every check of the input (data, settings, run folder, a resumed checkpoint and its model)
    happens before the first SMC run. Fingerprinting the model for the checkpoint costs up to
    16 likelihood evaluations (at each checkpoint with a decoder), not counted in the history.

    Shapes: x [n, p].

    >>> from smcwake.tasks import get
    >>> task = get("toy-collapse")
    >>> _, x = task.observations(8, 0)
    >>> out = fit(task.model, x, encoder="gaussian", steps=20, num_particles=100,
    ...           batch_size=8, progress=False)
    >>> out.history["step"][-1]
    20
    """
    if isinstance(encoder, str):
        overrides["encoder"] = encoder
        encoder = None
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    model.check_x(x)
    _check_dtype(x)
    run_path = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    device = torch.device(config.device) if config.device else x.device
    x = x.to(device)
    n, p = x.shape
    objective = get_objective(config.method)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    checkpoint = _load_checkpoint(run_path, config, x) if resume else None

    if encoder is None:
        with forked_rng(generator, device):
            encoder = build_encoder(config.encoder, p, model.dim)
        encoder = encoder.to(device=device, dtype=x.dtype)
        z_ref = model.sample_prior((10_000,), generator=generator, dtype=x.dtype, device=device)
        encoder.set_standardization(x=x, z=z_ref)
    elif not isinstance(encoder, Encoder):
        raise TypeError(
            f"encoder: expected an smcwake.encoders.Encoder (or a kind such as 'flow'), "
            f"received {type(encoder).__name__}"
        )
    elif encoder.z_dim != model.dim or encoder.x_dim != p:
        raise ValueError(
            f"encoder: built for z_dim={encoder.z_dim}, x_dim={encoder.x_dim}; the model has "
            f"d={model.dim} and x has p={p}"
        )
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    dec_params = list(decoder.parameters()) if decoder is not None else []
    dec_optimizer = torch.optim.Adam(dec_params, lr=config.decoder_lr) if dec_params else None
    if decoder is not None and not dec_params:
        raise ValueError("decoder: has no parameters to learn")

    bank = None
    if config.estimator is not None:
        bank = ParticleBank(
            n,
            config.num_particles,
            model.dim,
            estimator=config.estimator,
            max_runs=config.max_runs,
            num_resampled=config.num_resampled,
            dtype=x.dtype,
            device=device,
        )
    chains = None
    if config.method == "msc":
        chains = model.sample_prior((n,), generator=generator, dtype=x.dtype, device=device)

    history: dict[str, list] = {
        k: []
        for k in (
            "step",
            "loss",
            "likelihood_evals",
            "simulations",
            "smc_runs",
            "runs_per_obs",
            "skipped_steps",
            "wall_time",
            "decoder_loss",
            "unmixed_runs",
        )
    }
    step, evals, sims, smc_runs, skipped, elapsed, unmixed = 0, 0, 0, 0, 0, 0.0, 0
    initial_next = 0  # the next observation of the initial SMC pass
    fingerprint = None  # the model's, for checkpoints (recomputed each time with a decoder)
    if checkpoint is not None:
        fingerprint = _check_model(checkpoint, model, x, decoder, run_path)
        try:
            encoder.load_state_dict(checkpoint["encoder"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            if decoder is not None:
                decoder.load_state_dict(checkpoint["decoder"])
                dec_optimizer.load_state_dict(checkpoint["decoder_optimizer"])
            if bank is not None:
                bank.load_state_dict(checkpoint["bank"])
            if chains is not None:
                chains = checkpoint["chains"].to(device)
            generator.set_state(checkpoint["generator"])
        except (RuntimeError, ValueError, KeyError, AttributeError, TypeError) as err:
            raise ValueError(
                f"checkpoint in {run_path} does not fit this model and encoder ({err}); use "
                "the model and encoder it was made with, or a new run_dir"
            ) from err
        history = checkpoint["history"]
        counters = checkpoint["counters"]
        step, evals, sims, smc_runs, skipped, elapsed, initial_next = counters[:7]
        unmixed = counters[7] if len(counters) > 7 else 0
        history.setdefault("unmixed_runs", [0] * len(history["step"]))
        if history["step"] and history["step"][-1] % config.log_every:
            for column in history.values():  # an end-of-run row; the resumed run logs on
                column.pop()
        logger.info("resumed from %s at step %d", run_path, step)

    def model_id() -> dict:
        nonlocal fingerprint
        if fingerprint is None or decoder is not None:
            fingerprint = model_fingerprint(model, x)
        return fingerprint

    def save() -> None:
        if run_path is None:
            return
        state = {
            "version": _CHECKPOINT_VERSION,
            "config": _comparable(config),
            "data": _fingerprint(x),
            "encoder": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "decoder": decoder.state_dict() if decoder is not None else None,
            "decoder_optimizer": dec_optimizer.state_dict() if dec_optimizer else None,
            "bank": bank.state_dict() if bank is not None else None,
            "chains": chains,
            "generator": generator.get_state(),
            "history": history,
            "counters": (step, evals, sims, smc_runs, skipped, elapsed, initial_next, unmixed),
            "model": model_id(),
        }
        _atomic_save(state, run_path / CHECKPOINT_NAME)
        tmp = run_path / f".{HISTORY_NAME}.tmp"
        tmp.write_text(json.dumps({"config": config.to_dict(), "history": history}, indent=1))
        os.replace(tmp, run_path / HISTORY_NAME)

    start = time.perf_counter() - elapsed
    refresh_size = min(config.refresh_size or config.batch_size, n)
    bad_in_row = 0
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=config.method,
        disable=not config.progress,
        dynamic_ncols=True,
    )
    stop_reason = None
    if overwrite and run_path is not None:
        _remove_run(run_path)
    with _Stop() as stop:
        if run_path is not None:
            model_id()  # before any SMC: a likelihood that fails here has cost nothing
        if bank is not None and initial_next < n:
            logger.info("initial SMC for %d observations (K=%d)", n, config.num_particles)
        while bank is not None and initial_next < n and stop.signum is None:
            chunk = torch.arange(
                initial_next, min(n, initial_next + config.smc_batch_size), device=device
            )
            e, r, u = _run_and_store(model, encoder, x, chunk, bank, config, generator, step)
            evals, smc_runs, initial_next = evals + e, smc_runs + r, int(chunk[-1]) + 1
            unmixed += u
            if initial_next == n or stop.signum is not None:
                save()  # the initial SMC is the costliest part of a run: keep it
        if stop.signum is not None:
            stop_reason = "signal"
        while step < config.steps and stop_reason is None:
            eligible = ~bank.excluded & bank.has_runs if bank is not None else None
            if bank is not None and step > 0 and step % config.refresh_every == 0:
                pool = torch.nonzero(~bank.excluded).flatten()
                pick = pool[
                    torch.randperm(pool.numel(), generator=generator, device=device)[:refresh_size]
                ]
                if decoder is not None and config.stale_after is not None:
                    bank.drop_older_than(step - config.stale_after)
                e, r, u = _run_and_store(model, encoder, x, pick, bank, config, generator, step)
                evals, smc_runs, unmixed = evals + e, smc_runs + r, unmixed + u
                eligible = ~bank.excluded & bank.has_runs
            pool = (
                torch.arange(n, device=device)
                if eligible is None
                else torch.nonzero(eligible).flatten()
            )
            empty = pool.numel() == 0
            if sync is not None:  # raise on every process, not on one while the others wait
                empty = sync.agree(empty)
            if empty:
                raise RuntimeError(
                    "no observation has a usable SMC run (all zero likelihood, unconverged or "
                    "unmixed); raise smc.max_stages or smc.num_mcmc_steps, or set "
                    "use_unconverged=True"
                )
            idx = pool[
                torch.randperm(pool.numel(), generator=generator, device=device)[
                    : config.batch_size
                ]
            ]
            ctx = Context(
                model,
                config.num_proposals,
                generator,
                bank,
                chains,
                config.runs_per_step,
                config.particles_per_step,
            )
            loss, obj_evals = objective(encoder, Batch(idx, x[idx]), ctx)
            evals += obj_evals
            if config.method == "sleep":
                sims += idx.numel() * config.num_proposals
            step += 1
            finite = _take_step(loss, encoder, optimizer, config.grad_clip, sync)
            if decoder is not None:
                dec_loss = _decoder_loss(
                    model, encoder, Batch(idx, x[idx]), config.decoder_proposals, generator
                )
                evals += idx.numel() * config.decoder_proposals
                finite &= _take_step(dec_loss, decoder, dec_optimizer, config.grad_clip, sync)
            if finite:
                bad_in_row = 0
            else:
                skipped += 1
                bad_in_row += 1
                logger.warning(
                    "step %d: non-finite loss or gradient (loss %s), step skipped (%d in a row)",
                    step,
                    float(loss.detach()),
                    bad_in_row,
                )
                if bad_in_row >= config.max_bad_steps:
                    bar.close()  # the last checkpoint (before the fault) is kept as it is
                    raise FloatingPointError(
                        f"{bad_in_row} consecutive non-finite losses at step {step}; the last "
                        "checkpoint is kept. Lower lr, check the model, or raise max_bad_steps."
                    )
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                row = {
                    "step": step,
                    "loss": float(loss.detach()),
                    "likelihood_evals": evals,
                    "simulations": sims,
                    "smc_runs": smc_runs,
                    "runs_per_obs": float(bank.num_runs.float().mean())
                    if bank is not None
                    else 0.0,
                    "skipped_steps": skipped,
                    "wall_time": time.perf_counter() - start,
                    "decoder_loss": float(dec_loss.detach()) if decoder is not None else None,
                    "unmixed_runs": unmixed,
                }
                for key, value in row.items():
                    history[key].append(value)
                bar.set_postfix(loss=f"{row['loss']:.3g}", runs=f"{row['runs_per_obs']:.1f}")
                if any(cb(step, encoder, row) for cb in callbacks or ()):
                    stop_reason = "callback"
            if config.max_evals is not None and evals >= config.max_evals:
                stop_reason = stop_reason or "max_evals"
            if stop.signum is not None:
                stop_reason = "signal"
            if sync is not None and sync.agree(stop_reason is not None):
                stop_reason = stop_reason or "another process stopped"
            elapsed = time.perf_counter() - start
            if stop_reason or step % config.checkpoint_every == 0:
                save()
            if stop_reason:
                break
    bar.close()
    elapsed = time.perf_counter() - start
    save()
    if stop_reason == "signal":
        logger.warning("interrupted at step %d; checkpoint written to %s", step, run_path)
        if stop.signum == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM)
        raise KeyboardInterrupt
    encoder.eval()
    return FitResult(encoder, history, bank, config)


def _load_checkpoint(run_path: Path | None, config: TrainConfig, x: Tensor) -> dict | None:
    if run_path is None:
        return None
    path = run_path / CHECKPOINT_NAME
    if not path.exists():
        logger.info("no checkpoint in %s; starting fresh", run_path)
        return None
    try:
        state = torch.load(path, map_location=x.device, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path} is unreadable ({err}); delete it to restart") from err
    if not isinstance(state, dict) or state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} is not an smcwake v{_CHECKPOINT_VERSION} checkpoint")
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"checkpoint {path} is incomplete (missing {missing}); delete it to restart"
        )
    if state["data"] != _fingerprint(x):
        raise ValueError(f"checkpoint {path} was made with different observations")
    mine = _comparable(config)
    diff = {k: (state["config"].get(k), v) for k, v in mine.items() if state["config"].get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} was made with other settings ({shown})")
    return state
