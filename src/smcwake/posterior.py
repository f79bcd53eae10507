"""The trained posterior as a product: sample, save, load, refine.

:class:`Posterior` wraps a trained encoder q(z | x) (and, when known, the model it was trained
for). It is what :func:`smcwake.fit` hands back as ``result.posterior``:

* ``posterior.sample(x, n)`` and ``posterior.log_prob(z, x)`` for any observations like the
  training ones (amortization: one network pass per observation);
* ``posterior.save(path)`` writes one file, readable by ``torch.load(path, weights_only=True)``:
  the weights and standardization buffers, and a JSON description (encoder family and options,
  dimensions, the prior's support the encoder maps onto, the smcwake version and file format);
  :func:`load` rebuilds the posterior from it in a fresh process, without the model or the
  training data;
* ``posterior.refine(x)`` runs an exact SMC for given observations that starts from the
  encoder instead of the prior (see :func:`refine`): weighted samples and a log-evidence per
  observation, at a fraction of a from-scratch :func:`~smcwake.smc.run_smc`'s cost when q is
  good, and still exact (only slower) when it is not.

Why refine is exact whatever q is (in the limit of many moves): its starting density, the
defensive mixture g = a q + (1 - a) p, is at least (1 - a) p, so the importance ratios are
bounded wherever the likelihood is, and the independence sampler is uniformly ergodic. Why it is
cheap when q is good: the log-ratio h = log p(z) + log p(x | z) - log g(z) is then nearly
constant, the first stage reaches tau = 1 with a high ESS, and the run is one importance-
sampling step: one likelihood evaluation per particle (a few more where moves are needed, which
then accept almost every proposal), against tens of evaluations per particle for tempering from
the prior. The cost that remains is drawing from q: an autoregressive flow's draw costs d
network passes, so refine saves time when a likelihood evaluation is dearer than that (see
docs/PERFORMANCE.md). A poor q costs more stages and moves (reported); where even ``max_moves``
independence steps renew fewer than half of the particles (a q far from the posterior in high
dimension), the observation is flagged ``mixed = False`` with a warning rather than returned as
a posterior sample.

Shapes: x [B, p]; ``sample(x, n) -> [B, n, d]``; ``log_prob(z [B, S, d], x) -> [B, S]``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from smcwake.encoders import ENCODER_KINDS, Encoder, build_encoder
from smcwake.model import Model
from smcwake.smc.base import SMCResult
from smcwake.smc.resampling import ess, normalize_with_log_norm, systematic
from smcwake.smc.tempering import next_temperature, tempered

__all__ = ["Posterior", "RefinedPosterior", "load", "refine", "FILE_FORMAT", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FILE_FORMAT = "smcwake.posterior"
"""The ``format`` entry of a saved posterior file."""

FORMAT_VERSION = 1
"""Version of the saved-file layout; :func:`load` reads files up to this version."""

MIN_MOVED_SHARE = 0.5
"""A stage of :func:`refine` whose moves renewed fewer of the particles than this (after
``max_moves`` independence steps) leaves a cloud of duplicates that may miss the posterior: the
observation is flagged ``mixed = False``. (An encoder far from the posterior in high dimension
gets almost no proposal accepted; exactness then holds only in the limit of many moves.)"""


class Posterior:
    """A trained amortized posterior q(z | x), optionally with the model it approximates.

    Args:
        encoder: the trained :class:`~smcwake.encoders.Encoder`.
        model: the :class:`~smcwake.model.Model` it was trained for; needed by :meth:`refine`
            only (a loaded posterior has none unless given to :func:`load`).
        names: optional names of the d latent coordinates (kept in the saved file, used by
            :func:`smcwake.plot.pairplot` and :func:`smcwake.interop.to_inference_data`).

    Shapes: x [B, p]; sample -> [B, n, d]; log_prob(z [B, S, d], x) -> [B, S].

    >>> from smcwake.encoders import GaussianEncoder
    >>> posterior = Posterior(GaussianEncoder(3, 2))
    >>> posterior.sample(torch.zeros(4, 3), 5).shape
    torch.Size([4, 5, 2])
    """

    def __init__(
        self,
        encoder: Encoder,
        model: Model | None = None,
        *,
        names: list[str] | None = None,
    ) -> None:
        if not isinstance(encoder, Encoder):
            raise TypeError(
                f"encoder: expected a smcwake Encoder, received {type(encoder).__name__}"
            )
        if model is not None and not isinstance(model, Model):
            raise TypeError(f"model: expected a smcwake Model or None, received {type(model)}")
        if model is not None and model.dim != encoder.z_dim:
            raise ValueError(
                f"model: its latent has d = {model.dim}, the encoder's z_dim = {encoder.z_dim}"
            )
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != encoder.z_dim:
                raise ValueError(
                    f"names: expected {encoder.z_dim} names (one per latent coordinate), "
                    f"received {len(names)}"
                )
        self.encoder = encoder
        self.model = model
        self.names = names

    def __repr__(self) -> str:
        model = "" if self.model is None else f", model={self.model.name!r}"
        return (
            f"Posterior({self.encoder.kind or type(self.encoder).__name__}, "
            f"x_dim={self.encoder.x_dim}, z_dim={self.encoder.z_dim}{model})"
        )

    @property
    def x_dim(self) -> int:
        """p, the size of one observation."""
        return self.encoder.x_dim

    @property
    def z_dim(self) -> int:
        """d, the size of the latent."""
        return self.encoder.z_dim

    def sample(self, x: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n draws from q(z | x_b) for every observation, without gradient.

        Shapes: x [B, p] -> [B, n, d].
        """
        return self.encoder.sample(self._x(x), n, generator=generator)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z_bs | x_b). Shapes: z [B, S, d], x [B, p] -> [B, S]."""
        with torch.no_grad():
            return self.encoder.log_prob(z, self._x(x))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move the encoder (in place) and return self."""
        self.encoder.to(device=device, dtype=dtype)
        return self

    def describe(self) -> dict[str, Any]:
        """The JSON description written by :meth:`save` (everything but the weights).

        >>> from smcwake.encoders import GaussianEncoder
        >>> Posterior(GaussianEncoder(3, 2, hidden=(8,))).describe()["encoder"]
        {'kind': 'gaussian', 'x_dim': 3, 'z_dim': 2, 'options': {'hidden': [8]}, 'embedding': None}
        """
        return _describe(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior to ``path`` (one file; parent directories are created).

        The file is a dict readable with ``torch.load(path, weights_only=True)``: ``format``,
        ``format_version``, ``description`` (a JSON string: see :meth:`describe`) and
        ``state_dict`` (the encoder's weights and standardization buffers, on the CPU).
        The model is not saved (a likelihood is code): pass it to :func:`load` to refine.
        The write goes to a temporary file that replaces ``path`` only when complete.

        An encoder with a user-supplied embedding network is saved with the embedding's
        weights; :func:`load` then needs an embedding of the same architecture
        (``load(path, embedding=...)``), since code cannot be stored in a weights-only file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FILE_FORMAT,
            "format_version": FORMAT_VERSION,
            "description": json.dumps(self.describe()),
            "state_dict": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
        }
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        os.replace(partial, path)
        return path

    def refine(
        self,
        x: Tensor,
        num_particles: int = 1000,
        *,
        model: Model | None = None,
        **options: Any,
    ) -> RefinedPosterior:
        """Exact SMC for the observations ``x``, started from this encoder; see :func:`refine`.

        ``model`` defaults to the posterior's own (a loaded posterior needs it passed).

        Shapes: x [B, p] -> RefinedPosterior with particles [B, K, d].
        """
        model = self.model if model is None else model
        if model is None:
            raise ValueError(
                "refine: needs the model's prior and likelihood; this posterior has no model "
                "(a loaded one does not keep it): pass refine(x, model=...) or "
                "smcwake.load(path, model=...)"
            )
        return refine(model, self.encoder, x, num_particles, **options)

    def _x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor [B, {self.x_dim}], received {type(x)}")
        like = self.encoder.x_loc
        return x.to(device=like.device, dtype=like.dtype)


def load(
    path: str | os.PathLike,
    *,
    model: Model | None = None,
    embedding: nn.Module | None = None,
    map_location: torch.device | str | None = "cpu",
) -> Posterior:
    """Rebuild a :class:`Posterior` written by :meth:`Posterior.save`.

    Reads the file with ``torch.load(weights_only=True)`` (no code is executed), rebuilds the
    encoder from the description and loads its weights. Needs neither the training data nor
    the model; pass ``model`` to be able to :meth:`~Posterior.refine`, and ``embedding`` (an
    untrained module of the same architecture) when the encoder was saved with one.

    Raises ``ValueError`` for a file that is not a saved posterior, or one written in a newer
    format than this smcwake reads (upgrade smcwake), or a missing/mismatched embedding.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load: no file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"load: {path} is not a saved smcwake posterior (torch.load failed: {err})"
        ) from err
    if not isinstance(payload, Mapping) or payload.get("format") != FILE_FORMAT:
        raise ValueError(
            f"load: {path} is not a saved smcwake posterior (expected a file written by "
            "Posterior.save; a training checkpoint is read by fit(..., resume=True))"
        )
    version = payload.get("format_version")
    description = json.loads(payload["description"])
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"load: {path} was written by smcwake {description.get('smcwake', '?')} in file "
            f"format {version}; this smcwake reads formats up to {FORMAT_VERSION}: upgrade smcwake"
        )
    encoder = _rebuild_encoder(description["encoder"], description["support"], embedding)
    try:
        encoder.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"load: the weights in {path} do not fit the encoder its description builds "
            f"(a different embedding architecture?): {err}"
        ) from err
    encoder.to(device=map_location, dtype=_dtype(description["dtype"]))
    encoder.eval()
    return Posterior(encoder, model, names=description.get("names"))


class RefinedPosterior(NamedTuple):
    """What :func:`refine` returns, per observation.

    ``particles`` with ``log_weights`` are a weighted sample from p(z | x_b) when
    ``converged[b]``; ``log_evidence`` is an unbiased-in-Z estimate of log p(x_b).
    """

    particles: Tensor  # [B, K, d]
    log_weights: Tensor  # [B, K] normalized (logsumexp over K is 0)
    log_evidence: Tensor  # [B] float64
    converged: Tensor  # [B] bool: the temperature reached 1 with particles of positive weight
    zero_likelihood: Tensor  # [B] bool: every particle had zero likelihood; log_evidence -inf
    mixed: Tensor  # [B] bool: every stage's moves renewed at least MIN_MOVED_SHARE of particles
    ess: Tensor  # [B] effective sample size of the final weights (particles)
    initial_ess: Tensor  # [B] ESS fraction of q's defensive mixture as an importance proposal
    num_stages: Tensor  # [B] int64 tempering steps
    acceptance_rate: Tensor  # [B] mean acceptance of the independence moves (NaN: none made)
    num_likelihood_evals: Tensor  # [B] int64

    sample = SMCResult.sample  # n equally weighted draws per observation -> [B, n, d]


@torch.no_grad()
def refine(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    num_particles: int = 1000,
    *,
    encoder_weight: float = 0.9,
    ess_target: float = 0.5,
    moved_target: float = 0.95,
    max_moves: int = 20,
    max_stages: int = 100,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> RefinedPosterior:
    """SMC from the encoder to the posterior: weighted samples and log-evidence for given x.

    The reference is the defensive mixture g(z | x) = a q(z | x) + (1 - a) p(z), a =
    ``encoder_weight``, and the tempering path runs from g to the posterior, gamma_tau(z) = g(z)
    exp(tau h(z)) with h = log p(z) + log p(x | z) - log g(z), so that gamma_0 = g (sampled
    exactly) and gamma_1 = p(z) p(x | z). Each stage picks the next tau by the conditional ESS
    (``ess_target``, as :func:`~smcwake.smc.run_smc`), reweights, resamples when the ESS falls
    under half, and moves the particles (at every stage but a last one that did not resample) by
    independence Metropolis-Hastings proposing from g itself: accept z' with probability min(1,
    exp(tau (h(z') - h(z)))), exact for gamma_tau; moves repeat until ``moved_target`` of the
    particles have moved at least once (at most ``max_moves``). The product of the stages' mean
    incremental weights estimates p(x) without bias.

    Args:
        model, encoder, x, num_particles: prior and likelihood, encoder, observations, K.
        encoder_weight: a, the share of g drawn from q (the rest from the prior).
        ess_target: conditional ESS fraction aimed at by each tempering step.
        moved_target: share of particles that must have moved before the next stage.
        max_moves, max_stages: caps; rows stopped by ``max_stages`` are not converged (warned).
            Why refine is exact, when it is cheap and when it flags: the module docstring.
        generator, seed: randomness (pass at most one).

    Shapes: x [B, p] -> particles [B, K, d], log_weights [B, K], log_evidence [B].
    """
    x, generator, device, dtype = _check_refine(
        model, encoder, x, num_particles, encoder_weight, ess_target, moved_target, generator, seed
    )
    B, K = x.shape[0], num_particles
    was_training = encoder.training
    encoder.eval()
    draw = _defensive_mixture(model, encoder, x, K, encoder_weight, generator)
    evals = torch.zeros(B, dtype=torch.int64, device=device)
    try:
        z, h = draw()
        evals += K
        log_w = torch.full((B, K), -math.log(K), dtype=torch.float64, device=device)
        initial_ess = torch.nan_to_num(ess(h.double()) / K, nan=0.0)
        zero, stuck = (torch.zeros(B, dtype=torch.bool, device=device) for _ in "12")  # flags
        tau, log_z, accepted = (torch.zeros(B, dtype=torch.float64, device=device) for _ in "123")
        stages = torch.zeros(B, dtype=torch.int64, device=device)
        for _ in range(max_stages):
            active = tau < 1.0
            if not bool(active.any()):
                break
            h64 = h.double()
            new_tau = torch.where(
                active, next_temperature(h64, log_w, tau, ess_target=ess_target), tau
            )
            increment = tempered(h64, new_tau - tau)  # 0 x (-inf) read as 0
            log_w, log_norm = normalize_with_log_norm(log_w + increment)
            log_z = log_z + torch.where(active, log_norm, 0.0)  # -inf where every weight is 0
            dead = active & ~torch.isfinite(log_norm)
            zero, active = zero | dead, active & ~dead
            log_w = torch.where(dead[:, None], -math.log(K), log_w)
            tau = torch.where(dead, 1.0, new_tau)
            stages += active.long()
            resample = active & (ess(log_w) < 0.5 * K)
            if bool(resample.any()):
                ancestors = systematic(log_w, generator=generator)
                picked = ancestors.where(resample[:, None], torch.arange(K, device=device))
                z = torch.gather(z, 1, picked[..., None].expand_as(z))
                h = torch.gather(h, 1, picked)
                log_w = torch.where(resample[:, None], -math.log(K), log_w)
            move_rows = resample | (active & (tau < 1.0))  # a last, unresampled stage stays
            z, h, moves = _independence_moves(
                draw, z, h, tau, move_rows, moved_target, max_moves, generator
            )
            evals, accepted = evals + K * moves.num_steps, accepted + moves.accepted
            stuck = stuck | (move_rows & (moves.moved < MIN_MOVED_SHARE))
    finally:
        encoder.train(was_training)
    converged = (tau >= 1.0) & ~zero
    _warn_unfinished(converged, zero, stuck, max_stages)
    return RefinedPosterior(
        particles=z,
        log_weights=log_w.to(dtype),
        log_evidence=log_z,
        converged=converged,
        zero_likelihood=zero,
        mixed=~stuck,
        ess=ess(log_w),
        initial_ess=initial_ess,
        num_stages=stages,
        acceptance_rate=accepted / (evals - K).double(),  # K draws per move; NaN: no move
        num_likelihood_evals=evals,
    )


# ---------------------------------------------------------------------------- private helpers
def _defensive_mixture(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    K: int,
    weight: float,
    generator: torch.Generator | None,
) -> Callable[[], tuple[Tensor, Tensor]]:
    """``draw()``: K draws per observation from g = a q(. | x) + (1 - a) p and h at them,
    h = log p(z) + log p(x | z) - log g(z) (``-inf`` outside the prior's support).

    Shapes: x [B, p] -> draw() -> (z [B, K, d], h [B, K]) in x's dtype and device.
    """
    B, dtype, device = x.shape[0], x.dtype, x.device
    log_a, log_1ma = math.log(weight), math.log1p(-weight)
    enc_dtype = encoder.x_loc.dtype
    x_enc = x.to(device=encoder.x_loc.device, dtype=enc_dtype)

    def draw() -> tuple[Tensor, Tensor]:
        z_q = encoder.sample(x_enc, K, generator=generator).to(device=device, dtype=dtype)
        z_p = model.sample_prior((B, K), generator=generator, dtype=dtype, device=device)
        use_q = torch.rand(B, K, generator=generator, dtype=dtype, device=device) < weight
        z = torch.where(use_q[..., None], z_q, z_p)
        log_prior = model.log_prior(z)
        loglik = model.log_likelihood(z, x, log_prior=log_prior)
        log_q = encoder.log_prob(z.to(enc_dtype), x_enc).to(device=device, dtype=dtype)
        log_q = torch.nan_to_num(log_q, nan=-math.inf, posinf=-math.inf)
        log_g = torch.logaddexp(log_a + log_q, log_1ma + log_prior)
        h = torch.where(torch.isfinite(log_prior), log_prior + loglik - log_g, -math.inf)
        return z, h

    return draw


def _warn_unfinished(converged: Tensor, zero: Tensor, stuck: Tensor, max_stages: int) -> None:
    """Log the observations whose particles may not be posterior samples. Shapes: [B] each."""
    if bool(zero.any()):
        logger.warning(
            "refine: %d of %d observations have zero likelihood at every particle (proposed "
            "from the encoder and the prior); their log_evidence is -inf (converged=False)",
            *(int(zero.sum()), zero.numel()),
        )
    stopped = ~converged & ~zero
    if bool(stopped.any()):
        logger.warning(
            "refine: %d of %d observations stopped at max_stages=%d before temperature 1; "
            "their particles are not posterior samples (converged=False)",
            *(int(stopped.sum()), zero.numel(), max_stages),
        )
    if bool(stuck.any()):
        logger.warning(
            "refine: in %d of %d observations the moves renewed fewer than %d%% of the particles "
            "in some stage (the encoder is far from the posterior): they may not represent it "
            "(mixed=False); train the encoder longer or use run_smc for them",
            *(int(stuck.sum()), stuck.numel(), round(100 * MIN_MOVED_SHARE)),
        )


class _Moves(NamedTuple):
    num_steps: Tensor  # [B] int64 independence steps made by each observation
    accepted: Tensor  # [B] float64 accepted proposals
    moved: Tensor  # [B] float64 share of the particles that moved at least once


def _independence_moves(
    draw: Callable[[], tuple[Tensor, Tensor]],
    z: Tensor,
    h: Tensor,
    tau: Tensor,
    active: Tensor,
    moved_target: float,
    max_moves: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, _Moves]:
    """Independence MH steps from g, exact for gamma_tau = g exp(tau h), until ``moved_target``
    of an observation's particles have moved (at most ``max_moves``); inactive rows stay.

    Shapes: z [B, K, d], h [B, K], tau [B] float64, active [B] bool -> (z, h, _Moves).
    """
    B, K = h.shape
    moved = torch.zeros(B, K, dtype=torch.bool, device=z.device)
    moving = active.clone()
    steps = torch.zeros(B, dtype=torch.int64, device=z.device)
    accepted = torch.zeros(B, dtype=torch.float64, device=z.device)
    for _ in range(max_moves):
        z_new, h_new = draw()
        steps += moving.long()
        # a proposal of zero target density is refused; a current one is always left
        log_ratio = torch.where(
            h_new == -math.inf,
            -math.inf,
            torch.where(h == -math.inf, math.inf, tau.to(h.dtype)[:, None] * (h_new - h)),
        )
        u = torch.rand(B, K, generator=generator, dtype=h.dtype, device=h.device)
        accept = moving[:, None] & (torch.log(u) < log_ratio)
        z = torch.where(accept[..., None], z_new, z)
        h = torch.where(accept, h_new, h)
        moved |= accept
        accepted += accept.sum(-1).double()
        moving = moving & (moved.double().mean(-1) < moved_target)
        if not bool(moving.any()):
            break
    return z, h, _Moves(steps, accepted, moved.double().mean(-1))


def _check_refine(
    model: Model,
    encoder: Encoder,
    x: Tensor,
    num_particles: int,
    encoder_weight: float,
    ess_target: float,
    moved_target: float,
    generator: torch.Generator | None,
    seed: int | None,
) -> tuple[Tensor, torch.Generator | None, torch.device, torch.dtype]:
    """Validated x, the generator, the device and dtype the run uses."""
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a smcwake Model, received {type(model).__name__}")
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder: expected a smcwake Encoder, received {type(encoder).__name__}")
    if encoder.z_dim != model.dim:
        raise ValueError(f"encoder: z_dim = {encoder.z_dim}, but the model's d = {model.dim}")
    x = model.check_x(x)
    if x.shape[1] != encoder.x_dim:
        raise ValueError(
            f"x: expected [B, {encoder.x_dim}] (the encoder's p), got {list(x.shape)}"
        )
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 2:
        raise ValueError(f"num_particles: expected an int >= 2, received {num_particles!r}")
    for name, value in (
        ("encoder_weight", encoder_weight),
        ("ess_target", ess_target),
        ("moved_target", moved_target),
    ):
        if not isinstance(value, float | int) or not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name}: expected a fraction in (0, 1), received {value!r}")
    if generator is not None and seed is not None:
        raise ValueError("refine: pass seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(x.device).manual_seed(int(seed))
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    return x.to(dtype), generator, x.device, dtype


def _describe(posterior: Posterior) -> dict[str, Any]:
    """JSON-able description of a posterior: everything needed to rebuild its encoder."""
    encoder = posterior.encoder
    if encoder.kind not in ENCODER_KINDS or not hasattr(encoder, "build_options"):
        raise ValueError(
            f"save: {type(encoder).__name__} is not one of smcwake's encoder families "
            f"({', '.join(ENCODER_KINDS)}); save its state_dict with torch.save instead"
        )
    embedding = None
    if encoder.embedding is not None:
        embedding = {"class": type(encoder.embedding).__name__, "dim": encoder.context_dim}
    return {
        "smcwake": _version(),
        "encoder": {
            "kind": encoder.kind,
            "x_dim": encoder.x_dim,
            "z_dim": encoder.z_dim,
            "options": dict(encoder.build_options),
            "embedding": embedding,
        },
        "support": describe_constraint(encoder.support),
        "dtype": str(encoder.x_loc.dtype).removeprefix("torch."),
        "names": posterior.names,
        "model": None if posterior.model is None else posterior.model.name,
    }


def _rebuild_encoder(
    spec: dict[str, Any], support: dict[str, Any] | None, embedding: nn.Module | None
) -> Encoder:
    """The encoder a description names, untrained. Raises ValueError on embedding mismatch."""
    saved = spec.get("embedding")
    if saved is not None and embedding is None:
        raise ValueError(
            f"load: this posterior was saved with an embedding network ({saved['class']}, "
            f"output width {saved['dim']}); pass load(path, embedding=...) with a module of the "
            "same architecture (its weights are restored from the file)"
        )
    if saved is None and embedding is not None:
        raise ValueError("load: embedding given, but the posterior was saved without one")
    options: dict[str, Any] = dict(spec["options"])
    if "hidden" in options:
        options["hidden"] = tuple(options["hidden"])
    if embedding is not None:
        options.update(embedding=embedding, embedding_dim=saved["dim"])
    options["support"] = constraint_from_description(support)
    return build_encoder(spec["kind"], spec["x_dim"], spec["z_dim"], **options)


def _version() -> str:
    """The installed smcwake's version ("unknown" when run from a source tree)."""
    try:
        return importlib.metadata.version("smcwake")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"load: unknown dtype {name!r} in the description")
    return dtype


_BOUNDED = {
    "greater_than": (constraints.greater_than, ("lower_bound",)),
    "greater_than_eq": (constraints.greater_than_eq, ("lower_bound",)),
    "less_than": (constraints.less_than, ("upper_bound",)),
    "interval": (constraints.interval, ("lower_bound", "upper_bound")),
    "half_open_interval": (constraints.half_open_interval, ("lower_bound", "upper_bound")),
}


def describe_constraint(support: constraints.Constraint | None) -> dict[str, Any] | None:
    """A JSON-able description of a support constraint (bounds as nested lists).

    Handles the real line, (half-)bounded and interval constraints with scalar or tensor
    bounds, and ``independent`` / ``cat`` / ``stack`` combinations of them. Raises
    ``ValueError`` for anything else.

    >>> describe_constraint(constraints.independent(constraints.positive, 1))
    {'type': 'independent', 'base': {'type': 'greater_than', 'lower_bound': 0.0}, 'ndims': 1}
    """
    if support is None:
        return None
    if isinstance(support, constraints.independent):
        return {
            "type": "independent",
            "base": describe_constraint(support.base_constraint),
            "ndims": support.reinterpreted_batch_ndims,
        }
    if isinstance(support, constraints.cat):
        return {
            "type": "cat",
            "parts": [describe_constraint(c) for c in support.cseq],
            "dim": support.dim,
            "lengths": list(support.lengths),
        }
    if isinstance(support, constraints.stack):
        return {
            "type": "stack",
            "parts": [describe_constraint(c) for c in support.cseq],
            "dim": support.dim,
        }
    if type(support) is type(constraints.real):
        return {"type": "real"}
    for name, (factory, fields) in _BOUNDED.items():
        if type(support) is type(factory(*([0.0] * len(fields)))):
            out: dict[str, Any] = {"type": name}
            for field in fields:
                value = getattr(support, field)
                out[field] = value.tolist() if isinstance(value, Tensor) else float(value)
            return out
    raise ValueError(
        f"save: the support {support} cannot be described in the file (supported: real, "
        "bounds, intervals, and independent/cat/stack of them)"
    )


def constraint_from_description(spec: dict[str, Any] | None) -> constraints.Constraint | None:
    """The constraint :func:`describe_constraint` described (bounds as float64 tensors).

    >>> constraint_from_description({"type": "interval", "lower_bound": 0.0, "upper_bound": 1.0})
    Interval(lower_bound=0.0, upper_bound=1.0)
    """
    if spec is None:
        return None
    kind = spec["type"]
    if kind == "independent":
        return constraints.independent(constraint_from_description(spec["base"]), spec["ndims"])
    if kind == "cat":
        parts = [constraint_from_description(c) for c in spec["parts"]]
        return constraints.cat(parts, spec["dim"], spec["lengths"])
    if kind == "stack":
        return constraints.stack(
            [constraint_from_description(c) for c in spec["parts"]], spec["dim"]
        )
    if kind == "real":
        return constraints.real
    if kind in _BOUNDED:
        factory, fields = _BOUNDED[kind]
        values = [spec[f] for f in fields]
        values = [
            v if isinstance(v, float) else torch.tensor(v, dtype=torch.float64) for v in values
        ]
        return factory(*values)
    raise ValueError(f"load: unknown support type {kind!r} in the description")
