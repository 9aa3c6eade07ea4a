"""Attribution patching: estimate every site's patching effect from two forwards and one backward.

Exact patching (:func:`~pcp_lens.patching.causal_patching`) costs one resumed forward per site ×
position. Attribution patching (AtP, Nanda 2023) replaces it by a first-order estimate: the
effect of putting the clean activation ``a_clean`` into the corrupted run is about
``∇_a metric(corrupted) · (a_clean − a_corrupted)``, for every site, head and position at once
(one clean forward, one corrupted forward with gradients, one backward of the metric).

Three methods:

* ``"atp"``: the plain first-order estimate.
* ``"atp*"``: AtP with Kramár et al.'s (2024) *QK fix*: the part of the estimate that runs
  through the attention pattern of the first attention layer reading the patched activation is
  replaced by the exact change of that pattern (recomputed by TransformerLens's own block, the
  patched residual computed exactly as in exact patching) times the metric's gradient with
  respect to the pattern, so a saturated softmax, whose gradient is about zero, no longer hides
  an effect that flips it. Later layers stay linear. ``graddrop=True`` adds their *GradDrop*
  against cancelling paths: ``(1 / (L − 1)) Σ_ℓ |estimate with the gradient through layer ℓ's
  attention and MLP outputs set to zero|``, per prompt pair (a magnitude, for ranking; the
  unit's own layer uses the plain estimate).
* ``"relp"``: the same passes with relevance-propagation rules in place of gradients (RelP,
  Jafari et al. 2025): every LayerNorm scale and attention pattern held constant and each MLP
  activation passed by its output/input ratio, so the estimate is that of the model linearised
  around the corrupted run.

``verify=k`` runs exact patching on the ``k`` units with the largest ``|estimate|`` and fills
``value`` and ``effect`` for them (``NaN`` elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens, check_batch_size, check_same_shape
from pcp_lens.patching import (
    PATCHABLE,
    PatchUnit,
    patch_units,
    patched_block,
    patched_metrics,
    prefix_kv,
)
from pcp_lens.scoring import (
    MetricLike,
    call_metric,
    check_metric,
    declared_positions,
    mean_value,
    resolve_positions,
    tidy_table,
)
from pcp_lens.sites import SiteLike, all_sites, as_sites

__all__ = ["METHODS", "attribution_patching"]

Method = Literal["atp", "atp*", "relp"]
METHODS: tuple[str, ...] = ("atp", "atp*", "relp")


def attribution_patching(
    model: HookedTransformer,
    clean: Inputs,
    corrupted: Inputs,
    metric: MetricLike,
    *,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    heads: bool = True,
    positions: Literal["each", "all"] | int | Sequence[int] = "each",
    method: Method = "atp",
    verify: int = 0,
    graddrop: bool = False,
    per_pair: bool = False,
    max_batch_tokens: int = 32768,
    progress: bool = True,
) -> pd.DataFrame:
    """Estimate the effect of patching each clean site output into the corrupted run.

    Args:
        model: the model (in eval mode). Its parameters keep their ``requires_grad`` flags and
            get no ``.grad``: only activations are differentiated.
        clean: the source tokens ``[batch, pos]`` (or strings of equal token length).
        corrupted: the target run, same shape (TransformerLens's ``clean_to_corrupted``).
        metric: a differentiable metric (``docs/metrics.md``): a callable ``logits -> `` a batch
            mean or per-prompt values, or one declaring ``positions`` and ``score`` (then logits
            are computed only there).
        sites: sites to estimate, as in ``causal_patching`` (default: every ``attn`` and ``mlp``
            site, and with ``heads`` every attention head).
        heads: with ``sites=None``, also every attention head (patched at ``hook_z``). An
            explicit ``sites`` list is taken as given.
        positions: ``"each"``, an int or a list of distinct ints (each separately), or ``"all"``.
        method: ``"atp"``, ``"atp*"`` (QK fix) or ``"relp"`` (see the module docstring).
        verify: exact ``causal_patching`` of the ``verify`` units with the largest ``|estimate|``.
        graddrop: with ``method="atp*"``, GradDrop (one more backward per layer).
        per_pair: add a ``pairs`` column: a tuple of the per-pair estimates, in pair order.
        max_batch_tokens: memory budget, as in ``causal_patching``: the gradient passes take
            at most this many tokens (pairs × positions) at a time, the exact parts (``atp*``'s
            patterns, ``verify``) at most this many residual vectors per forward.
        progress: show a tqdm bar.

    Returns:
        ``causal_patching``'s table (``direction, site, paper_name, layer, kind, head, position,
        value, baseline, effect``) plus ``method``, ``estimate`` (the mean over pairs of the
        estimated effect) and ``se`` (its standard error over pairs; ``NaN`` for one pair).
        ``value`` and ``effect`` are exact for verified units and ``NaN`` for the others.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> clean, corrupted = torch.randint(0, 50, (2, 4, 5))
        >>> df = attribution_patching(model, clean, corrupted, lambda lg: lg[:, -1, 0].mean(),
        ...                           verify=3, progress=False)
        >>> len(df), int(df["effect"].notna().sum())
        (60, 3)
    """
    check_metric(metric)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
        raise ValueError(f"verify must be an int >= 0 (units to patch exactly), got {verify!r}")
    for name, flag in (("graddrop", graddrop), ("per_pair", per_pair), ("heads", heads)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if graddrop and method != "atp*":
        raise ValueError(f"graddrop=True needs method='atp*', got method={method!r}")
    if graddrop and model.cfg.n_layers < 2:
        raise ValueError("graddrop=True needs a model with at least 2 layers")
    cb = as_tokens(model, clean, name="clean")
    xb = as_tokens(model, corrupted, name="corrupted")
    check_same_shape(cb, xb, ("clean", "corrupted"))
    site_list = as_sites(sites, model) if sites is not None else all_sites(model, heads=heads)
    for s in site_list:
        if s.kind not in PATCHABLE:
            raise ValueError(
                f"cannot patch site {s.name!r} of kind {s.kind!r}; allowed kinds: "
                f"{', '.join(PATCHABLE)} (and attention heads)"
            )
    check_batch_size(max_batch_tokens, "max_batch_tokens")
    if method == "atp*" or verify:
        _tl.check_resumable(model)
    if method == "relp":
        _tl.check_relp(model)
    b, n = cb.tokens.shape
    units = patch_units(site_list, positions, n)
    # pairs are independent: the gradient passes take at most max_batch_tokens tokens at a time
    step = max(1, max_batch_tokens // n)
    parts, baseline = [], 0.0
    for i in range(0, b, step):
        part, base = _estimate(
            model, cb.tokens[i : i + step], xb.tokens[i : i + step], metric, units, method,
            graddrop, max_batch_tokens, progress,
        )
        parts.append(part)
        baseline += base * part.shape[1] / b
    pairs = torch.cat(parts, dim=1)
    est = pairs.mean(1)
    se = pairs.std(1) / b**0.5 if b > 1 else torch.full_like(est, float("nan"))
    exact: dict[int, float] = {}
    if verify:
        top = est.abs().argsort(descending=True, stable=True)[:verify].tolist()
        values, base_rows = patched_metrics(
            model, model, cb.tokens, xb.tokens, metric, [units[i] for i in top],
            max_batch_tokens, progress,
        )
        baseline = float(base_rows.mean())
        exact = {i: float(v.mean()) for i, v in zip(top, values, strict=True)}
    nan = float("nan")
    rows = []
    for i, u in enumerate(units):
        v = exact.get(i, nan)
        row: dict[str, Any] = {
            "direction": "clean_to_corrupted",
            "site": u.site.name,
            "paper_name": u.site.paper_name,
            "layer": u.site.layer,
            "kind": u.site.kind,
            "head": u.site.head,
            "method": method,
            "position": u.p0 if u.p1 - u.p0 == 1 else -1,
            "value": v,
            "baseline": baseline,
            "effect": v - baseline,
            "estimate": float(est[i]),
            "se": float(se[i]),
        }
        if per_pair:
            row["pairs"] = tuple(pairs[i].tolist())
        rows.append(row)
    return tidy_table(rows)


# -- the passes --------------------------------------------------------------------------------
def _first_pattern(site_kind: str, layer: int, n_layers: int) -> int | None:
    """The first attention layer whose pattern reads a patch of this site (None: no later one)."""
    nxt = layer if site_kind == "resid_pre" else layer + 1
    return nxt if nxt < n_layers else None


def _per_prompt_total(value: Any, b: int) -> Tensor:
    """The sum over prompts of each prompt's metric, whose gradient is each prompt's own.

    A scalar metric is taken as the batch mean (the contract), so ``b × mean``.
    """
    mean_value(value.detach() if isinstance(value, Tensor) else value, b)
    if not isinstance(value, Tensor) or not value.requires_grad:
        raise ValueError(
            "metric must be differentiable in the logits for attribution patching (a torch "
            f"expression of them); it returned {type(value).__name__} without a gradient (a "
            "count such as GroupMetric's top-k share has none; stat='prob' has)"
        )
    return value.reshape(()) * b if value.numel() == 1 else value.reshape(b, -1).mean(1).sum()


class _Gate(torch.autograd.Function):
    """Identity whose backward is zero while ``state['drop']`` names its layer (GradDrop)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, state: dict[str, int | None], layer: int) -> Tensor:
        ctx.state, ctx.layer = state, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, None, None]:
        (g,) = grads
        return (torch.zeros_like(g) if ctx.state["drop"] == ctx.layer else g), None, None


def _estimate(
    model: HookedTransformer,
    source: Tensor,
    target: Tensor,
    metric: MetricLike,
    units: list[PatchUnit],
    method: str,
    graddrop: bool,
    max_batch_tokens: int,
    progress: bool,
) -> tuple[Float[Tensor, "unit pair"], float]:
    """Per-unit, per-pair estimates (float64) and the metric of the corrupted run."""
    n_layers = model.cfg.n_layers
    b, n = target.shape
    names = list(dict.fromkeys(u.site.hook_name for u in units))
    qk = method == "atp*"
    first = {
        u.site.hook_name: _first_pattern(u.site.kind, u.site.layer or 0, n_layers) for u in units
    }
    qk_layers = sorted({ly for ly in first.values() if ly is not None}) if qk else []
    tgt_names: list[str] = []  # what atp*'s exact pattern runs read from the corrupted run
    if qk:
        tgt_names += [_tl.block_input_name(ly) for ly in range(n_layers)]
        tgt_names += [_tl.hook_name("resid_post", ly) for ly in range(n_layers)]
        tgt_names += [nm for ly in range(n_layers) for nm in _tl.kv_hook_names(ly)]
        tgt_names += [_tl.pattern_name(ly) for ly in qk_layers]
    drops: list[int | None] = [None, *range(n_layers)] if graddrop else [None]
    bar = tqdm(
        total=2 + len(drops), desc=f"attribution ({method})", disable=not progress, leave=False
    )

    with torch.no_grad():
        _, src = _tl.run_with_cache(model, source, names, stop_at_layer=n_layers)  # no logits
    src_cache = {k: src[k] for k in names}
    bar.update(1)

    acts: dict[str, Tensor] = {}
    qk_names = {_tl.pattern_name(ly) for ly in qk_layers}
    tgt_cache: dict[str, Tensor] = {}
    state: dict[str, int | None] = {"drop": None}

    def need_grad(act: Tensor, hook: Any) -> Tensor:
        # frozen parameters give activations without a graph; start one at the residual stream
        return act if act.requires_grad else act.detach().requires_grad_()

    def record(act: Tensor, hook: Any) -> Tensor:
        if hook.name in names or hook.name in qk_names:
            acts[hook.name] = act
        if hook.name in tgt_names:
            tgt_cache[hook.name] = act.detach()
        # returned, so the model computes on from this very tensor: the bridge hands some hooks
        # (hook_z) a reshaped view and, when a hook returns nothing, goes on from the original,
        # which leaves the view off the graph (zero gradient, every head's estimate 0)
        return act

    def gate(layer: int):
        return lambda act, hook: _Gate.apply(act, state, layer)

    hooks: list[tuple[str | Callable, Callable]] = [(_tl.block_input_name(0), need_grad)]
    if method == "relp":
        hooks += _tl.relp_hooks(model)
    if graddrop:
        hooks += [
            (_tl.hook_name(k, ly), gate(ly)) for ly in range(n_layers) for k in ("attn", "mlp")
        ]
    hooks += [(nm, record) for nm in dict.fromkeys([*names, *tgt_names])]
    declared = declared_positions(metric)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        resid = _tl.final_residual(model, target)
        final = _tl.FinalLogits(model)
        if declared is None:
            value = call_metric(metric, final(resid))
        else:
            pos = sorted(resolve_positions(declared, n, name="metric positions") or [])
            value = call_metric(metric, final(resid[:, pos]), pos, n=n)
        baseline = mean_value(value.detach() if isinstance(value, Tensor) else value, b)
        total = _per_prompt_total(value, b)
    bar.update(1)

    diffs = {nm: src_cache[nm] - acts[nm].detach() for nm in names}
    inputs = [acts[nm] for nm in names] + [acts[_tl.pattern_name(ly)] for ly in qk_layers]
    site_parts: list[dict[str, Tensor]] = []  # per pass: hook -> g·Δ per position (and head)
    pattern_grads: list[dict[int, Tensor]] = []
    for drop in drops:
        state["drop"] = drop
        grads = _grad(total, inputs, None)
        part = {nm: (g * diffs[nm]).sum(-1) for nm, g in zip(names, grads, strict=False)}
        pg = dict(zip(qk_layers, grads[len(names) :], strict=True))
        for ly in qk_layers:
            # take out the linear estimate of the path through this layer's pattern
            own = [nm for nm in names if first[nm] == ly]
            through = _grad(acts[_tl.pattern_name(ly)], [acts[nm] for nm in own], pg[ly])
            for nm, g in zip(own, through, strict=True):
                part[nm] = part[nm] - (g * diffs[nm]).sum(-1)
        site_parts.append(part)
        pattern_grads.append(pg)
        bar.update(1)
    state["drop"] = None
    acts.clear()  # free the graph before the exact pattern runs
    inputs.clear()
    del total, value, resid

    est = torch.stack([_window_sums(part, units, b) for part in site_parts])  # [pass, unit, b]
    if qk_layers:
        est += _qk_terms(model, src_cache, tgt_cache, units, first, pattern_grads, max_batch_tokens)
    bar.update(1)
    bar.close()
    if not graddrop:
        return est[0].double(), baseline
    layers = torch.tensor([u.site.layer for u in units], device=est.device)
    drop_layers = torch.arange(n_layers, device=est.device)
    own = (layers[None, :] == drop_layers[:, None])[..., None]  # [drop, unit, 1]
    per_drop = torch.where(own, est[:1], est[1:]).abs()
    return (per_drop.sum(0) / (n_layers - 1)).double(), baseline


def _grad(out: Tensor, inputs: list[Tensor], grad_out: Tensor | None) -> list[Tensor]:
    """Gradients of ``out`` (weighted by ``grad_out``) wrt ``inputs``; zeros where unused."""
    if not inputs:
        return []
    gs = torch.autograd.grad(
        out, inputs, grad_outputs=grad_out, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs, strict=True)]


def _window_sums(
    part: dict[str, Tensor], units: list[PatchUnit], b: int
) -> Float[Tensor, "unit batch"]:
    """Each unit's per-position contributions summed over its window (and taken at its head)."""
    some = next(iter(part.values()))
    out = torch.empty(len(units), b, dtype=some.dtype, device=some.device)
    by_hook: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_hook.setdefault(u.site.hook_name, []).append(i)
    for nm, idx in by_hook.items():
        per_pos = part[nm]  # [b, n] or [b, n, heads]
        cum = torch.cat([torch.zeros_like(per_pos[:, :1]), per_pos.cumsum(1)], dim=1)
        p0 = torch.tensor([units[i].p0 for i in idx], device=out.device)
        p1 = torch.tensor([units[i].p1 for i in idx], device=out.device)
        sums = cum[:, p1] - cum[:, p0]  # [b, k] or [b, k, heads]
        if sums.dim() == 3:
            heads = torch.tensor([units[i].site.head for i in idx], device=out.device)
            sums = sums[:, torch.arange(len(idx), device=out.device), heads]
        out[torch.tensor(idx, device=out.device)] = sums.T
    return out


@torch.no_grad()
def _qk_terms(
    model: HookedTransformer,
    src_cache: dict[str, Tensor],
    tgt_cache: dict[str, Tensor],
    units: list[PatchUnit],
    first: dict[str, int | None],
    pattern_grads: list[dict[int, Tensor]],
    max_batch_tokens: int,
) -> Float[Tensor, "pass unit batch"]:
    """``∂metric/∂pattern · Δpattern`` at each unit's first attention layer, Δ exact."""
    b, n = tgt_cache[_tl.block_input_name(0)].shape[:2]
    some = next(iter(pattern_grads[0].values()))
    out = torch.zeros(len(pattern_grads), len(units), b, dtype=some.dtype, device=some.device)
    groups: dict[tuple[int, int, int, bool], list[int]] = {}
    for i, u in enumerate(units):
        ly = first[u.site.hook_name]
        if ly is not None:
            groups.setdefault((ly, u.p0, u.p1, u.site.kind == "resid_pre"), []).append(i)
    for (ly, p0, p1, _), idx in groups.items():
        grads = torch.stack([pg[ly][:, :, p0:] for pg in pattern_grads])  # [pass, b, h, q, k]
        old = tgt_cache[_tl.pattern_name(ly)][:, :, p0:]
        per_chunk = max(1, max_batch_tokens // (b * (n - p0)))
        for c in range(0, len(idx), per_chunk):
            chunk = idx[c : c + per_chunk]
            x = _patched_resid(model, src_cache, tgt_cache, [units[i] for i in chunk], ly, p0, p1)
            if p0 == 0 or _tl.resumes_from_kv(model):
                kv = prefix_kv(tgt_cache, ly, p0, len(chunk))
                new = _tl.attention_patterns(model, ly, x, kv)
            else:  # rerun the target's prefix in front; its queries are dropped
                before = tgt_cache[_tl.block_input_name(ly)][:, :p0].repeat(len(chunk), 1, 1)
                new = _tl.attention_patterns(model, ly, torch.cat([before, x], 1))[:, :, p0:]
            delta = new.reshape(len(chunk), *old.shape) - old
            out[:, chunk] = torch.einsum("pbhqk,ubhqk->pub", grads, delta).to(out.dtype)
    return out


def _patched_resid(
    model: HookedTransformer,
    src_cache: dict[str, Tensor],
    tgt_cache: dict[str, Tensor],
    units: list[PatchUnit],
    layer: int,
    p0: int,
    p1: int,
) -> Float[Tensor, "rows suffix d_model"]:
    """The residual entering block ``layer`` at positions ``[p0, n)`` of each unit's patched run.

    The units are all ``resid_pre`` sites of block ``layer`` (the patch is that residual) or all
    outputs of block ``layer - 1`` (which is rerun at the patched positions, as exact patching
    does).
    """
    if units[0].site.kind != "resid_pre":
        return patched_block(model, src_cache, tgt_cache, units, layer - 1, p0, p1)
    b = tgt_cache[_tl.block_input_name(0)].shape[0]
    x = tgt_cache[_tl.block_input_name(layer)][:, p0:].repeat(len(units), 1, 1)
    for j, u in enumerate(units):
        x[j * b : (j + 1) * b, : p1 - p0] = src_cache[u.site.hook_name][:, p0:p1]
    return x
