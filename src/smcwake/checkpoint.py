"""Run folders and checkpoints of :func:`smcwake.fit`: checked before training, written atomically.

A run folder holds two files:

- ``checkpoint.pt`` (:data:`CHECKPOINT_NAME`): everything a resumed run needs to continue
  exactly where the interrupted one stopped: the encoder's and optimizer's states, the particle
  bank, the chain states of a method that keeps them, the generator's state, the history and
  the run's counters, with fingerprints of the observations, the settings and the model that
  :func:`load_checkpoint` and :func:`check_model` compare before a run is resumed;
- ``history.json`` (:data:`HISTORY_NAME`): the settings and the history, for reading by people
  and by :mod:`smcwake.report`.

Both are written to a temporary file in the same folder and renamed over the old one, so a run
killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from smcwake.model import Model, fingerprint_differences, model_fingerprint

if TYPE_CHECKING:
    from smcwake.loop import TrainState
    from smcwake.train import TrainConfig

__all__ = [
    "CHECKPOINT_NAME",
    "Checkpointer",
    "HISTORY_NAME",
    "check_model",
    "check_run_dir",
    "load_checkpoint",
    "remove_run",
    "restore_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
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
_COUNTERS = (
    "step",
    "evals",
    "simulations",
    "smc_runs",
    "skipped",
    "elapsed",
    "initial_next",
    "unmixed",
)
"""The :class:`~smcwake.loop.TrainState` counters, in the order of the checkpoint's tuple
(checkpoints written before ``unmixed`` existed hold the first seven)."""

_FREE_SETTINGS = ("steps", "max_evals", "progress", "checkpoint_every", "log_every", "device")
"""Settings a resumed run may change: budgets and display."""


def data_fingerprint(x: Tensor) -> str:
    """Shape and hash of the observations a run was made with. Shapes: x [n, p]."""
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
    for free in _FREE_SETTINGS:
        d.pop(free)
    return d


def check_run_dir(
    run_dir: str | os.PathLike | None, *, resume: bool = False, overwrite: bool = False
) -> Path | None:
    """Create ``run_dir`` if needed and check that :func:`smcwake.fit` may use it; deletes nothing.

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


def remove_run(path: Path) -> None:
    """Delete a previous run's checkpoint and history (``overwrite=True``)."""
    for name in (CHECKPOINT_NAME, HISTORY_NAME):
        if (path / name).exists():
            logger.info("overwrite=True: removing %s", path / name)
            (path / name).unlink()


def load_checkpoint(run_path: Path | None, config: TrainConfig, x: Tensor) -> dict | None:
    """The checkpoint in ``run_path``, checked against the observations and settings.

    Returns None when there is no folder or no checkpoint in it (a fresh start). Raises
    ``ValueError`` for an unreadable, foreign or incomplete file, other observations, or other
    settings (except the budgets and display ones a resumed run may change).

    Shapes: x [n, p] (also sets the device the checkpoint's tensors are loaded to).
    """
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
    if state["data"] != data_fingerprint(x):
        raise ValueError(f"checkpoint {path} was made with different observations")
    mine = _comparable(config)
    diff = {k: (state["config"].get(k), v) for k, v in mine.items() if state["config"].get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} was made with other settings ({shown})")
    return state


def check_model(
    checkpoint: dict, model: Model, x: Tensor, decoder: torch.nn.Module | None, path: Path
) -> dict | None:
    """Refuse a checkpoint made with another prior or likelihood; return the model's fingerprint.

    A learned likelihood (``decoder``) changes during training, so it is compared in the state
    the checkpoint stored (loaded here; put back if the check fails). Checkpoints written before
    fingerprints existed are accepted with a warning.

    Shapes: x [n, p].
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


def restore_state(state: TrainState, checkpoint: dict, path: Path) -> None:
    """Load a checked checkpoint into a freshly initialised ``state`` (in place).

    The modules, optimizers, bank, chains and generator take the stored states; the history and
    counters continue from the stored ones. A history that ended on a row written only because
    the run ended (not at a multiple of ``log_every``) loses that row: the resumed run logs on.
    """
    try:
        state.encoder.load_state_dict(checkpoint["encoder"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if state.decoder is not None:
            state.decoder.load_state_dict(checkpoint["decoder"])
            state.decoder_optimizer.load_state_dict(checkpoint["decoder_optimizer"])
        if state.bank is not None:
            state.bank.load_state_dict(checkpoint["bank"])
        if state.chains is not None:
            state.chains = checkpoint["chains"].to(state.chains.device)
        state.generator.set_state(checkpoint["generator"])
    except (RuntimeError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(
            f"checkpoint in {path} does not fit this model and encoder ({err}); use "
            "the model and encoder it was made with, or a new run_dir"
        ) from err
    history = checkpoint["history"]
    counters = dict(zip(_COUNTERS, checkpoint["counters"], strict=False))
    counters.setdefault("unmixed", 0)
    for name, value in counters.items():
        setattr(state, name, value)
    history.setdefault("unmixed_runs", [0] * len(history["step"]))
    if history["step"] and history["step"][-1] % state.config.log_every:
        for column in history.values():  # an end-of-run row; the resumed run logs on
            column.pop()
    state.history = history


def save_checkpoint(path: Path, state: TrainState, x: Tensor, model_id: dict | None) -> None:
    """Write ``state`` to ``path/checkpoint.pt`` and its history to ``path/history.json``.

    ``model_id`` is the model's fingerprint (:func:`smcwake.model.model_fingerprint`), compared
    when the run is resumed. Shapes: x [n, p] (the run's observations, fingerprinted).
    """
    config = state.config
    saved = {
        "version": _CHECKPOINT_VERSION,
        "config": _comparable(config),
        "data": data_fingerprint(x),
        "encoder": state.encoder.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "decoder": state.decoder.state_dict() if state.decoder is not None else None,
        "decoder_optimizer": state.decoder_optimizer.state_dict()
        if state.decoder_optimizer
        else None,
        "bank": state.bank.state_dict() if state.bank is not None else None,
        "chains": state.chains,
        "generator": state.generator.get_state(),
        "history": state.history,
        "counters": tuple(getattr(state, name) for name in _COUNTERS),
        "model": model_id,
    }
    _atomic_save(saved, path / CHECKPOINT_NAME)
    tmp = path / f".{HISTORY_NAME}.tmp"
    tmp.write_text(json.dumps({"config": config.to_dict(), "history": state.history}, indent=1))
    os.replace(tmp, path / HISTORY_NAME)


class Checkpointer:
    """``checkpointer(state)`` writes a checkpoint to a run folder (nothing without one).

    The fingerprint is computed once (at every save with a learned likelihood, which changes).
    """

    def __init__(
        self, run_path: Path | None, model: Model, x: Tensor, decoder: torch.nn.Module | None
    ) -> None:
        self.run_path, self.model, self.x, self.decoder = run_path, model, x, decoder
        self.fingerprint: dict | None = None

    def model_id(self) -> dict:
        """The model's fingerprint (:func:`smcwake.model.model_fingerprint`), stored with the
        checkpoint and compared on resume."""
        if self.fingerprint is None or self.decoder is not None:
            self.fingerprint = model_fingerprint(self.model, self.x)
        return self.fingerprint

    def __call__(self, state: TrainState) -> None:
        if self.run_path is not None:
            save_checkpoint(self.run_path, state, self.x, self.model_id())
