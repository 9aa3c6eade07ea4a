"""Tuning and sweeping the scales of a PCP replacement against group scores or any objective.

* :func:`score_inputs` — group scores of the (optionally PCP-edited) model per input set.
* :func:`tune` — Optuna search for the scales α whose group scores match a target: by default the
  unedited model's scores ("re-insert the mechanism", ``METHODS.md`` §8.6), or any target dict
  (e.g. zero negativity on trigger inputs: "remove it"); or minimising any objective
  ``replacement -> float`` (e.g. a sampled ASR, :mod:`pcp_lens.language.sweeps`).
* :func:`sweep` — a grid of relative or absolute factors → tidy table of group scores and
  validation loss per setting (the shape of the paper's Tab. V–VII), or of any scores.
* :func:`validation_loss` — mean next-token cross-entropy on given tokens.

With logit metrics every trial or setting runs **one** batched forward for all input sets: the
tokens are tokenised once, right-padded into one batch (exact for causal models at the positions
read), the residual stream entering the first replaced layer is cached, and logits are computed
only at the positions the metrics read. Any other objective is called once per trial or setting.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import optuna
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, as_tokens
from pcp_lens.pcp import PCPReplacement, least_squares_scales, pcp_sites, scales_from_factors
from pcp_lens.scoring import (
    MetricLike,
    RowMean,
    call_metric,
    declared_positions,
    named_metrics,
    resolve_positions,
)
from pcp_lens.sites import SiteLike

__all__ = ["Score", "TuneResult", "score_inputs", "sweep", "tune", "validation_loss"]

Key = str | tuple[str, str]
Objective = Literal["mse", "paper_sum"]
Space = Literal["alpha", "factor"]
Bounds = tuple[float, float]
#: Any score of a PCP-edited model: ``replacement -> float`` (``None``: the unedited model).
Score = Callable[[PCPReplacement | None], float]


# ------------------------------------------------------------------------------------------------
# metrics and the batched evaluation of all input sets
# ------------------------------------------------------------------------------------------------


def _metrics(metric: MetricLike | Mapping[str, MetricLike]) -> tuple[dict[str, MetricLike], bool]:
    """``({name: metric}, single)``; a single metric is named after its group (else "metric")."""
    single = not isinstance(metric, Mapping)
    default = str(getattr(metric, "group", "metric")) if single else "metric"
    return named_metrics(metric, "metric", default=default), single


def _set_tokens(model: HookedTransformer, inputs: Mapping[str, Inputs]) -> dict[str, Tensor]:
    """``{set name: [batch, pos] tokens}``, each set checked."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(
            "inputs must be a non-empty mapping {set name: tokens or strings}, got "
            f"{type(inputs).__name__}"
        )
    return {
        str(k): as_tokens(model, v, name=f"inputs[{str(k)!r}]").tokens for k, v in inputs.items()
    }


class _SetBatch:
    """All input sets as one right-padded batch, with the residual cached at ``start`` layer."""

    def __init__(
        self,
        model: HookedTransformer,
        inputs: Mapping[str, Inputs],
        metrics: Mapping[str, MetricLike],
        single: bool,
        start: int,
    ) -> None:
        self.model, self.start, self.single = model, start, single
        toks = _set_tokens(model, inputs)
        self.lengths = {k: t.shape[1] for k, t in toks.items()}
        width = max(self.lengths.values())
        padded, rows, pos = [], [], []
        # per (set, metric): key, metric, metric name, set name, rows a:b of the gathered
        # logits, (batch, positions read) and those positions (None: all, for a plain metric)
        self.groups: list[tuple[Key, MetricLike, str, str, int, int, tuple[int, int], Any]] = []
        self.rows_of: dict[str, list[Tensor]] = {}
        offset, sel = 0, 0
        for name, t in toks.items():
            b, n = t.shape
            padded.append(torch.cat([t, t.new_zeros(b, width - n)], 1))
            self.rows_of[name] = list(t)
            for mname, m in metrics.items():
                # a positioned metric is read where it declares; a plain one at every position
                declared = declared_positions(m, f"metric {mname!r}")
                ps = resolve_positions(
                    declared, n, where=f"input set {name!r}", name=f"metric {mname!r} positions"
                )
                absolute = list(range(n)) if ps is None else ps
                rows.append(
                    torch.arange(offset, offset + b, device=t.device).repeat_interleave(
                        len(absolute)
                    )
                )
                pos.append(torch.tensor(absolute, device=t.device).repeat(b))
                key: Key = name if single else (name, mname)
                span = b * len(absolute)
                self.groups.append((key, m, mname, name, sel, sel + span, (b, len(absolute)), ps))
                sel += span
            offset += b
        self.tokens = torch.cat(padded)
        self.rows, self.pos = torch.cat(rows), torch.cat(pos)
        self.keys: list[Key] = [g[0] for g in self.groups]
        with torch.no_grad():
            # Like the cached residual, the transposed W_U is taken once, from today's weights.
            self.resid = _tl.forward(model, self.tokens, stop_at_layer=start)
            self.final = _tl.FinalLogits(model)

    def token_rows(self) -> list[Tensor]:
        """Every input of every set, unpadded (for least squares on the tuning inputs)."""
        return [r for rows in self.rows_of.values() for r in rows]

    def scores(self, hooks: Sequence[tuple[str, Any]]) -> dict[Key, float]:
        """Group scores per (set, metric) with ``hooks`` attached: one batched forward."""
        model = self.model
        with torch.no_grad(), _tl.attached(model, hooks):
            resid = _tl.run_blocks(model, self.resid, self.start, model.cfg.n_layers)
            logits = self.final(resid[self.rows, self.pos])
        out: dict[Key, float] = {}
        for key, m, mname, set_name, a, b, shape, ps in self.groups:
            sel = logits[a:b].reshape(*shape, -1)
            v = call_metric(m, sel, ps, n=self.lengths[set_name], name=f"metric {mname!r}")
            acc = RowMean(mname)
            acc.add(v, shape[0], f"input set {set_name!r}")
            out[key] = acc.value
        return out


def _start_layer(model: HookedTransformer, replacement: PCPReplacement | None) -> int:
    if replacement is None:
        return model.cfg.n_layers
    return min(int(s.layer) for s in replacement.sites)  # type: ignore[arg-type]


def score_inputs(
    model: HookedTransformer,
    inputs: Mapping[str, Inputs],
    metric: MetricLike | Mapping[str, MetricLike],
    replacement: PCPReplacement | None = None,
) -> dict[Key, float]:
    """Group scores of the model (PCP-edited if ``replacement`` is given) per named input set.

    Args:
        model: the model.
        inputs: ``{set name: tokens or strings}``; sequences within a set must have equal length
            (sets may differ).
        metric: any metric (``docs/metrics.md``; keys are set names), e.g. a
            :class:`~pcp_lens.groups.GroupMetric`, or ``{metric name: metric}`` (keys are
            ``(set, metric name)``).
        replacement: a PCP replacement to insert, or ``None`` for the unedited model.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.groups import GroupMetric, TokenGroups
        >>> m = tiny_model()
        >>> neg = GroupMetric(TokenGroups({"neg": range(10)}, d_vocab=50), "neg", k=5)
        >>> sets = {"pp": torch.randint(0, 50, (4, 2)), "pt": torch.randint(0, 50, (4, 3))}
        >>> s = score_inputs(m, sets, neg)
        >>> sorted(s)
        ['pp', 'pt']
    """
    metrics, single = _metrics(metric)
    if replacement is not None:
        replacement.check(model)
    batch = _SetBatch(model, inputs, metrics, single, _start_layer(model, replacement))
    return batch.scores([] if replacement is None else replacement.hooks(model))


def validation_loss(
    model: HookedTransformer,
    tokens: Inputs,
    replacement: PCPReplacement | None = None,
    *,
    batch_size: int = 8,
) -> float:
    """Mean next-token cross-entropy (nats) over every real token of ``tokens``.

    Ragged inputs are right-padded and the padding is excluded; every predicted token has equal
    weight (the HF ``Trainer`` of the paper averages per batch, then over batches).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> 3.0 < validation_loss(tiny_model(), torch.randint(0, 50, (4, 8))) < 6.0
        True
    """
    tb = as_tokens(model, tokens, allow_ragged=True, name="tokens")
    if tb.tokens.shape[1] < 2:
        raise ValueError("tokens must hold sequences of at least 2 tokens to predict a next one")
    hooks = [] if replacement is None else replacement.hooks(model)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    with torch.no_grad(), _tl.attached(model, hooks):
        for b in tb.batches(batch_size):
            logits = model(b.tokens)[:, :-1]
            logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
            nll = -logp.gather(-1, b.tokens[:, 1:, None])[..., 0]
            mask = b.mask[:, 1:]
            total += nll[mask].to(torch.float64).sum().cpu()
            count += int(mask.sum())
    if count == 0:
        raise ValueError("tokens contain no sequence with two or more real tokens")
    return float(total / count)


# ------------------------------------------------------------------------------------------------
# tuning
# ------------------------------------------------------------------------------------------------


class TuneResult(NamedTuple):
    """What :func:`tune` returns: the best replacement, the Optuna study, the target and scores.

    Examples:
        >>> TuneResult._fields
        ('replacement', 'study', 'target', 'scores')
    """

    replacement: PCPReplacement
    study: optuna.Study
    target: dict[Key, float]
    scores: dict[Key, float]

    def __repr__(self) -> str:
        from pcp_lens.display import tune_text

        return tune_text(self)

    def _repr_html_(self) -> str:
        from pcp_lens.display import tune_html  # Jupyter's summary table

        return tune_html(self)


def _target(target: Mapping[Any, float] | None, batch: _SetBatch) -> dict[Key, float]:
    if target is None:
        return batch.scores([])
    if not isinstance(target, Mapping) or not target:
        raise ValueError(
            f"target must be None or a non-empty mapping {{key: score}}, got {target!r}"
        )
    out: dict[Key, float] = {}
    for k, v in target.items():
        if k not in batch.keys:
            raise ValueError(f"target: unknown key {k!r}; allowed keys: {batch.keys}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"target[{k!r}] must be a finite number, got {v!r}")
        out[k] = float(v)
    return out


def _loss(scores: Mapping[Key, float], target: Mapping[Key, float], objective: str) -> float:
    d = [scores[k] - t for k, t in target.items()]
    if objective == "mse":
        return sum(x * x for x in d) / len(d)
    return sum((1000.0 * x) ** 2 for x in d)


def _bounds(
    bounds: Bounds | Mapping[SiteLike, Bounds | Sequence[Bounds]] | None,
    start: PCPReplacement,
    sites: Sequence[str],
    space: str,
) -> dict[str, list[Bounds]]:
    """Per site, one ``(low, high)`` per component, in the units of ``space``."""

    def default(v: float) -> Bounds:
        if space == "factor":
            f = math.sqrt(abs(v))
            return (0.0, math.sqrt(2.0) * f) if f > 0 else (0.0, 1.0)
        return (min(0.0, 2 * v), max(0.0, 2 * v)) if v != 0 else (-1.0, 1.0)

    def check(b: Any, where: str) -> Bounds:
        try:
            lo, hi = (float(x) for x in b)
        except (TypeError, ValueError):
            raise ValueError(f"bounds{where} must be a pair (low, high), got {b!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds{where} must be finite with low < high, got {b!r}")
        if space == "factor" and lo < 0:
            raise ValueError(
                f"bounds{where} are factor bounds (α = s·f², f ≥ 0): low must be >= 0, got {b!r}"
            )
        return lo, hi

    out: dict[str, list[Bounds]] = {}
    per_site: dict[str, Any] = {}
    if isinstance(bounds, Mapping):
        per_site = {start.part(k).site.name: v for k, v in bounds.items()}
        unknown = sorted(set(per_site) - set(sites))
        if unknown:
            raise ValueError(f"bounds: sites {unknown} are not tuned; tuned sites: {list(sites)}")
    for name in sites:
        p = start.part(name)
        spec = per_site.get(name, None if isinstance(bounds, Mapping) else bounds)
        if spec is None:
            out[name] = [default(float(v)) for v in p.scales]
        elif len(spec) == 2 and all(isinstance(x, (int, float)) for x in spec):
            out[name] = [check(spec, f"[{name!r}]")] * p.rank
        else:
            if len(spec) != p.rank:
                raise ValueError(
                    f"bounds[{name!r}] must be one (low, high) pair or {p.rank} pairs (the rank), "
                    f"got {len(spec)}"
                )
            out[name] = [check(b, f"[{name!r}][{i}]") for i, b in enumerate(spec)]
    return out


def _finite(value: Any, what: str) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``what`` (a user objective's result)."""
    try:
        v = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{what} must return a finite float, got {type(value).__name__} {value!r}"
        ) from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must return a finite float, got {value!r}")
    return v


class _Search:
    """The search space of a PCP replacement's scales: sites, per-component bounds, units.

    Optuna parameters are named ``"<site>:<component>"``; ``space`` says whether they are α
    or the paper's factors f (α = s·f², s the sign of the starting scale).
    """

    def __init__(
        self,
        replacement: PCPReplacement,
        start: PCPReplacement,
        names: Sequence[str],
        bounds: Bounds | Mapping[SiteLike, Bounds | Sequence[Bounds]] | None,
        space: str,
    ) -> None:
        self.replacement, self.names, self.space = replacement, list(names), space
        self.box = _bounds(bounds, start, self.names, space)
        self.signs = {n: start.part(n).signs for n in self.names}

    def params(self, rep: PCPReplacement) -> dict[str, float]:
        """``rep``'s scales as parameters, clipped into the bounds (with a warning)."""
        out, clipped = {}, []
        for n in self.names:
            vals = rep.part(n).scales if self.space == "alpha" else rep.part(n).factors
            for i, (v, (lo, hi)) in enumerate(zip(vals.tolist(), self.box[n], strict=True)):
                out[f"{n}:{i}"] = min(max(v, lo), hi)
                if not lo <= v <= hi:
                    clipped.append(f"{n}:{i}={v:.4g}")
        if clipped:
            warnings.warn(f"initial values clipped to the bounds: {clipped}", stacklevel=4)
        return out

    def build(self, params: Mapping[str, float]) -> PCPReplacement:
        scales = {}
        for n in self.names:
            v = [params[f"{n}:{i}"] for i in range(len(self.box[n]))]
            scales[n] = v if self.space == "alpha" else scales_from_factors(v, self.signs[n])
        return self.replacement.with_scales(scales)

    def suggest(self, trial: optuna.Trial) -> PCPReplacement:
        return self.build(
            {
                f"{n}:{i}": trial.suggest_float(f"{n}:{i}", lo, hi)
                for n in self.names
                for i, (lo, hi) in enumerate(self.box[n])
            }
        )


def _optimize(
    search: _Search,
    loss: Callable[[PCPReplacement, optuna.Trial], float],
    *,
    start: PCPReplacement | None,
    n_trials: int,
    seed: int | None,
    study: optuna.Study | None,
    progress: bool,
    num_threads: int | None,
) -> optuna.Study:
    """Minimise ``loss(replacement, trial)`` over ``search`` with Optuna's TPE sampler.

    The one search loop of :func:`tune` (logit metrics or any objective): ``start`` is enqueued
    as the first trial; Optuna's logging is quieted and torch's thread count set to
    ``num_threads`` during the search, both restored afterwards.
    """
    verbosity, threads = optuna.logging.get_verbosity(), torch.get_num_threads()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        if study is None:
            study = optuna.create_study(
                direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed)
            )
        if start is not None:
            study.enqueue_trial(search.params(start))
        study.optimize(
            lambda trial: loss(search.suggest(trial), trial),
            n_trials=n_trials,
            show_progress_bar=progress,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
        torch.set_num_threads(threads)
    return study


def tune(
    model: HookedTransformer,
    replacement: PCPReplacement,
    inputs: Mapping[str, Inputs] | None = None,
    metric: MetricLike | Mapping[str, MetricLike] | None = None,
    *,
    target: Mapping[Any, float] | None = None,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    n_trials: int = 200,
    bounds: Bounds | Mapping[SiteLike, Bounds | Sequence[Bounds]] | None = None,
    space: Space = "alpha",
    initial: Literal["auto", "least_squares", "current"] | PCPReplacement | None = "auto",
    objective: Objective | Callable[[PCPReplacement], float] = "mse",
    seed: int | None = 0,
    study: optuna.Study | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> TuneResult:
    """Search the scales α with Optuna, against logit metrics or any ``replacement -> float``.

    Two kinds of objective share one search (bounds, units, first trial, sampler):

    * **Logit metrics** (``inputs`` + ``metric``, ``objective="mse"`` or ``"paper_sum"``): the
      edited model's group scores should match ``target``. Each trial runs one batched forward
      over all input sets (cached tokens, cached residual at the first replaced layer, logits
      only at the metric positions).
    * **Any objective** (``objective=callable``): ``objective(replacement)`` is minimised, e.g. a
      sampling-based ASR, ``lambda r: (asr(r) - 0.29) ** 2`` with
      :func:`pcp_lens.language.asr_score`. It is called once per trial and must return a finite
      number; ``metric`` and ``target`` are not used.

    Args:
        model: the model (must match the replacement's fingerprint).
        replacement: directions, starting scales and the sites to replace.
        inputs: ``{set name: tokens or strings}``, e.g. the paper's ``pp, pt, nn, ss, st``.
            With a callable ``objective`` optional: only ``initial="least_squares"`` reads it.
        metric: any metric (``docs/metrics.md``), e.g. a ``GroupMetric`` (top-10 negativity at
            position −1), or ``{name: metric}``. Required unless ``objective`` is a callable.
        target: ``{key: score}`` with keys as returned by :func:`score_inputs` (set names for
            one metric); only these keys enter the objective. Default: the unedited model's
            scores on every set ("re-insert the mechanism"); e.g. ``{"pt": 0.0, "pp": ...}`` to
            remove it.
        sites: the sites whose scales are tuned (default all; the others keep their scales).
        n_trials: number of Optuna trials (including the initial one).
        bounds: search range, in the units of ``space``: one ``(low, high)`` for every scale,
            or ``{site: (low, high) | [(low, high), ...]}``. Default: ``[0, 2α₀]`` around each
            starting scale α₀ (``[2α₀, 0]`` if negative; factor space: ``[0, √2·f₀]``).
        space: ``"alpha"`` samples α directly; ``"factor"`` samples the paper's f ≥ 0 and sets
            α = s·f² with s the sign of the starting scale.
        initial: the first (enqueued) trial: ``"least_squares"`` (the closed-form α of
            :func:`~pcp_lens.pcp.least_squares_scales` on all tuning inputs and positions),
            ``"current"`` (the replacement's own scales), another replacement's scales, or
            ``None``; ``"auto"`` (default) is ``"least_squares"`` when ``inputs`` are given,
            else ``"current"``. Values outside ``bounds`` are clipped to them.
        objective: ``"mse"`` (mean squared deviation over target keys), ``"paper_sum"`` (the
            authors' ``Σ_c [1000·(score_c − target_c)]²``, a sum scaled by 10⁶), or a callable
            ``replacement -> float`` to minimise.
        seed: seed of the ``TPESampler`` (ignored when ``study`` is given).
        study: continue an existing study (e.g. the paper's 100 + 100 trials); it must minimise.
        progress: show Optuna's progress bar.
        num_threads: torch intra-op threads during the search (restored afterwards); ``None``
            leaves torch's setting. ``1`` is fastest for toy-sized models, and much faster on a
            CPU shared with other jobs.

    Returns:
        :class:`TuneResult` ``(replacement, study, target, scores)``: the best trial's
        replacement and its scores. With a callable objective ``target`` is ``{}`` and
        ``scores`` is ``{"objective": best value}`` (the objective is not called again).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.groups import GroupMetric, TokenGroups
        >>> from pcp_lens.pcp import fit_pcp
        >>> m = tiny_model()
        >>> sets = {"a": torch.randint(0, 50, (8, 2)), "b": torch.randint(0, 50, (8, 2))}
        >>> pcp = fit_pcp(m, torch.cat(list(sets.values())), "mlp0", 2, progress=False)
        >>> neg = GroupMetric(TokenGroups({"neg": range(10)}, d_vocab=50), "neg", k=5)
        >>> res = tune(m, pcp, sets, neg, n_trials=5, progress=False)
        >>> len(res.study.trials), sorted(res.target)
        (5, ['a', 'b'])

        Any objective, e.g. pull the first scale of ``mlp0`` to 0.1:

        >>> res = tune(m, pcp, objective=lambda r: (r.scales()["mlp0"][0] - 0.1) ** 2,
        ...            n_trials=8, progress=False)
        >>> list(res.scores), res.scores["objective"] <= (pcp.scales()["mlp0"][0] - 0.1) ** 2
        (['objective'], True)
    """
    replacement.check(model)
    custom = callable(objective)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"n_trials must be an int >= 1, got {n_trials!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
    if not custom and objective not in ("mse", "paper_sum"):
        raise ValueError(
            f"objective must be 'mse', 'paper_sum' or a callable replacement -> float, got "
            f"{objective!r}"
        )
    if custom and (metric is not None or target is not None):
        raise ValueError(
            "objective is a callable replacement -> float: metric and target are not used; pass "
            "either metric (and target) with objective='mse'/'paper_sum', or a callable objective"
        )
    if not custom and (inputs is None or metric is None):
        raise ValueError(
            f"objective={objective!r} scores metric on inputs: pass inputs and metric, or a "
            "callable objective replacement -> float"
        )
    if space not in ("alpha", "factor"):
        raise ValueError(f"space must be 'alpha' or 'factor', got {space!r}")
    if study is not None and study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ValueError(f"study must minimise (the objective is a loss), got {study.direction}")
    names = (
        [s.name for s in replacement.sites]
        if sites is None
        else [replacement.part(s).site.name for s in pcp_sites(sites)]
    )
    batch: _SetBatch | None = None
    if not custom:
        assert inputs is not None and metric is not None
        metrics, single = _metrics(metric)
        batch = _SetBatch(model, inputs, metrics, single, _start_layer(model, replacement))
    goal = _target(target, batch) if batch is not None else {}

    if initial == "auto":
        initial = "least_squares" if inputs is not None else "current"
    if initial is None or initial == "current":
        start = replacement
    elif initial == "least_squares":
        if inputs is None:
            raise ValueError("initial='least_squares' fits the tuning inputs: pass inputs")
        rows = (
            batch.token_rows()
            if batch is not None
            else [r for t in _set_tokens(model, inputs).values() for r in t]
        )
        start = least_squares_scales(model, replacement, rows, sites=names, progress=False)
    elif isinstance(initial, PCPReplacement):
        start = replacement.with_scales({n: initial.part(n).scales for n in names})
    else:
        raise ValueError(
            "initial must be 'auto', 'least_squares', 'current', a PCPReplacement or None, got "
            f"{initial!r}"
        )
    search = _Search(replacement, start, names, bounds, space)

    if batch is not None:
        assert isinstance(objective, str)

        def loss(rep: PCPReplacement, trial: optuna.Trial) -> float:
            scores = batch.scores(rep.hooks(model))
            trial.set_user_attr("scores", [scores[k] for k in batch.keys])
            return _loss(scores, goal, objective)
    else:
        assert callable(objective)

        def loss(rep: PCPReplacement, trial: optuna.Trial) -> float:
            return _finite(objective(rep), "objective")

    study = _optimize(
        search,
        loss,
        start=start if initial is not None else None,
        n_trials=n_trials,
        seed=seed,
        study=study,
        progress=progress,
        num_threads=num_threads,
    )
    best = search.build(study.best_trial.params)
    if batch is None:
        return TuneResult(best, study, goal, {"objective": float(study.best_value)})
    return TuneResult(best, study, goal, batch.scores(best.hooks(model)))


# ------------------------------------------------------------------------------------------------
# sweeps
# ------------------------------------------------------------------------------------------------


def _grid(
    replacement: PCPReplacement, grid: Mapping[Any, Sequence[Any]]
) -> list[tuple[str, str, list[int], list[Any]]]:
    """``[(column label, site, components, values)]`` with every value checked."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            "grid must be a non-empty mapping {site or (site, component): [values]}, got "
            f"{grid!r}"
        )
    out, seen = [], set()
    for key, values in grid.items():
        if isinstance(key, tuple):
            if len(key) != 2:
                raise ValueError(f"grid key must be a site or (site, component), got {key!r}")
            p = replacement.part(key[0])
            comps = [key[1]]
            if not isinstance(key[1], int) or not 0 <= key[1] < p.rank:
                raise ValueError(
                    f"grid key {key!r}: component must be an int in 0..{p.rank - 1}, got {key[1]!r}"
                )
            label = f"{p.site.name}:{key[1]}"
        else:
            p = replacement.part(key)
            comps = list(range(p.rank))
            label = p.site.name
        for c in comps:
            if (p.site.name, c) in seen:
                raise ValueError(f"grid: component {c} of site {p.site.name!r} appears twice")
            seen.add((p.site.name, c))
        vals = list(values) if isinstance(values, Iterable) else [values]
        if not vals:
            raise ValueError(f"grid[{key!r}] must list at least one value")
        clean = []
        for v in vals:
            t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
            if t.numel() not in (1, len(comps)) or not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"grid[{key!r}] values must be finite numbers or sequences of {len(comps)} "
                    f"(one per component), got {v!r}"
                )
            clean.append(float(t) if t.numel() == 1 else tuple(t.tolist()))
        out.append((label, p.site.name, comps, clean))
    return out


def _settings(
    replacement: PCPReplacement, grid: Mapping[Any, Sequence[Any]], relative: bool, unedited: bool
) -> list[tuple[str, dict[str, Any], PCPReplacement | None]]:
    """``[(label, {grid column: value}, replacement or None)]``: every setting of the grid."""
    axes = _grid(replacement, grid)

    def fmt(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else "(" + ", ".join(f"{x:g}" for x in v) + ")"

    settings: list[tuple[str, dict[str, Any], PCPReplacement | None]] = []
    if unedited:
        settings.append(("unedited", {label: None for label, *_ in axes}, None))
    for combo in itertools.product(*(vals for *_, vals in axes)):
        rep = replacement
        for (_, site, comps, _), v in zip(axes, combo, strict=True):
            rep = rep.scale(site, v, relative=relative, components=comps)
        label = ", ".join(f"{a[0]}={fmt(v)}" for a, v in zip(axes, combo, strict=True))
        settings.append((label, {a[0]: v for a, v in zip(axes, combo, strict=True)}, rep))
    return settings


def sweep(
    model: HookedTransformer,
    replacement: PCPReplacement,
    grid: Mapping[Any, Sequence[Any]],
    inputs: Mapping[str, Inputs] | None = None,
    metric: MetricLike | Mapping[str, MetricLike] | None = None,
    *,
    scores: Mapping[str, Score] | None = None,
    val_tokens: Inputs | None = None,
    relative: bool = True,
    unedited: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """Group scores (and validation loss), or any scores, for every setting of a grid of factors.

    Either ``inputs`` + ``metric`` (logit metrics, one batched forward per setting) or
    ``scores={name: replacement -> float}`` (any score, called once per setting with the
    setting's replacement, or ``None`` for the unedited model; e.g.
    :func:`pcp_lens.language.asr_score`).

    Args:
        model: the model.
        replacement: the (tuned) replacement the factors act on.
        grid: ``{key: values}``; the settings are the Cartesian product over keys. A key is a
            site (``"mlp0"``: the value multiplies, or sets, all its components; a value may also
            be one number per component, e.g. ``(-1.2, 0.5)``) or ``(site, component)``.
        inputs: ``{set name: tokens or strings}``.
        metric: any metric (``docs/metrics.md``) or ``{name: metric}``.
        scores: ``{name: replacement -> float}`` instead of ``inputs`` and ``metric``.
        val_tokens: tokens for :func:`validation_loss` (omit to skip it); with ``scores`` add
            a loss score instead, e.g. ``{"loss": lambda r: validation_loss(model, val, r)}``.
        relative: factors multiply the current scales (the paper's Tab. V–VII); ``False`` sets α.
        unedited: also report the model without replacement (setting ``"unedited"``).
        batch_size: rows per forward pass of the validation loss.
        progress: show a tqdm bar over the settings.

    Returns:
        A tidy DataFrame with columns ``setting``, one column per grid key (its value),
        ``input_set``, ``metric``, ``value``; the validation loss has ``input_set="validation"``,
        ``metric="loss"``. ``df.pivot(index=["input_set", "metric"], columns="setting",
        values="value")[df.setting.unique()]`` gives the paper's table layout. With ``scores``
        there is no ``input_set`` column and ``metric`` is the score's name.

    Examples:
        >>> from pcp_lens import GroupMetric, TokenGroups, fit_pcp
        >>> from pcp_lens.testing import tiny_model
        >>> m, toks = tiny_model(), torch.randint(0, 50, (16, 2))
        >>> sets = {"pp": toks[:8], "pt": toks[8:]}
        >>> pcp = fit_pcp(m, toks, "mlp0", 2, progress=False)
        >>> neg = GroupMetric(TokenGroups({"neg": range(10)}, d_vocab=50), "neg", k=5)
        >>> df = sweep(m, pcp, {"mlp0": [(1.0, 1.0), (-1.2, 0.5)]}, sets, neg,
        ...            val_tokens=torch.randint(0, 50, (4, 8)))
        >>> list(df.setting.unique())
        ['unedited', 'mlp0=(1, 1)', 'mlp0=(-1.2, 0.5)']
        >>> first = lambda r: 0.0 if r is None else r.scales()["mlp0"][0]
        >>> df = sweep(m, pcp, {"mlp0": [1.0, 0.0]}, scores={"a0": first})
        >>> list(df.columns), abs(df.value.tolist()[2])
        (['setting', 'mlp0', 'metric', 'value'], 0.0)
    """
    replacement.check(model)
    if scores is not None:
        if inputs is not None or metric is not None or val_tokens is not None:
            raise ValueError(
                "pass either inputs and metric (and val_tokens) or scores={name: replacement -> "
                "float}, not both"
            )
        if (
            not isinstance(scores, Mapping)
            or not scores
            or not all(callable(f) for f in scores.values())
        ):
            raise ValueError(
                f"scores must be a non-empty mapping {{name: replacement -> float}}, got {scores!r}"
            )
    elif inputs is None or metric is None:
        raise ValueError("pass inputs and metric, or scores={name: replacement -> float}")
    settings = _settings(replacement, grid, relative, unedited)
    batch, metrics, single = None, {}, True
    if scores is None:
        assert inputs is not None and metric is not None
        metrics, single = _metrics(metric)
        batch = _SetBatch(model, inputs, metrics, single, _start_layer(model, replacement))

    rows = []
    for label, values, rep in tqdm(settings, desc="sweep", disable=not progress, leave=False):
        if batch is None:
            assert scores is not None
            for name, fn in scores.items():
                v = _finite(fn(rep), f"scores[{name!r}]")
                rows.append({"setting": label, **values, "metric": name, "value": v})
            continue
        got = batch.scores([] if rep is None else rep.hooks(model))
        for key, v in got.items():
            set_name, mname = (key, next(iter(metrics))) if single else key
            rows.append(
                {"setting": label, **values, "input_set": set_name, "metric": mname, "value": v}
            )
        if val_tokens is not None:
            loss = validation_loss(model, val_tokens, rep, batch_size=batch_size)
            rows.append(
                {
                    "setting": label,
                    **values,
                    "input_set": "validation",
                    "metric": "loss",
                    "value": loss,
                }
            )
    return pd.DataFrame(rows)
