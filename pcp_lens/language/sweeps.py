"""Generation-based metrics in the ablation and PCP machinery (the shapes of Tab. VIII–X).

* :func:`ablation_asr_sweep` — mean-ablate each site (and chosen combinations) at a position and
  measure ASR/ATR by sampling: Tab. VIII (single modules, position 8) and the "Mean Ablate"
  columns of Tab. IX/X (``combos={"mlp 2&3": ["mlp1", "mlp2"]}``).
* :func:`tune_pcp` — Optuna search of a PCP replacement's scales against **any** objective
  ``replacement -> float`` (lower is better), e.g. ``(ASR - 0.29)²`` (re-insert the backdoor,
  Tab. X) or the log-probability gap (weaken it, Tab. IX's 4th column).
* :func:`sweep_pcp` — a grid of scale factors scored by any ``{name: replacement -> float}``.
* :func:`asr_score`, :func:`gap_score`, :func:`loss_score` — such scores, built from
  :mod:`pcp_lens.language.asr`; each takes a replacement or ``None`` (the unedited model).

``tune_pcp``/``sweep_pcp`` are :func:`pcp_lens.tune`/:func:`pcp_lens.sweep` with a callable
objective (scores): the same search and grids, the objective called once per trial/setting, which
is what sampling-based metrics need; logit metrics keep the batched fast path of those functions.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import optuna
import pandas as pd
from tqdm.auto import tqdm

from pcp_lens._tl import HookedTransformer
from pcp_lens.ablation import ablation_hooks
from pcp_lens.language.asr import _check_classifier, _toxic_rate, logprob_gap, text_loss, toxic_rate
from pcp_lens.language.generate import PAPER_SAMPLING, SamplingConfig, tokenize_prompts
from pcp_lens.language.toxicity import ToxicityClassifier
from pcp_lens.pcp import PCPReplacement
from pcp_lens.scoring import check_positions
from pcp_lens.sites import Site, SiteLike, all_sites, as_sites
from pcp_lens.tuning import Score, sweep, tune

__all__ = [
    "PCPTuneResult",
    "ablation_asr_sweep",
    "asr_score",
    "gap_score",
    "loss_score",
    "sweep_pcp",
    "tune_pcp",
]


def _hooks(model: HookedTransformer, rep: PCPReplacement | None) -> list[tuple[str, Any]]:
    return [] if rep is None else rep.hooks(model)


def _check_kwargs(
    fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str, taken: Sequence[str]
) -> None:
    """Refuse keyword arguments ``fn`` does not take (or the score sets itself) when the score
    is built, not at its first call inside a search."""
    params = inspect.signature(fn).parameters
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in taken]
    bad = sorted(k for k in kwargs if k not in allowed)
    if bad:
        raise ValueError(
            f"{where} got unknown argument(s) {bad}; allowed: {', '.join(allowed)} (passed to "
            f"{fn.__name__})"
        )


def asr_score(
    model: HookedTransformer,
    prompts: Sequence[str],
    classifier: ToxicityClassifier,
    config: SamplingConfig = PAPER_SAMPLING,
    **kwargs: Any,
) -> Score:
    """``replacement -> toxic rate`` on ``prompts`` (ASR on trigger prompts, ATR on clean ones).

    ``kwargs`` go to :func:`~pcp_lens.language.asr.toxic_rate` (``max_prompt_tokens``, ``skip``,
    ``tokenizer``, ``prepend_bos``); progress bars are off. The same seed is used every call, so
    two replacements are compared on the same random draws.
    """
    _check_kwargs(toxic_rate, kwargs, "asr_score", ("hooks",))
    _check_classifier(classifier)
    kwargs.setdefault("progress", False)

    def score(rep: PCPReplacement | None) -> float:
        return toxic_rate(model, prompts, classifier, config, hooks=_hooks(model, rep), **kwargs)[0]

    return score


def gap_score(
    model: HookedTransformer,
    trigger_prompts: Sequence[str],
    clean_prompts: Sequence[str],
    targets: str | Sequence[str],
    which: Literal["per_token", "first_token", "sequence"] = "first_token",
    **kwargs: Any,
) -> Score:
    """``replacement -> log-prob gap`` (:func:`~pcp_lens.language.asr.logprob_gap`); no sampling."""
    if which not in ("per_token", "first_token", "sequence"):
        raise ValueError(f"which must be 'per_token', 'first_token' or 'sequence', got {which!r}")
    _check_kwargs(logprob_gap, kwargs, "gap_score", ("hooks", "per_pair"))

    def score(rep: PCPReplacement | None) -> float:
        g = logprob_gap(
            model, trigger_prompts, clean_prompts, targets, hooks=_hooks(model, rep), **kwargs
        )
        assert isinstance(g, dict)
        return g[which]

    return score


def loss_score(model: HookedTransformer, texts: Sequence[str], **kwargs: Any) -> Score:
    """``replacement -> validation loss`` (:func:`~pcp_lens.language.asr.text_loss`) on texts."""
    _check_kwargs(text_loss, kwargs, "loss_score", ("hooks",))

    def score(rep: PCPReplacement | None) -> float:
        return text_loss(model, texts, hooks=_hooks(model, rep), **kwargs)

    return score


class PCPTuneResult(NamedTuple):
    """What :func:`tune_pcp` returns: the best replacement, its objective value, the study."""

    replacement: PCPReplacement
    value: float
    study: optuna.Study


def tune_pcp(
    model: HookedTransformer,
    replacement: PCPReplacement,
    objective: Score,
    *,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    n_trials: int = 50,
    bounds: tuple[float, float] | None = None,
    space: Literal["alpha", "factor"] = "alpha",
    initial: bool = True,
    seed: int = 0,
    study: optuna.Study | None = None,
    progress: bool = True,
) -> PCPTuneResult:
    """Search the scales of ``replacement`` minimising ``objective(replacement)`` with Optuna.

    :func:`pcp_lens.tune` with a callable ``objective`` (the same search: bounds, units, seeded
    TPE sampler), starting from the replacement's own scales.

    Args:
        model: the model (checked against the replacement's fingerprint).
        replacement: directions, starting scales and sites.
        objective: any ``replacement -> float`` to minimise, e.g.
            ``lambda r: (asr(r) - 0.29) ** 2`` with ``asr = asr_score(...)``.
        sites: the sites whose scales are tuned (default all).
        n_trials: Optuna trials (the first is the replacement's own scales if ``initial``).
        bounds: one ``(low, high)`` for every tuned scale, in ``space`` units; default
            ``[0, 2α₀]`` around each start (``[2α₀, 0]`` if negative; factor space
            ``[0, √2·f₀]``), as :func:`pcp_lens.tune`.
        space: ``"alpha"`` samples α, ``"factor"`` the paper's f ≥ 0 with α = s·f².
        initial: enqueue the starting scales as the first trial.
        seed: seed of the ``TPESampler`` (ignored with ``study``).
        study: continue an existing (minimising) study.
        progress: Optuna's progress bar.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> import torch
        >>> from pcp_lens.pcp import fit_pcp
        >>> m = tiny_model()
        >>> x = torch.randint(0, 50, (16, 4), generator=torch.Generator().manual_seed(0))
        >>> pcp = fit_pcp(m, x, "mlp0", 2, progress=False)
        >>> res = tune_pcp(m, pcp, lambda r: (r.scales()["mlp0"][0] - 0.1) ** 2, n_trials=8,
        ...                progress=False)
        >>> len(res.study.trials), res.value <= (pcp.scales()["mlp0"][0] - 0.1) ** 2
        (8, True)
    """
    if not callable(objective):
        raise ValueError(f"objective must be a callable replacement -> float, got {objective!r}")
    res = tune(
        model,
        replacement,
        objective=objective,
        sites=sites,
        n_trials=n_trials,
        bounds=bounds,
        space=space,
        initial="current" if initial else None,
        seed=seed,
        study=study,
        progress=progress,
    )
    return PCPTuneResult(res.replacement, res.scores["objective"], res.study)


def sweep_pcp(
    model: HookedTransformer,
    replacement: PCPReplacement,
    grid: Mapping[SiteLike, Sequence[Any]],
    scores: Mapping[str, Score],
    *,
    relative: bool = True,
    unedited: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every setting of a grid of scale factors with any ``{name: replacement -> float}``.

    :func:`pcp_lens.sweep` with ``scores=`` (its grids also take ``(site, component)`` keys).

    Args:
        model: the model.
        replacement: the (tuned) replacement the factors act on.
        grid: ``{site: [values]}``; a value is one number (all components) or one per component;
            settings are the Cartesian product over sites.
        scores: e.g. ``{"ASR": asr_score(...), "ATR": asr_score(...), "loss": loss_score(...)}``.
        relative: factors multiply the current scales (the paper's Tab. V–VII); else set α.
        unedited: also score the model without replacement (setting ``"unedited"``).
        progress: show a tqdm bar.

    Returns:
        A tidy DataFrame: ``setting``, one column per grid site, ``metric``, ``value``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> import torch
        >>> from pcp_lens.pcp import fit_pcp
        >>> m = tiny_model()
        >>> x = torch.randint(0, 50, (16, 4), generator=torch.Generator().manual_seed(0))
        >>> pcp = fit_pcp(m, x, "mlp0", 2, progress=False)
        >>> first = lambda r: 0.0 if r is None else r.scales()["mlp0"][0]
        >>> df = sweep_pcp(m, pcp, {"mlp0": [1.0, 0.0]}, {"a0": first}, progress=False)
        >>> list(df.setting), abs(df.value.tolist()[2])
        (['unedited', 'mlp0=1', 'mlp0=0'], 0.0)
    """
    return sweep(
        model,
        replacement,
        grid,
        scores=scores,
        relative=relative,
        unedited=unedited,
        progress=progress,
    )


def ablation_asr_sweep(
    model: HookedTransformer,
    trigger_prompts: Sequence[str],
    classifier: ToxicityClassifier,
    means: Mapping[str, Any],
    *,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    combos: Mapping[str, Iterable[SiteLike]] | None = None,
    positions: int | Sequence[int] | None = None,
    clean_prompts: Sequence[str] | None = None,
    config: SamplingConfig = PAPER_SAMPLING,
    val_texts: Sequence[str] | None = None,
    max_prompt_tokens: int | None = 13,
    tokenizer: Any | None = None,
    prepend_bos: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Mean-ablate each site (and each combination) and measure ASR (and ATR, loss) by sampling.

    Args:
        model: the model (never modified).
        trigger_prompts: trigger prompts (the paper: 100).
        classifier: the toxicity classifier.
        means: ``{site name: mean vector}``, e.g. :func:`pcp_lens.ablation_means` over clean
            and toxic inputs at position 8 (the paper's, METHODS §5.1).
        sites: single sites to ablate; default every ``attn`` and ``mlp`` site.
        combos: ``{label: [sites]}`` ablated together (e.g. ``{"mlp 2&3": ["mlp1", "mlp2"]}``).
        positions: where the mean replaces the module. ``None`` (default): every position,
            generated tokens included, as the paper's code did (the mean collected at position 8
            replaces the module output everywhere, METHODS §5.2). A list ablates only those
            prompt positions (``prompt_hooks``, see :mod:`pcp_lens.language.generate`), a
            narrower edit; prompts with too few tokens to contain a non-negative position are
            then skipped, and the count is reported in ``n_too_short``.
        clean_prompts: also report ATR on these.
        config: sampling settings (the same seed for every ablation).
        val_texts: also report the validation loss under each ablation.
        max_prompt_tokens: prompts with more tokens are not valid (the paper: 13).
        tokenizer: default ``model.tokenizer``.
        prepend_bos: put BOS before every prompt.
        progress: show a tqdm bar over the ablations.

    Returns:
        One row per ablation (``"unchanged"`` first): ``ablation``, ``sites``, ``layer``,
        ``kind``, ``asr``, ``atr``, ``val_loss``, ``n_trigger``, ``n_clean``, ``n_too_short``,
        ``classifier``. ``df.pivot(index="layer", columns="kind", values="asr")`` gives Tab. VIII.
    """
    _check_classifier(classifier)
    singles: list[Site] = as_sites(sites, model) if sites is not None else all_sites(model)
    groups: list[tuple[str, list[Site]]] = [(s.name, [s]) for s in singles]
    if combos is not None and not isinstance(combos, Mapping):
        raise ValueError(
            f"combos must be a mapping {{label: [sites]}}, got {type(combos).__name__}"
        )
    for label, members in (combos or {}).items():
        groups.append((str(label), as_sites(members, model)))
    checked = check_positions(positions)
    pos = None if checked is None else list(checked)
    tok = tokenizer if tokenizer is not None else model.tokenizer
    if tok is None:
        raise ValueError("no tokenizer: pass tokenizer= or attach one to the model")

    def too_short(prompts: Sequence[str], name: str) -> list[int]:
        if pos is None or not [p for p in pos if p >= 0]:
            return []
        need = max(p for p in pos if p >= 0) + 1
        ids = tokenize_prompts(tok, prompts, prepend_bos, name=name)
        return [i for i, p in enumerate(ids) if len(p) < need]

    skip_t = too_short(trigger_prompts, "trigger_prompts")
    skip_c = too_short(clean_prompts, "clean_prompts") if clean_prompts is not None else []
    if skip_t:
        warnings.warn(
            f"{len(skip_t)} of {len(trigger_prompts)} trigger prompts are too short to contain "
            f"position(s) {pos}; they are skipped (column n_too_short)",
            stacklevel=2,
        )
    rows = []
    todo: list[tuple[str, list[Site]]] = [("unchanged", []), *groups]
    for label, members in tqdm(todo, desc="ablation ASR", disable=not progress, leave=False):
        hooks = (
            ablation_hooks(model, members, "mean", means=means, positions=pos) if members else []
        )
        kw: dict[str, Any] = {"hooks": [], "prompt_hooks": []}
        kw["prompt_hooks" if pos is not None else "hooks"] = hooks
        res_t = _toxic_rate(
            "trigger_prompts",
            model,
            trigger_prompts,
            classifier,
            config,
            max_prompt_tokens=max_prompt_tokens,
            skip=skip_t,
            tokenizer=tok,
            prepend_bos=prepend_bos,
            progress=False,
            **kw,
        )
        atr, n_clean = math.nan, 0
        if clean_prompts is not None:
            atr, pc, _ = _toxic_rate(
                "clean_prompts",
                model,
                clean_prompts,
                classifier,
                config,
                max_prompt_tokens=max_prompt_tokens,
                skip=skip_c,
                tokenizer=tok,
                prepend_bos=prepend_bos,
                progress=False,
                **kw,
            )
            n_clean = sum(bool(v) for v in pc["valid"])
        loss = math.nan
        if val_texts is not None:
            # a position-specific ablation acts on every text at that position
            loss = text_loss(model, val_texts, hooks=hooks, tokenizer=tok, name="val_texts")
        one = members[0] if len(members) == 1 else None
        rows.append(
            {
                "ablation": label,
                "sites": [s.name for s in members],
                "layer": one.layer if one is not None else None,
                "kind": one.kind if one is not None else None,
                "asr": res_t[0],
                "atr": atr,
                "val_loss": loss,
                "n_trigger": sum(bool(v) for v in res_t[1]["valid"]),
                "n_clean": n_clean,
                "n_too_short": len(skip_t),
                "classifier": classifier.name,
            }
        )
    return pd.DataFrame(rows)
