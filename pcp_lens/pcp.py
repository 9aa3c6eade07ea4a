"""PCP ablation: replace a module by a symmetric low-rank map built from its principal components.

The paper's Equation 1 (recovered in ``METHODS.md`` §8.4) replaces the module at a site by

    M = Σ_l α_l û_l û_lᵀ        (d_model × d_model, symmetric, rank ≤ r)

applied position-wise to the tensor the module *receives* (its LayerNorm output, affine included),
and written where the module's output goes (``hook_mlp_out`` / ``hook_attn_out``). The directions
û_l are principal components of the module's *output* over an input set; the signed scales α_l are
the only free parameters. The paper writes α_l = s_l·f_l² (tuned factor f, sign/multiplier s); see
:func:`scales_from_factors` and :func:`factors_from_scales`.

Workflow:

* :func:`fit_pca` — principal components of each site's output (streaming covariance, or
  scikit-learn for small sets), with explained variance.
* :func:`fit_pcp` — directions (``"principal"``, the paper's; or ``"reference_code"``, the authors'
  inverse-transform variant of ``METHODS.md`` §8.3) and scales (least squares by default) →
  an immutable :class:`PCPReplacement`.
* :meth:`PCPReplacement.hooks` — TransformerLens hooks for ``model.hooks``, ``run_with_hooks``,
  ``run_with_cache`` and ``generate``.
* :meth:`PCPReplacement.scale`, :meth:`PCPReplacement.flip` — edits that return new values.
* :meth:`PCPReplacement.save` / :meth:`PCPReplacement.load` — safetensors + JSON metadata.
* :func:`least_squares_scales` — the closed-form α that best reproduce the modules' own outputs.

Tuning with Optuna and factor sweeps live in :mod:`pcp_lens.tuning`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._io import atomic_file, check_format
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens
from pcp_lens.sites import MODULE_KINDS, Site, SiteLike
from pcp_lens.stats import RunningMoments, _position_mask, collect_stats, stream_activations

__all__ = [
    "PCAFit",
    "PCPReplacement",
    "SitePCP",
    "factors_from_scales",
    "fit_pca",
    "fit_pcp",
    "least_squares_scales",
    "reference_code_directions",
    "scales_from_factors",
]

DirectionKind = Literal["principal", "reference_code", "custom"]
DIRECTION_KINDS: tuple[str, ...] = get_args(DirectionKind)
PCAMethod = Literal["streaming", "sklearn"]
HookFn = Callable[..., Tensor | None]

FORMAT = "pcp_lens.PCPReplacement"
FORMAT_VERSION = 1
_UNIT_TOL = 1e-5  # how far from unit norm a stored direction may be


# ------------------------------------------------------------------------------------------------
# sites, ranks and small helpers
# ------------------------------------------------------------------------------------------------


def _pcp_site(spec: SiteLike, model: HookedTransformer | None = None, arg: str = "sites") -> Site:
    """Parse one site and refuse the kinds PCP cannot replace."""
    site = Site.parse(spec)
    if site.kind not in MODULE_KINDS or site.head is not None:
        raise ValueError(
            f"{arg}: PCP replaces whole attention or MLP modules; got {site.name!r} (kind "
            f"{site.kind!r}{'' if site.head is None else f', head {site.head}'}); allowed: "
            "'attnL' or 'mlpL' sites such as 'attn1', 'mlp0'"
        )
    if model is not None:
        site.validate(model)
        if site.input_hook_name not in model.hook_dict:
            raise ValueError(
                f"{arg}: site {site.name!r} has no LayerNorm before its module in this model "
                f"(normalization_type={model.cfg.normalization_type!r}); PCP needs the LayerNorm "
                "output the module receives"
            )
    return site


def pcp_sites(
    sites: SiteLike | Iterable[SiteLike], model: HookedTransformer | None = None
) -> list[Site]:
    items = [sites] if isinstance(sites, (str, Site)) else list(sites)
    if not items:
        raise ValueError("sites: need at least one 'attnL' or 'mlpL' site, got none")
    out = [_pcp_site(s, model) for s in items]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"sites: each site may appear once, got {names}")
    return sorted(out, key=Site.sort_key)


def _ranks(
    rank: int | Mapping[SiteLike, int], sites: Sequence[Site], d_model: int
) -> dict[str, int]:
    if isinstance(rank, Mapping):
        given = {Site.parse(k).name: v for k, v in rank.items()}
        missing = [s.name for s in sites if s.name not in given]
        extra = sorted(set(given) - {s.name for s in sites})
        if missing or extra:
            raise ValueError(
                f"rank: a mapping must give one rank per site; missing {missing}, unknown {extra}"
            )
    else:
        given = {s.name: rank for s in sites}
    for name, r in given.items():
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= d_model:
            raise ValueError(
                f"rank must be an int in 1..{d_model} (d_model) for site {name!r}, got {r!r}"
            )
    return given


def _as_f64(x: Any, arg: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        try:  # python floats are float64: never round them through float32
            t = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{arg} must be real numbers, got {x!r}") from e
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{arg} must be real numbers, got dtype {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float64).clone().contiguous()


def _check_finite(t: Tensor, arg: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{arg} must be finite, got non-finite values (nan or inf)")


def _flip_signs(components: Float[Tensor, "r d"]) -> Float[Tensor, "r d"]:
    """scikit-learn's sign convention: the largest-magnitude entry of each component is positive."""
    idx = components.abs().argmax(-1)
    signs = torch.sign(components.gather(-1, idx[:, None]))
    signs[signs == 0] = 1
    return components * signs


# ------------------------------------------------------------------------------------------------
# α = s·f²
# ------------------------------------------------------------------------------------------------


def scales_from_factors(
    factors: Sequence[float] | Tensor, signs: Sequence[float] | Tensor | None = None
) -> Float[Tensor, " r"]:
    """The paper's parametrisation: scales α_l = s_l·f_l² from factors f and multipliers s.

    The sign of ``f`` is irrelevant (it enters squared); only ``s`` (default 1) flips a term.

    Examples:
        >>> scales_from_factors([1.0134995205857498, 0.9406299848075284], [-1.2, 0.5])
        tensor([-1.2326,  0.4424], dtype=torch.float64)
    """
    f = _as_f64(factors, "factors").reshape(-1)
    s = torch.ones_like(f) if signs is None else _as_f64(signs, "signs").reshape(-1)
    if s.shape != f.shape:
        raise ValueError(f"signs must have one entry per factor ({f.numel()}), got {s.numel()}")
    return s * f * f


def factors_from_scales(
    scales: Sequence[float] | Tensor,
) -> tuple[Float[Tensor, " r"], Float[Tensor, " r"]]:
    """Split scales into the paper's ``(signs, factors)`` with α = s·f², s = ±1 and f = √|α| ≥ 0.

    Examples:
        >>> s, f = factors_from_scales([-4.0, 0.25])
        >>> s.tolist(), f.tolist()
        ([-1.0, 1.0], [2.0, 0.5])
    """
    a = _as_f64(scales, "scales").reshape(-1)
    s = torch.where(a < 0, -1.0, 1.0).to(torch.float64)
    return s, a.abs().sqrt()


# ------------------------------------------------------------------------------------------------
# PCA of module outputs
# ------------------------------------------------------------------------------------------------


def reference_code_directions(
    mean: Float[Tensor, " d_model"], components: Float[Tensor, "r d_model"]
) -> Float[Tensor, "r d_model"]:
    """The authors' code's directions: the inverse PCA transform of a constant vector, normalised.

    For component ``l`` (``METHODS.md`` §8.3): ``e = 𝟙/d``, ``c_l = (e − μ)·v_l``,
    ``w_l = μ + c_l·v_l`` (``inverse_transform`` adds the mean back), ``û_l = w_l/‖w_l‖``. When the
    mean is not small every ``û_l`` is close to the mean direction.

    Examples:
        >>> v = torch.eye(3, dtype=torch.float64)[:2]
        >>> reference_code_directions(torch.zeros(3, dtype=torch.float64), v)
        tensor([[1., 0., 0.],
                [0., 1., 0.]], dtype=torch.float64)
    """
    mean = _as_f64(mean, "mean")
    comps = _as_f64(components, "components")
    d = mean.shape[-1]
    e = torch.full((d,), 1.0 / d, dtype=torch.float64)
    c = (e - mean) @ comps.T  # [r]
    w = mean[None, :] + c[:, None] * comps
    norm = w.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("reference_code directions are undefined: a vector w_l is zero")
    return w / norm


@dataclass(frozen=True, eq=False)
class PCAFit:
    """Principal components of one site's output activations over an input set (float64, CPU).

    ``components`` are orthonormal rows sorted by explained variance, with scikit-learn's sign
    convention (the largest-magnitude entry of each row is positive); ``explained_variance`` uses
    the unbiased (n − 1) covariance, as scikit-learn does.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> fit = fit_pca(tiny_model(), torch.randint(0, 50, (8, 6)), "mlp0", 2, progress=False)
        >>> fit["mlp0"].components.shape, fit["mlp0"].n_samples
        (torch.Size([2, 16]), 48)
    """

    site: Site
    mean: Float[Tensor, " d_model"]
    components: Float[Tensor, "rank d_model"]
    explained_variance: Float[Tensor, " rank"]
    explained_variance_ratio: Float[Tensor, " rank"]
    n_samples: int

    @property
    def rank(self) -> int:
        """Number of components kept."""
        return self.components.shape[0]

    def directions(self, kind: Literal["principal", "reference_code"] = "principal") -> Tensor:
        """The unit directions û_l of the chosen kind (see :func:`reference_code_directions`).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> fit = fit_pca(tiny_model(), torch.randint(0, 50, (8, 4)), "mlp0", 2, progress=False)
            >>> fit["mlp0"].directions("reference_code").norm(dim=-1).tolist()
            [1.0, 1.0]
        """
        if kind == "principal":
            return self.components.clone()
        if kind == "reference_code":
            return reference_code_directions(self.mean, self.components)
        raise ValueError(f"directions must be 'principal' or 'reference_code', got {kind!r}")


def _fit_from_cov(site: Site, mean: Tensor, cov: Tensor, n: int, rank: int) -> PCAFit:
    evals, evecs = torch.linalg.eigh(cov.to(torch.float64))
    order = torch.argsort(evals, descending=True)
    evals, comps = evals[order], evecs[:, order].T
    total = cov.diagonal().sum()
    if not float(total) > 0:
        raise ValueError(
            f"activations at site {site.name!r} have zero variance over the inputs; there are "
            "no principal components to fit"
        )
    ev = evals[:rank].clamp_min(0)
    return PCAFit(
        site=site,
        mean=mean.to(torch.float64).cpu().clone(),
        components=_flip_signs(comps[:rank]).contiguous().cpu(),
        explained_variance=ev.cpu(),
        explained_variance_ratio=(ev / total).cpu(),
        n_samples=n,
    )


def _fit_sklearn(site: Site, x: Tensor, rank: int) -> PCAFit:
    from sklearn.decomposition import PCA

    x = x.to(torch.float64).cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"non-finite activations (nan or inf) at site {site.name!r}")
    pca = PCA(n_components=rank, svd_solver="full").fit(x.numpy())
    total = float(x.var(0, unbiased=True).sum())
    if not total > 0:
        raise ValueError(
            f"activations at site {site.name!r} have zero variance over the inputs; there are "
            "no principal components to fit"
        )
    return PCAFit(
        site=site,
        mean=_as_f64(pca.mean_, "mean"),
        components=_as_f64(pca.components_, "components"),
        explained_variance=_as_f64(pca.explained_variance_, "explained_variance"),
        explained_variance_ratio=_as_f64(pca.explained_variance_ratio_, "ratio"),
        n_samples=x.shape[0],
    )


def fit_pca(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike],
    rank: int | Mapping[SiteLike, int],
    *,
    positions: Sequence[int] | None = None,
    method: PCAMethod = "streaming",
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, PCAFit]:
    """Fit the principal components of each site's module output over ``inputs``.

    Args:
        model: the model whose module outputs are analysed (its hooks are left untouched; any
            hooks the caller attached stay in effect).
        inputs: tokens ``[batch, pos]`` or strings (ragged inputs are right-padded and masked).
        sites: attention or MLP sites, e.g. ``"mlp0"`` or ``["attn1", "mlp2"]``.
        rank: components to keep, one int for all sites or ``{site: rank}``; each must lie in
            ``1..min(d_model, n_samples - 1)``.
        positions: token positions to pool (negative counts from each sequence's end);
            ``None`` pools every real position. The paper uses position 1 (toy) or 8 (GPT-2).
        method: ``"streaming"`` (float64 running covariance, any number of inputs) or
            ``"sklearn"`` (``sklearn.decomposition.PCA`` on all activations held in memory; for
            small sets). Both give the same components up to sign and the same variances.
        batch_size: rows per forward pass.
        progress: show a progress bar.

    Returns:
        ``{site name: PCAFit}``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> fits = fit_pca(tiny_model(), torch.randint(0, 50, (8, 4)), ["mlp0", "attn1"], 3,
        ...                positions=[1], progress=False)
        >>> sorted(fits), fits["mlp0"].explained_variance.shape
        (['attn1', 'mlp0'], torch.Size([3]))
    """
    site_list = pcp_sites(sites, model)
    ranks = _ranks(rank, site_list, model.cfg.d_model)
    if method not in get_args(PCAMethod):
        raise ValueError(f"method must be 'streaming' or 'sklearn', got {method!r}")
    tb = as_tokens(model, inputs, allow_ragged=True)
    n = int(_position_mask(tb, positions).sum())
    _check_samples(n, ranks, model.cfg.d_model)
    where = f"while fitting PCA at sites {[s.name for s in site_list]}"
    fits: dict[str, PCAFit] = {}
    if method == "streaming":
        try:
            stats = collect_stats(
                model, inputs, site_list, positions, batch_size, cov=True, progress=progress
            )
        except ValueError as e:
            raise ValueError(f"inputs: {e} ({where})") from e
        for s in site_list:
            st = stats[s.name]
            assert st.cov is not None
            fits[s.name] = _fit_from_cov(s, st.mean, st.cov, st.n, ranks[s.name])
        return fits
    rows: dict[str, list[Tensor]] = {s.hook_name: [] for s in site_list}
    for got in stream_activations(
        model, tb, list(rows), positions, batch_size=batch_size, progress=progress
    ):
        for h, x in got.items():
            rows[h].append(x.detach().to("cpu", torch.float64))
    for s in site_list:
        fits[s.name] = _fit_sklearn(s, torch.cat(rows[s.hook_name]), ranks[s.name])
    return fits


def _check_samples(n: int, ranks: Mapping[str, int], d_model: int) -> None:
    if n < 2:
        raise ValueError(
            f"inputs: PCA needs at least 2 activation vectors per site (and rank + 1 for a given "
            f"rank), got {n} at the chosen positions"
        )
    for name, r in ranks.items():
        if r > n - 1:
            raise ValueError(
                f"rank must be an int in 1..{min(d_model, n - 1)} (min(d_model={d_model}, "
                f"n_samples - 1={n - 1})) for site {name!r}, got {r}; pass more inputs or "
                "positions, or a smaller rank"
            )


# ------------------------------------------------------------------------------------------------
# the replacement value
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SitePCP:
    """One site's replacement ``y = x·M (+ b)`` with ``M = Σ_l α_l û_l û_lᵀ``; float64, CPU.

    Args:
        site: an attention or MLP site.
        directions: unit rows û_l ``[rank, d_model]`` (orthonormal for ``"principal"``).
        scales: signed α_l ``[rank]``, the only free parameters of Equation 1.
        bias: optional ``[d_model]`` added to every position (off in the paper).
        kind: how ``directions`` were obtained: ``"principal"``, ``"reference_code"`` or
            ``"custom"``.
        explained_variance: optional ``[rank]`` variance of the module output along each
            principal component (for reporting).
        explained_variance_ratio: optional ``[rank]`` share of the total output variance.

    Tensors are copied to float64 on construction; treat them as read-only (every edit method
    returns a new value).

    Examples:
        >>> p = SitePCP("mlp0", torch.eye(4)[:2], [2.0, -1.0])
        >>> p.matrix().diagonal().tolist()
        [2.0, -1.0, 0.0, 0.0]
    """

    site: Site
    directions: Float[Tensor, "rank d_model"]
    scales: Float[Tensor, " rank"]
    bias: Float[Tensor, " d_model"] | None = None
    kind: DirectionKind = "custom"
    explained_variance: Float[Tensor, " rank"] | None = None
    explained_variance_ratio: Float[Tensor, " rank"] | None = None

    def __post_init__(self) -> None:
        site = _pcp_site(self.site, arg="site")
        object.__setattr__(self, "site", site)
        u = _as_f64(self.directions, f"directions of site {site.name!r}")
        if u.dim() != 2 or u.shape[0] < 1 or u.shape[1] < 1:
            raise ValueError(
                f"directions of site {site.name!r} must be a [rank, d_model] matrix with "
                f"rank >= 1, got shape {tuple(u.shape)}"
            )
        _check_finite(u, f"directions of site {site.name!r}")
        norms = u.norm(dim=-1)
        if bool(((norms - 1).abs() > _UNIT_TOL).any()):
            raise ValueError(
                f"directions of site {site.name!r} must be unit vectors (rows of norm 1), got "
                f"norms {[round(float(v), 6) for v in norms]}"
            )
        r, d = u.shape
        if r > d:
            raise ValueError(f"rank must be an int in 1..{d} (d_model), got {r} directions")
        a = _as_f64(self.scales, f"scales of site {site.name!r}").reshape(-1)
        if a.numel() != r:
            raise ValueError(
                f"scales of site {site.name!r} must have length {r} (the rank), got {a.numel()}"
            )
        _check_finite(a, f"scales of site {site.name!r}")
        object.__setattr__(self, "directions", u)
        object.__setattr__(self, "scales", a)
        if self.bias is not None:
            b = _as_f64(self.bias, f"bias of site {site.name!r}").reshape(-1)
            if b.numel() != d:
                raise ValueError(
                    f"bias of site {site.name!r} must have length {d} (d_model), got {b.numel()}"
                )
            _check_finite(b, f"bias of site {site.name!r}")
            object.__setattr__(self, "bias", b)
        if self.kind not in DIRECTION_KINDS:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, DIRECTION_KINDS))}, got {self.kind!r}"
            )
        for name in ("explained_variance", "explained_variance_ratio"):
            v = getattr(self, name)
            if v is not None:
                t = _as_f64(v, f"{name} of site {site.name!r}").reshape(-1)
                if t.numel() != r:
                    raise ValueError(
                        f"{name} of site {site.name!r} must have length {r}, got {t.numel()}"
                    )
                object.__setattr__(self, name, t)

    @property
    def rank(self) -> int:
        """Number of directions r."""
        return self.directions.shape[0]

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self.directions.shape[1]

    @property
    def signs(self) -> Float[Tensor, " rank"]:
        """s_l = ±1 in α_l = s_l·f_l² (zero scales count as +1)."""
        return factors_from_scales(self.scales)[0]

    @property
    def factors(self) -> Float[Tensor, " rank"]:
        """f_l = √|α_l| ≥ 0 in α_l = s_l·f_l²."""
        return factors_from_scales(self.scales)[1]

    def matrix(self) -> Float[Tensor, "d_model d_model"]:
        """M = Σ_l α_l û_l û_lᵀ = Ûᵀ diag(α) Û (float64)."""
        u = self.directions
        return (u.T * self.scales) @ u

    def apply(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``x·M (+ b)`` position-wise, computed as ``((x·Ûᵀ)·diag(α))·Û`` in ``x``'s dtype.

        Examples:
            >>> SitePCP("mlp0", torch.eye(3)[:1], [2.0]).apply(torch.tensor([[1.0, 1.0, 1.0]]))
            tensor([[2., 0., 0.]])
        """
        return _Factored(self, x.dtype)(x)


class _Factored:
    """û ``[r, d]``, α ``[r]`` and b ``[d]`` in one dtype, cached per device.

    ``x·M (+ b)`` is computed as ``((x·Ûᵀ)·diag(α))·Û (+ b)``: 4·d·r flops per position instead of
    the d² of a dense M.
    """

    def __init__(self, part: SitePCP, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self._cpu = (
            part.directions.to(dtype),
            part.scales.to(dtype),
            None if part.bias is None else part.bias.to(dtype),
        )
        self._on: dict[torch.device, tuple[Tensor, Tensor, Tensor | None]] = {}

    def on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        if device not in self._on:
            self._on[device] = tuple(  # type: ignore[assignment]
                None if t is None else t.to(device) for t in self._cpu
            )
        return self._on[device]

    def finish(self, z: Float[Tensor, "... r"]) -> Float[Tensor, "... d_model"]:
        """From coordinates ``z = x·Ûᵀ`` to ``x·M (+ b)``."""
        u, alpha, b = self.on(z.device)
        y = (z * alpha) @ u
        return y if b is None else y + b

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        u = self.on(x.device)[0]
        return self.finish(x.to(self.dtype) @ u.T)


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return str(v)


def _components(part: SitePCP, components: int | Iterable[int] | None, arg: str) -> list[int]:
    if components is None:
        return list(range(part.rank))
    items = [components] if isinstance(components, int) else list(components)
    if not items:
        raise ValueError(f"{arg} must name at least one component, got none")
    for c in items:
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < part.rank:
            raise ValueError(
                f"{arg} must be ints in 0..{part.rank - 1} (site {part.site.name!r} has rank "
                f"{part.rank}), got {c!r}"
            )
    return items


@dataclass(frozen=True, eq=False)
class PCPReplacement:
    """An immutable PCP ablation of one or several sites, tied to the model it was fitted on.

    Build it with :func:`fit_pcp` (or :meth:`from_parts`), insert it with :meth:`hooks`, edit it
    with :meth:`scale`, :meth:`flip`, :meth:`with_scales`, :meth:`with_bias` (each returns a new
    value), store it with :meth:`save` / :meth:`load`.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> tokens = torch.randint(0, 50, (16, 6))
        >>> pcp = fit_pcp(model, tokens, "mlp0", rank=2, progress=False)
        >>> with model.hooks(fwd_hooks=pcp.hooks(model)):
        ...     edited = model(tokens)
        >>> edited.shape
        torch.Size([16, 6, 50])
        >>> bool((pcp.flip("mlp0", 1).part("mlp0").scales == pcp.part("mlp0").scales * torch.tensor(
        ...     [1.0, -1.0], dtype=torch.float64)).all())
        True
    """

    parts: tuple[SitePCP, ...]
    fingerprint: Mapping[str, Any] = field(repr=False)

    def __post_init__(self) -> None:
        parts = tuple(self.parts)
        if not parts:
            raise ValueError("parts: a PCP replacement needs at least one site")
        for p in parts:
            if not isinstance(p, SitePCP):
                raise ValueError(f"parts must be SitePCP values, got {type(p).__name__}")
        parts = tuple(sorted(parts, key=lambda p: p.site.sort_key()))
        names = [p.site.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"parts: each site may appear once, got {names}")
        if not isinstance(self.fingerprint, Mapping):
            raise ValueError(
                f"fingerprint must be a mapping, got {type(self.fingerprint).__name__}"
            )
        fp = {str(k): _json_value(v) for k, v in self.fingerprint.items()}
        d_model, n_layers = fp.get("d_model"), fp.get("n_layers")
        if not isinstance(d_model, int) or not isinstance(n_layers, int):
            raise ValueError(
                "fingerprint must record the model's int 'd_model' and 'n_layers', got "
                f"d_model={d_model!r}, n_layers={n_layers!r}"
            )
        for p in parts:
            if p.d_model != d_model:
                raise ValueError(
                    f"directions of site {p.site.name!r} have width {p.d_model} but the model "
                    f"has d_model={d_model}"
                )
            assert p.site.layer is not None
            if p.site.layer >= n_layers:
                raise ValueError(
                    f"layer out of range: {p.site.layer}, model has layers 0..{n_layers - 1} "
                    f"(site {p.site.name!r})"
                )
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "fingerprint", MappingProxyType(fp))

    @classmethod
    def from_parts(cls, model: HookedTransformer, parts: Iterable[SitePCP]) -> PCPReplacement:
        """Bundle per-site replacements with ``model``'s fingerprint (shape and processing).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> PCPReplacement.from_parts(m, [SitePCP("attn1", torch.eye(16)[:1], [0.5])])
            PCPReplacement(attn1: rank 1 custom, α=[0.5])
        """
        return cls(tuple(parts), _tl.processing_fingerprint(model))

    # -- access --------------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[Site, ...]:
        """The replaced sites in forward order."""
        return tuple(p.site for p in self.parts)

    def part(self, site: SiteLike) -> SitePCP:
        """The replacement of one site (``ValueError`` if it is not replaced).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> part = SitePCP("mlp0", torch.eye(16)[:1], [3])
            >>> pcp = PCPReplacement.from_parts(tiny_model(), [part])
            >>> pcp.part("mlp0").rank, pcp.matrix("mlp0")[0, 0].item(), pcp.scales()
            (1, 3.0, {'mlp0': [3.0]})
        """
        name = _pcp_site(site, arg="site").name
        for p in self.parts:
            if p.site.name == name:
                return p
        raise ValueError(
            f"site {name!r} is not replaced by this PCP; its sites are "
            f"{[s.name for s in self.sites]}"
        )

    def __getitem__(self, site: SiteLike) -> SitePCP:
        return self.part(site)

    def __contains__(self, site: object) -> bool:
        try:
            target = Site.parse(site)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return any(p.site == target for p in self.parts)

    def __iter__(self) -> Iterator[SitePCP]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def matrix(self, site: SiteLike) -> Float[Tensor, "d_model d_model"]:
        """M of one site (float64)."""
        return self.part(site).matrix()

    def scales(self) -> dict[str, list[float]]:
        """``{site name: [α_0, α_1, ...]}``."""
        return {p.site.name: p.scales.tolist() for p in self.parts}

    def equal(self, other: PCPReplacement) -> bool:
        """True if ``other`` holds bit-identical tensors, the same kinds and fingerprint.

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> part = SitePCP("mlp0", torch.eye(16)[:1], [3])
            >>> pcp = PCPReplacement.from_parts(tiny_model(), [part])
            >>> pcp.equal(pcp.scale("mlp0", 1.0)), pcp.equal(pcp.flip("mlp0", 0))
            (True, False)
        """
        if dict(self.fingerprint) != dict(other.fingerprint) or len(self) != len(other):
            return False
        for a, b in zip(self.parts, other.parts, strict=True):
            if a.site != b.site or a.kind != b.kind:
                return False
            for name in _TENSOR_FIELDS:
                x, y = getattr(a, name), getattr(b, name)
                if (x is None) != (y is None):
                    return False
                if x is not None and (x.dtype != y.dtype or not torch.equal(x, y)):
                    return False
        return True

    def summary(self) -> pd.DataFrame:
        """A tidy table: one row per (site, component) with α, its s and f, and the variance.

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp0", torch.eye(16)[:1], [-4.0])])
            >>> pcp.summary()[["site", "component", "scale", "sign", "factor"]].values.tolist()
            [['mlp0', 0, -4.0, -1.0, 2.0]]
        """
        rows = []
        for p in self.parts:
            for c in range(p.rank):
                ev, evr = p.explained_variance, p.explained_variance_ratio
                rows.append(
                    {
                        "site": p.site.name,
                        "layer": p.site.layer,
                        "kind": p.site.kind,
                        "component": c,
                        "scale": float(p.scales[c]),
                        "sign": float(p.signs[c]),
                        "factor": float(p.factors[c]),
                        "directions": p.kind,
                        "explained_variance": None if ev is None else float(ev[c]),
                        "explained_variance_ratio": None if evr is None else float(evr[c]),
                    }
                )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{p.site.name}: rank {p.rank} {p.kind}, α={[round(v, 4) for v in p.scales.tolist()]}"
            + (", bias" if p.bias is not None else "")
            for p in self.parts
        )
        return f"PCPReplacement({inner})"

    # -- model guard and hooks -----------------------------------------------------------------
    def check(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` unless ``model`` has the shape and processing this was fitted on.

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> part = SitePCP("mlp0", torch.eye(16)[:1], [3])
            >>> pcp = PCPReplacement.from_parts(tiny_model(), [part])
            >>> pcp.check(tiny_model(d_model=32))
            Traceback (most recent call last):
            ...
            ValueError: model: this PCP replacement was fitted on a model with d_mlp=64, ...
        """
        fp = _tl.processing_fingerprint(model)
        mine = dict(self.fingerprint)
        diff = [k for k in sorted(set(fp) | set(mine)) if _json_value(fp.get(k)) != mine.get(k)]
        if diff:
            was = ", ".join(f"{k}={mine.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={fp.get(k)!r}" for k in diff)
            raise ValueError(
                f"model: this PCP replacement was fitted on a model with {was}, but the given "
                f"model has {now}; apply it only to a model of the same shape and weight "
                "processing (or fit a new replacement on this model)"
            )
        for p in self.parts:
            _pcp_site(p.site, model, arg="model")

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        """TransformerLens forward hooks that insert this replacement into ``model``.

        Per site, two hooks: one on the LayerNorm output the module receives
        (``Site.input_hook_name``) that only remembers it, and one on the module output
        (``hook_mlp_out`` / ``hook_attn_out``) that returns ``x·M (+ b)`` instead, with ``x``
        the LayerNorm output including its affine weights. Within a block the LayerNorm always
        runs before its module's output hook, so the pair works in every forward pass:
        ``model.hooks(fwd_hooks=...)``, ``run_with_hooks``, ``run_with_cache`` (the cache then
        holds the replaced outputs) and ``generate`` (with or without a KV cache). The original
        module still runs; its output is discarded. Nothing is attached here: the list is a
        value to pass on and composes with other hooks (hooks listed earlier on the same hook
        point run first).

        Raises:
            ValueError: if ``model`` differs in shape or weight processing (see :meth:`check`).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp1", torch.eye(16)[:1], [0.5])])
            >>> tuple(name for name, _ in pcp.hooks(m))
            ('blocks.1.ln2.hook_normalized', 'blocks.1.hook_mlp_out')
        """
        self.check(model)
        dtype = torch.promote_types(model.cfg.dtype, torch.float32)
        out: list[tuple[str, HookFn]] = []
        for p in self.parts:
            out.extend(_site_hooks(model, p, dtype))
        return out

    # -- edits ---------------------------------------------------------------------------------
    def _with_part(self, part: SitePCP) -> PCPReplacement:
        parts = tuple(part if p.site == part.site else p for p in self.parts)
        return PCPReplacement(parts, self.fingerprint)

    def with_scales(self, scales: Mapping[SiteLike, Sequence[float] | Tensor]) -> PCPReplacement:
        """A copy with new scales α for the named sites (others unchanged).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp0", torch.eye(16)[:2], [1, 1])])
            >>> pcp.with_scales({"mlp0": [0.5, -2.0]}).scales()
            {'mlp0': [0.5, -2.0]}
        """
        if not isinstance(scales, Mapping):
            raise ValueError(
                f"scales must be a mapping {{site: [α_0, ...]}}, got {type(scales).__name__}"
            )
        rep = self
        for site, values in scales.items():
            rep = rep._with_part(replace(rep.part(site), scales=values))
        return rep

    def scale(
        self,
        site: SiteLike,
        factors: float | Sequence[float] | Tensor,
        *,
        relative: bool = True,
        components: int | Iterable[int] | None = None,
    ) -> PCPReplacement:
        """A copy with one site's scales multiplied by ``factors`` (relative) or set to them.

        ``relative=True`` is the paper's "vary the scaling factors in relative units"
        (Tab. V–VII), i.e. a multiplier s on the tuned α: α_l ← factor_l·α_l.
        ``relative=False`` sets α_l ← factor_l. ``factors`` is one number for all chosen
        ``components`` (default: all) or one number per chosen component.

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp0", torch.eye(16)[:2], [2, 1])])
            >>> pcp.scale("mlp0", [-1.2, 0.5]).scales()
            {'mlp0': [-2.4, 0.5]}
            >>> pcp.scale("mlp0", 3.0, relative=False, components=[1]).scales()
            {'mlp0': [2.0, 3.0]}
        """
        p = self.part(site)
        idx = _components(p, components, "components")
        f = _as_f64(factors, "factors").reshape(-1)
        if f.numel() == 1:
            f = f.expand(len(idx))
        if f.numel() != len(idx):
            raise ValueError(
                f"factors must be one number or one per component ({len(idx)} for site "
                f"{p.site.name!r}), got {f.numel()}"
            )
        _check_finite(f, "factors")
        a = p.scales.clone()
        sel = torch.tensor(idx, dtype=torch.long)
        a[sel] = a[sel] * f if relative else f
        return self._with_part(replace(p, scales=a))

    def flip(self, site: SiteLike, components: int | Iterable[int]) -> PCPReplacement:
        """A copy with the signs of the chosen components' scales flipped (α_l ← −α_l; Tab. VI).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp0", torch.eye(16)[:2], [2, 1])])
            >>> pcp.flip("mlp0", 0).scales()
            {'mlp0': [-2.0, 1.0]}
        """
        p = self.part(site)
        idx = _components(p, components, "components")
        a = p.scales.clone()
        a[torch.tensor(idx, dtype=torch.long)] *= -1
        return self._with_part(replace(p, scales=a))

    def with_bias(self, site: SiteLike, bias: Sequence[float] | Tensor | None) -> PCPReplacement:
        """A copy with one site's bias set (``None`` removes it).

        Examples:
            >>> from pcp_lens.testing import tiny_model
            >>> part = SitePCP("mlp0", torch.eye(16)[:1], [3])
            >>> pcp = PCPReplacement.from_parts(tiny_model(), [part])
            >>> pcp.with_bias("mlp0", torch.ones(16)).part("mlp0").bias.shape
            torch.Size([16])
        """
        return self._with_part(replace(self.part(site), bias=bias))

    # -- storage -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.safetensors`` file (tensors + JSON metadata), atomically; return its path.

        The file holds, per site, ``<site>.directions`` / ``.scales`` (and ``.bias``,
        ``.explained_variance``, ``.explained_variance_ratio`` where present) in float64, plus a
        JSON header entry ``"pcp_lens"`` with the format version, sites, ranks, direction kinds
        and the model fingerprint. It is written to a temporary file in the same folder and
        renamed over ``path``, so a crash never leaves a half-written file. Loading it back with
        :meth:`load` is bit-exact and never unpickles.

        Examples:
            >>> import tempfile, os
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp0", torch.eye(16)[:2], [2, 1])])
            >>> with tempfile.TemporaryDirectory() as d:
            ...     PCPReplacement.load(pcp.save(os.path.join(d, "pcp.safetensors"))).equal(pcp)
            True
        """
        from safetensors.torch import save_file

        from pcp_lens import __version__

        path = Path(path)
        tensors: dict[str, Tensor] = {}
        sites_meta = []
        for p in self.parts:
            entry: dict[str, Any] = {"site": p.site.name, "rank": p.rank, "kind": p.kind}
            for name in _TENSOR_FIELDS:
                t = getattr(p, name)
                if name not in ("directions", "scales"):
                    entry[name] = t is not None
                if t is not None:
                    tensors[f"{p.site.name}.{name}"] = t.contiguous()
            sites_meta.append(entry)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pcp_lens_version": __version__,
            "fingerprint": dict(self.fingerprint),
            "sites": sites_meta,
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"pcp_lens": json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCPReplacement:
        """Read a file written by :meth:`save`, validating its metadata and every shape.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not such a safetensors file, its metadata is malformed or of
                another format version, or a tensor is missing, unexpected, or of the wrong shape
                or dtype.

        Examples:
            >>> PCPReplacement.load("no/such/file.safetensors")
            Traceback (most recent call last):
            ...
            FileNotFoundError: no PCP file at 'no/such/file.safetensors'
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no PCP file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from e
        return _from_saved(str(path), header, tensors)


_TENSOR_FIELDS = (
    "directions",
    "scales",
    "bias",
    "explained_variance",
    "explained_variance_ratio",
)


def _from_saved(
    where: str, header: Mapping[str, str], tensors: Mapping[str, Tensor]
) -> PCPReplacement:
    def bad(msg: str) -> ValueError:
        return ValueError(f"{where!r}: {msg}")

    if "pcp_lens" not in header:
        raise bad(f"no 'pcp_lens' metadata entry (header keys: {sorted(header)}); not a PCP file")
    try:
        meta = json.loads(header["pcp_lens"])
    except json.JSONDecodeError as e:
        raise bad(f"the 'pcp_lens' metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise bad(f"the 'pcp_lens' metadata must be a JSON object, got {type(meta).__name__}")
    check_format(meta, FORMAT, FORMAT_VERSION, bad, prefix="metadata ")
    fp = meta.get("fingerprint")
    if not isinstance(fp, dict) or not isinstance(fp.get("d_model"), int):
        raise bad(f"metadata 'fingerprint' must be an object with an int 'd_model', got {fp!r}")
    d_model = fp["d_model"]
    sites = meta.get("sites")
    if not isinstance(sites, list) or not sites:
        raise bad(f"metadata 'sites' must be a non-empty list, got {sites!r}")
    expected: dict[str, tuple[int, ...]] = {}
    entries = []
    for e in sites:
        if not isinstance(e, dict):
            raise bad(f"each metadata 'sites' entry must be an object, got {e!r}")
        try:
            site = _pcp_site(e.get("site"), arg="site")  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise bad(f"metadata site {e.get('site')!r} is invalid: {err}") from err
        r = e.get("rank")
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= d_model:
            raise bad(
                f"metadata rank of site {site.name!r} must be an int in 1..{d_model}, got {r!r}"
            )
        if e.get("kind") not in DIRECTION_KINDS:
            raise bad(
                f"metadata kind of site {site.name!r} must be one of {list(DIRECTION_KINDS)}, "
                f"got {e.get('kind')!r}"
            )
        shapes = {"directions": (r, d_model), "scales": (r,)}
        for name, shape in (
            ("bias", (d_model,)),
            ("explained_variance", (r,)),
            ("explained_variance_ratio", (r,)),
        ):
            flag = e.get(name)
            if not isinstance(flag, bool):
                raise bad(
                    f"metadata {name!r} of site {site.name!r} must be true/false, got {flag!r}"
                )
            if flag:
                shapes[name] = shape
        for name, shape in shapes.items():
            expected[f"{site.name}.{name}"] = shape
        entries.append((site, e["kind"], shapes))
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise bad(f"tensors do not match the metadata: missing {missing}, unexpected {extra}")
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != torch.float64:
            raise bad(
                f"tensor {key!r} must be float64 of shape {list(shape)}, got {t.dtype} of shape "
                f"{list(t.shape)}"
            )
    parts = []
    try:
        for site, kind, shapes in entries:
            kw = {n: tensors[f"{site.name}.{n}"] for n in shapes}
            parts.append(SitePCP(site=site, kind=kind, **kw))
        return PCPReplacement(tuple(parts), fp)
    except ValueError as err:
        raise bad(str(err)) from err


def _site_hooks(
    model: HookedTransformer, part: SitePCP, dtype: torch.dtype
) -> list[tuple[str, HookFn]]:
    site = part.site
    kind, layer = site.kind, site.layer
    assert layer is not None
    fac = _Factored(part, dtype)
    state: dict[str, Tensor] = {}

    def pcp_capture(act: Tensor, hook: Any) -> None:
        # attention runs its LayerNorm once each for queries, keys and values: keep the last
        state["x"] = act

    def pcp_replace(act: Tensor, hook: Any) -> Tensor:
        normalized = state.pop("x", None)
        if normalized is None:
            raise RuntimeError(
                f"PCP hook on {site.hook_name} found no module input: the capture hook on "
                f"{site.input_hook_name} must be attached too and fire first in the same forward"
            )
        if normalized.shape != act.shape:
            raise RuntimeError(
                f"PCP at site {site.name!r}: module input of shape {tuple(normalized.shape)} "
                f"does not match the module output {tuple(act.shape)} (per-head inputs such as "
                "use_split_qkv_input are not supported)"
            )
        # The module input x = module_input(n) is an affine map of the normalised vector n
        # (n ⊙ w + b for LayerNorm): fold it into the r directions instead of materialising x,
        # x·ûᵀ = n·(module_input(û) − module_input(0))ᵀ + module_input(0)·ûᵀ. It is re-read on
        # every call, so hooks follow LayerNorm weights that change while they are attached.
        u = fac.on(normalized.device)[0]
        x0 = _tl.module_input(model, kind, layer, normalized.new_zeros(normalized.shape[-1]))
        u_in = (_tl.module_input(model, kind, layer, u) - x0).to(fac.dtype)
        z = normalized.to(fac.dtype) @ u_in.T + x0.to(fac.dtype) @ u.T
        return fac.finish(z).to(act.dtype)

    return [(site.input_hook_name, pcp_capture), (site.hook_name, pcp_replace)]


# ------------------------------------------------------------------------------------------------
# fitting: directions and least-squares scales
# ------------------------------------------------------------------------------------------------


def fit_pcp(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike],
    rank: int | Mapping[SiteLike, int],
    *,
    positions: Sequence[int] | None = None,
    directions: Literal["principal", "reference_code"] = "principal",
    scales: Literal["least_squares", "ones"] = "least_squares",
    bias: bool = False,
    method: PCAMethod = "streaming",
    batch_size: int = 32,
    progress: bool = True,
) -> PCPReplacement:
    """Fit a PCP replacement of one or several sites from their outputs over ``inputs``.

    Each site gets its own PCA (:func:`fit_pca`) of its module output at ``positions``, then
    directions of the chosen kind and starting scales:

    * ``directions="principal"`` (default): û_l = v_l, the zero-mean principal directions, as the
      paper describes.
    * ``directions="reference_code"``: the authors' code's inverse transform of a constant
      vector, which adds the activation mean back (:func:`reference_code_directions`).
    * ``scales="least_squares"`` (default): α minimising the squared error to the modules' own
      outputs on the same inputs and positions (:func:`least_squares_scales`); ``"ones"``: α = 1.
    * ``bias=True`` also fits a least-squares bias (the paper uses none).

    Args:
        model: the model to fit on; the replacement records its fingerprint.
        inputs: tokens or strings the activations are collected over.
        sites: attention or MLP sites (e.g. ``["mlp0", "mlp2"]``), each fitted separately.
        rank: r, one int or ``{site: rank}`` (the paper: 1–2 for MLPs, 4–5 for attention).
        positions: positions pooled for the fit (the paper: ``[1]`` for the toy models);
            ``None`` pools all real positions.
        directions: ``"principal"`` or ``"reference_code"``.
        scales: ``"least_squares"`` or ``"ones"``.
        bias: fit a bias too (needs ``scales="least_squares"``).
        method: ``"streaming"`` or ``"sklearn"`` PCA (same result up to sign).
        batch_size: rows per forward pass.
        progress: show progress bars.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model(n_layers=3)
        >>> pcp = fit_pcp(model, torch.randint(0, 50, (32, 4)), ["mlp0", "mlp2"], {"mlp0": 2,
        ...               "mlp2": 1}, positions=[1], progress=False)
        >>> tuple((p.site.name, p.rank, p.kind) for p in pcp)
        (('mlp0', 2, 'principal'), ('mlp2', 1, 'principal'))
    """
    if directions not in ("principal", "reference_code"):
        raise ValueError(
            f"directions must be 'principal' (the paper) or 'reference_code' (the authors' "
            f"code), got {directions!r}"
        )
    if scales not in ("least_squares", "ones"):
        raise ValueError(f"scales must be 'least_squares' or 'ones', got {scales!r}")
    if bias and scales != "least_squares":
        raise ValueError("bias=True is fitted by least squares; pass scales='least_squares'")
    fits = fit_pca(
        model,
        inputs,
        sites,
        rank,
        positions=positions,
        method=method,
        batch_size=batch_size,
        progress=progress,
    )
    parts = [
        SitePCP(
            site=fit.site,
            directions=fit.directions(directions),
            scales=torch.ones(fit.rank, dtype=torch.float64),
            kind=directions,
            explained_variance=fit.explained_variance,
            explained_variance_ratio=fit.explained_variance_ratio,
        )
        for fit in fits.values()
    ]
    rep = PCPReplacement.from_parts(model, parts)
    if scales == "least_squares":
        rep = least_squares_scales(
            model,
            rep,
            inputs,
            positions=positions,
            bias=bias,
            batch_size=batch_size,
            progress=progress,
        )
    return rep


def least_squares_scales(
    model: HookedTransformer,
    replacement: PCPReplacement,
    inputs: Inputs,
    *,
    positions: Sequence[int] | None = None,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    bias: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> PCPReplacement:
    """The closed-form α (and optional bias) that best reproduce each module's own output.

    For each site with directions û_l, module input x and module output y, minimise
    ``E‖y − Σ_l α_l (û_l·x) û_l − b‖²`` over α (and b if ``bias``). With z_l = û_l·x, w_l = û_l·y
    and G = ÛÛᵀ the normal equations are ``(G ⊙ E[z zᵀ]) α = E[z ⊙ w]`` (raw moments; centred
    moments and ``b = E[y] − M·E[x]`` with a bias). Only the 2r projections per position are
    streamed (float64 running moments), so any number of inputs fits in memory. Each module is
    fitted on the *unedited* model's activations (hooks the caller attached stay in effect).

    Args:
        model: the model (must match the replacement's fingerprint).
        replacement: supplies the sites and directions; its scales are replaced.
        inputs: tokens or strings.
        positions: positions to fit on (``None``: all real positions).
        sites: refit only these sites (default: all).
        bias: also fit a bias per site (otherwise the current bias is dropped).
        batch_size: rows per forward pass.
        progress: show a progress bar.

    Returns:
        A new replacement with the fitted scales.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model()
        >>> pcp = fit_pcp(m, torch.randint(0, 50, (16, 4)), "mlp1", 2, scales="ones",
        ...               progress=False)
        >>> least_squares_scales(m, pcp, torch.randint(0, 50, (16, 4)), progress=False
        ...                      ).part("mlp1").scales.shape
        torch.Size([2])
    """
    replacement.check(model)
    parts = (
        list(replacement.parts)
        if sites is None
        else [replacement.part(s) for s in pcp_sites(sites)]
    )
    tb = as_tokens(model, inputs, allow_ragged=True)
    n = int(_position_mask(tb, positions).sum())
    if n < (2 if bias else 1):
        raise ValueError(
            f"inputs: least squares needs at least {2 if bias else 1} activation vectors, got {n}"
        )
    names = sorted({h for p in parts for h in (p.site.input_hook_name, p.site.hook_name)})
    proj: dict[str, RunningMoments] = {}
    ymean: dict[str, RunningMoments] = {}
    for got in stream_activations(model, tb, names, positions, batch_size, progress):
        for p in parts:
            s = p.site
            assert s.layer is not None
            normalized, y = got[s.input_hook_name], got[s.hook_name]
            if normalized.shape[-1] != p.d_model:
                raise ValueError(
                    f"model: site {s.name!r} receives per-head inputs (width "
                    f"{normalized.shape[-1]}); PCP needs one d_model vector per position"
                )
            x = _tl.module_input(model, s.kind, s.layer, normalized).to(torch.float64)
            y = y.to(torch.float64)
            u = p.directions.to(x.device)
            zw = torch.cat([x @ u.T, y @ u.T], -1)
            if not bool(torch.isfinite(zw).all()):
                raise ValueError(f"inputs: non-finite activations (nan or inf) at site {s.name!r}")
            if s.name not in proj:
                proj[s.name] = RunningMoments(2 * p.rank, device=x.device)
                ymean[s.name] = RunningMoments(p.d_model, cov=False, device=x.device)
            proj[s.name].update(zw)
            if bias:
                ymean[s.name].update(y)
    new = replacement
    for p in parts:
        acc = proj[p.site.name]
        assert acc.m2 is not None
        r = p.rank
        mu = acc.mean.cpu()
        second = acc.m2.cpu() / acc.n  # centred
        if not bias:
            second = second + torch.outer(mu, mu)  # raw
        gram = p.directions @ p.directions.T
        a_mat = gram * second[:r, :r]
        c = second[:r, r:].diagonal()
        alpha = torch.linalg.pinv(a_mat, hermitian=True) @ c
        b = None
        if bias:
            b = ymean[p.site.name].mean.cpu() - p.directions.T @ (alpha * mu[:r])
        new = new._with_part(replace(p, scales=alpha, bias=b))
    return new
