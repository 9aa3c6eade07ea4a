"""Fitting PCP: :func:`fit_pcp` (PCA directions, then scales or read vectors) and
:func:`least_squares_scales`.

The top of the package: it imports :mod:`~pcp_lens.pcp.pca` and
:mod:`~pcp_lens.pcp.replacement`, and nothing imports it but :mod:`pcp_lens.pcp` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, TokenBatch, as_tokens
from pcp_lens.pcp.maths import pcp_sites
from pcp_lens.pcp.part import SitePCP
from pcp_lens.pcp.pca import PCAMethod, fit_pca
from pcp_lens.pcp.replacement import PCPReplacement
from pcp_lens.scoring import Positions
from pcp_lens.sites import SiteLike
from pcp_lens.stats import RunningMoments, position_mask, stream_activations

__all__ = ["PCPForm", "fit_pcp", "least_squares_scales"]

#: ``"symmetric"``: the paper's M = Σ α û ûᵀ; ``"regression"``: M = Σ α b ûᵀ, b fitted
PCPForm = Literal["symmetric", "regression"]
#: eigenvalues of E[x xᵀ] below this share of the largest count as zero (a LayerNorm output has
#: no variance along its centring direction, up to float32 rounding)
_READ_RTOL = 1e-8


def _module_io(
    model: HookedTransformer,
    parts: list[SitePCP],
    tokens: TokenBatch,
    positions: Positions,
    batch_size: int,
    progress: bool,
) -> Iterator[tuple[SitePCP, Tensor, Tensor]]:
    """Per batch and site: (part, module input x, module output y), float64 rows of d_model."""
    names = sorted({h for p in parts for h in (p.site.input_hook_name, p.site.hook_name)})
    for got in stream_activations(model, tokens, names, positions, batch_size, progress):
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
            if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
                raise ValueError(f"inputs: non-finite activations (nan or inf) at site {s.name!r}")
            yield p, x, y


def _enough(
    model: HookedTransformer, inputs: Inputs, positions: Positions, bias: bool
) -> TokenBatch:
    tb = as_tokens(model, inputs, allow_ragged=True)
    n = int(position_mask(tb, positions).sum())
    if n < (2 if bias else 1):
        raise ValueError(
            f"inputs: least squares needs at least {2 if bias else 1} activation vectors, got {n}"
        )
    return tb


def _fit_reads(
    model: HookedTransformer,
    replacement: PCPReplacement,
    inputs: Inputs,
    *,
    positions: Positions,
    bias: bool,
    batch_size: int,
    progress: bool,
) -> PCPReplacement:
    """Each site's read vectors b_l by least squares, α = 1: the ``"regression"`` form.

    With Û orthonormal, ``E‖y − Σ_l (b_l·x) û_l − c‖²`` splits into one regression per
    component of its output coordinate w_l = û_l·y on the module input x, so
    ``b_l = E[x xᵀ]⁺ E[x w_l]`` (raw moments; centred with a bias, ``c = E[y] − (E[x]·Bᵀ)·Û``).
    """
    tb = _enough(model, inputs, positions, bias)
    parts = list(replacement.parts)
    acc: dict[str, RunningMoments] = {}
    ymean: dict[str, RunningMoments] = {}
    for p, x, y in _module_io(model, parts, tb, positions, batch_size, progress):
        u = p.directions.to(x.device)
        if p.site.name not in acc:
            acc[p.site.name] = RunningMoments(p.d_model + p.rank, device=x.device)
            ymean[p.site.name] = RunningMoments(p.d_model, cov=False, device=x.device)
        acc[p.site.name].update(torch.cat([x, y @ u.T], -1))
        if bias:
            ymean[p.site.name].update(y)
    new = replacement
    for p in parts:
        a, d = acc[p.site.name], p.d_model
        assert a.m2 is not None
        mu = a.mean.cpu()
        second = a.m2.cpu() / a.n
        if not bias:
            second = second + torch.outer(mu, mu)
        sxx, sxw = second[:d, :d], second[:d, d:]
        reads = (torch.linalg.pinv(sxx, hermitian=True, rtol=_READ_RTOL) @ sxw).T.contiguous()
        c = None
        if bias:
            c = ymean[p.site.name].mean.cpu() - (mu[:d] @ reads.T) @ p.directions
        part = replace(p, reads=reads, scales=torch.ones(p.rank, dtype=torch.float64), bias=c)
        new = new._with_part(part)
    return new


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
    ``E‖y − Σ_l α_l (b_l·x) û_l − b‖²`` over α (and b if ``bias``), with read vectors b_l = û_l
    in the symmetric form. With z_l = b_l·x, w_l = û_l·y and G = ÛÛᵀ the normal equations are
    ``(G ⊙ E[z zᵀ]) α = E[z ⊙ w]`` (raw moments; centred moments and ``b = E[y] − M·E[x]`` with
    a bias). Only the 2r projections per position are streamed (float64 running moments), so any
    number of inputs fits in memory. Each module is
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
    tb = _enough(model, inputs, positions, bias)
    proj: dict[str, RunningMoments] = {}
    ymean: dict[str, RunningMoments] = {}
    for p, x, y in _module_io(model, parts, tb, positions, batch_size, progress):
        u = p.directions.to(x.device)
        reads = u if p.reads is None else p.reads.to(x.device)
        if p.site.name not in proj:
            proj[p.site.name] = RunningMoments(2 * p.rank, device=x.device)
            ymean[p.site.name] = RunningMoments(p.d_model, cov=False, device=x.device)
        proj[p.site.name].update(torch.cat([x @ reads.T, y @ u.T], -1))
        if bias:
            ymean[p.site.name].update(y)
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
    form: PCPForm = "symmetric",
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
    * ``form="regression"`` (not the paper's): M = Σ_l b_l û_lᵀ, each output coordinate û_l·y
      regressed on the module input x (read vectors b_l by least squares, α = 1; ``scales`` is
      then not used). The output still lies in the top-r principal subspace, but it is read
      from the input along its own directions, so a module that reads one direction and writes
      another (an attention layer's value–output map) can be kept; the symmetric M can only pass
      on the part of x that already lies along û_l (docs/pcp.md#the-regression-form).
    * ``bias=True`` also fits a least-squares bias (the paper uses none).

    Args:
        model: the model to fit on; the replacement records its fingerprint.
        inputs: tokens or strings the activations are collected over.
        sites: attention or MLP sites (e.g. ``["mlp0", "mlp2"]``), each fitted separately.
        rank: r, one int or ``{site: rank}`` (the paper: 1–2 for MLPs, 4–5 for attention).
        positions: positions pooled for the fit (the paper: ``[1]`` for the toy models);
            ``None`` pools all real positions.
        directions: ``"principal"`` or ``"reference_code"``.
        scales: ``"least_squares"`` or ``"ones"`` (symmetric form).
        form: ``"symmetric"`` (the paper's M) or ``"regression"`` (fitted read vectors).
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
    if form not in ("symmetric", "regression"):
        raise ValueError(
            f"form must be 'symmetric' (the paper's M = Σ α û ûᵀ) or 'regression' (read vectors "
            f"fitted by least squares), got {form!r}"
        )
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
    # the regression form fits its read vectors (α = 1); the symmetric one its α, or keeps 1
    fitter = _fit_reads if form == "regression" else None
    if form == "symmetric" and scales == "least_squares":
        fitter = least_squares_scales
    if fitter is not None:
        rep = fitter(
            model,
            rep,
            inputs,
            positions=positions,
            bias=bias,
            batch_size=batch_size,
            progress=progress,
        )
    return rep
