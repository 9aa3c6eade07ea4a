"""One site's PCP replacement value, :class:`SitePCP`: ``y = x·M (+ b)``, ``M = Σ_l α_l û_l û_lᵀ``
(the paper's symmetric form) or ``M = Σ_l α_l b_l û_lᵀ`` (read vectors b_l fitted by regression).

:class:`~pcp_lens.pcp.PCPReplacement` bundles several of these with the model's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens.pcp.hooks import FactoredMap
from pcp_lens.pcp.maths import as_f64, check_finite_values, factors_from_scales, pcp_site
from pcp_lens.pcp.storage import DIRECTION_KINDS, TENSOR_FIELDS, DirectionKind
from pcp_lens.sites import Site

__all__ = ["SitePCP"]

_UNIT_TOL = 1e-5  # how far from unit norm a stored direction may be


def _vector(value: Any, what: str, site: Site, length: int, named: str) -> Tensor:
    """A finite float64 vector of ``length`` entries (the scales or the bias of a site)."""
    v = as_f64(value, f"{what} of site {site.name!r}").reshape(-1)
    if v.numel() != length:
        raise ValueError(
            f"{what} of site {site.name!r} must have length {length} ({named}), got {v.numel()}"
        )
    check_finite_values(v, f"{what} of site {site.name!r}")
    return v


@dataclass(frozen=True, eq=False)
class SitePCP:
    """One site's replacement ``y = x·M (+ b)`` with ``M = Σ_l α_l û_l û_lᵀ``; float64, CPU.

    With ``reads`` the map is ``M = Σ_l α_l b_l û_lᵀ``: the output still lies in the span of the
    directions û_l, but each coordinate is read from the input along its own vector b_l
    (``form == "regression"``, fitted by :func:`~pcp_lens.pcp.fit_pcp`); without, b_l = û_l and
    M is the paper's symmetric matrix (``form == "symmetric"``).

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
        reads: optional ``[rank, d_model]`` read vectors b_l (rows); ``None``: the directions.

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
    reads: Float[Tensor, "rank d_model"] | None = None

    def __post_init__(self) -> None:
        site = pcp_site(self.site, arg="site")
        object.__setattr__(self, "site", site)
        u = as_f64(self.directions, f"directions of site {site.name!r}")
        if u.dim() != 2 or u.shape[0] < 1 or u.shape[1] < 1:
            raise ValueError(
                f"directions of site {site.name!r} must be a [rank, d_model] matrix with "
                f"rank >= 1, got shape {tuple(u.shape)}"
            )
        check_finite_values(u, f"directions of site {site.name!r}")
        norms = u.norm(dim=-1)
        if bool(((norms - 1).abs() > _UNIT_TOL).any()):
            raise ValueError(
                f"directions of site {site.name!r} must be unit vectors (rows of norm 1), got "
                f"norms {[round(float(v), 6) for v in norms]}"
            )
        r, d = u.shape
        if r > d:
            raise ValueError(f"rank must be an int in 1..{d} (d_model), got {r} directions")
        object.__setattr__(self, "directions", u)
        object.__setattr__(self, "scales", _vector(self.scales, "scales", site, r, "the rank"))
        if self.bias is not None:
            object.__setattr__(self, "bias", _vector(self.bias, "bias", site, d, "d_model"))
        if self.reads is not None:
            b = as_f64(self.reads, f"reads of site {site.name!r}")
            if tuple(b.shape) != (r, d):
                raise ValueError(
                    f"reads of site {site.name!r} must have the directions' shape [{r}, {d}], "
                    f"got {list(b.shape)}"
                )
            check_finite_values(b, f"reads of site {site.name!r}")
            object.__setattr__(self, "reads", b)
        if self.kind not in DIRECTION_KINDS:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, DIRECTION_KINDS))}, got {self.kind!r}"
            )
        for name in ("explained_variance", "explained_variance_ratio"):
            v = getattr(self, name)
            if v is not None:
                t = as_f64(v, f"{name} of site {site.name!r}").reshape(-1)
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
    def form(self) -> str:
        """``"symmetric"`` (the paper's M = Σ α û ûᵀ) or ``"regression"`` (own read vectors)."""
        return "symmetric" if self.reads is None else "regression"

    @property
    def signs(self) -> Float[Tensor, " rank"]:
        """s_l = ±1 in α_l = s_l·f_l² (zero scales count as +1)."""
        return factors_from_scales(self.scales)[0]

    @property
    def factors(self) -> Float[Tensor, " rank"]:
        """f_l = √|α_l| ≥ 0 in α_l = s_l·f_l²."""
        return factors_from_scales(self.scales)[1]

    def matrix(self) -> Float[Tensor, "d_model d_model"]:
        """M = Σ_l α_l b_l û_lᵀ = Bᵀ diag(α) Û (float64), with B = Û for the symmetric form."""
        u = self.directions
        b = u if self.reads is None else self.reads
        return (b.T * self.scales) @ u

    def apply(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``x·M (+ b)`` position-wise, computed as ``((x·Bᵀ)·diag(α))·Û`` in ``x``'s dtype.

        Examples:
            >>> SitePCP("mlp0", torch.eye(3)[:1], [2.0]).apply(torch.tensor([[1.0, 1.0, 1.0]]))
            tensor([[2., 0., 0.]])
        """
        return self.factored(x.dtype)(x)

    def factored(self, dtype: torch.dtype) -> FactoredMap:
        """This map in factored form in ``dtype`` (what the hooks apply)."""
        return FactoredMap(self.directions, self.scales, self.bias, dtype, self.reads)

    def tensors(self) -> dict[str, Tensor]:
        """``{field: tensor}`` of the :data:`~pcp_lens.pcp.storage.TENSOR_FIELDS` present.

        Examples:
            >>> sorted(SitePCP("mlp0", torch.eye(4)[:2], [2.0, -1.0]).tensors())
            ['directions', 'scales']
        """
        return {n: t for n in TENSOR_FIELDS if (t := getattr(self, n)) is not None}
