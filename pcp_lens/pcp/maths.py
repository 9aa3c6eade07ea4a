"""What every PCP module shares: which sites PCP replaces, and the scale maths α = s·f².

* :func:`pcp_site`, :func:`pcp_sites` — parse attention or MLP sites and refuse the rest.
* :func:`as_f64`, :func:`check_finite_values` — the float64 CPU copies PCP stores.
* :func:`scales_from_factors`, :func:`factors_from_scales` — the paper's α = s·f².
* :func:`reference_code_directions` — the authors' code's inverse-transform directions.

This is the bottom of the package: it imports no other :mod:`pcp_lens.pcp` module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens._tl import HookedTransformer
from pcp_lens.sites import MODULE_KINDS, Site, SiteLike

__all__ = [
    "as_f64",
    "check_finite_values",
    "factors_from_scales",
    "pcp_site",
    "pcp_sites",
    "reference_code_directions",
    "scales_from_factors",
]


# ------------------------------------------------------------------------------------------------
# sites and small helpers
# ------------------------------------------------------------------------------------------------


def pcp_site(spec: SiteLike, model: HookedTransformer | None = None, arg: str = "sites") -> Site:
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
    out = [pcp_site(s, model) for s in items]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"sites: each site may appear once, got {names}")
    return sorted(out, key=Site.sort_key)


def as_f64(x: Any, arg: str) -> Tensor:
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


def check_finite_values(t: Tensor, arg: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{arg} must be finite, got non-finite values (nan or inf)")


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
    f = as_f64(factors, "factors").reshape(-1)
    s = torch.ones_like(f) if signs is None else as_f64(signs, "signs").reshape(-1)
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
    a = as_f64(scales, "scales").reshape(-1)
    s = torch.where(a < 0, -1.0, 1.0).to(torch.float64)
    return s, a.abs().sqrt()


# ------------------------------------------------------------------------------------------------
# the authors' code's directions
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
    mean = as_f64(mean, "mean")
    comps = as_f64(components, "components")
    if mean.dim() != 1 or comps.dim() != 2 or comps.shape[1] != mean.shape[0]:
        raise ValueError(
            f"mean must be [d_model] and components [r, d_model] of the same d_model, got mean of "
            f"shape {tuple(mean.shape)} and components of shape {tuple(comps.shape)}"
        )
    d = mean.shape[-1]
    e = torch.full((d,), 1.0 / d, dtype=torch.float64)
    c = (e - mean) @ comps.T  # [r]
    w = mean[None, :] + c[:, None] * comps
    norm = w.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("reference_code directions are undefined: a vector w_l is zero")
    return w / norm
