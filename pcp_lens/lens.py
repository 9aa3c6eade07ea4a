"""Group logit lens: what each module's output alone says about the next token (Tab. II).

Each module output — an attention layer's output, each attention head's output, an MLP's output,
the residual stream after a layer, the embeddings — is projected to logits through the final
LayerNorm and the unembedding and scored with token-group metrics at chosen positions. How the
final LayerNorm is applied is the ``ln`` argument:

* ``"isolated"`` (default, the paper's, METHODS §6): the final LayerNorm runs on the isolated
  module output, with that vector's own mean and scale, then its affine weights:
  ``logits = W_U · ln_final(out) + b_U``. This is what the authors' truncated models compute.
* ``"cached"``: TransformerLens ``apply_ln_to_stack`` style: centre the output and divide it by the
  final-LayerNorm scale *of the full residual stream* at that position (cached from the same
  forward pass), then apply the LayerNorm's ``w`` and ``b`` and the unembedding. A direct
  logit attribution view: outputs are compared on the model's own scale.
* ``"none"``: unembedding only (``out @ W_U + b_U``), no normalisation.

Per-head rows are ``z_h @ W_O[h] + b_O`` — each head carries the whole output bias, as the
paper's pruned-head models do (``include_bias=False`` drops it). The ``embed`` row is the token
plus positional embedding (the residual stream entering block 0), and a ``full model`` row holds
the unmodified model. Logits are only computed at the chosen positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl, scoring
from pcp_lens._tl import HookedTransformer, HookPoint
from pcp_lens.groups import TokenGroups, group_metrics
from pcp_lens.inputs import Inputs, as_tokens, check_batch_size
from pcp_lens.scoring import Metric as Metric  # re-exported: its former home
from pcp_lens.scoring import MetricLike, Positions
from pcp_lens.sites import Site, SiteLike, all_sites, as_sites

__all__ = ["LN_MODES", "group_lens", "lens_logits", "lens_table"]

LnMode = Literal["isolated", "cached", "none"]
LN_MODES: tuple[str, ...] = ("isolated", "cached", "none")
FULL = "full"
FULL_PAPER = "full model"


def _default_sites(model: HookedTransformer) -> list[Site]:
    return all_sites(model, kinds=("embed", "attn", "mlp", "resid_post"), heads=True)


def _source_hook(site: Site) -> str:
    """The hook whose activation gives this row's vector."""
    if site.kind == "embed":
        return _tl.block_input_name(0)  # token + positional embedding
    return site.hook_name  # hook_z for heads


def _check_ln(ln: str) -> None:
    if ln not in LN_MODES:
        raise ValueError(f"ln must be one of {', '.join(map(repr, LN_MODES))}, got {ln!r}")


def _vectors(
    model: HookedTransformer,
    tokens: Tensor,
    sites: Sequence[Site],
    idx: list[int],
    include_bias: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    """Each site's output vectors at positions ``idx``, and the final residual stream there."""
    hooks_needed = list(dict.fromkeys(_source_hook(s) for s in sites))
    got: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: HookPoint) -> None:
        got[hook.name] = act[:, idx]  # type: ignore[index]

    with _tl.attached(model, [(h, grab) for h in hooks_needed]):
        final = _tl.final_residual(model, tokens)[:, idx]
    heads: dict[int, Tensor] = {}
    out: dict[str, Tensor] = {}
    for s in sites:
        act = got[_source_hook(s)]
        if s.head is not None:
            assert s.layer is not None
            if s.layer not in heads:
                heads[s.layer] = _tl.head_outputs(model, s.layer, act, bias=include_bias)
            out[s.name] = heads[s.layer][:, :, s.head]
        else:
            out[s.name] = act
    return out, final


def _project(
    final: _tl.FinalLogits, x: Tensor, ln: str, scale: Tensor | None
) -> Float[Tensor, "... d_vocab"]:
    if ln == "isolated":
        return final(x)
    if ln == "cached":
        assert scale is not None
        return final.cached(x, scale)
    return final.raw(x)


def _prepare(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike] | None,
    positions: Positions,
    ln: str,
) -> tuple[Tensor, list[Site], list[int]]:
    _check_ln(ln)
    tb = as_tokens(model, inputs)
    ss = _default_sites(model) if sites is None else as_sites(sites, model)
    idx = scoring.resolve_positions(positions, tb.tokens.shape[1], where="inputs")
    if idx is None:
        raise ValueError("positions must name positions for a lens (got None)")
    return tb.tokens, ss, idx


def lens_logits(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    positions: int | Sequence[int] = -1,
    *,
    ln: LnMode = "isolated",
    include_bias: bool = True,
) -> dict[str, Float[Tensor, "batch n_positions d_vocab"]]:
    """Logits of each module output at ``positions``, plus the full model's (key ``"full"``).

    Everything is computed in one batch: memory is rows × batch × positions × ``d_vocab``; for
    large inputs use :func:`group_lens`, which batches and scores as it goes.

    Args:
        model: the model (not modified; no hook is left attached).
        inputs: tokens or strings of equal length.
        sites: rows (``"embed"``, ``"attn0"``, ``"attn0.h1"``, ``"mlp0"``, ``"resid_post0"``, ...);
            default: embeddings, then per layer attention, its heads, MLP and ``resid_post``.
        positions: positions at which to compute logits (negative ones count from the end).
        ln: ``"isolated"`` (the paper's), ``"cached"`` or ``"none"``; see the module docs.
        include_bias: add the attention output bias ``b_O`` to every head row (the paper does).

    Returns:
        ``{row name: logits [batch, n_positions, d_vocab]}`` in row order, ``"full"`` last.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> out = lens_logits(model, torch.randint(0, 50, (3, 5)), ["mlp0", "attn1.h2"], [0, -1])
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'mlp0': (3, 2, 50), 'attn1.h2': (3, 2, 50), 'full': (3, 2, 50)}
    """
    tokens, ss, idx = _prepare(model, inputs, sites, positions, ln)
    with torch.no_grad():
        vecs, final = _vectors(model, tokens, ss, idx, include_bias)
        scale = _tl.final_ln_scale(model, final) if ln == "cached" else None
        unembed = _tl.FinalLogits(model)
        out = {name: _project(unembed, v, ln, scale) for name, v in vecs.items()}
        out[FULL] = unembed(final)
    return out


def _metric_positions(metrics: Mapping[str, MetricLike]) -> list[int]:
    """The positions the metrics declare, in order of first appearance (``[-1]`` if none)."""
    ps: list[int] = []
    for k, m in metrics.items():
        ps += scoring.declared_positions(m, f"metric {k!r}") or ()
    return list(dict.fromkeys(ps)) or [-1]


def group_lens(
    model: HookedTransformer,
    inputs: Inputs,
    metrics: TokenGroups | MetricLike | Mapping[str, MetricLike],
    positions: Positions = None,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    *,
    ln: LnMode = "isolated",
    include_bias: bool = True,
    batch_size: int = 32,
    per_pair: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every module output's logit-lens logits with group metrics at chosen positions.

    The paper's Tab. II in tidy form (pivot with :func:`lens_table`): for the 3-sentiment toy
    model, p + t inputs, top-10 negativity and positivity at positions 0 and 1.

    Args:
        model: the model (not modified; no hook is left attached, even after an error).
        inputs: tokens or strings of equal length.
        metrics: :class:`~pcp_lens.TokenGroups` (top-10 share of every group), one metric, or
            ``{name: metric}``. The lens chooses the positions: a metric is scored on the logits
            of one position at a time (``[batch, 1, d_vocab]``), through its ``score`` method if
            it declares positions (which are then only the default of ``positions``), else by
            calling it (``docs/metrics.md``).
        positions: positions to score; default the positions the metrics declare, else ``-1``.
        sites: rows; default embeddings, then per layer attention, its heads, MLP, ``resid_post``.
        ln: ``"isolated"`` (the paper's), ``"cached"`` or ``"none"``; see the module docs.
        include_bias: add ``b_O`` to every head row (the paper does).
        batch_size: rows per forward pass.
        per_pair: add ``se`` (standard error over prompts) and ``pairs`` (a tuple of every
            prompt's value, in input order) to each row; a metric that returns a batch mean is
            then scored prompt by prompt (:func:`pcp_lens.scoring.per_prompt`).
        progress: show a tqdm bar.

    Returns:
        A DataFrame in the library's table vocabulary (``docs/concepts.md``): ``site`` (site
        name, or ``"full"``), ``paper_name``, ``layer``, ``kind``, ``head``, ``metric``,
        ``position`` (as given), ``value``, ``n``, ``ln``, and ``module``, the former name of
        ``site`` (kept for existing code); with ``per_pair=True`` also ``se`` and ``pairs``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model(n_layers=1)
        >>> groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
        >>> df = group_lens(model, torch.randint(0, 50, (4, 3)), groups, positions=[0, 1],
        ...                 progress=False)
        >>> lens_table(df).index.tolist()  # doctest: +NORMALIZE_WHITESPACE
        ['embd', 'L1 attn', 'L1 att0', 'L1 att1', 'L1 att2', 'L1 att3', 'L1 mlp',
         'L1 resid_post', 'full model']
    """
    if isinstance(metrics, TokenGroups):
        named: dict[str, MetricLike] = dict(group_metrics(metrics))
    else:
        named = scoring.named_metrics(metrics)
    if per_pair:
        named = {k: scoring.per_prompt(m) for k, m in named.items()}
    check_batch_size(batch_size)
    given = scoring.check_positions(positions) or _metric_positions(named)
    tokens, ss, idx = _prepare(model, inputs, sites, given, ln)
    rows: list[tuple[str, str, Site | None]] = [(s.name, s.paper_name, s) for s in ss]
    rows.append((FULL, FULL_PAPER, None))
    accs = {
        (r, m, j): scoring.RowMean(m) for r, _, _ in rows for m in named for j in range(len(idx))
    }
    batches = list(tokens.split(batch_size))
    with torch.no_grad():
        unembed = _tl.FinalLogits(model)  # one transposed W_U for every row and batch
        for batch in tqdm(batches, desc="lens", disable=not progress, leave=False):
            vecs, final = _vectors(model, batch, ss, idx, include_bias)
            vecs[FULL] = final
            scale = _tl.final_ln_scale(model, final) if ln == "cached" else None
            for name, _, _ in rows:
                ln_row = "isolated" if name == FULL else ln
                logits = _project(unembed, vecs[name], ln_row, scale)
                for m, metric in named.items():
                    for j in range(len(idx)):
                        # the lens chooses the position: a metric scores that one position
                        one = logits[:, j : j + 1]
                        value = scoring.call_metric(metric, one, own_positions=False)
                        accs[(name, m, j)].add(value, batch.shape[0], f"row {name!r}")
    records: list[dict[str, Any]] = []
    for name, paper, s in rows:
        for j, p in enumerate(given):
            for m in named:
                acc = accs[(name, m, j)]
                records.append(
                    {
                        "site": name,
                        "paper_name": paper,
                        "layer": s.layer if s is not None else None,
                        "kind": s.kind if s is not None else FULL,
                        "head": s.head if s is not None else None,
                        "metric": m,
                        "position": p,
                        "value": acc.value,
                        "n": acc.n,
                        "ln": ln,
                        "module": name,  # the former name of "site", kept for old code
                        **(acc.pair_columns() if per_pair else {}),
                    }
                )
    return scoring.tidy_table(records)


def lens_table(df: pd.DataFrame, names: Literal["paper", "short"] = "paper") -> pd.DataFrame:
    """Pivot a :func:`group_lens` table into Tab. II's layout: modules × (position, metric).

    Args:
        df: the tidy table from :func:`group_lens`.
        names: ``"paper"`` (``"L1 att0"``, ``"full model"``) or ``"short"`` (``"attn0.h0"``) labels.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model(n_layers=1)
        >>> groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
        >>> df = group_lens(model, torch.randint(0, 50, (4, 3)), groups, [0, 1], ["mlp0"],
        ...                 progress=False)
        >>> lens_table(df).columns.tolist()
        [(0, 'neg'), (0, 'pos'), (1, 'neg'), (1, 'pos')]
    """
    if names not in ("paper", "short"):
        raise ValueError(f"names must be 'paper' or 'short', got {names!r}")
    d = df.assign(_row=df["paper_name"] if names == "paper" else df["site"])
    return scoring.wide_table(d, "_row", ["position", "metric"])
