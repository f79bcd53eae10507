"""Encoders: conditional densities q(z | x) over z in the prior's support given x in R^p.

Every encoder is an ``nn.Module`` whose ``forward(x)`` returns a plain
``torch.distributions.Distribution`` with batch shape ``[B]`` and event shape ``[d]``, in the
original units of z. Objectives only need ``log_prob``, ``sample`` and, for the reparameterized
objectives, ``rsample_and_log_prob``.

Support. An encoder built with ``support=prior.support`` (what :func:`smcwake.fit` does by
default) describes the unconstrained variable ``v`` in R^d and maps it onto the support with
``T = torch.distributions.biject_to(support)``: z = T(v). Samples are then always inside the
support and ``log_prob`` is a density on it, log q(z) = log q_v(T^-1(z)) - log |det J_T(T^-1(z))|,
``-inf`` outside. Boxes (``Independent(Uniform(low, high), 1)``, per-coordinate bounds included),
half-lines (HalfNormal, Gamma, LogNormal, Exponential), the unit interval (Beta) and products of
them built with ``constraints.cat`` / ``constraints.independent`` are handled. Without a support
(or with an unbounded one) T is the identity and v is z.

Both sides are standardized with buffers set from real data by ``set_standardization``: the
network sees ``(x - x_loc) / x_scale`` (then the optional embedding net), and describes
``u = (v - z_loc) / z_scale``, the standardized unconstrained variable (z samples passed to
``set_standardization`` are mapped through T^-1 first). The map from u to v is affine and its
log-determinant, ``-sum(log z_scale)``, is part of every log-density. Gaussian and mixture
encoders fold it into their location and scale (the result is again a Gaussian or a mixture);
the flow appends it as an ``AffineTransform``.

Families: ``FlowEncoder`` (neural spline flow from zuko; the default), ``MixtureDensityEncoder``
(mixture of diagonal Gaussians), ``GaussianEncoder`` (full-rank or diagonal). ``build_encoder``
builds one by name. What they share, the base class :class:`Encoder` (standardization, the map
onto the support, input checks), is defined in :mod:`smcwake.encoder_base`, and the support
transforms (:func:`check_support`) in :mod:`smcwake.support_transform`; both are importable
from here.

Shapes: x [B, p]; ``log_prob(z [B, S, d], x) -> [B, S]``; ``sample(x, n) -> [B, n, d]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    constraints,
)
from torch.nn import functional as F

from smcwake._rng import forked_rng
from smcwake.encoder_base import Encoder
from smcwake.support_transform import check_support

__all__ = [
    "Encoder",
    "GaussianEncoder",
    "MixtureDensityEncoder",
    "FlowEncoder",
    "build_encoder",
    "check_support",
    "ENCODER_KINDS",
]

_MIN_SCALE = 1e-4
"""Floor on every scale the networks output, in standardized units of z."""

_SOFTPLUS_ONE = math.log(math.e - 1.0)
"""softplus(raw + _SOFTPLUS_ONE) == 1 at raw == 0: untrained scales start near one."""


def _positive(raw: Tensor) -> Tensor:
    """Softplus with a floor; equals about 1 at ``raw == 0``. Shapes: any -> same."""
    return nn.functional.softplus(raw + _SOFTPLUS_ONE) + _MIN_SCALE


_LOG_2PI = math.log(2 * math.pi)


class GaussianEncoder(Encoder):
    """Gaussian q(z | x) = N(mean(x), L(x) L(x)^T), full-rank or diagonal.

    An MLP outputs the mean and a Cholesky factor whose diagonal is ``softplus + 1e-4`` (in
    standardized units); with ``full_rank=False`` only the diagonal. With a bounded support the
    Gaussian describes v and T maps it onto the support (a logit-normal on a box, a log-normal
    on a half-line); ``gaussian_params`` is then unavailable.

    Shapes: x [B, p] -> MultivariateNormal (full rank) or Independent(Normal) with batch [B].

    >>> encoder = GaussianEncoder(3, 2, hidden=(16,))
    >>> mean, cov = encoder.gaussian_params(torch.zeros(4, 3))
    >>> mean.shape, cov.shape
    (torch.Size([4, 2]), torch.Size([4, 2, 2]))
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        *,
        full_rank: bool = True,
        hidden: Sequence[int] = (64, 64),
        embedding: nn.Module | None = None,
        embedding_dim: int | None = None,
        support: constraints.Constraint | None = None,
    ) -> None:
        super().__init__(
            x_dim, z_dim, embedding=embedding, embedding_dim=embedding_dim, support=support
        )
        self.full_rank = full_rank
        self.kind = "gaussian" if full_rank else "gaussian-diag"
        self.build_options = {"hidden": [int(h) for h in hidden]}
        n_factor = z_dim * (z_dim + 1) // 2 if full_rank else z_dim
        self.net = zuko.nn.MLP(self.context_dim, z_dim + n_factor, hidden_features=tuple(hidden))

    def gaussian_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and covariance in original units (for closed-form KLs).

        Shapes: x [B, p] -> (mean [B, d], cov [B, d, d]).

        >>> mean, cov = GaussianEncoder(3, 1, full_rank=False).gaussian_params(torch.zeros(2, 3))
        >>> cov.shape
        torch.Size([2, 1, 1])
        """
        if self.support is not None:
            raise ValueError(
                f"gaussian_params: this encoder maps a Gaussian onto the support {self.support}, "
                "so q is not Gaussian in z; build it without a support for closed-form metrics"
            )
        dist = self(x)
        if self.full_rank:
            return dist.loc, dist.covariance_matrix
        return dist.base_dist.loc, torch.diag_embed(dist.base_dist.scale.square())

    def _distribution(self, h: Tensor) -> Distribution:
        d = self.z_dim
        out = self.net(h)
        loc = self.z_loc + self.z_scale * out[:, :d]
        if not self.full_rank:
            scale = self.z_scale * _positive(out[:, d:])
            return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        rows, cols = torch.tril_indices(d, d, offset=-1, device=h.device)
        tril = h.new_zeros(h.shape[0], d, d)
        tril[:, rows, cols] = out[:, 2 * d :]
        tril = tril + torch.diag_embed(_positive(out[:, d : 2 * d]))
        scale_tril = self.z_scale[:, None] * tril  # diag(z_scale) @ L: still a Cholesky factor
        return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)

    def _noise_and_draw(
        self, dist: Distribution, n: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """eps from ``generator`` and z = loc + L eps (reparameterized). -> (eps, z), [B, n, d]."""
        base = dist if self.full_rank else dist.base_dist
        loc = base.loc
        eps = torch.randn(
            (loc.shape[0], n, self.z_dim), generator=generator, dtype=loc.dtype, device=loc.device
        )
        if self.full_rank:
            return eps, loc[:, None, :] + eps @ dist.scale_tril.mT
        return eps, loc[:, None, :] + eps * base.scale[:, None, :]

    def _draw(self, dist: Distribution, n: int, generator: torch.Generator | None) -> Tensor:
        """loc + L eps with eps from ``generator``; reparameterized. -> [B, n, d]."""
        return self._noise_and_draw(dist, n, generator)[1]

    def _rsample_and_log_prob(
        self, dist: Distribution, n: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """z = loc + L eps and log q(z) = log N(eps; 0, I) - log |det L|, from eps itself.

        The same function of the parameters as ``log_prob(z)``, but without solving with L:
        in float32 that solve loses all precision once L is ill-conditioned, and the ELBO's
        optimizer then climbs the rounding error (log q of its own draws near -1e20) instead
        of the bound. Shapes: -> ([B, n, d], [B, n]).
        """
        eps, z = self._noise_and_draw(dist, n, generator)
        if self.full_rank:
            log_det = torch.diagonal(dist.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        else:
            log_det = dist.base_dist.scale.log().sum(-1)
        log_q = -0.5 * eps.square().sum(-1) - log_det[:, None] - 0.5 * self.z_dim * _LOG_2PI
        return z, log_q


class MixtureDensityEncoder(Encoder):
    """Mixture density network: q(z | x) = sum_k pi_k(x) N(z; mu_k(x), diag sigma_k(x)^2).

    ``rsample_and_log_prob`` raises ``NotImplementedError``: the component choice is discrete and
    has no reparameterization; use objectives that need only ``log_prob`` and ``sample``.

    Shapes: x [B, p] -> MixtureSameFamily with batch [B], event [d], ``components`` components.

    >>> encoder = MixtureDensityEncoder(3, 2, components=4, hidden=(16,))
    >>> encoder(torch.zeros(5, 3)).mixture_distribution.probs.shape
    torch.Size([5, 4])
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        *,
        components: int = 5,
        hidden: Sequence[int] = (64, 64),
        embedding: nn.Module | None = None,
        embedding_dim: int | None = None,
        support: constraints.Constraint | None = None,
    ) -> None:
        super().__init__(
            x_dim, z_dim, embedding=embedding, embedding_dim=embedding_dim, support=support
        )
        if not isinstance(components, int) or components < 1:
            raise ValueError(f"components: expected a positive int, received {components!r}")
        self.components = components
        self.kind = "mdn"
        self.build_options = {"components": components, "hidden": [int(h) for h in hidden]}
        out = components * (1 + 2 * z_dim)
        self.net = zuko.nn.MLP(self.context_dim, out, hidden_features=tuple(hidden))

    def rsample_and_log_prob(
        self, x: Tensor, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Not available: a mixture's component choice cannot be reparameterized.

        Shapes: x [B, p] -> raises NotImplementedError.

        >>> encoder = MixtureDensityEncoder(1, 1)
        >>> encoder.rsample_and_log_prob(torch.zeros(1, 1), 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        NotImplementedError: MixtureDensityEncoder: ...
        """
        raise NotImplementedError(
            "MixtureDensityEncoder: rsample_and_log_prob is unavailable because the discrete "
            "component choice has no reparameterization; use an objective that needs only "
            "log_prob and sample, or a 'flow' / 'gaussian' encoder"
        )

    def _distribution(self, h: Tensor) -> Distribution:
        k, d = self.components, self.z_dim
        logits, mu, raw = self.net(h).split([k, k * d, k * d], dim=-1)
        loc = self.z_loc + self.z_scale * mu.unflatten(-1, (k, d))  # [B, K, d]
        scale = self.z_scale * _positive(raw.unflatten(-1, (k, d)))
        return MixtureSameFamily(
            Categorical(logits=logits, validate_args=False),
            Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False),
            validate_args=False,
        )

    def _draw(self, dist: Distribution, n: int, generator: torch.Generator | None) -> Tensor:
        """Component by multinomial, then loc + scale eps, all from ``generator``. -> [B, n, d]."""
        component = dist.component_distribution.base_dist  # Normal, batch [B, K, d]
        probs = dist.mixture_distribution.probs  # [B, K]
        index = torch.multinomial(probs, n, replacement=True, generator=generator)  # [B, n]
        index = index[:, :, None].expand(-1, -1, self.z_dim)
        loc, scale = component.loc.gather(1, index), component.scale.gather(1, index)
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + scale * eps


_SPLINE_SLOPE = 1e-3
"""The splines' minimum slope (zuko's NSF default)."""


class _SplineTransform(zuko.transforms.MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline with its knots computed in fewer passes.

    The knots are zuko's: the raw widths and heights are squashed as zuko does, turned into
    bin fractions by a softmax and accumulated from -bound to bound; the derivatives are
    squashed and exponentiated. Here the softmax and the accumulation are one cumulative sum of
    exponentials divided by its last term, without the usual shift by the maximum: the squashed
    values are bounded by |log slope| / 2 (3.5 for zuko's slope), so the exponentials cannot
    overflow. On CPU ATen's softmax over the 8 bins is about 5x slower than its definition, and
    the knots were most of a training step (per transform, knots and spline forward and
    backward 5.3 -> 4.4 ms for 32 x 32 points in 10-d). A flow built with it has the
    parameters, the state dict and, to float rounding, the densities of ``zuko.flows.NSF``
    (tested); the spline itself (bins, forward, inverse, log-determinant) is zuko's.

    Shapes: widths, heights [..., K], derivatives [..., K - 1].
    """

    def __init__(
        self,
        widths: Tensor,
        heights: Tensor,
        derivatives: Tensor,
        bound: float = 5.0,
        slope: float = _SPLINE_SLOPE,
        **kwargs,
    ) -> None:
        torch.distributions.Transform.__init__(self, **kwargs)
        squash = 2 / math.log(slope)  # raw values bounded so that no bin or slope vanishes

        def knots(raw: Tensor) -> Tensor:  # [..., K] -> [..., K + 1], from -bound to bound
            total = torch.exp(raw / (1 + (squash * raw).abs())).cumsum(-1)
            return F.pad(total * (2 * bound / total[..., -1:]) - bound, (1, 0), value=-bound)

        self.horizontal = knots(widths)
        self.vertical = knots(heights)
        derivatives = derivatives / (1 + (0.5 * squash * derivatives).abs())
        self.derivatives = torch.exp(F.pad(derivatives, (1, 1), value=0))

    @property
    def inv(self) -> torch.distributions.Transform:
        """The inverse spline, not stored on ``self`` (``t.inv.inv is t`` still holds).

        torch's ``Transform.inv`` keeps a strong reference to the inverse it builds, and the
        inverse one back: a reference cycle that only Python's cycle collector frees. Inverting
        an autoregressive transform takes d passes, each with a new spline holding its knots,
        and the collector, which counts objects rather than bytes, ran too rarely to free them:
        with zuko's inverse (knots [..., d, bins + 1] three times per pass), drawing 100 samples
        for 60 observations in 40 dimensions grew the process by 1.9 GB (0.17 GB with the
        cycle broken), and 2,000 draws ran out of memory.
        """
        inverse = super().inv
        self._inv = None
        return inverse


def _autoregressive_inverse(transform: nn.Module, h: Tensor, y: Tensor) -> Tensor:
    """x such that ``transform(h)(x) = y``, for zuko's ``MaskedAutoregressiveTransform``.

    zuko inverts in d passes, each running the whole hyper network and every coordinate's
    spline, of which one coordinate's result is new. Here each pass computes only what it
    needs: the hidden layers (the context's share of the first layer once for all passes), the
    output rows of the coordinates whose turn it is (those of one level of ``transform.order``,
    which depend only on lower levels), and their splines. The arithmetic of each coordinate is
    zuko's; only the summation order of the first layer differs (float rounding). A hyper
    network without hidden layers, or a transform without zuko 1.6's attributes, is inverted by
    zuko. Measured (benchmarks/encoder_draws.py,
    default architecture, one thread): 60 observations x 500 draws in 40 dimensions 2.2 s
    against 70 s with zuko's inverse, 1000 x 1000 in 2 dimensions 3.9 s against 10.7 s.

    Shapes: h [B, e], y [n, B, d] -> [n, B, d].
    """
    layout = ("hyper", "order", "total", "shapes")
    if not all(hasattr(transform, name) for name in layout) or len(transform.hyper) == 1:
        # another zuko's layout, or no hidden layer (the output layer reads x and the context)
        return transform(h).inv(y)
    first, *middle, last = transform.hyper
    d, total = y.shape[-1], transform.total
    w_first = first.mask * first.weight  # [H, d + e]: the coordinates, then the context
    w_x = w_first[:, :d]
    from_context = F.linear(h, w_first[:, d:], first.bias)  # [B, H]
    w_last = (last.mask * last.weight).unflatten(0, (d, total))  # [d, total, H]
    b_last = last.bias.unflatten(0, (d, total))
    sizes = [math.prod(shape) for shape in transform.shapes]
    x = torch.zeros_like(y)
    for level in torch.unique(transform.order):
        turn = (transform.order == level).nonzero().squeeze(-1)  # [c] coordinates
        a = F.linear(x, w_x) + from_context
        for layer in middle:
            a = layer(a)
        phi = F.linear(a, w_last[turn].flatten(0, 1), b_last[turn].flatten())
        params = phi.unflatten(-1, (turn.numel(), total)).split(sizes, dim=-1)
        spline = transform.univariate(*params)  # over [n, B, c]
        x = x.index_copy(-1, turn, spline.inv(y.index_select(-1, turn)))
    return x


class FlowEncoder(Encoder):
    """Conditional neural spline flow (``zuko.flows.NSF``) on standardized v; the default.

    The splines act on [-5, 5] (identity outside), which standardized z mostly occupies. For
    ``z_dim == 1`` zuko builds element-wise spline transforms conditioned on x only.

    References:
        | Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032

    Shapes: x [B, p] -> TransformedDistribution (flow, then the affine map to z) with batch [B].

    >>> encoder = FlowEncoder(3, 2, transforms=2, hidden=(16,))
    >>> encoder.log_prob(torch.zeros(4, 5, 2), torch.zeros(4, 3)).shape
    torch.Size([4, 5])
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        *,
        transforms: int = 3,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        embedding: nn.Module | None = None,
        embedding_dim: int | None = None,
        support: constraints.Constraint | None = None,
    ) -> None:
        super().__init__(
            x_dim, z_dim, embedding=embedding, embedding_dim=embedding_dim, support=support
        )
        self.kind = "flow"
        self.build_options = {
            "transforms": int(transforms),
            "hidden": [int(h) for h in hidden],
            "bins": int(bins),
        }
        # zuko.flows.NSF's architecture and parameters, with the faster knot computation
        self.flow = zuko.flows.MAF(
            features=z_dim,
            context=self.context_dim,
            transforms=transforms,
            hidden_features=tuple(hidden),
            univariate=_SplineTransform,
            shapes=[(bins,), (bins,), (bins - 1,)],
        )

    def _distribution(self, h: Tensor) -> Distribution:
        standardized = self.flow(h)  # zuko NormalizingFlow over u = (v - z_loc) / z_scale
        to_v = AffineTransform(self.z_loc, self.z_scale, event_dim=1)
        return TransformedDistribution(standardized, [to_v], validate_args=False)

    def _draw_given(self, h: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
        """zuko's base noise, then each autoregressive transform inverted one coordinate at a
        time (:func:`_autoregressive_inverse`) rather than by zuko's d passes over every
        coordinate. The same draws to float rounding. Shapes: h [B, e] -> [B, n, d].
        """
        if self.z_dim == 1:  # zuko's element-wise transforms: nothing to invert in order
            return super()._draw_given(h, n, generator)
        return self._invert_noise(h, n, generator, with_log_q=False)[0]

    def _rsample_given(
        self, h: Tensor, n: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """As ``_draw_given``, differentiable, with log q: the base density of the noise plus
        each transform's log-determinant at the point it inverted to (one forward pass each).
        zuko's values to float rounding. Shapes: h [B, e] -> ([B, n, d], [B, n]).
        """
        if self.z_dim == 1:
            return super()._rsample_given(h, n, generator)
        return self._invert_noise(h, n, generator, with_log_q=True)

    def _invert_noise(
        self, h: Tensor, n: int, generator: torch.Generator | None, *, with_log_q: bool
    ) -> tuple[Tensor, Tensor | None]:
        """v from zuko's base noise through every transform's inverse, and log q(v) if asked.

        Shapes: h [B, e] -> (v [B, n, d], log_q [B, n] or None).
        """
        flow = self.flow(h)
        with forked_rng(generator, self.z_loc.device):
            u = flow.base.rsample((n,))  # [n, B, d], as zuko's own sampling draws it
        log_q = flow.base.log_prob(u) if with_log_q else None
        for transform in reversed(self.flow.transform.transforms):
            u = _autoregressive_inverse(transform, h, u)
            if log_q is not None:
                log_q = log_q + transform(h).call_and_ladj(u)[1]
        v = (self.z_loc + self.z_scale * u).movedim(0, 1)
        if log_q is None:
            return v, None
        return v, (log_q - self.z_scale.log().sum()).movedim(0, 1)

    def _rsample_and_log_prob(
        self, dist: Distribution, n: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """zuko's fused inverse pass gives u and log q(u) together. -> ([B, n, d], [B, n])."""
        with forked_rng(generator, self.z_loc.device):
            u, log_q = dist.base_dist.rsample_and_log_prob((n,))
        v = self.z_loc + self.z_scale * u
        return v.movedim(0, 1), (log_q - self.z_scale.log().sum()).movedim(0, 1)


ENCODER_KINDS = ("flow", "nsf", "mdn", "gaussian", "gaussian-diag")
"""Names accepted by ``build_encoder``; "nsf" is "flow"."""


def build_encoder(kind: str, x_dim: int, z_dim: int, **options) -> Encoder:
    """Build an encoder by name; ``options`` go to its constructor (e.g. ``hidden=(32, 32)``,
    ``support=prior.support``).

    "flow" / "nsf": FlowEncoder; "mdn": MixtureDensityEncoder; "gaussian": full-rank
    GaussianEncoder; "gaussian-diag": diagonal GaussianEncoder.

    Shapes: x [B, x_dim], z [B, S, z_dim].

    >>> build_encoder("gaussian-diag", 3, 2).full_rank
    False
    """
    if kind in ("flow", "nsf"):
        return FlowEncoder(x_dim, z_dim, **options)
    if kind == "mdn":
        return MixtureDensityEncoder(x_dim, z_dim, **options)
    if kind in ("gaussian", "gaussian-diag"):
        return GaussianEncoder(x_dim, z_dim, full_rank=kind == "gaussian", **options)
    raise ValueError(f"kind: expected one of {', '.join(ENCODER_KINDS)}, received {kind!r}")
