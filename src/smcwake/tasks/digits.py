"""Handwritten digits with a learned linear-sigmoid decoder (the paper's MNIST experiment).

Data: scikit-learn's 8x8 handwritten digits (1,797 images, values 0..16; shipped inside the
package, no download), binarized as pixel > ``threshold`` (8), optionally one class only, split
into training and held-out images by a seeded permutation.

Model: z ~ N(0, I_k) (k = ``latent_dim``, 8) and
p(x | z) = prod_j Bernoulli(x_j; sigmoid(W z + b)_j) with a :class:`LinearSigmoidDecoder` whose
parameters are *learned* jointly with the encoder (by the IWBO in the paper). The model's
likelihood always reads the decoder's current parameters, so SMC runs made under an older
decoder target a different posterior: a trainer must not mix them unweighted with new ones.
There is no reference posterior and the true latents are unknown (``observations`` returns NaN
for them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from smcwake.model import Model
from smcwake.tasks import Task
from smcwake.tasks._common import check_count, make_generator, place

__all__ = ["DigitsData", "LinearSigmoidDecoder", "digits", "digits_task", "load_digits_binary"]

IMAGE_SIZE = 64  # 8 x 8 pixels

BENCH_RUNNERS = {
    "bench": "smcwake.bench.digits:bench_runner",
    "fit": "smcwake.bench.digits:fit_runner",
}
"""How :func:`smcwake.bench.run_bench` and :func:`~smcwake.bench.run_fit` run this task: the
likelihood is learned, so every run needs its own decoder (:mod:`smcwake.bench.digits`)."""


class LinearSigmoidDecoder(nn.Module):
    """Bernoulli decoder p(x | z) = prod_j Bernoulli(x_j; sigmoid(W z + b)_j).

    The weights start as N(0, 1/k) draws from ``generator`` (torch's global RNG is not touched);
    the bias starts at ``bias`` (e.g. the logit of the training pixel means) or zero.

    Shapes: W [p, k], b [p]; forward: z [*, k] -> logits [*, p];
    log_likelihood: z [B, K, k], x [B, p] -> [B, K].

    >>> decoder = LinearSigmoidDecoder(2, 3, generator=torch.Generator().manual_seed(0))
    >>> decoder.log_likelihood(torch.zeros(1, 4, 2), torch.ones(1, 3)).shape
    torch.Size([1, 4])
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        *,
        generator: torch.Generator | None = None,
        bias: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_count(latent_dim, "latent_dim")
        check_count(data_dim, "data_dim")
        if generator is None:
            generator = make_generator(0)
        weight = torch.randn(data_dim, latent_dim, generator=generator, dtype=torch.float64)
        weight = weight / math.sqrt(latent_dim)
        if bias is None:
            bias = torch.zeros(data_dim)
        elif bias.shape != (data_dim,):
            raise ValueError(f"bias: expected shape [{data_dim}], received {list(bias.shape)}")
        self.weight = nn.Parameter(place(weight, dtype, device))
        self.bias = nn.Parameter(place(bias.detach(), dtype, device))

    @property
    def latent_dim(self) -> int:
        """k, the dimension of z."""
        return int(self.weight.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        """Bernoulli logits W z + b. Shapes: z [*, k] -> [*, p]."""
        return F.linear(z, self.weight, self.bias)

    def mean(self, z: Tensor) -> Tensor:
        """Pixel probabilities sigmoid(W z + b) (reconstructions). Shapes: z [*, k] -> [*, p]."""
        return torch.sigmoid(self(z))

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x_b | z_bk) from the logits (stable: binary_cross_entropy_with_logits).

        Shapes: z [B, K, k], x [B, p] -> [B, K].
        """
        logits = self(z)  # [B, K, p]
        target = x[:, None, :].to(logits.dtype).expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return -bce.sum(-1)


class DigitsData(NamedTuple):
    """Binarized digits split into training and held-out images (labels alongside)."""

    train: Tensor
    """[N, 64] binary (0./1.) training images."""
    test: Tensor
    """[M, 64] binary held-out images."""
    train_labels: Tensor
    """[N] int64 classes 0..9."""
    test_labels: Tensor
    """[M] int64 classes 0..9."""


def load_digits_binary(
    *,
    digit: int | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    threshold: float = 8.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DigitsData:
    """scikit-learn's 8x8 digits, binarized (pixel > threshold), one class or all, split by seed.

    ``digit=None`` keeps all ten classes (1,797 images); ``digit=3`` keeps the 183 threes. A
    seeded permutation puts ``round(test_fraction * N)`` images in the held-out split.

    Shapes: -> train [N, 64], test [M, 64], labels [N], [M].

    >>> data = load_digits_binary(digit=0)
    >>> data.train.shape, data.test.shape, sorted(data.train.unique().tolist())
    (torch.Size([142, 64]), torch.Size([36, 64]), [0.0, 1.0])
    """
    from smcwake._optional import require

    # the images ship with scikit-learn: no download
    load_digits = require("sklearn.datasets", "the digits task").load_digits

    if digit is not None and (isinstance(digit, bool) or digit not in range(10)):
        raise ValueError(f"digit: expected None (all classes) or an int 0..9, received {digit!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), received {test_fraction!r}")
    raw = load_digits()
    images = torch.as_tensor(raw.data, dtype=torch.float64)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    if digit is not None:
        images, labels = images[labels == digit], labels[labels == digit]
    binary = (images > threshold).to(torch.float64)
    order = torch.randperm(len(binary), generator=make_generator(split_seed))
    num_test = round(test_fraction * len(binary))
    test, train = order[:num_test], order[num_test:]
    return DigitsData(
        train=place(binary[train], dtype, device),
        test=place(binary[test], dtype, device),
        train_labels=labels[train].to(device),
        test_labels=labels[test].to(device),
    )


def _initial_decoder(train: Tensor, latent_dim: int, init_seed: int, dtype, device):
    """A decoder with N(0, 1/k) weights and the bias at the logit of the (smoothed) training
    pixel means. Shapes: train [n, 64]."""
    train64 = train.detach().to(dtype=torch.float64, device="cpu")
    pixel_mean = (train64.sum(0) + 0.5) / (len(train64) + 1.0)
    return LinearSigmoidDecoder(
        latent_dim,
        IMAGE_SIZE,
        generator=make_generator(init_seed),
        bias=torch.logit(pixel_mean),
        dtype=dtype,
        device=device,
    )


def digits_task(
    *,
    digit: int | None = None,
    latent_dim: int = 8,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    threshold: float = 8.0,
    init_seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Task, LinearSigmoidDecoder]:
    """The digits task and its decoder (whose parameters the trainer updates).

    Args:
        digit: ``None`` for all ten classes (default), or one class 0..9 as in the paper's
            per-class decoders.
        latent_dim: k, the dimension of z.
        test_fraction, split_seed, threshold: see :func:`load_digits_binary`.
        init_seed: seeds the decoder's initial weights; its bias starts at the logit of the
            (smoothed) training pixel means.

    ``defaults``: ``num_observations`` (all training images), ``num_particles`` (100),
    ``encoder`` (``"gaussian-diag"``), ``num_steps``, ``decoder`` (the same decoder),
    ``decoder_objective`` (``"iwae"``, the IWBO), ``methods`` (wake vs SMC-Wake), ``held_out``:
    a function ``() -> x [M, 64]`` returning the held-out images, and ``runners``
    (:data:`BENCH_RUNNERS`).

    Shapes: z [B, K, k], x [B, 64].

    >>> task, decoder = digits_task(digit=1)
    >>> z_true, x = task.observations(5, seed=0)
    >>> bool(z_true.isnan().all()), x.shape, task.defaults["held_out"]().shape
    (True, torch.Size([5, 64]), torch.Size([36, 64]))
    """
    check_count(latent_dim, "latent_dim")
    data = load_digits_binary(
        digit=digit,
        test_fraction=test_fraction,
        split_seed=split_seed,
        threshold=threshold,
        dtype=dtype,
        device=device,
    )
    decoder = _initial_decoder(data.train, latent_dim, init_seed, dtype, device)
    prior = Independent(
        Normal(
            torch.zeros(latent_dim, dtype=dtype, device=device),
            torch.ones(latent_dim, dtype=dtype, device=device),
        ),
        1,
    )

    def log_likelihood(z: Tensor, x: Tensor) -> Tensor:
        return decoder.log_likelihood(z, x)  # the decoder's current parameters

    def simulate(z: Tensor) -> Tensor:
        return torch.bernoulli(decoder.mean(z).detach())

    which = "all classes" if digit is None else f"class {digit}"
    model = Model(prior, log_likelihood, simulate=simulate, name="digits")

    def observations(n: int, seed: int) -> tuple[Tensor, Tensor]:
        if check_count(n) > len(data.train):
            raise ValueError(
                f"n: expected at most {len(data.train)} (the training images of {which}), "
                f"received {n}"
            )
        chosen = torch.randperm(len(data.train), generator=make_generator(seed))[:n]
        z_true = torch.full((n, latent_dim), math.nan, dtype=dtype, device=device)
        return z_true, data.train[chosen.to(data.train.device)]

    def held_out() -> Tensor:
        return data.test

    task = Task(
        name="digits",
        model=model,
        description=(
            f"scikit-learn's 8x8 handwritten digits ({which}), binarized at pixel > "
            f"{threshold:g}: {len(data.train)} training and {len(data.test)} held-out images. "
            f"z ~ N(0, I_{latent_dim}); p(x | z) = prod Bernoulli(sigmoid(W z + b)) with a "
            "linear-sigmoid decoder learned jointly with the encoder. No reference posterior; "
            "true latents unknown (NaN)."
        ),
        observations=observations,
        defaults={
            "num_observations": len(data.train),
            "num_particles": 100,
            "encoder": "gaussian-diag",
            "num_steps": 5_000,
            "decoder": decoder,
            "decoder_objective": "iwae",
            "methods": ["wake", "smc-wake-c"],
            "held_out": held_out,
            "runners": BENCH_RUNNERS,
        },
    )
    return task, decoder


def digits(
    *,
    digit: int | None = None,
    latent_dim: int = 8,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    threshold: float = 8.0,
    init_seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Task:
    """The digits task alone (decoder in ``task.defaults["decoder"]``); see :func:`digits_task`.

    Shapes: z [B, K, k], x [B, 64].

    >>> task = digits(digit=7, latent_dim=4)
    >>> task.model.dim, isinstance(task.defaults["decoder"], LinearSigmoidDecoder)
    (4, True)
    """
    task, _ = digits_task(
        digit=digit,
        latent_dim=latent_dim,
        test_fraction=test_fraction,
        split_seed=split_seed,
        threshold=threshold,
        init_seed=init_seed,
        dtype=dtype,
        device=device,
    )
    return task
