"""Fitting PCP: :func:`fit_pcp` (PCA directions, then scales) and :func:`least_squares_scales`.

The top of the package: it imports :mod:`~pcp_lens.pcp.pca` and
:mod:`~pcp_lens.pcp.replacement`, and nothing imports it but :mod:`pcp_lens.pcp` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens
from pcp_lens.pcp.maths import pcp_sites
from pcp_lens.pcp.part import SitePCP
from pcp_lens.pcp.pca import PCAMethod, fit_pca
from pcp_lens.pcp.replacement import PCPReplacement
from pcp_lens.scoring import Positions
from pcp_lens.sites import SiteLike
from pcp_lens.stats import RunningMoments, position_mask, stream_activations

__all__ = ["fit_pcp", "least_squares_scales"]


def least_squares_scales(
    model: HookedTransformer,
    replacement: PCPReplacement,
    inputs: Inputs,
    *,
    positions: Positions = None,
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
        >>> from pcp_lens.pcp import fit_pcp
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
    n = int(position_mask(tb, positions).sum())
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
        new = new.with_scales({p.site.name: alpha}).with_bias(p.site.name, b)
    return new


def fit_pcp(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike],
    rank: int | Mapping[SiteLike, int],
    *,
    positions: Positions = None,
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
