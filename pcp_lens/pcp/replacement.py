"""The PCP replacement value, :class:`PCPReplacement`: several sites' :class:`SitePCP`, the hooks
that insert them, edits that return new values, and storage.

It sits above :mod:`~pcp_lens.pcp.part`, :mod:`~pcp_lens.pcp.hooks` and
:mod:`~pcp_lens.pcp.storage`; the fitting (:func:`~pcp_lens.pcp.fit_pcp`) sits above it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer, Hooks
from pcp_lens.pcp.hooks import site_hooks
from pcp_lens.pcp.maths import as_f64, check_finite_values, pcp_site
from pcp_lens.pcp.part import SitePCP
from pcp_lens.pcp.storage import TENSOR_FIELDS, read_pcp, write_pcp
from pcp_lens.sites import Site, SiteLike

__all__ = ["PCPReplacement"]


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
        >>> from pcp_lens.pcp import fit_pcp
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
        name = pcp_site(site, arg="site").name
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
            for name in TENSOR_FIELDS:
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
                        "form": p.form,
                        "explained_variance": None if ev is None else float(ev[c]),
                        "explained_variance_ratio": None if evr is None else float(evr[c]),
                    }
                )
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{p.site.name}: rank {p.rank} {p.kind}, α={[round(v, 4) for v in p.scales.tolist()]}"
            + (", bias" if p.bias is not None else "")
            + (", regression" if p.reads is not None else "")
            for p in self.parts
        )
        return f"PCPReplacement({inner})"

    def _repr_html_(self) -> str:
        from pcp_lens.display import pcp_html  # Jupyter's summary table

        return pcp_html(self)

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
            pcp_site(p.site, model, arg="model")

    def hooks(self, model: HookedTransformer) -> Hooks:
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
        out: Hooks = []
        for p in self.parts:
            out.extend(site_hooks(model, p.site, p.factored(dtype)))
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
        f = as_f64(factors, "factors").reshape(-1)
        if f.numel() == 1:
            f = f.expand(len(idx))
        if f.numel() != len(idx):
            raise ValueError(
                f"factors must be one number or one per component ({len(idx)} for site "
                f"{p.site.name!r}), got {f.numel()}"
            )
        check_finite_values(f, "factors")
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
        ``.explained_variance``, ``.explained_variance_ratio``, ``.reads`` where present) in
        float64, plus a
        JSON header entry ``"pcp_lens"`` with the format version, sites, ranks, direction kinds
        and the model fingerprint (:mod:`pcp_lens.pcp.storage`). It is written to a temporary file
        in the same folder and renamed over ``path``, so a crash never leaves a half-written file.
        Loading it back with :meth:`load` is bit-exact and never unpickles.

        Examples:
            >>> import tempfile, os
            >>> from pcp_lens.testing import tiny_model
            >>> m = tiny_model()
            >>> pcp = PCPReplacement.from_parts(m, [SitePCP("mlp0", torch.eye(16)[:2], [2, 1])])
            >>> with tempfile.TemporaryDirectory() as d:
            ...     PCPReplacement.load(pcp.save(os.path.join(d, "pcp.safetensors"))).equal(pcp)
            True
        """
        entries = [(p.site, p.kind, p.tensors()) for p in self.parts]
        return write_pcp(path, entries, self.fingerprint)

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
        fp, entries = read_pcp(path)
        try:
            parts = [SitePCP(site=site, kind=kind, **kw) for site, kind, kw in entries]  # type: ignore[arg-type]
            return cls(tuple(parts), fp)
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: {err}") from err
