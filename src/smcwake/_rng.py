"""Randomness for code that cannot take a ``torch.Generator``.

Everything random in smcwake draws from an explicit generator. A few calls cannot take one:
sampling a ``torch.distributions`` prior, a user's simulator, initialising a network. They run
inside :func:`forked_rng`, which seeds torch's global generator from the explicit one and puts
the global state back afterwards, so the caller's own random stream is untouched and the run
stays reproducible from its seed.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["forked_rng"]


def forked_rng(generator: torch.Generator | None, device: torch.device | str | None = None):
    """Context in which torch's global RNG is seeded from ``generator`` and restored afterwards.

    For code that cannot take a generator (sampling a torch prior, a user's simulator,
    initialising a network). Draws one integer from ``generator`` (or from the global RNG when
    ``generator`` is None, in which case nothing is forked). On a CUDA ``device`` its global
    generator is forked too.

    >>> g = torch.Generator().manual_seed(0)
    >>> before = torch.random.get_rng_state()
    >>> with forked_rng(g):
    ...     a = torch.rand(2)
    >>> with forked_rng(torch.Generator().manual_seed(0)):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b), torch.equal(torch.random.get_rng_state(), before)
    (True, True)
    """
    if generator is None:
        return contextlib.nullcontext()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []

    @contextlib.contextmanager
    def _ctx():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return _ctx()
