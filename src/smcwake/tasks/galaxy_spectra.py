"""Galaxy spectra (the paper's PROVABGS experiment): a slot for a user-supplied spectrum emulator.

The paper fitted galaxy properties z (stellar mass, star-formation history, metallicity, dust,
...) to spectra through a neural emulator of the PROVABGS spectral model. That emulator is not
shipped with smcwake and cannot be downloaded at run time, and we do not fake one: the task exists
only once a user supplies ``emulator`` (z [N, d] -> spectrum [N, p]), a ``prior`` over z and the
observation noise. The likelihood is then Gaussian around the emulated spectrum,

    log p(x | z) = sum_j log N(x_j; emulator(z)_j, noise_sd_j^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from smcwake.model import Model
from smcwake.tasks import Task
from smcwake.tasks._common import check_count, make_generator

__all__ = ["galaxy_spectra"]

_WHY = (
    "task 'galaxy-spectra' needs a spectrum emulator, which smcwake does not ship: the paper "
    "used a neural emulator of the PROVABGS spectral model (not available offline), and a fake "
    "one would make results meaningless."
)
_HOW = (
    "Supply your own: get('galaxy-spectra', emulator=fn, prior=dist, noise_sd=sigma), where "
    "fn(z [N, d]) -> spectrum [N, p] is a torch function (e.g. a trained network in eval mode), "
    "dist a torch Distribution with event_shape [d] (e.g. Independent(Uniform(low, high), 1)), "
    "and sigma the observation noise standard deviation (a float, or a tensor [p] with one per "
    "wavelength)."
)


def galaxy_spectra(
    *,
    emulator: Callable[[Tensor], Tensor] | None = None,
    prior: Distribution | None = None,
    noise_sd: float | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """Galaxy spectra through a user-supplied emulator with Gaussian observation noise.

    Raises ``ValueError`` (explaining what to supply) when ``emulator``, ``prior`` or
    ``noise_sd`` is missing. The emulator is called on flattened particles, z [B * K, d], and
    must use torch operations; ``dtype`` and ``device`` apply to the noise scale and the
    simulated data (the prior keeps its own). No reference posterior.

    ``defaults``: ``num_observations`` (100), ``num_particles`` (1000), ``encoder`` (``"nsf"``),
    ``num_steps``.

    Shapes: emulator z [N, d] -> [N, p]; z [B, K, d], x [B, p].

    >>> galaxy_spectra()
    Traceback (most recent call last):
    ...
    ValueError: task 'galaxy-spectra' needs a spectrum emulator, which smcwake does not ship: ...
    """
    if emulator is None:
        raise ValueError(f"{_WHY} {_HOW}")
    if not callable(emulator):
        raise TypeError(
            f"emulator: expected a callable z [N, d] -> spectrum [N, p], received "
            f"{type(emulator).__name__}"
        )
    if prior is None or noise_sd is None:
        missing = " and ".join(
            n for n, v in (("prior", prior), ("noise_sd", noise_sd)) if v is None
        )
        raise ValueError(f"task 'galaxy-spectra': {missing} not given. {_HOW}")
    sd = torch.as_tensor(noise_sd, dtype=dtype, device=device)
    if sd.dim() > 1 or not bool((sd > 0).all()) or not bool(torch.isfinite(sd).all()):
        raise ValueError(
            f"noise_sd: expected a positive finite float or tensor [p], received {noise_sd!r}"
        )
    log_sd = torch.log(sd)

    def _emulate(z: Tensor) -> Tensor:
        out = emulator(z)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != z.shape[0]:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"emulator: expected output shape [N={z.shape[0]}, p] for z {list(z.shape)}, "
                f"received {got}"
            )
        if sd.dim() == 1 and out.shape[1] != sd.shape[0]:
            raise ValueError(
                f"noise_sd: has {sd.shape[0]} entries but the emulator returns spectra of "
                f"length {out.shape[1]}"
            )
        return out

    def log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        B, K, d = z.shape
        mean = _emulate(z.reshape(B * K, d)).reshape(B, K, -1)
        s, ls = sd.to(mean.dtype), log_sd.to(mean.dtype)
        resid = (x[:, None, :] - mean) / s
        return (-0.5 * resid.square() - ls - 0.5 * math.log(2 * math.pi)).sum(-1)

    def simulate(z: Tensor) -> Tensor:
        mean = _emulate(z)
        return mean + sd.to(mean.dtype) * torch.randn_like(mean)

    model = Model(prior, log_likelihood, simulate=simulate, name="galaxy-spectra")

    def observations(n: int, seed: int) -> tuple[Tensor, Tensor]:
        g = make_generator(seed)
        z = model.sample_prior((check_count(n),), generator=g, device=device)
        x = model.simulate(z, generator=g)
        return z.to(dtype=dtype), x.to(dtype=dtype, device=device)

    return Task(
        name="galaxy-spectra",
        model=model,
        description=(
            "Galaxy spectra through a user-supplied emulator (the paper's PROVABGS emulator is "
            "not shipped); Gaussian noise around the emulated spectrum. Observations are "
            "simulated from the given prior; no reference posterior."
        ),
        observations=observations,
        defaults={
            "num_observations": 100,
            "num_particles": 1000,
            "encoder": "nsf",
            "num_steps": 10_000,
        },
    )
