"""The training loop shared by every method: SGD steps interleaved with SMC refreshes.

``fit(model, x, method=...)`` is the short path. It

1. runs SMC for every observation (batched, ``smc_batch_size`` at a time) when the method is an
   SMC-Wake estimator, and stores the runs in a :class:`~smcwake.bank.ParticleBank`;
2. takes ``steps`` optimizer steps on the method's objective over minibatches of observations;
3. every ``refresh_every`` steps runs SMC again for ``refresh_size`` observations (one batch);
4. writes atomic checkpoints to ``run_dir`` every ``checkpoint_every`` steps, at the end, and on
   SIGINT/SIGTERM; ``resume=True`` continues a run exactly where it stopped.

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
from smcwake.encoders import ENCODER_KINDS, Encoder, build_encoder, check_support
from smcwake.model import Model, forked_rng
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
    "initial_encoder",
    "learning_rate",
    "bank_monitor",
    "LR_SCHEDULES",
    "CHECKPOINT_NAME",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
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
    kernel: str = "mixture+rwmh"
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


LR_SCHEDULES = ("constant", "cosine", "step")
"""Learning-rate schedules of :class:`TrainConfig` (after the linear warm-up)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. The defaults were chosen by a training ablation
    (docs/RESULTS.md): 4,000 steps with a cosine-decayed learning rate bring the encoder within
    0.02 C2ST of its own SMC's particles on a spike-and-slab model (from 0.06 at the old 2,000
    constant-rate steps), in 8.5 CPU minutes on one core for 100 observations in 2-D.

    Args:
        method: one of :data:`smcwake.objectives.OBJECTIVES`.
        steps: optimizer steps (4,000: at 2,000 the encoder was 0.03-0.06 C2ST short of its
            SMC's particles in the ablation; 4,000 with the cosine schedule came within 0.02).
        batch_size: observations per minibatch.
        num_particles: K, particles per SMC run.
        num_proposals: proposals per observation for the importance-sampling baselines (wake,
            defensive-wake, iwae, msc), samples for elbo, simulations per observation for sleep.
        refresh_every: steps between SMC refreshes (SMC-Wake methods).
        refresh_size: observations per refresh (default: batch_size).
        lr: Adam learning rate (the peak of the schedule).
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
            M * K for (a)).
        smc: SMC settings.
        smc_batch_size: observations per batched SMC call.
        use_unconverged: store SMC runs that stopped at max_stages (off: they are dropped).
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
            ``bank_forward_kl`` and ``bank_ess`` (see :func:`bank_monitor`); None: off.
        monitor_size: observations the signal is computed on (a fixed random subset).
        progress: show a progress bar.
        device: where to train (default: x's device).
    """

    method: str = "smc-wake-a"
    steps: int = 4000
    batch_size: int = 32
    num_particles: int = 1000
    num_proposals: int = 100
    refresh_every: int = 10
    refresh_size: int | None = None
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    encoder: str = "flow"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    support_transform: bool = True
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


def learning_rate(config: TrainConfig, step: int) -> float:
    """The encoder's learning rate at 0-based optimizer step ``step`` (see ``lr_schedule``).

    >>> config = TrainConfig(lr=1e-3, warmup_steps=100, lr_schedule="cosine", steps=1101)
    >>> [round(learning_rate(config, s) * 1e3, 3) for s in (0, 99, 600, 1100)]
    [0.01, 1.0, 0.5, 0.0]
    """
    warmup = config.warmup_steps
    if step < warmup:
        return config.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, config.steps - 1 - warmup))  # 0 -> 1 after warm-up
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if config.lr_schedule == "step":
        return config.lr * (0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0)
    return config.lr


def initial_encoder(
    model: Model, x: Tensor, config: TrainConfig, generator: torch.Generator
) -> Encoder:
    """The encoder :func:`fit` builds when none is given: ``config.encoder`` with
    ``config.encoder_options``, on the prior's support (``config.support_transform``),
    initialised from ``generator`` and standardized with x and 10,000 prior draws.

    Shapes: x [n, p] (the rows that set x's standardization; x's dtype and device).
    """
    options = dict(config.encoder_options)
    if config.support_transform:
        try:
            options["support"] = check_support(model.prior.support, model.dim)
        except ValueError as err:
            logger.warning("the encoder lives on all of R^d: %s", err)
    with forked_rng(generator, x.device):
        encoder = build_encoder(config.encoder, x.shape[1], model.dim, **options)
    encoder = encoder.to(device=x.device, dtype=x.dtype)
    z_ref = model.sample_prior((10_000,), generator=generator, dtype=x.dtype, device=x.device)
    encoder.set_standardization(x=x, z=z_ref)
    return encoder


def bank_monitor(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    bank: ParticleBank,
    idx: Tensor,
    *,
    num_particles: int = 256,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Held-out-free convergence signal: how far q(z | x) is from the bank's posteriors.

    For each observation i in ``idx`` with runs, draw S = ``num_particles`` particles z_s by
    weight from what the bank's estimator keeps (a sample of p(z | x_i)) and form
    l_s = log p(z_s | x_i) - log q(z_s | x_i), with log p(z | x_i) = log p(z, x_i) - log Zbar_i.
    Then

    - ``forward_kl`` = mean_i mean_s l_s, an estimate of KL(p || q) averaged over observations
      (the cross-entropy -E_p log q that training lowers, minus the posterior's entropy). It
      is offset by the error of log Zbar, which moves only when the bank does;
    - ``ess`` = mean_i 1 / mean_s exp(l_s), an estimate of 1 / E_p[p / q], the effective
      sample size per draw of q used as an importance proposal for p (1 when q = p; small when
      q misses mass that p has, which draws from q alone cannot see).

    The draws come from a generator seeded with ``seed`` at every call (the same random numbers
    each time, so successive values differ by q and the bank, not by the draw). Costs S
    likelihood and S encoder evaluations per observation.

    Shapes: x [n, p] (the whole dataset), idx [m] -> (forward_kl, ess, likelihood evaluations).
    """
    idx = idx[~bank.excluded[idx] & bank.has_runs[idx]]
    if idx.numel() == 0:
        return math.nan, math.nan, 0
    generator = torch.Generator(device=idx.device).manual_seed(seed)
    with torch.no_grad():
        view = bank.view(idx, num_samples=num_particles, generator=generator)
        keep = view.weights.sum(-1) > 0
        idx, z = idx[keep], view.z[keep]
        if idx.numel() == 0:
            return math.nan, math.nan, 0
        log_joint = model.log_joint(z, x[idx], idx).double()
        log_q = encoder.log_prob(z, x[idx]).double()
        ell = log_joint - bank.log_zbar[idx, None].to(log_joint) - log_q  # [m, S]
        log_mean_ratio = torch.logsumexp(ell, -1) - math.log(num_particles)
        forward_kl = float(ell.mean(-1).mean())
        ess = float(torch.exp(-log_mean_ratio).mean())
    return forward_kl, ess, int(z.shape[0] * z.shape[1])


def _monitor_due(config: TrainConfig, step: int) -> bool:
    """Whether the history row of ``step`` carries the convergence signal: the first row at or
    after each multiple of ``monitor_every``, and the last step."""
    every = config.monitor_every
    if every is None:
        return False
    return step == config.steps or step // every > (step - config.log_every) // every


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
) -> tuple[int, int]:
    """SMC for observations ``idx`` in batches; store the usable runs. Returns (evals, runs)."""
    evals = runs = 0
    opts = config.smc
    for start in range(0, idx.numel(), config.smc_batch_size):
        chunk = idx[start : start + config.smc_batch_size]
        with torch.no_grad():  # a learned likelihood must not record a graph here
            result = _smc(model, x[chunk], chunk, config, generator, encoder)
        evals += int(result.num_likelihood_evals.sum())
        bank.excluded[chunk[result.zero_likelihood]] = True
        usable = result.converged | (config.use_unconverged & ~result.zero_likelihood)
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
                "dropped %d SMC runs that did not reach tau=1 (max_stages=%d)",
                dropped,
                opts.max_stages,
            )
    return evals, runs


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
    **overrides: Any,
) -> FitResult:
    """Train an encoder q(z | x) on the observations ``x`` with one method.

    Args:
        model: the prior and likelihood.
        x: the dataset, [n, p].
        encoder: an :class:`~smcwake.encoders.Encoder`, or a kind for
            :func:`~smcwake.encoders.build_encoder` ("flow", "mdn", "gaussian", ...); by default
            ``config.encoder``. A built one (:func:`initial_encoder`) lives on the prior's
            support, is initialised from ``seed`` and standardized with x and 10,000 prior
            draws; a given one is used as it is.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields, e.g.
            ``fit(model, x, method="smc-wake-c", steps=500)``.
        run_dir: folder for checkpoints and ``history.json`` (created if missing).
        resume: continue from ``run_dir``'s checkpoint if there is one (same data and settings
            required, ``steps`` may grow; under the default cosine schedule a larger ``steps``
            stretches the schedule: the learning rate jumps back up at the resumed step).
        callbacks: called every ``log_every`` steps as ``cb(step, encoder, row)``; returning
            True stops training (a checkpoint is written).
        sync: for data-parallel training (see :mod:`smcwake.distributed`): averages gradients
            across processes and makes every process take the same skip and stop decisions.
        decoder: an ``nn.Module`` holding the learned parameters of the model's likelihood
            (e.g. a VAE decoder the log-likelihood reads). Each step it takes an Adam step on
            the importance-weighted bound with the encoder as proposal; SMC runs are stamped
            with their step and ``stale_after`` drops outdated ones.

    Trained enough? SMC-Wake runs record, every ``monitor_every`` steps, ``bank_ess`` and
    ``bank_forward_kl`` in the history (see :func:`bank_monitor`; no held-out data needed).
    Average each over its last five values. Below 0.5 ESS the encoder is not there yet: train
    longer (``resume=True`` with more ``steps``). At 0.65 or more, with ``bank_forward_kl``
    no longer falling, it is close to what the bank's SMC knows. In the training ablation of
    docs/RESULTS.md (three models), every checkpoint below 0.5 was at least 0.02 C2ST worse
    than the SMC's own particles; of those at 0.65 or more, 12 of 17 were within 0.02 and all
    within 0.055. The signal compares q with the bank, so it cannot see what the SMC missed,
    and its level depends on the model: read it as a trend, not as a certificate.

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
    device = torch.device(config.device) if config.device else x.device
    x = x.to(device)
    n, p = x.shape
    objective = get_objective(config.method)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
    checkpoint = _load_checkpoint(run_path, config, x) if resume and run_path else None

    if encoder is None:
        encoder = initial_encoder(model, x, config, generator)
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
            "bank_forward_kl",
            "bank_ess",
        )
    }
    step, evals, sims, smc_runs, skipped, elapsed = 0, 0, 0, 0, 0, 0.0
    initial_next = 0  # the next observation of the initial SMC pass
    if checkpoint is not None:
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
        step, evals, sims, smc_runs, skipped, elapsed, initial_next = checkpoint["counters"]
        if history["step"] and history["step"][-1] % config.log_every:
            for column in history.values():  # an end-of-run row; the resumed run logs on
                column.pop()
        logger.info("resumed from %s at step %d", run_path, step)

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
            "counters": (step, evals, sims, smc_runs, skipped, elapsed, initial_next),
        }
        _atomic_save(state, run_path / CHECKPOINT_NAME)
        tmp = run_path / ".history.json.tmp"
        tmp.write_text(json.dumps({"config": config.to_dict(), "history": history}, indent=1))
        os.replace(tmp, run_path / "history.json")

    start = time.perf_counter() - elapsed
    refresh_size = min(config.refresh_size or config.batch_size, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    monitored = order[: config.monitor_size].to(device)  # fixed: comparable along the run
    bad_in_row = 0
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=config.method,
        disable=not config.progress,
        dynamic_ncols=True,
    )
    stop_reason = None
    with _Stop() as stop:
        if bank is not None and initial_next < n:
            logger.info("initial SMC for %d observations (K=%d)", n, config.num_particles)
        while bank is not None and initial_next < n and stop.signum is None:
            chunk = torch.arange(
                initial_next, min(n, initial_next + config.smc_batch_size), device=device
            )
            e, r = _run_and_store(model, encoder, x, chunk, bank, config, generator, step)
            evals, smc_runs, initial_next = evals + e, smc_runs + r, int(chunk[-1]) + 1
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
                e, r = _run_and_store(model, encoder, x, pick, bank, config, generator, step)
                evals, smc_runs = evals + e, smc_runs + r
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
                    "no observation has a usable SMC run (all zero likelihood or unconverged); "
                    "raise smc.max_stages or set use_unconverged=True"
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
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step - 1)
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
                kl_bank = ess_bank = None
                if bank is not None and _monitor_due(config, step):
                    kl_bank, ess_bank, e = bank_monitor(
                        model, encoder, x, bank, monitored, seed=config.seed
                    )
                    evals += e
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
                    "bank_forward_kl": kl_bank,
                    "bank_ess": ess_bank,
                }
                rows = len(history["step"])
                for key, value in row.items():  # a column missing from an older checkpoint
                    history.setdefault(key, [None] * rows).append(value)
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


def _load_checkpoint(run_path: Path, config: TrainConfig, x: Tensor) -> dict | None:
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
