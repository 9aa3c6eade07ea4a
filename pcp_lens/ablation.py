"""Zero, mean and resample ablation of module outputs, and the ablation sweep (Tab. I / Tab. VIII).

An ablation replaces a site's output (an attention or MLP output, one attention head, a residual
stream or the token embedding) by a constant or by another input's activation, at chosen positions
or at every position, while the rest of the network, residual connections included, runs
unchanged (METHODS §5.2). The hook factories return plain ``[(hook_name, hook_fn)]`` lists, so they
compose with ``model.hooks(fwd_hooks=...)``, ``run_with_hooks``, ``run_with_cache`` and with any
other hooks (see the example below).

A head site (``"attn1.h2"``) is ablated on ``blocks.L.attn.hook_z``: its mean is a ``d_head``
vector, and ablating it there removes ``z_h @ W_O[h]`` from the attention output (``b_O`` stays).
The ``"embed"`` site is the token embedding ``hook_embed`` (positional embeddings are kept), the
same tensor :func:`pcp_lens.collect_stats` averages for it.

Examples:
    >>> import torch
    >>> from pcp_lens.testing import tiny_model
    >>> model = tiny_model()
    >>> tokens = torch.randint(0, 50, (4, 6))
    >>> hooks = zero_ablation("mlp0") + mean_ablation("attn1", torch.zeros(16), positions=[-1])
    >>> model.run_with_hooks(tokens, fwd_hooks=hooks).shape
    torch.Size([4, 6, 50])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer, HookPoint, Hooks
from pcp_lens._tl import HookFn as HookFn  # re-exported: its former home
from pcp_lens.inputs import Inputs, as_tokens, named_sets
from pcp_lens.means import ablation_means, mean_reference_code, nested_average
from pcp_lens.scoring import Metric as Metric  # re-exported: its former home
from pcp_lens.scoring import (
    MetricLike,
    Positions,
    RowMean,
    call_metric,
    check_positions,
    declared_positions,
    named_metrics,
    per_prompt,
    resolve_positions,
    tidy_table,
    wide_table,
)
from pcp_lens.sites import Site, SiteLike, all_sites, as_sites
from pcp_lens.stats import ActivationStats, stream_activations

__all__ = [
    "ablation_hooks",
    "ablation_means",
    "ablation_sweep",
    "ablation_table",
    "mean_ablation",
    "mean_reference_code",
    "nested_average",
    "resample_ablation",
    "resolve_positions",
    "wide_table",
    "zero_ablation",
]

Method = Literal["mean", "zero", "resample"]
MeanLike = Tensor | ActivationStats


# -- hooks -------------------------------------------------------------------------------------
class _AblationHook:
    """A forward hook replacing a site's output at some positions; readable in hook listings."""

    def __init__(
        self,
        site: Site,
        positions: tuple[int, ...] | None,
        method: str,
        value: Callable[[Tensor, list[int] | None, str], Tensor],
    ) -> None:
        self.site = site
        self.positions = positions
        self.method = method
        self._value = value

    def __call__(self, act: Tensor, hook: HookPoint) -> Tensor:
        name = getattr(hook, "name", None) or self.site.hook_name
        idx = resolve_positions(self.positions, act.shape[1], where=name)
        sel: tuple[Any, ...] = (slice(None), slice(None) if idx is None else idx)
        if self.site.head is not None:
            if act.dim() != 4 or self.site.head >= act.shape[2]:
                raise ValueError(
                    f"head ablation {self.site.name!r} expects hook_z activations "
                    f"[batch, pos, n_heads, d_head], got shape {tuple(act.shape)} at {name}"
                )
            sel = (*sel, self.site.head)
        out = act.clone()
        out[sel] = self._value(act, idx, name)
        return out

    def __repr__(self) -> str:
        pos = "all" if self.positions is None else list(self.positions)
        return f"{self.method}_ablation({self.site.name}, positions={pos})"


def _site(site: SiteLike, model: HookedTransformer | None) -> Site:
    s = Site.parse(site)
    if model is not None:
        s.validate(model)
    return s


def _width(site: Site, model: HookedTransformer) -> int:
    """The width of one position of the ablated tensor (``d_head`` for a head, else ``d_model``)."""
    return _tl.head_dims(model)[1] if site.head is not None else model.cfg.d_model


def zero_ablation(
    site: SiteLike, positions: Positions = None, *, model: HookedTransformer | None = None
) -> Hooks:
    """Hooks that set a site's output to zero at ``positions`` (all positions if ``None``).

    Args:
        site: the site to ablate (``"mlp0"``, ``"attn1.h2"``, ``Site(1, "attn")``, ...).
        positions: positions to ablate; negative ones count from the end. Checked against the
            sequence length when the hook runs.
        model: if given, the site is validated against it now (layer and head in range).

    Returns:
        ``[(hook_name, hook_fn)]`` for ``model.hooks(fwd_hooks=...)`` or ``run_with_hooks``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> with model.hooks(fwd_hooks=zero_ablation("mlp0", positions=[1], model=model)):
        ...     out = model(torch.randint(0, 50, (2, 5)))
        >>> out.shape
        torch.Size([2, 5, 50])
    """
    s = _site(site, model)
    ps = check_positions(positions)

    def value(act: Tensor, idx: list[int] | None, where: str) -> Tensor:
        return torch.zeros((), dtype=act.dtype, device=act.device)

    return [(s.hook_name, _AblationHook(s, ps, "zero", value))]


def _mean_vector(mean: MeanLike, site: Site, model: HookedTransformer | None) -> Tensor:
    m = mean.mean if isinstance(mean, ActivationStats) else mean
    if not isinstance(m, Tensor):
        raise ValueError(
            f"mean for {site.name!r} must be a Tensor or ActivationStats, got {type(mean).__name__}"
        )
    if m.dim() != 1 or not m.is_floating_point():
        raise ValueError(
            f"mean for {site.name!r} must be a 1-d float vector, got {m.dtype} of shape "
            f"{tuple(m.shape)}"
        )
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"mean for {site.name!r} contains non-finite values (nan or inf)")
    if model is not None:
        want = _width(site, model)
        if m.shape[0] != want:
            what = "d_head" if site.head is not None else "d_model"
            raise ValueError(
                f"mean for {site.name!r} has shape {tuple(m.shape)}; expected ({want},) "
                f"({what} = {want})"
            )
    return m.detach()


def mean_ablation(
    site: SiteLike,
    mean: Float[Tensor, " d"] | ActivationStats,
    positions: Positions = None,
    *,
    model: HookedTransformer | None = None,
) -> Hooks:
    """Hooks that replace a site's output by a constant mean vector (METHODS §5.2).

    Args:
        site: the site to ablate.
        mean: a ``[d_model]`` vector (``[d_head]`` for a head site), or the site's
            :class:`~pcp_lens.ActivationStats`; it must be finite. Cast to the activation's
            dtype and device when the hook runs.
        positions: positions to replace (``None``: every position, as in the paper).
        model: if given, the site and the mean's width are validated against it now.

    Returns:
        ``[(hook_name, hook_fn)]``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> seen = []
        >>> hooks = mean_ablation("mlp0", torch.ones(16), model=model)
        >>> capture = [("blocks.0.hook_mlp_out", lambda act, hook: seen.append(act))]
        >>> _ = model.run_with_hooks(torch.randint(0, 50, (2, 5)), fwd_hooks=hooks + capture)
        >>> bool((seen[0] == 1).all())
        True
    """
    s = _site(site, model)
    ps = check_positions(positions)
    m = _mean_vector(mean, s, model)
    cast: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def value(act: Tensor, idx: list[int] | None, where: str) -> Tensor:
        if act.shape[-1] != m.shape[0]:
            raise ValueError(
                f"mean for {s.name!r} has width {m.shape[0]} but the activation at {where} has "
                f"width {act.shape[-1]} (shape {tuple(act.shape)})"
            )
        key = (act.dtype, act.device)
        if key not in cast:
            cast[key] = m.to(dtype=act.dtype, device=act.device)
        return cast[key]

    return [(s.hook_name, _AblationHook(s, ps, "mean", value))]


def _site_activations(
    model: HookedTransformer, site: Site, inputs: Inputs, batch_size: int = 32
) -> Tensor:
    """All of a site's hook activations for ``inputs`` (equal lengths), ``[n, pos, ...]``."""
    tb = as_tokens(model, inputs, name="source")
    b, p = tb.tokens.shape
    name = site.hook_name
    chunks = [
        got[name] for got in stream_activations(model, tb, [name], None, batch_size, progress=False)
    ]
    flat = torch.cat(chunks)
    if site.head is not None:
        return flat.reshape(b, p, *_tl.head_dims(model))
    return flat.reshape(b, p, -1)


def resample_ablation(
    site: SiteLike,
    source: Tensor | Inputs,
    positions: Positions = None,
    *,
    model: HookedTransformer | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> Hooks:
    """Hooks that replace each row's site output by that of a random row of a source batch.

    Each forward pass draws, for every row of its batch, one source row uniformly with replacement
    from a ``torch.Generator`` seeded with ``seed`` when the hooks are built: the k-th forward
    pass through these hooks always draws the same rows, so rebuild the hooks to replay a run.
    The replacement is taken at the same (absolute) positions.

    Args:
        site: the site to ablate.
        source: either the site's activations, a float tensor shaped like the hook's activation
            (``[n, pos, d_model]``; ``[n, pos, n_heads, d_head]`` for a head site, i.e. the whole
            ``hook_z``), or source tokens/strings of equal length, in which case ``model`` is
            required and the activations are computed once, now.
        positions: positions to replace (``None``: every position; then the source must be at
            least as long as the target).
        model: validates the site; required when ``source`` is tokens or strings.
        seed: seed of the row draws.
        batch_size: rows per forward pass when computing source activations.

    Returns:
        ``[(hook_name, hook_fn)]``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> src = torch.randint(0, 50, (8, 5))
        >>> hooks = resample_ablation("mlp1", src, model=model, seed=1)
        >>> model.run_with_hooks(torch.randint(0, 50, (3, 5)), fwd_hooks=hooks).shape
        torch.Size([3, 5, 50])
    """
    s = _site(site, model)
    ps = check_positions(positions)
    if isinstance(source, Tensor) and source.is_floating_point():
        acts = source.detach()
        if acts.dim() < 3 or acts.shape[0] < 1:
            raise ValueError(
                f"source activations for {s.name!r} must be [n, pos, ...] with n >= 1, got shape "
                f"{tuple(acts.shape)}"
            )
        if not bool(torch.isfinite(acts).all()):
            raise ValueError(f"source activations for {s.name!r} contain nan or inf")
    else:
        if model is None:
            raise ValueError(
                "resample_ablation needs model=... when source is tokens or strings (to compute "
                "the source activations); or pass the activations themselves"
            )
        with torch.no_grad():
            acts = _site_activations(model, s, source, batch_size)
    if model is not None:
        if s.head is not None:
            want: tuple[int, ...] = _tl.head_dims(model)
        else:
            want = (_width(s, model),)
        if tuple(acts.shape[2:]) != want:
            raise ValueError(
                f"source activations for {s.name!r} have shape {tuple(acts.shape)}; expected "
                f"[n, pos, {', '.join(map(str, want))}]"
            )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)

    def value(act: Tensor, idx: list[int] | None, where: str) -> Tensor:
        if tuple(act.shape[2:]) != tuple(acts.shape[2:]):
            raise ValueError(
                f"source activations for {s.name!r} have shape {tuple(acts.shape)} but the "
                f"activation at {where} has shape {tuple(act.shape)}"
            )
        need = act.shape[1] if idx is None else max(idx) + 1
        if acts.shape[1] < need:
            raise ValueError(
                f"source activations for {s.name!r} have {acts.shape[1]} positions; position "
                f"{need - 1} is needed at {where}"
            )
        rows = torch.randint(acts.shape[0], (act.shape[0],), generator=gen).to(acts.device)
        picked = acts[rows][:, : act.shape[1]] if idx is None else acts[rows][:, idx]
        if s.head is not None:
            picked = picked[:, :, s.head]
        return picked.to(dtype=act.dtype, device=act.device)

    return [(s.hook_name, _AblationHook(s, ps, "resample", value))]


def ablation_hooks(
    model: HookedTransformer,
    sites: SiteLike | Iterable[SiteLike],
    method: Method = "mean",
    *,
    means: Mapping[str, MeanLike] | None = None,
    positions: Positions = None,
    source: Tensor | Inputs | Mapping[str, Tensor] | None = None,
    seed: int = 0,
) -> Hooks:
    """Hooks ablating several sites at once with one method.

    Args:
        model: the model (sites and means are validated against it).
        sites: sites to ablate together.
        method: ``"mean"``, ``"zero"`` or ``"resample"``.
        means: ``{site name: mean}`` for ``method="mean"`` (e.g. from :func:`ablation_means`).
        positions: positions to ablate (``None``: all).
        source: for ``"resample"``: source tokens/strings, or ``{site name: activations}``.
        seed: seed of the resample draws.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> hooks = ablation_hooks(model, ["mlp0", "attn1"], "zero")
        >>> len(hooks), hooks[1][0]
        (2, 'blocks.1.hook_attn_out')
    """
    ss = as_sites(sites, model)
    if method not in ("mean", "zero", "resample"):
        raise ValueError(f"method must be one of 'mean', 'zero', 'resample', got {method!r}")
    hooks: Hooks = []
    if method == "mean":
        if means is None:
            raise ValueError(
                "method='mean' needs means={site name: vector}; compute them with "
                "ablation_means(model, inputs, sites, positions=...)"
            )
        missing = [s.name for s in ss if s.name not in means]
        if missing:
            raise ValueError(f"means has no entry for sites {missing}; it has {sorted(means)}")
    if method == "resample" and source is None:
        raise ValueError("method='resample' needs source= (tokens, strings or activations)")
    for s in ss:
        if method == "zero":
            hooks += zero_ablation(s, positions, model=model)
        elif method == "mean":
            assert means is not None
            hooks += mean_ablation(s, means[s.name], positions, model=model)
        else:
            src = source[s.name] if isinstance(source, Mapping) else source
            hooks += resample_ablation(s, src, positions, model=model, seed=seed)  # type: ignore[arg-type]
    return hooks


# -- sweep -------------------------------------------------------------------------------------
def _score_batch(
    final: _tl.FinalLogits,
    resid: Float[Tensor, "batch pos d_model"],
    metrics: Mapping[str, MetricLike],
    accs: Mapping[str, RowMean],
) -> None:
    """Evaluate every metric on the logits of a final residual, unembedding only what is read."""
    n = resid.shape[1]
    declared = {k: declared_positions(m, f"metric {k!r}") for k, m in metrics.items()}
    wanted: list[int] = []
    for k, ps in declared.items():
        if ps is not None:
            wanted += resolve_positions(ps, n, name=f"metric {k!r} positions") or []
    wanted = list(dict.fromkeys(wanted))
    sel = final(resid[:, wanted]) if wanted else None
    full = final(resid) if any(ps is None for ps in declared.values()) else None
    for k, m in metrics.items():
        logits, at = (full, None) if declared[k] is None else (sel, wanted)
        assert logits is not None
        accs[k].add(call_metric(m, logits, at, n=n, name=f"metric {k!r}"), resid.shape[0])


def _start_layer(model: HookedTransformer, sites: Sequence[Site]) -> int | None:
    """The first block an ablation of ``sites`` changes (``None``: run the whole model)."""
    if not sites or not _tl.blocks_resumable(model) or any(s.layer is None for s in sites):
        return None
    return min(s.layer for s in sites if s.layer is not None)


def _conditions(
    model: HookedTransformer,
    sites: SiteLike | Iterable[SiteLike] | None,
    combos: Mapping[str, Iterable[SiteLike]] | Iterable[Iterable[SiteLike]] | None,
) -> list[tuple[str, str, list[Site]]]:
    """(label, paper label, sites) for every ablation, the unchanged model first."""
    single = all_sites(model) if sites is None else as_sites(sites, model)
    out: list[tuple[str, str, list[Site]]] = [("unchanged", "Unchanged", [])]
    out += [(s.name, s.paper_name, [s]) for s in single]
    if combos is not None:
        items: list[tuple[str | None, Iterable[SiteLike]]] = (
            [(str(k), v) for k, v in combos.items()]
            if isinstance(combos, Mapping)
            else [(None, c) for c in combos]
        )
        for label, c in items:
            if isinstance(c, (str, Site)):
                raise ValueError(
                    f"each combination must be a list of sites, got the single site {c!r}; "
                    "single sites go in sites="
                )
            cs = as_sites(c, model)
            if not cs:
                raise ValueError("a combination of sites is empty")
            out.append(
                (
                    label or "+".join(s.name for s in cs),
                    label or " + ".join(s.paper_name for s in cs),
                    cs,
                )
            )
    return out


def ablation_sweep(
    model: HookedTransformer,
    inputs: Inputs | Mapping[str, Inputs],
    metrics: MetricLike | Mapping[str, MetricLike],
    sites: SiteLike | Iterable[SiteLike] | None = None,
    combos: Mapping[str, Iterable[SiteLike]] | Iterable[Iterable[SiteLike]] | None = None,
    method: Method = "mean",
    *,
    means: Mapping[str, MeanLike] | None = None,
    positions: Positions = None,
    source: Inputs | None = None,
    seed: int = 0,
    batch_size: int = 32,
    per_pair: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Ablate each site (and each combination) in turn and score every metric on every input set.

    One row per (ablation, input set, metric), plus the unchanged model's row for each input set
    and metric: the paper's Tab. I (toy) and Tab. VIII (GPT-2 medium) in tidy form. Turn it into
    the paper's layout with :func:`ablation_table`.

    Metrics follow the library's one contract (``docs/metrics.md``): a plain callable gets full
    logits, a metric that declares ``positions`` and ``score`` (such as
    :class:`pcp_lens.GroupMetric`) gets logits computed only there. Values are averaged over
    batches weighted by rows, so a metric that is not a mean over prompts needs ``batch_size`` >=
    the number of prompts.

    Args:
        model: the model (never modified; no hook is left attached, even after an error).
        inputs: tokens or strings of equal length, or ``{name: inputs}``; each set may have its own
            length.
        metrics: one metric, or ``{name: metric}`` (e.g. :func:`pcp_lens.group_metrics`).
        sites: single sites to ablate; default every ``attn`` and ``mlp`` site.
        combos: combinations ablated together, as ``{label: [sites]}`` or a list of site lists.
        method: ``"mean"``, ``"zero"`` or ``"resample"``.
        means: ``{site name: mean}`` for ``method="mean"`` (from :func:`ablation_means` or
            :func:`mean_reference_code`); must cover every ablated site.
        positions: positions to ablate; ``None`` ablates every position (the paper).
        source: for ``"resample"``: source tokens or strings; by default each input set resamples
            from its own rows.
        seed: seed of the resample draws (every ablation of a set sees the same draws).
        batch_size: rows per forward pass.
        per_pair: add ``se`` (standard error over prompts) and ``pairs`` (a tuple of every
            prompt's value, in input order) to each row; a metric that returns a batch mean is
            then scored prompt by prompt (:func:`pcp_lens.scoring.per_prompt`).
        progress: show a tqdm bar.

    Returns:
        A DataFrame in the library's table vocabulary (``docs/concepts.md``): ``site``
        (``"unchanged"``, a site name or a combination label), ``paper_name``, ``sites``,
        ``layer``, ``kind``, ``head``, ``method``, ``input_set``, ``metric``, ``value``, ``n``
        (prompts), and ``ablation``, the former name of ``site`` (kept for existing code);
        with ``per_pair=True`` also ``se`` and ``pairs``.

    Examples:
        >>> from pcp_lens import TokenGroups, group_metrics
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
        >>> df = ablation_sweep(model, {"pt": torch.randint(0, 50, (8, 3))},
        ...                     group_metrics(groups), method="zero", progress=False)
        >>> len(df), list(df.site.unique())
        (10, ['unchanged', 'attn0', 'mlp0', 'attn1', 'mlp1'])
    """
    if method not in ("mean", "zero", "resample"):
        raise ValueError(f"method must be one of 'mean', 'zero', 'resample', got {method!r}")
    named = named_metrics(metrics)
    if per_pair:
        named = {k: per_prompt(m) for k, m in named.items()}
    conds = _conditions(model, sites, combos)
    ablated = list(dict.fromkeys(s for _, _, ss in conds for s in ss))
    ps = check_positions(positions)
    if method == "mean":
        # validate every mean before any forward pass
        ablation_hooks(model, ablated, "mean", means=means, positions=ps)
    sets = {}
    for k, v in named_sets(inputs).items():
        tb = as_tokens(model, v, name=f"inputs[{k!r}]")
        resolve_positions(ps, tb.tokens.shape[1], where=f"input set {k!r}")
        sets[k] = tb
    src_tb = as_tokens(model, source, name="source") if source is not None else None

    rows: list[dict[str, Any]] = []
    final = _tl.FinalLogits(model)  # one transposed W_U for the whole sweep
    # Each ablation re-runs only the blocks from its earliest site on; the clean residual entering
    # that block is computed once per batch (with the user's own hooks, like a full forward).
    starts = {label: _start_layer(model, ss) for label, _, ss in conds}
    need = sorted({s for s in starts.values() if s is not None})
    bar = tqdm(total=len(sets) * len(conds), desc="ablation", disable=not progress, leave=False)
    with bar, torch.no_grad():
        for set_name, tb in sets.items():
            src_acts: dict[str, Tensor] = {}
            if method == "resample":
                src = src_tb.tokens if src_tb is not None else tb.tokens
                src_acts = {s.name: _site_activations(model, s, src, batch_size) for s in ablated}
            # built once per set: a resample hook draws rows batch after batch from one generator
            hooks = {
                label: ablation_hooks(
                    model, ss, method, means=means, positions=ps, source=src_acts, seed=seed
                )
                if ss
                else []
                for label, _, ss in conds
            }
            accs = {label: {k: RowMean(k) for k in named} for label, _, _ in conds}
            for batch in tb.batches(batch_size):
                clean, clean_final = _tl.block_inputs(model, batch.tokens, need)
                for label, _, _ in conds:
                    start = starts[label]
                    with _tl.attached(model, hooks[label]):
                        if not hooks[label]:
                            resid = clean_final
                        elif start is None:
                            resid = _tl.final_residual(model, batch.tokens)
                        else:
                            resid = _tl.run_blocks(model, clean[start], start, model.cfg.n_layers)
                        _score_batch(final, resid, named, accs[label])
            for label, paper, ss in conds:
                kinds = {s.kind for s in ss}
                kind = (next(iter(kinds)) if len(kinds) == 1 else "combo") if ss else None
                one = ss[0] if len(ss) == 1 else None
                for k, acc in accs[label].items():
                    rows.append(
                        {
                            "site": label,
                            "paper_name": paper,
                            "sites": "+".join(s.name for s in ss),
                            "layer": one.layer if one is not None else None,
                            "kind": kind,
                            "head": one.head if one is not None else None,
                            "method": method if ss else "none",
                            "input_set": set_name,
                            "metric": k,
                            "value": acc.value,
                            "n": acc.n,
                            "ablation": label,  # the former name of "site", kept for old code
                            **(acc.pair_columns() if per_pair else {}),
                        }
                    )
                bar.update()
    return tidy_table(rows)


# -- tables -------------------------------------------------------------------------------------
def ablation_table(
    df: pd.DataFrame,
    layout: Literal["site", "layer"] = "site",
    names: Literal["paper", "short"] = "paper",
) -> pd.DataFrame:
    """Pivot an :func:`ablation_sweep` table into the paper's wide layout.

    Args:
        df: the sweep's tidy table.
        layout: ``"site"``: one row per ablation (``"L1 attn"``, ..., combinations, then
            ``"Unchanged"``), one column per (input set, metric). ``"layer"``: Tab. I / VIII, one
            row per layer (1-based) and one column per kind (``attn``, ``mlp``), then the
            ``"Unchanged"`` row repeated under every kind; only single whole-module ablations
            appear (combinations and heads are in the ``"site"`` layout).
        names: ``"paper"`` (1-based ``"L1 mlp"``) or ``"short"`` (``"mlp0"``) row labels.

    Column levels with a single value (one input set, one metric) are dropped.

    Examples:
        >>> from pcp_lens import TokenGroups, group_metrics
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> groups = TokenGroups({"neg": range(10)}, d_vocab=50)
        >>> df = ablation_sweep(model, torch.randint(0, 50, (4, 3)), group_metrics(groups),
        ...                     method="zero", progress=False)
        >>> ablation_table(df, "layer").index.tolist(), ablation_table(df, "layer").columns.tolist()
        (['1', '2', 'Unchanged'], ['attn', 'mlp'])
    """
    if layout == "site":
        d = df.copy()
        d["_row"] = d["paper_name"] if names == "paper" else d["site"]
        base = d[d["site"] == "unchanged"]
        d = cast(pd.DataFrame, pd.concat([d[d["site"] != "unchanged"], base]))
        return wide_table(d, "_row", ["input_set", "metric"])
    if layout != "layer":
        raise ValueError(f"layout must be 'site' or 'layer', got {layout!r}")
    whole = df["layer"].notna() & df["head"].isna() & (df["kind"] != "combo")
    single = cast(pd.DataFrame, df[whole])
    base = cast(pd.DataFrame, df[df["site"] == "unchanged"])
    kinds = list(dict.fromkeys(single["kind"]))
    unchanged = pd.concat([base.assign(kind=k) for k in kinds]) if kinds else base
    d = cast(pd.DataFrame, pd.concat([single, unchanged]))
    d["_row"] = [
        "Unchanged"
        if a == "unchanged"
        else (str(int(layer) + 1) if names == "paper" else str(layer))
        for a, layer in zip(d["site"], d["layer"], strict=True)
    ]
    return wide_table(d, "_row", ["input_set", "metric", "kind"])
