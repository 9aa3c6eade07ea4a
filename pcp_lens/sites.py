"""Sites: small immutable names for the module outputs every technique reads or writes.

A site is a layer (0-based, as in TransformerLens; the paper counts from 1) and a kind:

======================  ==================================  ===================
short string            hook                                 paper name
======================  ==================================  ===================
``"embed"``             ``hook_embed`` + ``hook_pos_embed``  ``embd``
``"attn0"``             ``blocks.0.hook_attn_out``           ``L1 attn``
``"attn0.h2"``          head 2 of ``blocks.0.attn.hook_z``   ``L1 att2``
``"mlp0"``              ``blocks.0.hook_mlp_out``            ``L1 mlp``
``"resid_pre1"``        ``blocks.1.hook_resid_pre``          ``L2 resid_pre``
``"resid_mid1"``        ``blocks.1.hook_resid_mid``          ``L2 resid_mid``
``"resid_post1"``       ``blocks.1.hook_resid_post``         ``L2 resid_post``
======================  ==================================  ===================

Full hook names (``"blocks.0.hook_mlp_out"``) parse too.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from pcp_lens import _tl

Kind = Literal["embed", "attn", "mlp", "resid_pre", "resid_mid", "resid_post"]
KINDS: tuple[str, ...] = get_args(Kind)
MODULE_KINDS = ("attn", "mlp")

# position of each kind inside a block, for forward ordering
_ORDER = {"resid_pre": 0, "attn": 1, "resid_mid": 2, "mlp": 3, "resid_post": 4}

_SHORT = re.compile(r"^(attn|mlp|resid_pre|resid_mid|resid_post)(\d+)(?:\.h(\d+))?$")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(attn_out|mlp_out|resid_pre|resid_mid|resid_post)$")
_HOOK_KIND = {
    "attn_out": "attn",
    "mlp_out": "mlp",
    "resid_pre": "resid_pre",
    "resid_mid": "resid_mid",
    "resid_post": "resid_post",
}


@dataclass(frozen=True, order=False)
class Site:
    """One module output of a transformer: ``Site(layer, kind)`` or an attention head.

    Examples:
        >>> Site(0, "mlp").hook_name
        'blocks.0.hook_mlp_out'
        >>> Site.parse("attn1.h3")
        Site(layer=1, kind='attn', head=3)
        >>> Site.parse("mlp0").paper_name
        'L1 mlp'
    """

    layer: int | None
    kind: str
    head: int | None = None

    def __post_init__(self) -> None:
        # table columns hold numpy or pandas ints: take any integer, keep it a plain int
        for name in ("layer", "head"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (bool, int)) and hasattr(v, "__index__"):
                object.__setattr__(self, name, operator.index(v))
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind: {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind == "embed":
            if self.layer is not None:
                raise ValueError(f"layer must be None for kind 'embed', got {self.layer!r}")
        elif not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ValueError(
                f"layer must be an int >= 0 for kind {self.kind!r}, got {self.layer!r}"
            )
        if self.head is not None and (
            self.kind != "attn"
            or not isinstance(self.head, int)
            or isinstance(self.head, bool)
            or self.head < 0
        ):
            raise ValueError(
                f"head must be None or an int >= 0 on an 'attn' site, got head={self.head!r} "
                f"on kind {self.kind!r}"
            )

    # -- names -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: str | Site) -> Site:
        """Parse ``"mlp0"``, ``"attn1.h3"``, ``"resid_post2"``, ``"embed"`` or a full hook name."""
        if isinstance(spec, Site):
            return spec
        if not isinstance(spec, str):
            raise TypeError(
                f"site must be a Site or a string such as 'mlp0', got {spec!r} "
                f"({type(spec).__name__})"
            )
        s = spec.strip()
        if s == "embed":
            return cls(None, "embed")
        m = _SHORT.match(s)
        if m:
            head = int(m.group(3)) if m.group(3) is not None else None
            return cls(int(m.group(2)), m.group(1), head)
        m = _HOOK.match(s)
        if m:
            return cls(int(m.group(1)), _HOOK_KIND[m.group(2)])
        raise ValueError(
            f"cannot parse site {spec!r}; use e.g. 'mlp0', 'attn1', 'attn1.h3', 'resid_pre2', "
            "'resid_mid2', 'resid_post2', 'embed' or a hook name like 'blocks.0.hook_mlp_out'"
        )

    @property
    def name(self) -> str:
        """The short string form, 0-based (``"mlp0"``, ``"attn1.h3"``)."""
        if self.kind == "embed":
            return "embed"
        base = f"{self.kind}{self.layer}"
        return base if self.head is None else f"{base}.h{self.head}"

    @property
    def paper_name(self) -> str:
        """The paper's 1-based name (``"L1 mlp"``, ``"L2 att3"``)."""
        if self.kind == "embed":
            return "embd"
        assert self.layer is not None
        if self.head is not None:
            return f"L{self.layer + 1} att{self.head}"
        return f"L{self.layer + 1} {self.kind}"

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook that carries this site's output.

        For a head it is ``attn.hook_z`` (indexed by head); for ``embed`` it is ``hook_embed``
        (the token part; positional embeddings live at ``hook_pos_embed``).
        """
        if self.head is not None:
            return _tl.hook_name("z", self.layer)
        return _tl.hook_name(self.kind, self.layer)

    @property
    def input_hook_name(self) -> str:
        """The hook that sees the tensor the module receives (its LayerNorm's normalised output).

        Only attention and MLP sites receive a module input; use
        :func:`pcp_lens._tl.module_input` to add the LayerNorm's affine weights.
        """
        if self.kind not in MODULE_KINDS:
            raise ValueError(f"site {self.name!r} has no module input; only attn and mlp sites do")
        assert self.layer is not None
        return _tl.module_input_hook(self.kind, self.layer)

    def sort_key(self) -> tuple[int, int, int]:
        """Forward-pass order: embeddings, then each block's resid_pre, attn, resid_mid, ..."""
        if self.kind == "embed":
            return (-1, 0, 0)
        assert self.layer is not None
        return (self.layer, _ORDER[self.kind], -1 if self.head is None else self.head)

    def __str__(self) -> str:
        return self.name

    # -- validation --------------------------------------------------------------------------
    def validate(self, model: _tl.HookedTransformer) -> Site:
        """Check that the site exists in ``model``; return it unchanged, or raise ``ValueError``."""
        n_layers = model.cfg.n_layers
        if self.layer is not None and self.layer >= n_layers:
            raise ValueError(
                f"layer out of range: {self.layer}, model has layers 0..{n_layers - 1} "
                f"(site {self.name!r})"
            )
        if self.head is not None and self.head >= model.cfg.n_heads:
            raise ValueError(
                f"head out of range: {self.head}, model has heads 0..{model.cfg.n_heads - 1} "
                f"(site {self.name!r})"
            )
        # the hook points exist on such models but never fire: a patch there would do nothing
        if getattr(model.cfg, "attn_only", False) and self.kind in ("mlp", "resid_mid"):
            raise ValueError(
                f"site {self.name!r}: the model is attention-only (attn_only=True), so it has no "
                "MLP and no residual between attention and MLP; use attn, resid_pre or resid_post"
            )
        if getattr(model.cfg, "parallel_attn_mlp", False) and self.kind == "resid_mid":
            raise ValueError(
                f"site {self.name!r}: attention and MLP read the same residual in this model "
                "(parallel_attn_mlp=True), so there is no residual between them; use resid_pre "
                "or resid_post"
            )
        return self


SiteLike = Site | str


class SiteList(list[Site]):
    """A plain ``list`` of sites, shown as a table in Jupyter and by name elsewhere.

    :func:`as_sites` and :func:`all_sites` return one; it is a ``list`` in every other way.

    Examples:
        >>> SiteList([Site(0, "mlp"), Site.parse("attn1.h2")])
        [mlp0 (L1 mlp), attn1.h2 (L2 att2)]
    """

    def __repr__(self) -> str:
        from pcp_lens.display import sites_text

        return sites_text(self)

    def _repr_html_(self) -> str:
        from pcp_lens.display import sites_html  # Jupyter's summary table

        return sites_html(self)


def as_sites(
    sites: SiteLike | Iterable[SiteLike], model: _tl.HookedTransformer | None = None
) -> list[Site]:
    """Parse and (given a model) validate one site or several.

    Examples:
        >>> [s.name for s in as_sites(["mlp0", "attn1"])]
        ['mlp0', 'attn1']
    """
    items: Iterable[SiteLike] = [sites] if isinstance(sites, (str, Site)) else sites
    out = [Site.parse(s) for s in items]
    if model is not None:
        for s in out:
            s.validate(model)
    return SiteList(out)


def all_sites(
    model: _tl.HookedTransformer,
    kinds: Sequence[str] = MODULE_KINDS,
    heads: bool = False,
) -> list[Site]:
    """List the model's sites of the given kinds in forward order.

    Args:
        model: the model whose layers to enumerate.
        kinds: which kinds to include (any of ``"embed"``, ``"attn"``, ``"mlp"``, ``"resid_pre"``,
            ``"resid_mid"``, ``"resid_post"``).
        heads: also list every attention head after its layer's ``attn`` site.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> [s.name for s in all_sites(tiny_model(n_layers=2))]
        ['attn0', 'mlp0', 'attn1', 'mlp1']
    """
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown site kind: {k!r}; allowed: {', '.join(KINDS)}")
    out: list[Site] = [Site(None, "embed")] if "embed" in kinds else []
    for layer in range(model.cfg.n_layers):
        for kind in sorted((k for k in kinds if k != "embed"), key=_ORDER.__getitem__):
            out.append(Site(layer, kind))
            if heads and kind == "attn":
                out.extend(Site(layer, "attn", h) for h in range(model.cfg.n_heads))
    return SiteList(out)
