"""The user's generative model: a prior p(z) and a batched log-likelihood log p(x | z).

Shapes throughout the library: observations first, then particles, then the event dimension,
``x [B, p]``, ``z [B, K, d]``, log-densities ``[B, K]``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, Transform, Uniform, constraints
from torch.distributions.utils import lazy_property

from smcwake import _rng
from smcwake._ops import all_last, select

_COORDINATE_LOOP_MAX_DIM = 20
"""Box priors up to this dimension test z against the bounds one coordinate at a time: on CPU
that is faster than one comparison followed by ``all`` over the last axis (about 2x at d = 10,
1.3-1.9x at d = 16 for 32 x 1000 and 128 x 1000 points; ``all`` wins from about d = 32).
Beyond it the reduction is :func:`smcwake._ops.all_last`."""

__all__ = [
    "Model",
    "LogLikelihood",
    "Simulator",
    "check_log_likelihood",
    "model_fingerprint",
    "fingerprint_differences",
]

LogLikelihood = Callable[[Tensor, Tensor], Tensor]
"""``log_likelihood(z [B, K, d], x [B, p]) -> [B, K]``."""

Simulator = Callable[[Tensor], Tensor]
"""``simulate(z [N, d]) -> x [N, p]``; may use torch's global RNG (it is forked and seeded)."""


def check_log_likelihood(loglik: Tensor, z: Tensor, rows: Tensor | None = None) -> Tensor:
    """Validate one batch of log-likelihood values; return them unchanged.

    ``-inf`` is a valid zero likelihood. NaN and ``+inf`` are errors in the user's model and raise
    a ``ValueError`` naming the observations and the number of particles affected.

    Shapes: loglik [B, K], z [B, K, d]; ``rows`` [B] maps local rows to dataset indices.
    """
    # one reduction decides the common case: the sum is finite or -inf exactly when there is
    # no NaN and no +inf (+inf plus anything but -inf is +inf, plus -inf is NaN)
    total = loglik.sum()
    if bool(total < math.inf):
        return loglik
    bad = torch.isnan(loglik) | (loglik == math.inf)
    if bool(bad.any()):
        per_obs = bad.sum(-1)
        obs = torch.nonzero(per_obs).flatten()
        b, k = (int(i) for i in torch.nonzero(bad)[0])
        kind = "NaN" if bool(torch.isnan(loglik[b, k])) else "+inf"
        names = obs if rows is None else rows[obs]
        shown = ", ".join(
            f"{int(n)} ({int(per_obs[o])} particles)"
            for n, o in zip(names[:5], obs[:5], strict=False)
        )
        more = "" if len(obs) <= 5 else f" and {len(obs) - 5} more"
        first = int(b if rows is None else rows[b])
        raise ValueError(
            f"log_likelihood returned NaN or +inf at {int(bad.sum())} points in {len(obs)} "
            f"observation(s): {shown}{more}; first: {kind} at observation {first}, particle {k}, "
            f"z = {z[b, k].tolist()}. Return -inf for zero likelihood; NaN means the model "
            "failed to evaluate."
        )
    return loglik


def _base_constraint(support: constraints.Constraint) -> constraints.Constraint:
    """The constraint on the coordinates: ``support`` without its ``independent`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _check_continuous_support(prior: Distribution) -> None:
    """Raise ``ValueError`` for priors whose support is discrete or of lower dimension than d.

    The move kernels propose points in R^d; on a discrete set or on the simplex (a Dirichlet
    prior, whose d coordinates sum to 1) they would not target the posterior.
    """
    try:
        support = prior.support
    except NotImplementedError:
        raise TypeError(
            f"prior: {type(prior).__name__} does not define `support`, which the samplers need "
            "to reject proposals outside it. Add a class attribute, e.g. `support = "
            "torch.distributions.constraints.real_vector` (any z in R^d) or "
            "`constraints.independent(constraints.interval(low, high), 1)` (a box)"
        ) from None
    if support.is_discrete:
        raise ValueError(
            f"prior: expected a continuous distribution, received {type(prior).__name__} with "
            f"discrete support {support}. The samplers move z continuously in R^d; sum a "
            "discrete latent variable out inside the likelihood instead."
        )
    if isinstance(_base_constraint(support), type(constraints.simplex)):
        raise ValueError(
            f"prior: {type(prior).__name__} has support on the simplex, a surface of dimension "
            "d - 1 in R^d, where the samplers cannot move. Sample the d - 1 unconstrained "
            "coordinates instead: prior = TransformedDistribution(Dirichlet(alpha), "
            "[StickBreakingTransform().inv]) (event shape [d - 1]), and map z back with "
            "StickBreakingTransform()(z) inside the likelihood."
        )


class Model:
    """A prior over ``z`` in R^d (or a subset) and a likelihood that can be evaluated in batch.

    Args:
        prior: a ``torch.distributions.Distribution`` with ``event_shape == (d,)`` and empty batch
            shape, e.g. ``Independent(Normal(zeros(d), ones(d)), 1)`` or ``MultivariateNormal``.
            Its parameters' device is the device the model runs on.
        log_likelihood: ``f(z [B, K, d], x [B, p]) -> [B, K]``: log p(x_b | z_bk). Return ``-inf``
            for zero likelihood; NaN is reported as an error. It only needs to be defined inside
            the prior's support: the samplers also call it at proposals outside, and ignore
            what it returns there (NaN included) or, if it raises, call it again with those
            points moved inside.
        simulate: optional ``g(z [N, d]) -> x [N, p]`` drawing x ~ p(x | z) (needed by the sleep /
            NPE baseline and by simulation-based checks).
        name: a label used in logs and reports.
        x_dim: p, the number of columns the likelihood expects in ``x``, when known. Then
            :meth:`check_x` refuses observations of another width before any evaluation;
            without it (the default) a wrong width shows as an error of the likelihood, which
            :meth:`log_likelihood` reports with the shapes of ``z`` and ``x``.

    Shapes: ``log_prior(z [*, d]) -> [*]``, ``log_likelihood(z [B, K, d], x [B, p]) -> [B, K]``.

    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    >>> def loglik(z, x):
    ...     return Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1)
    >>> model = Model(prior, loglik)
    >>> model.log_likelihood(torch.zeros(3, 5, 2), torch.ones(3, 2)).shape
    torch.Size([3, 5])
    """

    def __init__(
        self,
        prior: Distribution,
        log_likelihood: LogLikelihood,
        *,
        simulate: Simulator | None = None,
        name: str = "model",
        x_dim: int | None = None,
    ) -> None:
        if x_dim is not None and (
            isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1
        ):
            raise ValueError(f"x_dim: expected None or an integer >= 1, received {x_dim!r}")
        if not isinstance(prior, Distribution):
            raise TypeError(
                "prior: expected a torch.distributions.Distribution, received "
                f"{type(prior).__name__}"
            )
        if len(prior.event_shape) != 1 or len(prior.batch_shape) != 0:
            raise ValueError(
                "prior: expected event_shape [d] and empty batch_shape, received "
                f"batch_shape {list(prior.batch_shape)}, event_shape {list(prior.event_shape)}. "
                "Wrap a product of scalar distributions as "
                "torch.distributions.Independent(dist, 1)."
            )
        if not callable(log_likelihood):
            raise TypeError(
                "log_likelihood: expected a callable f(z [B, K, d], x [B, p]) -> [B, K]"
            )
        if simulate is not None and not callable(simulate):
            raise TypeError(
                "simulate: expected None or a callable g(z [N, d]) -> x [N, p], received "
                f"{type(simulate).__name__}"
            )
        _check_continuous_support(prior)
        self.prior = prior
        self._log_likelihood = log_likelihood
        self._simulate = simulate
        self.name = name
        self.dim = int(prior.event_shape[0])
        self._unbounded = _base_constraint(prior.support) is constraints.real
        self._box = _uniform_box(prior)
        self._diagonal_normal = _is_plain_independent(prior, Normal)
        self.x_dim = x_dim
        self._interior: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._box_cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, ...]] = {}

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, dim={self.dim}, prior={self.prior!r})"

    @property
    def can_simulate(self) -> bool:
        """Whether a simulator was given."""
        return self._simulate is not None

    # ------------------------------------------------------------------ prior
    def _box_for(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(low [d], high [d], log density []) of a uniform box prior in z's dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._box_cache:
            low, high = (t.detach().to(dtype=like.dtype, device=like.device) for t in self._box)
            log_density = -torch.log((high - low).double()).sum().to(like.dtype)
            self._box_cache[key] = (low, high, log_density)
        return self._box_cache[key]

    def _interior_point(self, like: Tensor) -> Tensor:
        """A point inside the prior's support, used to keep log_prob finite where masked."""
        key = (like.dtype, like.device)
        if key not in self._interior:
            try:
                point = self.prior.mean.detach()
            except NotImplementedError:
                point = None
            if (
                point is None
                or not bool(torch.isfinite(point).all())
                or not bool(self.prior.support.check(point))
            ):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    point = self.prior.sample().detach()
            self._interior[key] = point.to(dtype=like.dtype, device=like.device)
        return self._interior[key]

    def _moved_inside(self, z: Tensor, inside: Tensor) -> Tensor:
        """z with the points where ``inside`` is False replaced by a point inside the support.

        Shapes: z [*, d], inside [*] bool -> [*, d].
        """
        return torch.where(inside[..., None], z, self._interior_point(z))

    def log_prior(self, z: Tensor) -> Tensor:
        """Log prior density, ``-inf`` outside the support (whatever torch's validation flag).

        Shapes: z [*, d] -> [*].
        """
        if self._diagonal_normal:  # the most common prior, in four passes over z
            base = self.prior.base_dist
            loc, scale = (t.to(dtype=z.dtype, device=z.device) for t in (base.loc, base.scale))
            const = -scale.log().sum() - 0.5 * self.dim * math.log(2 * math.pi)
            return const - 0.5 * ((z - loc) / scale).square().sum(-1)
        if self._unbounded:  # R^d support: nothing to mask
            return self.prior.log_prob(z).to(z.dtype)
        if self._box is not None:  # a product of uniforms: a constant inside the box
            low, high, log_density = self._box_for(z)
            if self.dim <= _COORDINATE_LOOP_MAX_DIM:
                # one comparison per coordinate: reductions over a short last axis are slow
                inside = (z[..., 0] >= low[0]) & (z[..., 0] < high[0])
                for j in range(1, self.dim):
                    inside &= (z[..., j] >= low[j]) & (z[..., j] < high[j])
            else:
                inside = all_last((z >= low) & (z < high))  # Uniform's half-open convention
            return select(inside, log_density.expand(inside.shape), -math.inf)
        inside = self.prior.support.check(z)
        if inside.dim() == z.dim():  # an element-wise constraint: reduce over the event
            inside = all_last(inside)
        log_prob = self.prior.log_prob(self._moved_inside(z, inside))
        return torch.where(inside, log_prob, -math.inf).to(z.dtype)

    def sample_prior(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw from the prior; torch's global RNG is forked and seeded from ``generator``.

        Shapes: -> [*shape, d].
        """
        with _rng.forked_rng(generator, device):
            z = self.prior.sample(shape)
        return z.to(dtype=dtype or z.dtype, device=device or z.device)

    # -------------------------------------------------------------- likelihood
    def check_x(self, x: Tensor) -> Tensor:
        """Validate observations: a finite floating-point tensor [B, p]. Returns x.

        Shapes: x [B, p].
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor [B, p], received {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(
                f"x: expected shape [B, p] (observations first), received {list(x.shape)}; "
                "a single observation is x[None, :]"
            )
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, received dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x: received no observations (B = 0)")
        if self.x_dim is not None and x.shape[1] != self.x_dim:
            raise ValueError(
                f"x: expected shape [*, {self.x_dim}] (the model's x_dim), "
                f"received {list(x.shape)}"
            )
        bad_rows = ~torch.isfinite(x).all(-1)
        if bool(bad_rows.any()):
            rows = torch.nonzero(bad_rows).flatten()
            first = int(rows[0])
            kind = "NaN" if bool(torch.isnan(x[first]).any()) else "inf"
            raise ValueError(
                f"x: expected finite observations, received NaN or inf in {rows.numel()} "
                f"observation(s), first {rows[:5].tolist()} ({kind} in observation {first}); "
                "drop or impute them before inference"
            )
        return x

    def log_likelihood(
        self,
        z: Tensor,
        x: Tensor,
        rows: Tensor | None = None,
        *,
        log_prior: Tensor | None = None,
    ) -> Tensor:
        """Evaluate and validate log p(x_b | z_bk).

        NaN or ``+inf`` raise ``ValueError``; ``-inf`` is a valid zero likelihood. A
        ``RuntimeError`` or ``IndexError`` from the user's function (often x with the wrong
        number of columns) is raised again as a ``ValueError`` that names the shapes.

        ``log_prior`` (the log prior at z, when the caller has it) marks the points outside the
        prior's support, where it is ``-inf``: the result is ``-inf`` there whatever the user's
        function returns (a likelihood need not be defined outside the support, e.g. a Poisson
        rate below 0), and if the function raises, it is called again with those points moved
        to a point inside the support.

        The result has z's dtype (a result in another dtype is converted; run the sampler in
        float64 when log-likelihoods are too large for float32's resolution).

        Shapes: z [B, K, d], x [B, p] -> [B, K]; ``rows`` [B] dataset indices for messages;
        ``log_prior`` [B, K].
        """
        if z.dim() != 3 or z.shape[-1] != self.dim or z.shape[0] != x.shape[0]:
            raise ValueError(
                f"z: expected shape [B={x.shape[0]}, K, d={self.dim}], received {list(z.shape)}"
            )
        outside = None if log_prior is None or self._unbounded else log_prior == -math.inf
        try:
            out = self._evaluate_likelihood(z, x)
        except Exception as err:
            if isinstance(err, torch.cuda.OutOfMemoryError) or outside is None:
                raise
            if not bool(outside.any()):
                raise
            # the function may reject points outside the support (torch.distributions'
            # argument validation does): evaluate at an interior point there instead
            out = self._evaluate_likelihood(self._moved_inside(z, ~outside), x)
        if not isinstance(out, Tensor) or out.shape != z.shape[:2]:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"log_likelihood: expected output shape [B, K] = {list(z.shape[:2])} for "
                f"z {list(z.shape)} and x {list(x.shape)}, received {got}. Sum over the "
                "data dimensions and keep the particle axis."
            )
        if out.dtype != z.dtype:  # the samplers keep every quantity in z's dtype
            out = out.to(z.dtype)
        if outside is not None:
            out = select(outside, -math.inf, out)
        return check_log_likelihood(out, z, rows)

    def _evaluate_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """The user's function; a failure is reported with the shapes it was called with."""
        try:  # often a shape mismatch (x of another width than the likelihood's), or a bug
            return self._log_likelihood(z, x)
        except (RuntimeError, IndexError) as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            columns = "x may not have the number of columns p the likelihood expects"
            bug = "the likelihood itself may be at fault (its traceback is chained above)"
            if _mentions_shapes(err):
                hint = f"The message points to shapes: {columns}; or {bug}."
            else:
                hint = f"The message does not mention shapes: {bug}; or {columns}."
            raise ValueError(
                f"log_likelihood failed with z {list(z.shape)} "
                f"(d={self.dim} from the prior) and x {list(x.shape)}: "
                f"{type(err).__name__}: {err}. {hint}"
            ) from err

    def log_joint(self, z: Tensor, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """log p(z) + log p(x | z), ``-inf`` outside the prior's support.

        The likelihood is only evaluated inside the support (points outside are replaced by an
        interior point before the call), so gradients with respect to z stay finite for
        likelihoods that are undefined outside it.

        Shapes: z [B, K, d], x [B, p] -> [B, K].
        """
        log_prior = self.log_prior(z)
        if self._unbounded:
            return log_prior + self.log_likelihood(z, x, rows)
        inside = torch.isfinite(log_prior)
        loglik = self.log_likelihood(self._moved_inside(z, inside), x, rows)
        return torch.where(inside, log_prior + loglik, -math.inf)

    def simulate(self, z: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw x ~ p(x | z) with the user's simulator (global RNG forked, seeded from generator).

        Shapes: z [N, d] -> x [N, p].
        """
        if self._simulate is None:
            raise ValueError(
                f"model {self.name!r} has no simulator; pass Model(..., simulate=fn) to use "
                "simulation-based methods such as 'sleep'"
            )
        with _rng.forked_rng(generator, z.device):
            x = self._simulate(z)
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] != z.shape[0]:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"simulate: expected output shape [N={z.shape[0]}, p], received {got}"
            )
        return x


def _is_plain_independent(prior: Distribution, base_type: type) -> bool:
    """Whether the prior is ``Independent(base_type(...), 1)`` with torch's own log_prob."""
    return (
        isinstance(prior, Independent)
        and isinstance(prior.base_dist, base_type)
        and type(prior).log_prob is Independent.log_prob
        and type(prior.base_dist).log_prob is base_type.log_prob
        and prior.reinterpreted_batch_ndims == 1
    )


def _uniform_box(prior: Distribution) -> tuple[Tensor, Tensor] | None:
    """(low, high) [d] if the prior is a product of uniforms over a box (sbi's BoxUniform is
    one), else None. Its log density is then a constant inside the box, computed without
    torch's generic masking."""
    if not _is_plain_independent(prior, Uniform):
        return None
    base = prior.base_dist
    low, high = base.low.expand(prior.event_shape), base.high.expand(prior.event_shape)
    return low, high


# words in torch's messages for mismatched shapes ("The size of tensor a (3) must match ...",
# "mat1 and mat2 shapes cannot be multiplied", "index 2 is out of bounds for dimension 1")
_SHAPE_WORDS = ("size", "shape", "dimension", "out of bounds", "must match")


def _mentions_shapes(err: BaseException) -> bool:
    """Whether an exception's message reads like a shape mismatch."""
    text = str(err).lower()
    return any(word in text for word in _SHAPE_WORDS)


# ------------------------------------------------------------------------------ fingerprint
_FINGERPRINT_POINTS = 4  # prior draws per observation at which the likelihood is recorded
_FINGERPRINT_OBSERVATIONS = 4  # observations (the first rows of x) it is recorded against
_FINGERPRINT_SEED = 0
_MAX_DEPTH = 6  # how deep the prior's attributes are followed (wrappers of wrappers)


def model_fingerprint(model: Model, x: Tensor) -> dict:
    """What identifies a model, for checking that a resumed run uses the same one.

    Records the prior's classes and parameters (every tensor, number and string among its
    attributes, following wrapped distributions, transforms and modules; for torch's
    distributions the parameters named in ``arg_constraints``), and the log-likelihood at a few
    fixed points drawn from the prior with a fixed seed, against the first rows of ``x``. The
    likelihood is evaluated without recording a graph; the run's own random streams are not
    touched. Compare two fingerprints with :func:`fingerprint_differences`.

    Shapes: x [n, p] (the first few rows are used).

    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    >>> def loglik(z, x):
    ...     return Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1)
    >>> x = torch.zeros(3, 2)
    >>> a = model_fingerprint(Model(prior, loglik), x)
    >>> fingerprint_differences(a, model_fingerprint(Model(prior, loglik), x))
    []
    >>> def wider(z, x):
    ...     return Normal(z, 2.0).log_prob(x[:, None, :]).sum(-1)
    >>> fingerprint_differences(a, model_fingerprint(Model(prior, wider), x))[0].split(":")[0]
    'log-likelihood at fixed prior draws'
    """
    classes: dict[str, str] = {}
    values: dict[str, object] = {}
    _describe(model.prior, "prior", classes, values, set(), 0)
    b = min(_FINGERPRINT_OBSERVATIONS, x.shape[0])
    generator = torch.Generator(device=x.device).manual_seed(_FINGERPRINT_SEED)
    z = model.sample_prior(
        (b, _FINGERPRINT_POINTS), generator=generator, dtype=x.dtype, device=x.device
    )
    with torch.no_grad():
        loglik = model.log_likelihood(z, x[:b], log_prior=model.log_prior(z))
    return {
        "classes": classes,
        "values": values,
        "loglik": loglik.detach().to("cpu", torch.float64),
        "dtype": str(x.dtype),
    }


def _describe(obj: object, path: str, classes: dict, values: dict, seen: set, depth: int) -> None:
    """Record the class of a distribution, transform or module at ``path`` and its attributes."""
    if id(obj) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(obj))
    classes[path] = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, torch.nn.Module):
        for name, tensor in obj.state_dict().items():
            values[f"{path}.{name}"] = tensor.detach().to("cpu").clone()
        return
    attributes: dict[str, object] = {}
    try:  # torch's parameters, read through their properties (some are computed lazily)
        names = list(obj.arg_constraints) if isinstance(obj, Distribution) else []
    except NotImplementedError:  # a custom distribution without arg_constraints
        names = []
    for name in names:
        try:
            attributes[name] = getattr(obj, name)
        except Exception:  # noqa: BLE001  (a parameter that cannot be computed: skip it)
            continue
    lazy = {k for k, v in vars(type(obj)).items() if isinstance(v, lazy_property)}
    for name, value in vars(obj).items():
        volatile = name == "_validate_args" or name.startswith("_cached") or name == "_inv"
        if name not in attributes and name not in lazy and not volatile:
            attributes[name] = value
    for name, value in sorted(attributes.items(), key=lambda kv: (kv[0].startswith("_"), kv[0])):
        _describe_value(value, f"{path}.{name}", classes, values, seen, depth)


def _describe_value(
    value: object, path: str, classes: dict, values: dict, seen: set, depth: int
) -> None:
    if isinstance(value, Tensor):
        values[path] = value.detach().to("cpu").clone()
    elif isinstance(value, bool | int | float | str | torch.Size | torch.dtype):
        values[path] = value if not isinstance(value, torch.Size) else tuple(value)
    elif isinstance(value, Distribution | Transform | torch.nn.Module):
        _describe(value, path, classes, values, seen, depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _describe_value(item, f"{path}[{i}]", classes, values, seen, depth + 1)


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """What differs between two :func:`model_fingerprint` results (empty if the same model).

    Tensors and floats are compared with a tolerance for rounding (evaluation order may change
    between versions and devices): relative ``sqrt(eps)`` of their dtype (1.5e-8 in float64,
    3.5e-4 in float32), on top of an absolute floor of the same fraction of the largest
    magnitude in the tensor. Anything else must be equal.
    """
    out = []
    for path in sorted(set(saved["classes"]) | set(current["classes"])):
        before, now = saved["classes"].get(path), current["classes"].get(path)
        if before != now:
            out.append(f"prior class at {path}: checkpoint {before} vs now {now}")
    for path in [*current["values"], *(p for p in saved["values"] if p not in current["values"])]:
        if path not in saved["values"] or path not in current["values"]:
            where = "checkpoint" if path in saved["values"] else "current model"
            out.append(f"prior parameter {path}: only in the {where}")
            continue
        before, now = saved["values"][path], current["values"][path]
        if not _close(before, now):
            out.append(f"prior parameter {path}: checkpoint {_show(before)} vs now {_show(now)}")
    if out:  # other prior draws: the likelihood values cannot be compared
        return out
    before, now = saved["loglik"], current["loglik"]
    eps = torch.finfo(getattr(torch, current["dtype"].removeprefix("torch."))).eps
    if not _close(before, now, eps=eps):
        gap = (before - now).abs().nan_to_num(nan=math.inf, posinf=math.inf)
        out.append(
            f"log-likelihood at fixed prior draws: checkpoint {_show(before)} vs now "
            f"{_show(now)} (largest difference {float(gap.max()):.3g})"
        )
    return out


def _close(a: object, b: object, eps: float | None = None) -> bool:
    if isinstance(a, Tensor) != isinstance(b, Tensor):
        return False
    if not isinstance(a, Tensor):
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=math.sqrt(torch.finfo(torch.float64).eps))
        return type(a) is type(b) and a == b
    if a.shape != b.shape or a.dtype.is_floating_point != b.dtype.is_floating_point:
        return False
    if not a.dtype.is_floating_point:
        return bool(torch.equal(a, b.to(a.dtype)))
    tol = math.sqrt(eps if eps is not None else torch.finfo(a.dtype).eps)
    a, b = a.double(), b.double()
    finite = torch.isfinite(a)
    # infinities (a zero likelihood, an unbounded prior edge) and NaN must sit at the same places
    if not torch.equal(finite, torch.isfinite(b)):
        return False
    rest_a, rest_b = a[~finite], b[~finite]
    if not bool(((rest_a == rest_b) | (rest_a.isnan() & rest_b.isnan())).all()):
        return False
    a, b = a[finite], b[finite]
    if a.numel() == 0:
        return True
    return bool(((a - b).abs() <= tol * (b.abs() + b.abs().max())).all())


def _show(value: object, limit: int = 4) -> str:
    """A short rendering of a recorded value for messages."""
    if not isinstance(value, Tensor):
        return repr(value)
    flat = value.flatten().tolist()
    shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in flat[:limit])
    more = f", ... ({value.numel()} values)" if len(flat) > limit else ""
    return f"[{shown}{more}]"


def __getattr__(name: str) -> Any:
    if name == "forked_rng":  # lived here before smcwake 0.1.0
        warnings.warn(
            "smcwake.model.forked_rng is deprecated since smcwake 0.1.0 and will be removed in "
            "0.2.0: it is an internal helper (smcwake._rng.forked_rng); pass a "
            "torch.Generator to smcwake's functions instead",
            FutureWarning,
            stacklevel=2,
        )
        return _rng.forked_rng
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
