"""Principal components of module outputs, the first step of fitting PCP.

* :func:`fit_pca` — principal components of each site's output (streaming covariance, or
  scikit-learn for small sets), with explained variance, as a :class:`PCAFit` per site.

It imports only :mod:`pcp_lens.pcp.maths`; :func:`pcp_lens.pcp.fit_pcp` turns its fits into a
:class:`~pcp_lens.pcp.PCPReplacement`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens
from pcp_lens.pcp.maths import as_f64, pcp_sites, reference_code_directions
from pcp_lens.scoring import Positions
from pcp_lens.sites import Site, SiteLike
from pcp_lens.stats import collect_stats, position_mask, stream_activations

__all__ = ["PCAFit", "PCAMethod", "fit_pca"]

PCAMethod = Literal["streaming", "sklearn"]


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


def _flip_signs(components: Float[Tensor, "r d"]) -> Float[Tensor, "r d"]:
    """scikit-learn's sign convention: the largest-magnitude entry of each component is positive."""
    idx = components.abs().argmax(-1)
    signs = torch.sign(components.gather(-1, idx[:, None]))
    signs[signs == 0] = 1
    return components * signs


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
