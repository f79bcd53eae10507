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

``fit`` is a short loop over pieces that stay importable: :mod:`smcwake.loop` (the
:class:`~smcwake.loop.TrainState`, :func:`~smcwake.loop.init_training`,
:func:`~smcwake.loop.train_step`) and :mod:`smcwake.checkpoint` (run folders and checkpoints).
What a method needs (a bank, chain states, simulations) comes from its declaration,
:class:`smcwake.objectives.Method`.

Trained enough? SMC-Wake runs record, every ``monitor_every`` steps, ``bank_ess`` and
``bank_forward_kl`` in the history (:func:`~smcwake.loop.bank_monitor`; no held-out data).
Average each over its last five values. Below 0.5 ESS the encoder is not there yet: train
longer (``resume=True`` with more ``steps``). At 0.65 or more, with ``bank_forward_kl``
no longer falling, it is close to what the bank's SMC knows. In the training ablation of
docs/RESULTS.md (three models), every checkpoint below 0.5 was at least 0.02 C2ST worse
than the SMC's own particles; of those at 0.65 or more, 12 of 17 were within 0.02 and all
within 0.055. The signal compares q with the bank, so it cannot see what the SMC missed,
and its level depends on the model: read it as a trend, not as a certificate.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from smcwake.bank import ParticleBank
from smcwake.checkpoint import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    Checkpointer,
    check_model,
    check_run_dir,
    load_checkpoint,
    remove_run,
    restore_state,
)
from smcwake.encoders import ENCODER_KINDS, Encoder
from smcwake.loop import (
    GAP_MEDIANS,
    GAP_WARNING,
    Synchronizer,
    TrainState,
    bank_monitor,
    encoder_gaps,
    flag_gaps,
    gap_level,
    init_training,
    initial_encoder,
    initial_smc,
    learning_rate,
    record_history,
    train_step,
)
from smcwake.model import Model
from smcwake.objectives import get_method, get_objective
from smcwake.posterior import Posterior
from smcwake.smc.options import SMCOptions

__all__ = [
    "SMCOptions",
    "TrainConfig",
    "FitResult",
    "Synchronizer",
    "TrainState",
    "fit",
    "init_training",
    "train_step",
    "check_run_dir",
    "initial_encoder",
    "learning_rate",
    "bank_monitor",
    "LR_SCHEDULES",
    "CHECKPOINT_NAME",
    "HISTORY_NAME",
]

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.float64)
"""Floating-point types fit trains in (x's dtype); encoders and SMC need float32 or float64."""


LR_SCHEDULES = ("constant", "cosine", "step")
"""Learning-rate schedules of :class:`TrainConfig` (after the linear warm-up)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. The defaults were chosen by a training ablation
    (docs/RESULTS.md): a cosine-decayed learning rate and enough steps bring the encoder within
    0.02 C2ST of its own SMC's particles on two-moons and a spike-and-slab model (from 0.03 and
    0.06 at the old 2,000 constant-rate steps); then training-speed comparisons set how a step
    spends its time and how fast it learns: 4,500 steps of a peak learning rate of 1e-2,
    scoring 32 particles per observation, with an SMC refresh every 100 steps, reach the
    forward KL of the earlier settings (0.033 nats on a 10-d box-prior model; paired
    difference to 6,000 steps of 64 particles at lr 1e-3 refreshed every 25: -0.0001 +- 0.0015)
    in 4.8 CPU minutes on one thread against 15.8, and on two-moons and spike-slab score a
    lower C2ST (0.502 and 0.514, floors 0.498 and 0.511) and a third of the forward KL in 2.0
    and 1.6 CPU minutes against 7.0 and 4.9.

    Args:
        method: one of :data:`smcwake.objectives.METHOD_NAMES`, or a name registered with
            :func:`smcwake.objectives.register_method`.
        steps: optimizer steps (at 2,000 the encoder was 0.03-0.06 C2ST short of its SMC's
            particles in the ablation; 4,000 with the cosine schedule came within 0.02; at the
            peak rate of 1e-2, 3,000 steps left the 10-d model at 0.037 nats and 4,500 reached
            0.033).
        batch_size: observations per minibatch.
        num_particles: K, particles per SMC run.
        num_proposals: proposals per observation for the importance-sampling baselines (wake,
            defensive-wake, iwae, msc), samples for elbo, simulations per observation for sleep.
        refresh_every: steps between SMC refreshes (SMC-Wake methods). Every 100: every 150
            saved 12% of the CPU time and cost accuracy (0.040 against 0.037 nats at 3,000 steps
            on the 10-d model), and none after the first pass left it at 0.080: the encoder
            needs many independent runs per observation, not more steps on the same ones.
        refresh_size: observations per refresh (default: batch_size).
        lr: Adam learning rate (the peak of the schedule). 1e-2: at 3,000 steps of 32
            particles the 10-d model ended at 0.041, 0.039, 0.037 and 0.037 nats with 3e-3,
            5e-3, 1e-2 and 2e-2.
        lr_schedule: "cosine" (the default: from ``lr`` down to 0 at the last step, after
            the warm-up), "constant" or "step" (``lr``, then a tenth from half of the
            post-warm-up steps, a hundredth from three quarters). A function of the step and
            ``steps``: the last steps average out the noise of the SMC-Wake gradient, which a
            constant rate leaves in the final weights (its C2ST moved by +-0.02 between
            checkpoints 1,000 steps apart).
        warmup_steps: the learning rate rises linearly from ``lr / warmup_steps`` to ``lr``
            over these first steps (0: no warm-up).
        seed: seeds every random choice of the run.
        encoder: kind for :func:`smcwake.encoders.build_encoder` when no encoder is given.
        encoder_options: keyword options for :func:`smcwake.encoders.build_encoder` (e.g.
            ``{"transforms": 3, "hidden": (64, 64)}``) when no encoder is given.
        support_transform: build the encoder with the prior's support
            (``support=model.prior.support``): q then lives on the support, its draws never
            leave it, and it is standardized in the unconstrained space. A support that
            ``torch.distributions.biject_to`` cannot map onto falls back to R^d with a warning.
        max_runs: runs kept per observation by estimators (a) and (b).
        num_resampled: particles kept per run by estimator (b).
        runs_per_step: estimator (a) draws this many runs ~ Cat(omega) per step (None: all);
            used only when ``particles_per_step`` is None.
        particles_per_step: SMC-Wake methods score this many particles per observation and
            step, drawn in proportion to the estimator's weights from everything it keeps
            (same expected gradient; the encoder's cost per step no longer grows with the
            bank). None: every weighted particle (M * R per observation for (b), up to
            M * K for (a)). 32 (the default): at 32 particles the flow's cost per step is
            mostly fixed overhead, and spreading the same 1,024 particles over 64 observations
            of 16 was slightly slower and no better (0.043 against 0.041 nats on the 10-d
            model; docs/RESULTS.md, "Training speed").
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
        monitor_every: SMC-Wake methods: at the first history row of every ``monitor_every``
            steps (and the last), record the held-out-free convergence signal
            ``bank_forward_kl`` and ``bank_ess`` (:func:`~smcwake.loop.bank_monitor`); None: off.
        monitor_size: observations the signal is computed on (a fixed random subset).
        progress: show a progress bar.
        device: where to train (default: x's device).
    """

    method: str = "smc-wake-a"
    steps: int = 4500
    batch_size: int = 32
    num_particles: int = 1000
    num_proposals: int = 100
    refresh_every: int = 100
    refresh_size: int | None = None
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    encoder: str = "flow"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    support_transform: bool = True
    max_runs: int = 50
    num_resampled: int = 100
    runs_per_step: int | None = 4
    particles_per_step: int | None = 32
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
    monitor_every: int | None = 100
    monitor_size: int = 64
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
            "warmup_steps",
            "monitor_size",
        ):
            value = getattr(self, name)
            low = 0 if name in ("steps", "warmup_steps") else 1
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
            ("monitor_every", 1),
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule: expected one of {list(LR_SCHEDULES)}, received {self.lr_schedule!r}"
            )
        if not isinstance(self.encoder_options, dict) or "support" in self.encoder_options:
            raise TypeError(
                "encoder_options: expected a dict of build_encoder options (the support is set "
                f"by support_transform), received {self.encoder_options!r}"
            )
        if isinstance(self.smc, dict):
            object.__setattr__(self, "smc", SMCOptions(**self.smc))
        if not isinstance(self.smc, SMCOptions):
            raise TypeError(
                f"smc: expected SMCOptions or a dict of its fields, received {self.smc!r}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` to its fields, checked as a new config is.

        An unknown name raises a ``TypeError`` that lists the closest field names (a misspelt
        option of :func:`fit` would otherwise be a bare "unexpected keyword argument").
        """
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = [name for name in changes if name not in fields]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, fields, n=3)
                hints.append(
                    f"{name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else "")
                )
            raise TypeError(
                f"unknown training option(s) {', '.join(hints)}; the options are the fields of "
                "TrainConfig"
            )
        return dataclasses.replace(self, **changes)

    @property
    def estimator(self) -> str | None:
        """The SMC-Wake estimator letter, or None for a baseline."""
        return get_method(self.method).estimator

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FitResult(NamedTuple):
    """What :func:`fit` returns; ``result.posterior`` is the trained posterior to keep.

    ``result.posterior.save(path)`` (or ``result.save(path)``) writes it to one file that
    :func:`smcwake.load` reads in a fresh process; ``result.posterior.refine(x)`` runs an exact
    SMC for given observations started from the encoder.
    """

    encoder: Encoder
    history: dict[str, list]  # columns: step, loss, likelihood_evals, simulations, smc_runs, ...
    bank: ParticleBank | None
    config: TrainConfig
    model: Model | None = None
    #: [n] per observation, the forward KL from its own SMC particles to the trained q(z | x)
    #: (:func:`~smcwake.loop.encoder_gaps`; NaN where not measured; None without a bank)
    encoder_gaps: Tensor | None = None

    @property
    def posterior(self) -> Posterior:
        """The trained encoder with the model it was fitted to (see :class:`Posterior`)."""
        return Posterior(self.encoder, self.model)

    def save(self, path: str | os.PathLike) -> Path:
        """``self.posterior.save(path)``: the trained posterior (not the training state)."""
        return self.posterior.save(path)


Callback = Callable[[int, Encoder, dict], bool | None]


def _check_dtype(x: Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"x: fit trains in x's dtype, which must be torch.float32 or torch.float64; "
            f"received {x.dtype}. Convert it first, e.g. x.float()"
        )


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


def _stop_reason(
    state: TrainState, stop: _Stop, sync: Synchronizer | None, reason: str | None
) -> str | None:
    """Why training stops after this step (None: it goes on); the same on every process."""
    if state.config.max_evals is not None and state.evals >= state.config.max_evals:
        reason = reason or "max_evals"
    if stop.signum is not None:
        reason = "signal"
    if sync is not None and sync.agree(reason is not None):
        reason = reason or "another process stopped"
    return reason


def _start(
    model: Model,
    x: Tensor,
    config: TrainConfig,
    run_path: Path | None,
    resume: bool,
    encoder: Encoder | None,
    decoder: torch.nn.Module | None,
) -> tuple[TrainState, Checkpointer]:
    """The state before the first step, or the checkpoint's when resuming, and the writer of
    checkpoints. Every check of a resumed checkpoint (data, settings, model) happens here.

    Shapes: x [n, p].
    """
    checkpoint = load_checkpoint(run_path, config, x) if resume else None
    state = init_training(model, x, config, encoder=encoder, decoder=decoder)
    save = Checkpointer(run_path, model, x, decoder)
    if checkpoint is not None:
        save.fingerprint = check_model(checkpoint, model, x, decoder, run_path)
        restore_state(state, checkpoint, run_path)
        logger.info("resumed from %s at step %d", run_path, state.step)
    return state, save


def _leave(signum: int | None, step: int, run_path: Path | None) -> None:
    """Raise what an interrupted run raises once its checkpoint is written."""
    logger.warning("interrupted at step %d; checkpoint written to %s", step, run_path)
    if signum == signal.SIGTERM:
        raise SystemExit(128 + signal.SIGTERM)
    raise KeyboardInterrupt


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
            ``config.encoder``. A built one (:func:`initial_encoder`) lives on the prior's
            support, is initialised from ``seed`` and standardized with x and 10,000 prior
            draws, and once the first SMC pass is done, with the pooled posteriors of that
            pass instead (:func:`~smcwake.loop.standardize_from_bank`: posteriors far in the
            prior's tails or much narrower than a vague prior then sit where the flow acts);
            a given one is used as it is.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields, e.g.
            ``fit(model, x, method="smc-wake-c", steps=500)``.
        run_dir: folder for checkpoints and ``history.json`` (created if missing). A folder
            that already holds a run is refused unless ``resume`` or ``overwrite`` is set.
        resume: continue from ``run_dir``'s checkpoint if there is one (same data, settings
            and model required; ``steps`` may grow, stretching a cosine schedule); needs
            ``run_dir``. The model is checked by its fingerprint
            (:func:`smcwake.model.model_fingerprint`); a checkpoint from before fingerprints
            is resumed with a logged warning.
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

    Trained enough? See the rule in :mod:`smcwake.train` (``bank_ess``, ``bank_forward_kl``).

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
    config = (config or TrainConfig()).replace(**overrides)
    model.check_x(x)
    _check_dtype(x)
    run_path = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    device = torch.device(config.device) if config.device else x.device
    x = x.to(device)
    state, save = _start(model, x, config, run_path, resume, encoder, decoder)
    if sync is not None:  # each process holds a shard of the bank: keep the prior's moments
        state.restandardize = False
    start = time.perf_counter() - state.elapsed
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(config.seed))
    monitored = order[: config.monitor_size].to(device)  # fixed: comparable along the run
    show = {"desc": config.method, "disable": not config.progress, "dynamic_ncols": True}
    bar = tqdm(total=config.steps, initial=state.step, **show)
    if overwrite and run_path is not None:
        remove_run(run_path)
    with _Stop() as stop, bar:  # on FloatingPointError the last checkpoint is kept as it is
        if run_path is not None:
            save.model_id()  # before any SMC: a likelihood that fails here has cost nothing
        initial_smc(state, model, x, save, lambda: stop.signum is not None)
        stop_reason = "signal" if stop.signum is not None else None
        while state.step < config.steps and stop_reason is None:
            losses = train_step(state, model, x, sync)
            bar.update(1)
            if state.step % config.log_every == 0 or state.step == config.steps:
                row = record_history(state, model, x, losses, monitored, start)
                bar.set_postfix(loss=f"{row['loss']:.3g}", runs=f"{row['runs_per_obs']:.1f}")
                if any(cb(state.step, state.encoder, row) for cb in callbacks or ()):
                    stop_reason = "callback"
            stop_reason = _stop_reason(state, stop, sync, stop_reason)
            state.elapsed = time.perf_counter() - start
            if stop_reason or state.step % config.checkpoint_every == 0:
                save(state)
    state.elapsed = time.perf_counter() - start
    save(state)
    if stop_reason == "signal":
        _leave(stop.signum, state.step, run_path)
    state.encoder.eval()
    gaps = None
    if state.bank is not None and sync is None:  # a process of a parallel fit holds a shard
        gaps = encoder_gaps(model, state.encoder, x, state.bank, seed=config.seed)
        _warn_gaps(gaps)
    return FitResult(state.encoder, state.history, state.bank, config, model, gaps)


def _warn_gaps(gaps: Tensor) -> None:
    """Log a warning naming the observations whose encoder answer is far from their particles."""
    level = gap_level(gaps)
    flagged = torch.nonzero(flag_gaps(gaps, level)).flatten()
    if flagged.numel() == 0:
        return
    worst = int(flagged[gaps[flagged].argmax()])
    first = flagged[:5].tolist()
    logger.warning(
        "the trained encoder is far from its own SMC particles for %d of %d observations "
        "(forward KL above %.3g nats, the larger of %g and %g times the median; first: %s; "
        "worst: %d, %.3g nats; all values in FitResult.encoder_gaps): q(z | x) may be wrong for "
        "them. posterior.refine(x[idx]) or run_smc(model, x[idx]) gives exact answers; more "
        "steps, or an embedding of x that resolves what sets them apart, may close the gap",
        flagged.numel(),
        gaps.numel(),
        level,
        GAP_WARNING,
        GAP_MEDIANS,
        first,
        worst,
        float(gaps[worst]),
    )
