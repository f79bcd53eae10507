"""Hand posterior draws to other tools: ArviZ (``pip install 'smcwake[arviz]'``).

:func:`to_inference_data` puts draws from a posterior (``posterior.sample(x, n)``, an SMC run's
``result.sample(n)``) into ArviZ's container, so that ``az.summary``, ``az.plot_posterior`` and
the rest of ArviZ work on them. Both ArviZ generations are supported: 0.x returns an
``InferenceData``; 1.x (Python >= 3.12) returns an ``xarray.DataTree`` with the same groups.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from smcwake._optional import require

__all__ = ["to_inference_data"]

_OBSERVATION_DIM = "observation"


def _arviz_major(arviz: Any) -> int:
    """The major version of an imported ArviZ (0 when it cannot be read)."""
    match = re.match(r"\s*(\d+)", str(getattr(arviz, "__version__", "0")))
    return int(match.group(1)) if match else 0


def _numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(
        f"{name}: expected a torch.Tensor or numpy array, received {type(value).__name__}"
    )


def _names(names: Sequence[str] | None, d: int) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str) or len(names) != d:
        raise ValueError(
            f"names: expected {d} names (one per coordinate of z), received {names!r}"
        )
    out = [str(n) for n in names]
    if any(not n for n in out) or len(set(out)) != d:
        raise ValueError(f"names: expected {d} distinct non-empty names, received {names!r}")
    if _OBSERVATION_DIM in out or "chain" in out or "draw" in out:
        raise ValueError(
            f"names: 'chain', 'draw' and '{_OBSERVATION_DIM}' name dimensions in ArviZ; "
            f"rename those variables (received {names!r})"
        )
    return out


def to_inference_data(
    samples: torch.Tensor | np.ndarray,
    names: Sequence[str] | None = None,
    *,
    x: torch.Tensor | np.ndarray | None = None,
    num_chains: int = 1,
) -> Any:
    """Posterior draws as an ArviZ ``InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ 1.x).

    The draws go to the ``posterior`` group with ArviZ's sample dimensions ``chain`` and
    ``draw``. With ``names`` every coordinate of z becomes its own variable; without, one
    variable ``z`` with a dimension ``z_dim``. Draws for several observations ([B, S, d]) get a
    dimension ``observation``; ``x`` (the observations) goes to the ``observed_data`` group.

    The draws of an amortized posterior are independent, so there are no real chains:
    ``num_chains`` only splits the S draws into that many groups of S / num_chains, for ArviZ
    functions that insist on several chains (their R-hat is then near 1 by construction).

    Args:
        samples: posterior draws, [S, d] for one observation or [B, S, d] for B.
        names: one name per coordinate of z, e.g. ``["mu", "log_sigma"]``.
        x: the observations the draws are conditioned on, [p] or [B, p].
        num_chains: how many groups to split the draws into (it must divide S).

    Shapes: samples [S, d] or [B, S, d], x [p] or [B, p].

    Raises:
        ImportError: ArviZ is not installed (``pip install 'smcwake[arviz]'``).

    >>> draws = torch.randn(2, 500, 3)     # 2 observations, 500 draws, d = 3
    >>> idata = to_inference_data(draws, ["a", "b", "c"])  # doctest: +SKIP
    >>> idata.posterior["a"].dims                          # doctest: +SKIP
    ('chain', 'draw', 'observation')
    """
    draws = _numpy("samples", samples)
    if draws.ndim not in (2, 3) or 0 in draws.shape:
        raise ValueError(
            f"samples: expected shape [S, d] or [B, S, d] with no empty axis, received "
            f"{list(draws.shape)}"
        )
    if not np.issubdtype(draws.dtype, np.floating):
        raise TypeError(f"samples: expected floating-point draws, received dtype {draws.dtype}")
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains: expected a positive integer, received {num_chains!r}")
    per_observation = draws.ndim == 3
    if not per_observation:
        draws = draws[None]  # [1, S, d]
    B, S, d = draws.shape
    if S % num_chains:
        raise ValueError(f"num_chains: expected a divisor of the {S} draws, received {num_chains}")
    variable_names = _names(names, d)
    observed = None
    if x is not None:
        observed = _numpy("x", x)
        expected = (B,) if per_observation else ()
        if observed.ndim != len(expected) + 1 or observed.shape[:-1] != expected:
            want = f"[B, p] with B = {B}" if per_observation else "[p]"
            raise ValueError(f"x: expected shape {want}, received {list(observed.shape)}")
    arviz = require("arviz", "smcwake.interop.to_inference_data")

    # [B, S, d] -> [chain, draw, B, d]: ArviZ puts its sample dimensions first
    grouped = draws.reshape(B, num_chains, S // num_chains, d).transpose(1, 2, 0, 3)
    extra = [_OBSERVATION_DIM] if per_observation else []
    if not per_observation:
        grouped = grouped[:, :, 0]  # [chain, draw, d]
    coords: dict[str, Any] = {}
    if per_observation:
        coords[_OBSERVATION_DIM] = np.arange(B)
    if variable_names is None:
        posterior = {"z": grouped}
        dims: dict[str, list[str]] = {"z": [*extra, "z_dim"]}
        coords["z_dim"] = np.arange(d)
    else:
        posterior = {name: grouped[..., j] for j, name in enumerate(variable_names)}
        dims = {name: list(extra) for name in variable_names}
    groups = {"posterior": posterior}
    if observed is not None:
        groups["observed_data"] = {"x": observed}
        dims["x"] = [*extra, "x_dim"]
        coords["x_dim"] = np.arange(observed.shape[-1])
    if _arviz_major(arviz) >= 1:  # arviz-base's from_dict: one dict of groups
        return arviz.from_dict(groups, coords=coords, dims=dims, sample_dims=["chain", "draw"])
    return arviz.from_dict(**groups, coords=coords, dims=dims)
