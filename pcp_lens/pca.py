"""The fitting maths of PCP: principal components of module outputs and least-squares scales.

* :func:`fit_pca` — principal components of each site's output (streaming covariance, or
  scikit-learn for small sets), with explained variance.
* :func:`reference_code_directions` — the authors' code's inverse-transform directions.
* :func:`least_squares_scales` — the closed-form α that best reproduce the modules' own outputs.
* :func:`scales_from_factors`, :func:`factors_from_scales` — the paper's α = s·f².

The replacement value these feed, :class:`pcp_lens.PCPReplacement`, and :func:`pcp_lens.fit_pcp`,
which chains them, live in :mod:`pcp_lens.pcp`; its file format in :mod:`pcp_lens.pcp_storage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens
from pcp_lens.scoring import Positions
from pcp_lens.sites import MODULE_KINDS, Site, SiteLike
from pcp_lens.stats import RunningMoments, collect_stats, position_mask, stream_activations

if TYPE_CHECKING:
    from pcp_lens.pcp import PCPReplacement

__all__ = [
    "PCAFit",
    "as_f64",
    "check_finite_values",
    "factors_from_scales",
    "fit_pca",
    "least_squares_scales",
    "pcp_site",
    "pcp_sites",
    "reference_code_directions",
    "scales_from_factors",
]

PCAMethod = Literal["streaming", "sklearn"]


# ------------------------------------------------------------------------------------------------
# sites, ranks and small helpers
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
            >>> norms = fit["mlp0"].directions("reference_code").norm(dim=-1)
            >>> [round(v, 9) for v in norms.tolist()]
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
        mean=as_f64(pca.mean_, "mean"),
        components=as_f64(pca.components_, "components"),
        explained_variance=as_f64(pca.explained_variance_, "explained_variance"),
        explained_variance_ratio=as_f64(pca.explained_variance_ratio_, "ratio"),
        n_samples=x.shape[0],
    )


def fit_pca(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike],
    rank: int | Mapping[SiteLike, int],
    *,
    positions: Positions = None,
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
    n = int(position_mask(tb, positions).sum())
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
