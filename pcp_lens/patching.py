"""Causal (activation) patching: put one run's site outputs into another run, many sites per pass.

For every site and position, the *target* run is repeated with that site's output at that position
taken from the *source* run; the metric of the patched run and its indirect effect
``IE = metric(patched) - metric(target)`` form a table like the paper's Tab. XII.

Same numbers as ``transformer_lens.patching.get_act_patch_*``, with far less arithmetic:

1. **Batched.** Patched runs of many sites are stacked along the batch dimension.
2. **Resumed.** A patch at layer L cannot change anything before it, so each patched run starts
   from the target's cached residual stream: block L is run only at the patched positions (with
   the patch applied by a hook inside the block), and the blocks after L continue from there.
   Runs of later sites join the batch as it passes their layer.
3. **Causal.** A patch at position p cannot change positions before p, so those positions are
   never recomputed: their keys and values come from the target's cache, as in incremental
   decoding.
4. **Sparse logits.** A metric that declares ``positions`` (like :class:`~pcp_lens.GroupMetric`)
   only gets logits there; other metrics get full logits, the unaffected prefix copied from the
   target run.

The user's own hooks stay in force: the target and source runs and every patched block run under
whatever hooks are attached when this function is called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens, check_batch_size, check_same_shape
from pcp_lens.scoring import (
    MetricLike,
    RowMean,
    call_metric,
    check_metric,
    declared_positions,
    pair_columns,
    per_prompt,
    resolve_positions,
    tidy_table,
)
from pcp_lens.sites import Site, SiteLike, all_sites, as_sites

__all__ = ["PATCHABLE", "causal_patching", "patching_grid"]

Direction = Literal["clean_to_corrupted", "corrupted_to_clean", "both"]
PATCHABLE = ("attn", "mlp", "resid_pre", "resid_mid", "resid_post")


#: cached activations by hook name (a TransformerLens cache or a plain dict)
_Cache = Mapping[str, Tensor] | _tl.ActivationCache


@dataclass(frozen=True)
class PatchUnit:
    """One patched run: a site at a position window ``[p0, p1)`` (B rows, one per prompt).

    Examples:
        >>> from pcp_lens.sites import Site
        >>> PatchUnit(Site(0, "mlp"), 2, 3).p1
        3
    """

    site: Site
    p0: int
    p1: int


def causal_patching(
    model: HookedTransformer,
    clean: Inputs,
    corrupted: Inputs,
    metric: MetricLike,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    positions: Literal["each", "all"] | int | Sequence[int] = "each",
    direction: Direction = "clean_to_corrupted",
    max_batch_tokens: int = 32768,
    *,
    source_model: HookedTransformer | None = None,
    per_pair: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch each site's output from one run into another and tabulate metric and indirect effect.

    Args:
        model: the model (in eval mode; dropout would make patched runs noisy).
        clean: tokens ``[batch, pos]`` or strings of equal token length.
        corrupted: same shape as ``clean``.
        metric: a metric (``docs/metrics.md``): a callable ``logits [batch, pos, d_vocab] ->``
            a batch mean or per-prompt values; if it declares ``positions`` and a
            ``score(selected_logits)`` method (as :class:`~pcp_lens.GroupMetric` does), logits are
            computed only at those positions.
        sites: sites to patch (default: every ``attn`` and ``mlp`` site). Kinds ``attn``, ``mlp``,
            ``resid_pre``, ``resid_mid``, ``resid_post`` and attention heads (``"attn1.h3"``,
            patched at ``hook_z``).
        positions: ``"each"`` patches every position separately, an int or a list of distinct
            ints patches those positions separately, ``"all"`` patches the whole sequence at
            once.
        direction: ``"clean_to_corrupted"`` runs the corrupted input with clean activations
            (TransformerLens's convention), ``"corrupted_to_clean"`` the reverse, ``"both"`` both.
        max_batch_tokens: memory budget: at most this many (row × position) residual vectors per
            forward pass; lower it for big models.
        source_model: cross-model patching: the source run's activations come from this model
            (same shape and vocabulary, e.g. the benign model a poisoned one was fine-tuned
            from) instead of ``model``; the target run and every patched run use ``model``.
        per_pair: add ``se`` (standard error over pairs) and ``pairs`` (a tuple of every pair's
            indirect effect, in input order); a metric that returns a batch mean is then scored
            pair by pair (:func:`pcp_lens.scoring.per_prompt`). No extra forward passes.
        progress: show a tqdm bar.

    Returns:
        A DataFrame in the library's table vocabulary (``docs/concepts.md``): ``direction, site,
        paper_name, layer, kind, head, position, value, baseline, effect`` (``position`` is -1
        for ``"all"``; ``effect = value - baseline``, the indirect effect; ``baseline`` is the
        metric of the unpatched target run); with ``per_pair=True`` also ``se`` and ``pairs``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> clean, corrupted = torch.randint(0, 50, (2, 4, 5))
        >>> df = causal_patching(model, clean, corrupted, lambda lg: lg[:, -1, 0].mean(),
        ...                      progress=False)
        >>> len(df), sorted(df.columns)[:3]
        (20, ['baseline', 'direction', 'effect'])
    """
    check_metric(metric)
    if per_pair:
        metric = per_prompt(metric)
    if source_model is not None:
        _tl.check_same_shape_models(model, source_model, "source_model")
    cb = as_tokens(model, clean, name="clean")
    xb = as_tokens(model, corrupted, name="corrupted")
    check_same_shape(cb, xb, ("clean", "corrupted"))
    site_list = as_sites(sites, model) if sites is not None else all_sites(model)
    for s in site_list:
        if s.kind not in PATCHABLE:
            raise ValueError(
                f"cannot patch site {s.name!r} of kind {s.kind!r}; allowed kinds: "
                f"{', '.join(PATCHABLE)} (and attention heads)"
            )
    _tl.check_resumable(model)
    check_batch_size(max_batch_tokens, "max_batch_tokens")
    if direction not in ("clean_to_corrupted", "corrupted_to_clean", "both"):
        raise ValueError(
            "direction must be 'clean_to_corrupted', 'corrupted_to_clean' or 'both', "
            f"got {direction!r}"
        )
    n = cb.tokens.shape[1]
    units = patch_units(site_list, positions, n)
    plan = (
        [("clean_to_corrupted", cb.tokens, xb.tokens), ("corrupted_to_clean", xb.tokens, cb.tokens)]
        if direction == "both"
        else [
            (
                direction,
                *(
                    (cb.tokens, xb.tokens)
                    if direction == "clean_to_corrupted"
                    else (xb.tokens, cb.tokens)
                ),
            )
        ]
    )
    rows = []
    src_model = model if source_model is None else source_model
    for name, source, target in plan:
        values, base = patched_metrics(
            model, src_model, source, target, metric, units, max_batch_tokens, progress
        )
        baseline = float(base.mean())
        rows += [
            {
                "direction": name,
                "site": u.site.name,
                "paper_name": u.site.paper_name,
                "layer": u.site.layer,
                "kind": u.site.kind,
                "head": u.site.head,
                "position": u.p0 if u.p1 - u.p0 == 1 else -1,
                "value": float(v.mean()),
                "baseline": baseline,
                "effect": float(v.mean()) - baseline,
                **(pair_columns(v - base) if per_pair else {}),
            }
            for u, v in zip(units, values, strict=True)
        ]
    return tidy_table(rows)


def patching_grid(
    df: pd.DataFrame, kind: str, column: str = "value", direction: str | None = None
) -> Float[Tensor, "layer pos"]:
    """The ``[layer, position]`` grid of one kind, shaped like TransformerLens's patching output.

    Examples:
        >>> df = pd.DataFrame({"direction": "d", "kind": "mlp", "head": pd.NA,
        ...                    "layer": [0, 0, 1, 1], "position": [0, 1, 0, 1],
        ...                    "value": [1.0, 2, 3, 4]})
        >>> patching_grid(df, "mlp").tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    need = ["direction", "kind", "head", "layer", "position"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(
            f"df must be a causal_patching table with columns {need}; it lacks {missing}"
        )
    kinds = [k for k in PATCHABLE if k in set(df["kind"])]
    if kind not in kinds:
        raise ValueError(f"kind must be one of the table's kinds {kinds}, got {kind!r}")
    if column not in df.columns:
        raise ValueError(f"column must be one of {list(df.columns)}, got {column!r}")
    keep = (df["kind"] == kind) & df["head"].isna()
    if direction is not None:
        directions = list(dict.fromkeys(df["direction"]))
        if direction not in directions:
            raise ValueError(
                f"direction must be one of the table's {directions}, got {direction!r}"
            )
        keep &= df["direction"] == direction
    sel = pd.DataFrame(df.loc[keep])
    if sel.empty:
        raise ValueError(f"the table has no whole-module rows of kind {kind!r} (only heads)")
    if len(set(sel["direction"])) > 1:
        raise ValueError("the table has both directions; pass direction=...")
    wide = sel.pivot(index="layer", columns="position", values=column).sort_index()
    return torch.tensor(wide.to_numpy(dtype=float))


def patch_units(
    sites: list[Site], positions: Literal["each", "all"] | int | Sequence[int], n: int
) -> list[PatchUnit]:
    """The patched runs of ``causal_patching``'s ``positions`` rule: site-major, one per window.

    Args:
        sites: the sites to patch.
        positions: ``"each"``, ``"all"``, an int or a list of distinct ints.
        n: the sequence length.

    Returns:
        One :class:`PatchUnit` per site and position (a single ``[0, n)`` window for ``"all"``).

    Examples:
        >>> from pcp_lens.sites import Site
        >>> [(u.site.name, u.p0) for u in patch_units([Site(1, "attn")], [0, -1], 4)]
        [('attn1', 0), ('attn1', 3)]
    """
    if isinstance(positions, str):
        if positions == "all":
            return [PatchUnit(s, 0, n) for s in sites]
        if positions != "each":
            raise ValueError(
                f"positions must be 'each', 'all', an int or a list of distinct ints, got "
                f"{positions!r}"
            )
        pos = list(range(n))
    else:
        pos = resolve_positions(positions, n, where="clean and corrupted") or list(range(n))
    return [PatchUnit(s, p, p + 1) for s in sites for p in pos]


def _needed_hooks(units: list[PatchUnit], n_layers: int) -> tuple[set[str], set[str]]:
    """Hooks to cache from the source run and from the target run."""
    src = {u.site.hook_name for u in units}
    tgt = {_tl.block_input_name(layer) for layer in range(n_layers)}
    tgt |= {_tl.hook_name("resid_post", layer) for layer in range(n_layers)}
    tgt |= {name for layer in range(n_layers) for name in _tl.kv_hook_names(layer)}
    return src, tgt


@torch.no_grad()
def patched_metrics(
    model: HookedTransformer,
    source_model: HookedTransformer,
    source: Tensor | Mapping[str, Tensor],
    target: Tensor,
    metric: MetricLike,
    units: list[PatchUnit],
    max_batch_tokens: int,
    progress: bool,
) -> tuple[list[Float[Tensor, " batch"]], Float[Tensor, " batch"]]:
    """Run ``model`` on ``target`` once per unit with that unit's site patched from ``source``.

    The engine of :func:`causal_patching` (batched, resumed from the target's cache, causal,
    sparse logits: see the module docstring), for callers that need the metric of patched runs
    without the table, e.g. :func:`~pcp_lens.attribution.attribution_patching`'s ``verify``.

    Args:
        model: the model every patched run and the target run use.
        source_model: the model of the source run (``model`` itself unless cross-model).
        source: source tokens ``[batch, pos]``, or the source activations themselves by hook
            name (each unit's site, ``[batch, pos, ...]``), e.g. the target's own with a mean put
            in at some positions (mean ablation as a patch; ``source_model`` is then unused).
        target: target tokens, same shape.
        metric: a checked metric (``docs/metrics.md``).
        units: the patched runs (:func:`patch_units`).
        max_batch_tokens: at most this many (row × position) residual vectors per forward.
        progress: show a tqdm bar.

    Returns:
        Each unit's metric per prompt (a batch-mean metric repeated in every row), in ``units``
        order, and the unpatched target run's.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.sites import Site
        >>> model = tiny_model()
        >>> src, tgt = torch.randint(0, 50, (2, 3, 4))
        >>> vals, base = patched_metrics(model, model, src, tgt, lambda lg: lg[:, -1, 0],
        ...                              patch_units([Site(0, "mlp")], "each", 4), 1024, False)
        >>> len(vals), tuple(base.shape)
        (4, (3,))
    """
    # the activations' faster twins for every run below (the same values, bit for bit)
    with _tl.fast_activations(model), _tl.fast_activations(source_model):
        n_layers = model.cfg.n_layers
        src_names, tgt_names = _needed_hooks(units, n_layers)
        # neither run needs logits beyond the positions the metric reads (the source run none)
        if isinstance(source, Tensor):
            src_resid, src_run = _tl.run_with_cache(
                source_model, source, src_names, stop_at_layer=n_layers
            )
            src_cache = _with_last_resid(src_run, src_names, src_resid, n_layers)
        else:
            missing = sorted(src_names - set(source))
            if missing:
                raise ValueError(f"source lacks the activations of hooks {missing}")
            src_cache = source
        target_resid, tgt_run = _tl.run_with_cache(model, target, tgt_names, stop_at_layer=n_layers)
        tgt_cache = _with_last_resid(tgt_run, tgt_names, target_resid, n_layers)
        b, n = target.shape
        final_logits = _tl.FinalLogits(model)
        declared = declared_positions(metric)
        metric_pos: list[int] | None
        if declared is not None:
            metric_pos = sorted(resolve_positions(declared, n, name="metric positions") or [])
            target_logits = final_logits(target_resid[:, metric_pos])
            index = {p: j for j, p in enumerate(metric_pos)}  # position -> row of target_logits

            def score(lg: Tensor) -> Tensor:
                return call_metric(metric, lg, metric_pos, n=n)
        else:
            target_logits = final_logits(target_resid)
            index = {p: p for p in range(n)}

            def score(lg: Tensor) -> Tensor:
                return call_metric(metric, lg)

            metric_pos = read_positions(metric, target_logits)
        baseline = _rows(score(target_logits), b, "unpatched target run")
        # a metric reading known positions is scored on the target's logits with a unit's own
        # written in at the positions (and vocabulary columns) it reads: one buffer, no copy per
        # unit, and only the columns read are unembedded (a user's hook on the logits sees them all)
        buffer = target_logits.clone() if metric_pos is not None else None
        cols = None
        if buffer is not None and not _tl.has_hooks(model, _tl.LOGITS_HOOK):
            cols = read_columns(score, target_logits)
        unit_logits = final_logits if cols is None else _tl.FinalLogits(model, columns=cols)

        # group units sharing a position window; within a group, order by layer so runs join the
        # batch as it passes their layer
        groups: dict[tuple[int, int], list[PatchUnit]] = {}
        for u in units:
            groups.setdefault((u.p0, u.p1), []).append(u)
        values: dict[PatchUnit, Tensor] = {}
        n_batches = sum(
            -(-len(g) * target.shape[0] * (target.shape[1] - p0) // max_batch_tokens)
            for (p0, _), g in groups.items()
        )
        bar = tqdm(total=max(n_batches, 1), desc="patching", disable=not progress, leave=False)
        for (p0, p1), group in groups.items():
            group.sort(key=lambda u: u.site.sort_key())
            rows_per_unit = target.shape[0] * (target.shape[1] - p0)
            per_chunk = max(1, max_batch_tokens // rows_per_unit)
            for i in range(0, len(group), per_chunk):
                chunk = group[i : i + per_chunk]
                bar.update(1)
                if metric_pos is None:
                    logits = final_logits(_run_chunk(model, src_cache, tgt_cache, chunk, p0, p1))
                    for j, u in enumerate(chunk):
                        mine = logits[j * b : (j + 1) * b]
                        full = torch.cat([target_logits[:, :p0], mine], dim=1)
                        values[u] = _rows(score(full), b, f"patching {u.site.name} at {p0}")
                    continue
                assert buffer is not None  # known positions come with a buffer
                later = [p for p in metric_pos if p >= p0]
                if not later:
                    # the patch cannot reach any position the metric reads: the target's value
                    values.update({u: baseline for u in chunk})
                    continue
                resid = _run_chunk(model, src_cache, tgt_cache, chunk, p0, p1, later[0])
                logits = unit_logits(resid[:, [p - later[0] for p in later]])
                region = _Region(buffer, [index[p] for p in later], cols)
                for j, u in enumerate(chunk):
                    region.put(logits[j * b : (j + 1) * b])
                    v = score(region.buffer)
                    v = v.clone() if isinstance(v, Tensor) else v  # it may be a view of the buffer
                    values[u] = _rows(v, b, f"patching {u.site.name} at {p0}")
                region.put(region.saved)  # the target's logits back for the next chunk
        bar.close()
        return [values[u] for u in units], baseline


def read_positions(
    metric: MetricLike, logits: Float[Tensor, "batch pos d_vocab"]
) -> list[int] | None:
    """The positions a plain metric reads, found by probing it; ``None`` when unconfirmed.

    Position ``p`` is read when setting its logits to NaN changes the metric's value. The set is
    confirmed by replacing every other position at once, by NaN and by other finite logits: the
    value must stay bit-identical both times, or the answer is ``None`` (treat every position as
    read). A metric that raises on the probes also gives ``None``. A metric that reads a
    position only for some logit values (a data-dependent index) can fool the probe: declare its
    positions (:class:`~pcp_lens.PositionMetric`) instead.

    Args:
        metric: a plain metric (full-sequence logits in, a value out).
        logits: logits it is probed at (e.g. an unpatched run's), ``[batch, pos, d_vocab]``.

    Returns:
        The sorted positions read, or ``None``.

    Examples:
        >>> lg = torch.randn(2, 5, 7)
        >>> read_positions(lambda x: x[:, -1, 3] - x[:, 1, 0], lg)
        [1, 4]
        >>> read_positions(lambda x: x.mean(), lg) == list(range(5))
        True
    """
    def value(x: Tensor) -> Tensor:
        return torch.as_tensor(call_metric(metric, x)).detach()

    try:
        with torch.no_grad():
            ref = value(logits)
            probe = logits.clone()
            read = []
            for p in range(logits.shape[1]):
                probe[:, p] = float("nan")
                if not torch.equal(value(probe), ref):
                    read.append(p)
                probe[:, p] = logits[:, p]
            rest = [p for p in range(logits.shape[1]) if p not in read]
            if rest and not _unread(value, logits, (slice(None), rest)):
                return None
    except Exception:  # any failure of the probe means: read everything
        return None
    return read


def read_columns(
    score: Callable[[Tensor], Tensor], logits: Float[Tensor, "batch k d_vocab"]
) -> list[int] | None:
    """The vocabulary entries a metric reads, from its gradient; ``None`` when unconfirmed.

    A logit difference reads two entries of 50k; a log-probability reads all (its softmax), and
    then the answer is ``None``, as for a metric with no gradient. The gradient's nonzero
    columns are confirmed like :func:`read_positions`: every other column replaced at once, by
    NaN and by other finite logits, must leave the value bit-identical.

    Args:
        score: the metric as a function of ``logits`` alone.
        logits: logits it is probed at (e.g. an unpatched run's).

    Returns:
        The sorted columns read (fewer than half the vocabulary), or ``None``.

    Examples:
        >>> lg = torch.randn(2, 3, 50)
        >>> read_columns(lambda x: (x[:, -1, 7] - x[:, 0, 3]).mean(), lg)
        [3, 7]
        >>> read_columns(lambda x: x.log_softmax(-1)[:, -1, 7].mean(), lg) is None
        True
    """
    try:
        with torch.enable_grad():
            x = logits.detach().clone().requires_grad_(True)
            value = torch.as_tensor(score(x))
            if not value.requires_grad:
                return None
            (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
        if grad is None:
            return None
        cols = grad.ne(0).flatten(0, -2).any(0).nonzero().flatten().tolist()
        if 2 * len(cols) >= logits.shape[-1]:
            return None
        with torch.no_grad():
            rest = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            rest[cols] = False
            if not _unread(lambda x: torch.as_tensor(score(x)), logits, (..., rest)):
                return None
    except Exception:  # any failure of the probe means: read every column
        return None
    return cols


def _unread(value: Callable[[Tensor], Tensor], logits: Tensor, rest: tuple[Any, ...]) -> bool:
    """Whether ``value`` stays bit-identical with ``logits[rest]`` replaced at once, by NaN and by
    other finite logits (each row's own, shifted by one row and negated): the confirmation
    :func:`read_positions` and :func:`read_columns` share."""
    ref = value(logits)
    other = -logits.roll(1, dims=0) + 1.0
    for fill in (torch.full_like(logits, float("nan")), other):
        probe = logits.clone()
        probe[rest] = fill[rest]
        if not torch.equal(value(probe), ref):
            return False
    return True


def _with_last_resid(
    cache: _Cache, names: set[str], resid: Tensor, n_layers: int
) -> dict[str, Tensor]:
    """The cached ``names`` as a dict; the last block's ``resid_post`` is the returned residual
    (a run stopped before the unembedding may not record that hook, as under TransformerLens 4)."""
    last = _tl.hook_name("resid_post", n_layers - 1)
    return {nm: resid if nm == last else cache[nm] for nm in names}


def _rows(value: Tensor, b: int, where: str) -> Float[Tensor, " batch"]:
    """The metric per prompt: per-prompt values as given, a batch mean repeated in every row."""
    acc = RowMean()
    acc.add(value, b, where)
    rows = acc.per_row
    return rows if rows is not None else torch.full((b,), acc.value, dtype=torch.float64)


class _Region:
    """The part of a logits buffer a unit's patch rewrites: some rows, and some columns or all."""

    def __init__(self, buffer: Tensor, rows: list[int], cols: list[int] | None):
        self.buffer = buffer
        r = torch.tensor(rows, device=buffer.device)
        if cols is None:
            self.index: tuple[Any, ...] = (slice(None), r)
        else:
            self.index = (slice(None), r[:, None], torch.tensor(cols, device=buffer.device))
        self.saved = buffer[self.index].clone()

    def put(self, values: Tensor) -> None:
        self.buffer[self.index] = values


def _run_chunk(
    model: HookedTransformer,
    src_cache: _Cache,
    tgt_cache: _Cache,
    units: list[PatchUnit],
    p0: int,
    p1: int,
    read_from: int | None = None,
) -> Float[Tensor, "rows suffix d_model"]:
    """Residual stream after the last block for each unit's patched run (B rows per unit), at
    positions ``[read_from, n)`` (default ``p0``): nothing reads the last block's output before
    the metric's first position, so there that block computes only keys and values."""
    n_layers = model.cfg.n_layers
    start = _run_start(model, p0)
    cut = (p0 if read_from is None else read_from) - start  # the last block's outputs skipped
    b = tgt_cache[_tl.block_input_name(0)].shape[0]

    # a resid_pre patch at layer L enters block L whole; every other patch at layer L leaves the
    # positions after p1 untouched until block L+1, so block L runs only on [p0, p1)
    entering: dict[int, list[PatchUnit]] = {}
    leaving: dict[int, list[PatchUnit]] = {}
    for u in units:
        into = entering if u.site.kind == "resid_pre" else leaving
        into.setdefault(u.site.layer, []).append(u)  # type: ignore[arg-type]

    def join(active: Tensor | None, new: Tensor) -> Tensor:
        return new if active is None else torch.cat([active, new])

    active: Tensor | None = None
    last = n_layers - 1
    for layer in range(n_layers):
        if layer in entering:
            us = entering[layer]
            x = tgt_cache[_tl.block_input_name(layer)][:, start:].repeat(len(us), 1, 1)
            for j, u in enumerate(us):
                x[j * b : (j + 1) * b, p0 - start : p1 - start] = src_cache[u.site.hook_name][
                    :, p0:p1
                ]
            active = join(active, x)
        if active is not None:
            past = prefix_kv(tgt_cache, layer, start, active.shape[0] // b)
            if layer == last and cut > 0 and _tl.resumes_from_kv(model):
                active = _last_block_from(model, active, layer, cut, past)
            else:
                active = _tl.run_blocks(model, active, layer, layer + 1, [past])
                active = active[:, cut:] if layer == last else active
        if layer in leaving:
            us = leaving[layer]
            out = patched_block(model, src_cache, tgt_cache, us, layer, p0, p1, start=start)
            active = join(active, out[:, cut:] if layer == last else out)
    assert active is not None
    return active


def _last_block_from(
    model: HookedTransformer,
    x: Float[Tensor, "rows suffix d_model"],
    layer: int,
    cut: int,
    past: tuple[Tensor, Tensor] | None,
) -> Float[Tensor, "rows suffix_minus_cut d_model"]:
    """Block ``layer`` on ``x[:, cut:]`` only, behind ``past`` and the keys/values of
    ``x[:, :cut]``: the outputs of the first ``cut`` positions are never computed."""
    k, v = _tl.block_kv(model, layer, x[:, :cut], past)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
    return _tl.run_blocks(model, x[:, cut:], layer, layer + 1, [(k, v)])


def patched_block(
    model: HookedTransformer,
    src_cache: _Cache,
    tgt_cache: _Cache,
    units: list[PatchUnit],
    layer: int,
    p0: int,
    p1: int,
    *,
    start: int | None = None,
) -> Float[Tensor, "rows suffix d_model"]:
    """The residual after block ``layer`` at positions ``[start, n)`` (default ``p0``) of each
    unit's patched run.

    Block ``layer`` runs at positions ``[start, p1)`` only, with each unit's patch applied at
    ``[p0, p1)`` by a hook after the attention has read its input (keys and values before
    ``start`` from the target's cache); the target's unchanged residual after ``p1`` is appended.
    A model whose blocks cannot continue behind cached keys/values (a TL-native bridge) runs the
    block from position 0 instead and the result is cut to ``[start, n)``.

    Args:
        model: the model.
        src_cache: the source run's activations by hook name (each unit's site).
        tgt_cache: the target run's block inputs, ``resid_post`` and keys/values per layer.
        units: the units, all sites of block ``layer`` (not ``resid_pre``), one window.
        layer: the block.
        p0: the window's start.
        p1: its end.
        start: the first position returned (at most ``p0``).

    Returns:
        ``[len(units) * batch, n - start, d_model]``, unit-major.

    Examples:
        >>> from pcp_lens import _tl
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.sites import Site
        >>> model = tiny_model()
        >>> src, tgt = torch.randint(0, 50, (2, 3, 4))
        >>> _, sc = _tl.run_with_cache(model, src, ["blocks.0.hook_mlp_out"])
        >>> _, tc = _tl.run_with_cache(model, tgt, [_tl.block_input_name(0),
        ...     _tl.hook_name("resid_post", 0), *_tl.kv_hook_names(0)])
        >>> out = patched_block(model, sc, tc, [PatchUnit(Site(0, "mlp"), 1, 2)], 0, 1, 2)
        >>> tuple(out.shape)
        (3, 3, 16)
    """
    first = p0 if start is None else start
    s = _run_start(model, first)  # where the block runs from
    b = tgt_cache[_tl.block_input_name(0)].shape[0]
    x = tgt_cache[_tl.block_input_name(layer)][:, s:p1].repeat(len(units), 1, 1)
    hooks: list[tuple[str | Callable, Callable]] = []
    for j, u in enumerate(units):
        rows = slice(j * b, (j + 1) * b)
        patch = src_cache[u.site.hook_name][:, p0:p1]
        hooks.append((u.site.hook_name, patch_hook(rows, patch, u.site.head, p0 - s)))
    kv = prefix_kv(tgt_cache, layer, s, len(units))
    with model.hooks(fwd_hooks=hooks):
        out = _tl.run_blocks(model, x, layer, layer + 1, [kv])
    after = tgt_cache[_tl.hook_name("resid_post", layer)][:, p1:].repeat(len(units), 1, 1)
    return torch.cat([out[:, first - s :], after], dim=1)


def prefix_kv(
    tgt_cache: _Cache, layer: int, start: int, n_units: int
) -> tuple[Tensor, Tensor] | None:
    """The target's keys and values of block ``layer`` before ``start``, once per unit (rows
    unit-major, as the patched runs stack them); ``None`` when ``start`` is 0."""
    if start == 0:
        return None
    k, v = (tgt_cache[name][:, :start] for name in _tl.kv_hook_names(layer))
    return k.repeat(n_units, 1, 1, 1), v.repeat(n_units, 1, 1, 1)


def _run_start(model: HookedTransformer, p0: int) -> int:
    """Where a patched run starts: at its window, behind the target's cached keys/values, or at
    position 0 on a model whose blocks cannot continue behind them (the same values, slower)."""
    return p0 if _tl.resumes_from_kv(model) else 0


def patch_hook(
    rows: slice, patch: Tensor, head: int | None = None, offset: int = 0
) -> Callable[[Tensor, object], Tensor]:
    """A forward hook writing ``patch`` into an activation's ``rows`` from position ``offset``.

    ``patch`` is ``[len(rows), k, ...]``, written at positions ``[offset, offset + k)``; with
    ``head`` only that head's slice (``hook_z``-shaped activations). The activation is copied
    first, so the tensor a user's earlier hook returned is left as it was.

    Examples:
        >>> act = torch.zeros(2, 4, 3)
        >>> out = patch_hook(slice(1, 2), torch.ones(1, 2, 3), offset=1)(act, None)
        >>> out[:, :, 0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]
    """
    end = offset + patch.shape[1]

    def hook(act: Tensor, hook: object) -> Tensor:
        act = act.clone()
        if head is None:
            act[rows, offset:end] = patch.to(act.dtype)
        else:
            act[rows, offset:end, head] = patch[:, :, head].to(act.dtype)
        return act

    return hook

