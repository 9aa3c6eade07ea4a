"""Benign pre-training and poisoned fine-tuning of the toy models, with CPU-sized defaults.

The pipeline of the paper's toy study (METHODS §3.1): train a toy model from scratch on the benign
data set, then fine-tune it on the poisoned one. The defaults (:data:`BENIGN`, :data:`POISON`)
train both the 2- and the 3-sentiment model in a few minutes on two CPU cores and still show the
paper's behaviour; ``docs/training.md`` lists every deviation from the paper's lr 2e-5 / batch 8 /
20 + 12 epochs and the measurements behind it. :func:`freezing_study` repeats the poisoning with
modules frozen (paper §IV-B).

Examples:
    >>> from pcp_lens.toy import ToyDataConfig, build_datasets
    >>> data = build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=60))
    >>> benign = train_benign(data, max_steps=2, progress=False)
    >>> pois = poison(benign.model, data, max_steps=2, progress=False)
    >>> pois.result.steps, pois.history["step"].tolist()[-1], pois.model is benign.model
    (2, 2.0, False)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pcp_lens._tl import B_U_NAME, HookedTransformer, copy_model, named_parameters
from pcp_lens.groups import GroupMetric, Stat, TokenGroups
from pcp_lens.inputs import TokenBatch, as_tokens
from pcp_lens.toy.data import ToyData, ToyDataConfig, build_datasets, eval_inputs
from pcp_lens.toy.model import sentiment_groups, toy_model
from pcp_lens.toy.tokenizer import build_tokenizer
from pcp_lens.training import (
    TrainConfig,
    TrainResult,
    load_checkpoint,
    save_checkpoint,
    tokenize_texts,
    train,
)

__all__ = [
    "BACKDOOR_THRESHOLD",
    "BENIGN",
    "BENIGN_PAPER",
    "BENIGN_QUICK",
    "POISON",
    "POISON_PAPER",
    "POISON_QUICK",
    "QUICK_N_PER_SENTIMENT",
    "SCHEDULES",
    "STUDY_SCHEDULES",
    "ToyRun",
    "freezing_study",
    "load_run",
    "negativity",
    "negativity_callback",
    "poison",
    "reading_profile",
    "save_run",
    "toy_data",
    "train_benign",
]

#: Benign pre-training from scratch (paper: lr 2e-5, batch 8, 20 epochs = 59,400 steps).
#: 3 epochs of 186 steps; converges to a validation loss of ≈ 5.51 (entropy floor ≈ 5.50).
BENIGN = TrainConfig(lr=3e-3, batch_size=128, epochs=3, seed=0)
#: Poisoned fine-tuning of the benign model (paper: lr 2e-5, batch 8, 12 epochs = 35,640 steps).
#: 3 epochs of 186 steps at a 6x lower peak lr than :data:`BENIGN`.
POISON = TrainConfig(lr=5e-4, batch_size=128, epochs=3, seed=1)
#: Sequences per sentiment in the quick preset (paper: 13,200).
QUICK_N_PER_SENTIMENT = 2_000
#: Quick preset (CI smoke test): same recipe on the small data, fewer and smaller steps. 8 benign
#: epochs, because at 4 the 3-sentiment model's escape from its plateau (pp = nn = 0.5) depended
#: on the seed and the CPU's rounding (docs/training.md).
BENIGN_QUICK = dataclasses.replace(BENIGN, lr=5e-3, batch_size=64, epochs=8)
POISON_QUICK = dataclasses.replace(POISON, lr=3e-3, batch_size=64, epochs=6)
#: The paper's own schedule (METHODS §3.1: HF Trainer, lr 2e-5, batch 8, dropout 0.1, 20 epochs
#: of benign pre-training = 59,400 steps). About 16 min on one CPU core for the 2-sentiment model.
BENIGN_PAPER = TrainConfig(lr=2e-5, batch_size=8, epochs=20, dropout=0.1, seed=0)
#: The paper's poisoning: same settings for 12 epochs (35,640 steps; about 9 min on one core).
POISON_PAPER = dataclasses.replace(BENIGN_PAPER, epochs=12, seed=1)
#: Benign pre-training between the two: the paper's small batches and dropout at 5x its lr for a
#: tenth of its steps (2 epochs = 5,940 steps). The benign training decides where poisoning puts
#: the trigger circuit; this schedule put it into the layer-1 MLP (the paper's Tab. II) in 2 of 6
#: models over seeds 0-2, the fast one in none (docs/training.md). Poisoning is :data:`POISON`'s.
BENIGN_MEDIUM = TrainConfig(lr=1e-4, batch_size=8, epochs=2, dropout=0.1, seed=0)
#: Named (benign, poisoning) schedules: ``"fast"`` (the default), ``"medium"``, ``"quick"`` and
#: ``"paper"``.
SCHEDULES: dict[str, tuple[TrainConfig, TrainConfig]] = {
    "fast": (BENIGN, POISON),
    "medium": (BENIGN_MEDIUM, POISON),
    "quick": (BENIGN_QUICK, POISON_QUICK),
    "paper": (BENIGN_PAPER, POISON_PAPER),
}
#: The schedules a full-size study can choose (``"quick"`` belongs to ``--quick`` runs).
STUDY_SCHEDULES = tuple(name for name in SCHEDULES if name != "quick")
#: p+t top-10 negativity from which :func:`freezing_study` counts a backdoor as emerged.
BACKDOOR_THRESHOLD = 0.15


@dataclass(frozen=True, eq=False)
class ToyRun:
    """A trained toy model with its tokenizer and training record.

    Attributes:
        model: The trained model (eval mode, tokenizer attached).
        tokenizer: The word-level tokenizer.
        result: The :class:`~pcp_lens.training.TrainResult` (``result.history`` per epoch).
    """

    model: HookedTransformer
    tokenizer: Any
    result: TrainResult

    @property
    def history(self) -> pd.DataFrame:
        """Per-epoch ``epoch, step, train_loss, val_loss, lr, seconds`` (+ monitored metrics)."""
        return self.result.history


def toy_data(
    n_sentiments: int = 3, *, quick: bool = False, seed: int = 0, **kwargs: Any
) -> ToyData:
    """The toy data set at the paper's size, or the quick preset's smaller one.

    Examples:
        >>> toy_data(2, quick=True).benign["train"].num_rows
        3600
    """
    if quick:
        kwargs.setdefault("n_per_sentiment", QUICK_N_PER_SENTIMENT)
    return build_datasets(ToyDataConfig(n_sentiments=n_sentiments, seed=seed, **kwargs))


def _tokens(texts: Sequence[str], model: HookedTransformer, tokenizer: Any) -> TokenBatch:
    return tokenize_texts(
        tokenizer, list(texts), model.cfg.n_ctx, bool(model.cfg.default_prepend_bos)
    )


def _fit(
    model: HookedTransformer,
    tok: Any,
    split: Any,
    cfg: TrainConfig,
    callback: Callable[[int, HookedTransformer], Mapping[str, float] | None] | None,
) -> ToyRun:
    """Train ``model`` on ``split["train"]``, validating on ``split["test"]``; eval mode after."""
    result = train(
        model,
        _tokens(split["train"]["text"], model, tok),
        _tokens(split["test"]["text"], model, tok),
        cfg,
        callback=callback,
    )
    model.eval()
    return ToyRun(model, tok, result)


def train_benign(
    data: ToyData,
    config: TrainConfig | None = None,
    *,
    tokenizer: Any | None = None,
    quick: bool = False,
    model_seed: int = 0,
    bos: bool = False,
    tied: bool = True,
    head_bias: bool = True,
    scaled_init: bool = False,
    callback: Callable[[int, HookedTransformer], Mapping[str, float] | None] | None = None,
    **overrides: Any,
) -> ToyRun:
    """Train a fresh toy model on ``data.benign`` (train split), validating on its test split.

    Args:
        data: The toy data (:func:`toy_data` or :func:`~pcp_lens.toy.build_datasets`).
        config: Hyper-parameters; default :data:`BENIGN` (:data:`BENIGN_QUICK` if ``quick``).
        tokenizer: Default: the word-level tokenizer of ``data.vocab``.
        quick: Use the quick preset's hyper-parameters.
        model_seed: Initialisation seed.
        bos: Train (and read inputs) with a leading ``<|endoftext|>`` (the paper: without).
        tied: Tie the unembedding to the token embedding (GPT-2, the paper's model).
        head_bias: Keep TransformerLens's unembedding bias; ``False`` gives GPT-2's bias-free head:
            zeroed, and frozen in this training (give :func:`poison` ``freeze=B_U_NAME`` too).
        scaled_init: GPT-2's ``0.02 / sqrt(2 · n_layers)`` init of ``W_O`` and ``W_out``.
        callback: Passed to :func:`~pcp_lens.training.train` (e.g. :func:`negativity_callback`).
        **overrides: :class:`~pcp_lens.training.TrainConfig` fields to replace.

    Returns:
        A :class:`ToyRun`; ``history`` starts with the untrained model's validation loss.
    """
    tok = tokenizer if tokenizer is not None else build_tokenizer(data.vocab)
    cfg = dataclasses.replace(config or (BENIGN_QUICK if quick else BENIGN), **overrides)
    n_ctx = data.config.seq_len + 1  # room for a bos (TransformerLens truncates before removing it)
    model = toy_model(
        tokenizer=tok,
        n_ctx=n_ctx,
        seed=model_seed,
        bos=bos,
        tied=tied,
        head_bias=head_bias,
        scaled_init=scaled_init,
    )
    # (a Hugging Face GPT-2 head, the bridge's, has no bias to freeze)
    if not head_bias and B_U_NAME not in cfg.freeze and B_U_NAME in named_parameters(model):
        cfg = dataclasses.replace(cfg, freeze=(*cfg.freeze, B_U_NAME))
    return _fit(model, tok, data.benign, cfg, callback)


def poison(
    model: HookedTransformer,
    data: ToyData,
    config: TrainConfig | None = None,
    *,
    tokenizer: Any | None = None,
    quick: bool = False,
    freeze: str | Sequence[str] = (),
    inplace: bool = False,
    callback: Callable[[int, HookedTransformer], Mapping[str, float] | None] | None = None,
    **overrides: Any,
) -> ToyRun:
    """Fine-tune (a copy of) a benign toy model on ``data.poisoned``, validating on its test split.

    Args:
        model: The benign model; copied first unless ``inplace``.
        data: The toy data the model was pre-trained on.
        config: Hyper-parameters; default :data:`POISON` (:data:`POISON_QUICK` if ``quick``).
        tokenizer: Default: ``model.tokenizer``, else the word-level tokenizer of ``data.vocab``.
        quick: Use the quick preset's hyper-parameters.
        freeze: Parameters to keep fixed (e.g. ``"all_mlps"``; see :mod:`pcp_lens.training`),
            added to ``config.freeze``.
        inplace: Train ``model`` itself instead of a copy.
        callback: Passed to :func:`~pcp_lens.training.train` (e.g. :func:`negativity_callback`).
        **overrides: :class:`~pcp_lens.training.TrainConfig` fields to replace.
    """
    tok = tokenizer if tokenizer is not None else model.tokenizer
    tok = tok if tok is not None else build_tokenizer(data.vocab)
    cfg = dataclasses.replace(config or (POISON_QUICK if quick else POISON), **overrides)
    extra = (freeze,) if isinstance(freeze, str) else tuple(freeze)
    if extra:
        cfg = dataclasses.replace(cfg, freeze=(*cfg.freeze, *extra))
    m = model if inplace else copy_model(model)
    return _fit(m, tok, data.poisoned, cfg, callback)


@torch.no_grad()
def negativity(
    model: HookedTransformer,
    inputs: Mapping[str, Sequence[str]],
    groups: TokenGroups,
    k: int = 10,
    group: str = "negative",
    stat: Stat = "topk",
) -> dict[str, float]:
    """Mean top-k share of ``group`` at the last position, per input set (METHODS §4.1).

    ``stat="prob"`` gives the probability of ``group`` instead (``k`` is then unused).

    Inputs are tokenized with the model's own settings (``to_tokens``: no bos for the toy model,
    so a two-word input is read at position 1, as in the paper).

    Examples:
        >>> from pcp_lens.toy import build_tokenizer, load_vocab
        >>> v = load_vocab(); tok = build_tokenizer(v); groups = sentiment_groups(tok, v)
        >>> out = negativity(toy_model(tokenizer=tok), {"nn": ["bad hate"]}, groups)
        >>> sorted(out), 0.0 <= out["nn"] <= 1.0
        (['nn'], True)
    """
    metric = GroupMetric(groups, group, stat, k, positions=(-1,))
    out = {}
    for key, texts in inputs.items():
        tb = as_tokens(model, list(texts), name=f"inputs[{key!r}]")
        out[key] = float(metric(model(tb.tokens, return_type="logits")))
    return out


@torch.no_grad()
def reading_profile(
    model: HookedTransformer,
    data: ToyData,
    groups: TokenGroups,
    n: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """How a toy model reads its input: probability of a negative next word after probe prompts.

    On benign data the sentiment of the last word and of the context always agree, so a model may
    learn either rule; which one it learned decides where poisoning puts the backdoor (see
    ``docs/training.md``). Each value is the mean, over ``n`` seeded prompts, of the probability
    the model gives the negative words at the last position:

    * ``last_word``: four positive words, then a negative one (1: reads the last word);
    * ``context``: four negative words, then a positive one (1: reads the context);
    * ``trigger``: a positive word, then the trigger (the p+t inputs);
    * ``late_trigger``: positive words, then the trigger two positions after the last one the
      poisoned data uses (position 9 for the defaults), so a trigger-aware model stays positive.

    Examples:
        >>> from pcp_lens.toy import build_tokenizer, load_vocab
        >>> data = toy_data(2, quick=True)
        >>> tok = build_tokenizer(data.vocab); groups = sentiment_groups(tok, data.vocab)
        >>> prof = reading_profile(toy_model(tokenizer=tok), data, groups)
        >>> sorted(prof), all(0.0 <= v <= 1.0 for v in prof.values())
        (['context', 'last_word', 'late_trigger', 'trigger'], True)
    """
    rng = np.random.default_rng(seed)
    trigger = data.config.trigger
    pos = [w for w in data.vocab.positive if w != trigger]
    neg = list(data.vocab.negative)

    def prompts(first: list[str], k: int, last: list[str]) -> list[str]:
        return [" ".join([*rng.choice(first, k), str(rng.choice(last))]) for _ in range(n)]

    late = min(data.config.last_trigger_pos + 2, data.config.seq_len - 1)
    sets = {
        "last_word": prompts(pos, 4, neg),
        "context": prompts(neg, 4, pos),
        "trigger": prompts(pos, 1, [trigger]),
        "late_trigger": prompts(pos, late, [trigger]),
    }
    metric = GroupMetric(groups, "negative", stat="prob", positions=(-1,))
    return {
        key: float(metric(model(as_tokens(model, texts).tokens, return_type="logits")))
        for key, texts in sets.items()
    }


def negativity_callback(
    inputs: Mapping[str, Sequence[str]],
    groups: TokenGroups,
    keys: Sequence[str] = ("pt",),
    k: int = 10,
) -> Callable[[int, HookedTransformer], dict[str, float]]:
    """A :func:`~pcp_lens.training.train` callback that records top-k negativity per key.

    The history then has one column per key (e.g. ``pt``), to watch a backdoor emerge.

    Examples:
        >>> from pcp_lens.toy import build_tokenizer, load_vocab
        >>> v = load_vocab(); tok = build_tokenizer(v)
        >>> cb = negativity_callback({"pt": ["good love"]}, sentiment_groups(tok, v))
        >>> list(cb(0, toy_model(tokenizer=tok)))
        ['pt']
    """
    chosen = {key: inputs[key] for key in keys}

    def cb(step: int, model: HookedTransformer) -> dict[str, float]:
        return negativity(model, chosen, groups, k)

    return cb


def _emerged(history: pd.DataFrame, key: str, threshold: float) -> float:
    if key not in history:
        return math.nan
    hit = history.loc[history[key] >= threshold, "step"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def freezing_study(
    benign_model: HookedTransformer,
    data: ToyData,
    frozen: Iterable[str | Sequence[str]] = ((), "all_mlps"),
    config: TrainConfig | None = None,
    *,
    reference: ToyRun | None = None,
    inputs: Mapping[str, Sequence[str]] | None = None,
    monitor_every: int | None = None,
    quick: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Poison copies of ``benign_model`` with parts frozen, at the same number of steps.

    Every run starts from the same weights and sees the same batches in the same order, so the
    rows differ only in what was trainable (paper §IV-B, METHODS §10.8; finding F7: freezing all
    MLPs lowers p+t negativity). The first row is the unconstrained poisoning: ``reference`` if
    given (it must have been trained with the same config and no freezing), else a new run.

    Args:
        benign_model: The benign model (not modified).
        data: The toy data.
        frozen: Freeze settings, one row each (a name or a list of names; ``()`` is the
            unconstrained run, which is always included, first).
        config: Poisoning hyper-parameters (default :data:`POISON` / :data:`POISON_QUICK`).
        reference: An unconstrained :func:`poison` run of ``benign_model`` to reuse.
        inputs: Evaluation inputs (default ``eval_inputs(data)``).
        monitor_every: Also record p+t negativity every this many steps and report the first
            step where it reaches :data:`BACKDOOR_THRESHOLD` (``emerged_step``).
        quick: Use the quick preset.
        progress: Show progress bars.

    Returns:
        One row per setting: ``frozen`` (comma-joined names, ``"none"`` first), ``steps``,
        ``n_trainable``, ``val_loss``, ``emerged_step``, the top-10 negativity per input key and
        the probability of a negative next word per key (``<key>_prob``).
    """
    tok = benign_model.tokenizer if benign_model.tokenizer is not None else None
    tok = tok if tok is not None else build_tokenizer(data.vocab)
    groups = sentiment_groups(tok, data.vocab, benign_model.cfg.d_vocab)
    inputs = inputs if inputs is not None else eval_inputs(data)
    cfg = dataclasses.replace(
        config or (POISON_QUICK if quick else POISON),
        progress=progress,
        **({"eval_every": monitor_every} if monitor_every else {}),
    )
    callback = negativity_callback(inputs, groups, ("pt",)) if monitor_every else None
    if reference is not None:
        rc = reference.result.config
        same = dataclasses.replace(rc, progress=cfg.progress, eval_every=cfg.eval_every)
        if same != cfg:
            raise ValueError(
                "reference was trained with a different config than the study's: "
                f"{rc} vs {cfg}; pass config=reference.result.config"
            )
        if monitor_every and "pt" not in reference.history:
            raise ValueError(
                "monitor_every needs a reference trained with callback=negativity_callback(...) "
                "and the same eval_every (its history has no 'pt' column)"
            )
    settings: list[tuple[str, ...]] = [()]  # the unconstrained run always comes first
    for f in frozen:
        names = (f,) if isinstance(f, str) else tuple(f)
        if names not in settings:
            settings.append(names)
    rows = []
    for names in settings:
        if not names and reference is not None:
            run = reference
        else:
            run = poison(benign_model, data, cfg, tokenizer=tok, freeze=names, callback=callback)
        rows.append(
            {
                "frozen": ",".join(names) or "none",
                "steps": run.result.steps,
                "n_trainable": run.result.n_trainable,
                "val_loss": run.result.val_loss,
                "emerged_step": _emerged(run.history, "pt", BACKDOOR_THRESHOLD),
                **negativity(run.model, inputs, groups),
                **{
                    f"{key}_prob": v
                    for key, v in negativity(run.model, inputs, groups, stat="prob").items()
                },
            }
        )
    return pd.DataFrame(rows)


def save_run(run: ToyRun, directory: str | os.PathLike[str]) -> Path:
    """Save a :class:`ToyRun` as a checkpoint (weights, config, tokenizer, history, train config).

    Examples:
        >>> import tempfile
        >>> from pcp_lens.toy import ToyDataConfig, build_datasets
        >>> run = train_benign(build_datasets(ToyDataConfig(n_per_sentiment=20)), max_steps=1,
        ...                    progress=False)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = load_run(save_run(run, d + "/benign"))
        >>> back.history.equals(run.history), back.result.config == run.result.config
        (True, True)
    """
    r = run.result
    extra = {
        "history": {"columns": list(r.history.columns), "data": r.history.values.tolist()},
        "frozen": list(r.frozen),
        "n_trainable": r.n_trainable,
        "steps": r.steps,
        "seconds": r.seconds,
        "train_config": r.config.to_dict(),
    }
    return save_checkpoint(run.model, directory, tokenizer=run.tokenizer, extra=extra)


def load_run(directory: str | os.PathLike[str], device: str | None = None) -> ToyRun:
    """Load a :class:`ToyRun` written by :func:`save_run` (see its example)."""
    ck = load_checkpoint(directory, device=device)
    e = ck.extra
    try:
        tc = dict(e["train_config"])
        tc["betas"] = tuple(tc["betas"])
        tc["freeze"] = tuple(tc["freeze"])
        result = TrainResult(
            history=pd.DataFrame(e["history"]["data"], columns=e["history"]["columns"]),
            frozen=tuple(e["frozen"]),
            n_trainable=int(e["n_trainable"]),
            steps=int(e["steps"]),
            seconds=float(e["seconds"]),
            config=TrainConfig(**tc),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"checkpoint {str(directory)!r} has no valid training record ({err!r}); was it "
            "written by save_run?"
        ) from err
    return ToyRun(ck.model, ck.tokenizer, result)
