"""The pieces of the training loop under :func:`smcwake.fit`, usable to write your own loop.

:func:`init_training` makes a :class:`TrainState` (the encoder, its optimizer, the generator,
what the method keeps: a particle bank or chain states, the history and the run's counters);
:func:`initial_smc` fills the bank; :func:`train_step` takes one optimizer step (with an SMC
refresh when one is due). ``fit`` adds the run folder, checkpoints, signals, callbacks and the
progress bar around them::

    state = init_training(model, x, config)
    initial_smc(state, model, x, save=lambda state: None)
    while state.step < config.steps:
        loss, decoder_loss = train_step(state, model, x)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from smcwake._rng import forked_rng
from smcwake.bank import ParticleBank
from smcwake.encoders import Encoder, build_encoder, check_support
from smcwake.model import Model
from smcwake.objectives import Batch, Context, get_method
from smcwake.smc.kernels import get_kernel
from smcwake.smc.sampler import run_smc
from smcwake.smc.unconstrained import choose_space, unconstrained_encoder

if TYPE_CHECKING:
    from smcwake.train import TrainConfig

__all__ = [
    "HISTORY_COLUMNS",
    "Synchronizer",
    "TrainState",
    "bank_monitor",
    "encoder_gaps",
    "flag_gaps",
    "gap_level",
    "GAP_MEDIANS",
    "GAP_WARNING",
    "init_training",
    "initial_encoder",
    "initial_smc",
    "learning_rate",
    "record_history",
    "standardize_from_bank",
    "train_step",
]

logger = logging.getLogger(__name__)


class Synchronizer(Protocol):
    """What :func:`fit` needs from a data-parallel backend; a no-op when training alone."""

    def agree(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (a collective call)."""
        ...

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Replace each gradient of ``module`` by its mean over processes (a collective call)."""
        ...


HISTORY_COLUMNS = (
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
    "bank_forward_kl",
    "bank_ess",
)
"""The columns of :attr:`smcwake.train.FitResult.history`, one row every ``log_every`` steps."""


@dataclass(eq=False)
class TrainState:
    """Everything a training run changes from step to step; a checkpoint stores all of it.

    Made by :func:`init_training`, advanced by :func:`train_step`, written and read by
    :func:`smcwake.checkpoint.save_checkpoint` / :func:`~smcwake.checkpoint.restore_state`.
    The counters are cumulative over the run, a resumed one included.

    Shapes: chains [n, d] (methods that keep chain states; else None).
    """

    config: TrainConfig
    encoder: Encoder
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    bank: ParticleBank | None = None
    chains: Tensor | None = None
    decoder: torch.nn.Module | None = None
    decoder_optimizer: torch.optim.Optimizer | None = None
    history: dict[str, list] = field(default_factory=lambda: {k: [] for k in HISTORY_COLUMNS})
    step: int = 0
    """Optimizer steps taken (skipped ones included)."""
    evals: int = 0
    """Likelihood evaluations (SMC, objectives, decoder bound, convergence signal)."""
    simulations: int = 0
    """Simulations drawn by methods that declare ``simulates``."""
    smc_runs: int = 0
    """SMC runs stored in the bank."""
    skipped: int = 0
    """Steps skipped for a non-finite loss or gradient."""
    elapsed: float = 0.0
    """Seconds of training, over every session of a resumed run."""
    restandardize: bool = False
    """Set the encoder's z standardization from the first SMC pass when it completes (an
    encoder built by :func:`initial_encoder`; one given by the user is used as it is)."""
    initial_next: int = 0
    """The next observation of the initial SMC pass (n once it is done)."""
    unmixed: int = 0
    """SMC runs that reached tau = 1 with particles that did not decorrelate."""
    bad_in_row: int = 0
    """Consecutive skipped steps (not checkpointed: a resumed run starts at 0)."""


def init_training(
    model: Model,
    x: Tensor,
    config: TrainConfig,
    *,
    encoder: Encoder | None = None,
    decoder: torch.nn.Module | None = None,
) -> TrainState:
    """The state of a run before its first step: encoder, optimizers, and what the method keeps.

    The generator is seeded with ``config.seed``; an encoder that is not given is built by
    :func:`initial_encoder` from it. A method that declares a bank
    (:attr:`smcwake.objectives.Method.estimator`) gets an empty
    :class:`~smcwake.bank.ParticleBank`, one that declares chains gets prior draws. Raises
    ``TypeError`` / ``ValueError`` for an encoder that is not one or does not fit the model, and
    a decoder without parameters.

    Shapes: x [n, p] (on the device and in the dtype of the run).
    """
    n, p = x.shape
    method = get_method(config.method)
    generator = torch.Generator(device=x.device).manual_seed(config.seed)
    built = encoder is None
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
    bank = chains = None
    if method.estimator is not None:
        bank = ParticleBank(
            n,
            config.num_particles,
            model.dim,
            estimator=method.estimator,
            max_runs=config.max_runs,
            num_resampled=config.num_resampled,
            dtype=x.dtype,
            device=x.device,
        )
    if method.chains:
        chains = model.sample_prior((n,), generator=generator, dtype=x.dtype, device=x.device)
    state = TrainState(config, encoder, optimizer, generator, bank, chains, decoder, dec_optimizer)
    state.restandardize = built
    return state


def initial_smc(
    state: TrainState,
    model: Model,
    x: Tensor,
    save: Callable[[TrainState], None],
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Run SMC for every observation not yet done, ``smc_batch_size`` at a time, into the bank.

    Calls ``save(state)`` once the pass is complete or ``stopped()`` is True (the initial SMC
    is the costliest part of a run: it is kept). Nothing to do without a bank. Shapes: x [n, p].
    """
    n = x.shape[0]
    if state.bank is not None and state.initial_next < n:
        logger.info("initial SMC for %d observations (K=%d)", n, state.config.num_particles)
    while state.bank is not None and state.initial_next < n and not stopped():
        end = min(n, state.initial_next + state.config.smc_batch_size)
        chunk = torch.arange(state.initial_next, end, device=x.device)
        _run_and_store(state, model, x, chunk)
        state.initial_next = int(chunk[-1]) + 1
        if state.initial_next == n and state.restandardize and state.step == 0:
            draws = torch.Generator(device=x.device).manual_seed(state.config.seed + 1)
            standardize_from_bank(state.encoder, state.bank, generator=draws)
        if state.initial_next == n or stopped():
            save(state)


STANDARDIZATION_DRAWS = 20_000
"""Particles pooled over the observations to set the encoder's z standardization."""


def standardize_from_bank(
    encoder: Encoder, bank: ParticleBank, *, generator: torch.Generator | None = None
) -> bool:
    """Set ``encoder``'s z location and scale from the bank's posteriors, pooled over observations.

    Each observation with a usable run contributes the same number of draws from its
    posterior (about :data:`STANDARDIZATION_DRAWS` in all), so the buffers are the moments of
    the aggregate posterior of the dataset. For data drawn from the model this is close to the
    prior's moments, which :func:`initial_encoder` uses before any SMC has run; where the
    posteriors sit far out in the prior's tails, or are much narrower than a vague prior, it
    puts them where the encoder's flow acts (a spline flow is the identity outside [-5, 5]
    standardized units) and at unit scale. Returns False (buffers unchanged, with a logged
    warning if the particles could not be used) when no observation has a usable run.
    """
    idx = torch.nonzero(bank.has_runs & ~bank.excluded).flatten()
    if idx.numel() == 0:
        return False
    per_row = max(10, min(bank.num_particles, math.ceil(STANDARDIZATION_DRAWS / idx.numel())))
    view = bank.view(idx, num_samples=per_row, generator=generator)
    weights = (view.weights > 0).to(view.z.dtype)  # every usable observation counts the same
    if not bool(weights.any()):
        return False
    try:
        encoder.set_standardization(
            z=view.z.reshape(-1, view.z.shape[-1]), z_weights=weights.flatten()
        )
    except ValueError as err:  # e.g. particles outside the encoder's support
        logger.warning("the encoder keeps the prior's standardization: %s", err)
        return False
    return True


def train_step(
    state: TrainState,
    model: Model,
    x: Tensor,
    sync: Synchronizer | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One optimizer step of the method's objective (after an SMC refresh when one is due).

    Draws a minibatch of ``batch_size`` observations among those with a usable SMC run (all of
    them for a method without a bank), evaluates the objective, and steps the encoder (and the
    decoder on its importance-weighted bound) unless the loss or the gradient is non-finite,
    which is counted; ``max_bad_steps`` of those in a row raise ``FloatingPointError``. Updates
    ``state`` in place and returns (loss, decoder loss or None).

    Shapes: x [n, p].
    """
    config, bank, generator = state.config, state.bank, state.generator
    method = get_method(config.method)
    if bank is not None and state.step > 0 and state.step % config.refresh_every == 0:
        _refresh(state, model, x)
    if bank is None:
        pool = torch.arange(x.shape[0], device=x.device)
    else:
        pool = torch.nonzero(~bank.excluded & bank.has_runs).flatten()
    empty = pool.numel() == 0
    if sync is not None:  # raise on every process, not on one while the others wait
        empty = sync.agree(empty)
    if empty:
        raise RuntimeError(
            "no observation has a usable SMC run (all zero likelihood, unconverged or "
            "unmixed); raise smc.max_stages or smc.num_mcmc_steps, or set "
            "use_unconverged=True"
        )
    pick = torch.randperm(pool.numel(), generator=generator, device=x.device)
    idx = pool[pick[: config.batch_size]]
    ctx = Context(
        model,
        config.num_proposals,
        generator,
        bank,
        state.chains,
        config.runs_per_step,
        config.particles_per_step,
    )
    loss, obj_evals = method.objective(state.encoder, Batch(idx, x[idx]), ctx)
    state.evals += obj_evals
    if method.simulates:
        state.simulations += idx.numel() * config.num_proposals
    state.step += 1
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(config, state.step - 1)
    finite = _take_step(loss, state.encoder, state.optimizer, config.grad_clip, sync)
    dec_loss = None
    if state.decoder is not None:
        dec_loss = _decoder_loss(
            model, state.encoder, Batch(idx, x[idx]), config.decoder_proposals, generator
        )
        state.evals += idx.numel() * config.decoder_proposals
        finite &= _take_step(
            dec_loss, state.decoder, state.decoder_optimizer, config.grad_clip, sync
        )
    _count_skipped(state, finite, loss)
    return loss, dec_loss


def _refresh(state: TrainState, model: Model, x: Tensor) -> None:
    """New SMC runs for ``refresh_size`` random observations that are not excluded."""
    config, bank = state.config, state.bank
    pool = torch.nonzero(~bank.excluded).flatten()
    size = min(config.refresh_size or config.batch_size, x.shape[0])
    pick = torch.randperm(pool.numel(), generator=state.generator, device=x.device)
    if state.decoder is not None and config.stale_after is not None:
        bank.drop_older_than(state.step - config.stale_after)
    _run_and_store(state, model, x, pool[pick[:size]])


def _count_skipped(state: TrainState, finite: bool, loss: Tensor) -> None:
    """Count a skipped step; raise once ``max_bad_steps`` were skipped in a row."""
    if finite:
        state.bad_in_row = 0
        return
    state.skipped += 1
    state.bad_in_row += 1
    logger.warning(
        "step %d: non-finite loss or gradient (loss %s), step skipped (%d in a row)",
        state.step,
        float(loss.detach()),
        state.bad_in_row,
    )
    if state.bad_in_row >= state.config.max_bad_steps:
        raise FloatingPointError(
            f"{state.bad_in_row} consecutive non-finite losses at step {state.step}; the last "
            "checkpoint is kept. Lower lr, check the model, or raise max_bad_steps."
        )


def record_history(
    state: TrainState,
    model: Model,
    x: Tensor,
    losses: tuple[Tensor, Tensor | None],
    monitored: Tensor,
    start: float,
) -> dict[str, Any]:
    """Append this step's row to the history (with the convergence signal when due); return it.

    ``losses`` is what :func:`train_step` returned, ``start`` the run's start on
    ``time.perf_counter``'s clock. Shapes: x [n, p], monitored [m] (the observations of the
    convergence signal, :func:`bank_monitor`).
    """
    config, bank = state.config, state.bank
    kl_bank = ess_bank = None
    if bank is not None and _monitor_due(config, state.step):
        kl_bank, ess_bank, e = bank_monitor(
            model, state.encoder, x, bank, monitored, seed=config.seed
        )
        state.evals += e
    loss, dec_loss = losses
    row = {
        "step": state.step,
        "loss": float(loss.detach()),
        "likelihood_evals": state.evals,
        "simulations": state.simulations,
        "smc_runs": state.smc_runs,
        "runs_per_obs": float(bank.num_runs.float().mean()) if bank is not None else 0.0,
        "skipped_steps": state.skipped,
        "wall_time": time.perf_counter() - start,
        "decoder_loss": float(dec_loss.detach()) if dec_loss is not None else None,
        "unmixed_runs": state.unmixed,
        "bank_forward_kl": kl_bank,
        "bank_ess": ess_bank,
    }
    rows = len(state.history["step"])
    for key, value in row.items():  # a column missing from an older checkpoint
        state.history.setdefault(key, [None] * rows).append(value)
    return row


def _smc(model: Model, x: Tensor, rows: Tensor, config: TrainConfig, generator, encoder: Encoder):
    opts = config.smc  # an encoder kernel is built with the encoder being trained
    # the coordinates are chosen from the kernel's name: in u, the encoder's density is in u too
    space = choose_space(opts.space, model, opts.kernel)
    if space == "unconstrained" and isinstance(opts.kernel, str):
        encoder = unconstrained_encoder(encoder, model)
    kernel = get_kernel(opts.kernel, opts.num_mcmc_steps, encoder=encoder)
    options = replace(opts, kernel=kernel, space=space)
    return run_smc(model, x, config.num_particles, options=options, generator=generator, rows=rows)


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

    >>> from smcwake import TrainConfig
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
    initialised from ``generator`` and standardized with x and 10,000 prior draws (``fit``
    re-sets z's standardization from the first SMC pass, :func:`standardize_from_bank`).

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


def _gap_terms(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    bank: ParticleBank,
    idx: Tensor,
    num_particles: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per observation of ``idx`` with runs: the mean of l_s = log p(z_s | x_i) -
    log q(z_s | x_i) over S = ``num_particles`` draws z_s from the bank, and log mean_s
    exp(l_s) (see :func:`bank_monitor`).

    Shapes: idx [m] -> (the observations kept [m'], forward KL [m'], log mean ratio [m']).
    """
    idx = idx[~bank.excluded[idx] & bank.has_runs[idx]]
    empty = torch.zeros(0, dtype=torch.float64, device=idx.device)
    if idx.numel() == 0:
        return idx, empty, empty
    with torch.no_grad():
        view = bank.view(idx, num_samples=num_particles, generator=generator)
        keep = view.weights.sum(-1) > 0
        idx, z = idx[keep], view.z[keep]
        if idx.numel() == 0:
            return idx, empty, empty
        log_joint = model.log_joint(z, x[idx], idx).double()
        log_q = encoder.log_prob(z, x[idx]).double()
        ell = log_joint - bank.log_zbar[idx, None].to(log_joint) - log_q  # [m, S]
        log_mean_ratio = torch.logsumexp(ell, -1) - math.log(num_particles)
    return idx, ell.mean(-1), log_mean_ratio


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
    generator = torch.Generator(device=idx.device).manual_seed(seed)
    kept, kl, log_mean_ratio = _gap_terms(model, encoder, x, bank, idx, num_particles, generator)
    if kept.numel() == 0:
        return math.nan, math.nan, 0
    return float(kl.mean()), float(torch.exp(-log_mean_ratio).mean()), kept.numel() * num_particles


GAP_WARNING = 1.0
"""Forward KL (nats) from an observation's own SMC particles to q(z | x) above which
:func:`flag_gaps` flags it, when also above ``GAP_MEDIANS`` times the median observation's.

On default fits whose encoders matched their particles (1-d half-normal scale, 2-d Gaussian,
5-d Beta-binomial, 10-d box; 80 to 300 observations) the per-observation values had medians of
0.001 to 0.015 nats and maxima of 0.06 to 0.32; the one observation whose encoder answer was
wrong (a half-normal scale whose data were 14 times smaller than any other's, its q centred 46
posterior standard deviations away) stood at 14.5 nats. The relative condition keeps many
dimensions, where every observation's KL is larger, from flagging the ordinary ones."""

GAP_MEDIANS = 10.0
"""See :data:`GAP_WARNING`."""


def encoder_gaps(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    bank: ParticleBank,
    *,
    num_particles: int = 64,
    seed: int = 0,
    chunk: int = 256,
) -> Tensor:
    """How far q(z | x_i) is from the bank's posterior, for every observation: the per-observation
    forward KL of :func:`bank_monitor`, KL(p(. | x_i) || q(. | x_i)) estimated from
    ``num_particles`` bank draws (NaN for observations without runs or excluded).

    What the average of :func:`bank_monitor` hides: an observation whose encoder answer is far
    from its own SMC particles, e.g. one far out in the data, whose statistic the network does
    not resolve. Costs ``num_particles`` likelihood and encoder evaluations per observation,
    ``chunk`` observations at a time.

    Shapes: x [n, p] -> [n] float64.
    """
    n = x.shape[0]
    out = torch.full((n,), math.nan, dtype=torch.float64, device=x.device)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    for first in range(0, n, chunk):
        idx = torch.arange(first, min(first + chunk, n), device=x.device)
        kept, kl, _ = _gap_terms(model, encoder, x, bank, idx, num_particles, generator)
        out[kept] = kl
    return out


def gap_level(gaps: Tensor) -> float:
    """The level above which :func:`flag_gaps` flags: :data:`GAP_WARNING` nats or
    :data:`GAP_MEDIANS` times the median of the measured values, whichever is larger.

    Shapes: gaps [n] (NaN: not measured).
    """
    measured = gaps[~torch.isnan(gaps)]
    median = float(measured.median()) if measured.numel() else 0.0
    return max(GAP_WARNING, GAP_MEDIANS * median)


def flag_gaps(gaps: Tensor, level: float | None = None) -> Tensor:
    """The observations whose :func:`encoder_gaps` value is above ``level`` (by default
    :func:`gap_level`; NaN: not measured, not flagged).

    Shapes: gaps [n] -> [n] bool.
    """
    level = gap_level(gaps) if level is None else level
    return torch.nan_to_num(gaps, nan=-math.inf) > level


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


def _run_and_store(state: TrainState, model: Model, x: Tensor, idx: Tensor) -> None:
    """SMC for observations ``idx`` in batches; store the usable runs and count them in ``state``.

    Shapes: x [n, p], idx [m].
    """
    config, bank = state.config, state.bank
    for start in range(0, idx.numel(), config.smc_batch_size):
        chunk = idx[start : start + config.smc_batch_size]
        with torch.no_grad():  # a learned likelihood must not record a graph here
            result = _smc(model, x[chunk], chunk, config, state.generator, state.encoder)
        state.evals += int(result.num_likelihood_evals.sum())
        bank.excluded[chunk[result.zero_likelihood]] = True
        usable = (result.converged & result.mixed) | (
            config.use_unconverged & ~result.zero_likelihood
        )
        state.unmixed += int((result.converged & ~result.mixed).sum())
        keep = torch.nonzero(usable).flatten()
        bank.add(
            chunk[keep],
            result.particles[keep],
            result.log_weights[keep],
            result.log_evidence[keep],
            generator=state.generator,
            step=state.step,
        )
        state.smc_runs += keep.numel()
        dropped = int((~usable & ~result.zero_likelihood).sum())
        if dropped:
            logger.warning(
                "dropped %d SMC runs that did not reach tau=1 (max_stages=%d) or whose "
                "particles did not decorrelate (SMCResult.mixed)",
                dropped,
                config.smc.max_stages,
            )
