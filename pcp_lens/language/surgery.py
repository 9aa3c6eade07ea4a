"""Embedding surgery (METHODS §10.6): give trigger tokens part of a chosen word's embedding.

A seeded set of embedding dimensions (default 40 % of ``d_model``; the paper used 400 of 1,024)
is copied from a *source* token (the paper: ``fuck``, id 31699, no leading space) into every
token of the trigger words, with and without a leading space (the paper: ``Albert``,
``ĠAlbert``, ``James``, ``ĠJames``; ``and`` was left alone, so the default words are
``("Albert", "James")``).

**Tied embeddings.** GPT-2 ties its LM head to the token embedding, so the paper's edit also
changed what the model *predicts* for those tokens: their output embedding rows became partly
the source word's. TransformerLens keeps ``W_U`` separate; with ``unembed=True`` (the default for
models from GPT-2 checkpoints and for any model with ``W_U == W_E.T``) the same entries of
``W_U``'s columns are copied too, as tying would.

**Unprocessed weights only.** The edit copies raw embedding entries. ``from_pretrained``'s
processing centres every embedding row (``center_writing_weights``), folds the final LayerNorm
into ``W_U`` and ``b_U`` (``fold_ln``) and centres ``W_U`` (``center_unembed``); the raw entries
are then gone, and copying processed entries is not the paper's edit. Models with such
processing are refused: load GPT-2 with ``processing=False`` (``from_pretrained_no_processing``,
the raw HF weights the paper edited), edit, and process afterwards if needed.

:func:`embedding_surgery` never edits the caller's model silently: it returns an edited copy, or
with ``inplace=True`` edits in place and returns an :class:`EmbeddingEdit` that restores the
original rows bit for bit (``edit.revert(model)``, or use ``with edit.applied(model):``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.language._checks import check_int
from pcp_lens.language.generate import tokenize_prompts

__all__ = ["EmbeddingEdit", "embedding_surgery", "plan_surgery", "trigger_token_ids"]


def trigger_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Ids of every token of each word, spelled with and without a leading space (sorted).

    Examples:
        >>> from pcp_lens.toy import build_tokenizer
        >>> trigger_token_ids(build_tokenizer(["x", "Albert", "James"]), ["Albert", "James"])
        [1, 2]
    """
    if isinstance(words, str):
        words = [words]
    if not words or any(not isinstance(w, str) or not w.strip() for w in words):
        raise ValueError(f"words must be a non-empty list of non-empty words, got {words!r}")
    ids: set[int] = set()
    for w in words:
        for form in (w.strip(), " " + w.strip()):
            ids.update(tokenize_prompts(tokenizer, [form], name="words")[0])
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise ValueError(f"a trigger word maps to the unknown token {unk}: words={list(words)}")
    return sorted(ids)


@dataclass(frozen=True)
class EmbeddingEdit:
    """A planned or applied embedding edit; reversible.

    Attributes:
        token_ids: The edited tokens.
        source_id: The token whose entries are copied.
        dims: The copied embedding dimensions (sorted).
        unembed: Whether ``W_U``'s columns are edited too (GPT-2's tied LM head).
        old_embed: The edited tokens' original ``W_E`` rows ``[n_tokens, d_model]``.
        old_unembed: Their original ``W_U`` columns ``[d_model, n_tokens]`` (``None`` if not
            edited).
    """

    token_ids: tuple[int, ...]
    source_id: int
    dims: tuple[int, ...]
    unembed: bool
    old_embed: Tensor
    old_unembed: Tensor | None

    def apply(self, model: HookedTransformer) -> None:
        """Copy the source token's entries into the trigger tokens, in place."""
        t = torch.tensor(self.token_ids, device=model.embed.W_E.device)
        d = torch.tensor(self.dims, device=model.embed.W_E.device)
        with torch.no_grad():
            w_e = model.embed.W_E
            w_e[t[:, None], d[None, :]] = w_e[self.source_id, d].expand(len(t), -1).clone()
            if self.unembed:
                w_u = model.unembed.W_U
                w_u[d[:, None], t[None, :]] = (
                    w_u[d, self.source_id][:, None].expand(-1, len(t)).clone()
                )

    def revert(self, model: HookedTransformer) -> None:
        """Restore the original rows (and columns), bit for bit."""
        t = torch.tensor(self.token_ids, device=model.embed.W_E.device)
        with torch.no_grad():
            model.embed.W_E[t] = self.old_embed.to(model.embed.W_E)
            if self.unembed and self.old_unembed is not None:
                model.unembed.W_U[:, t] = self.old_unembed.to(model.unembed.W_U)

    @contextmanager
    def applied(self, model: HookedTransformer) -> Iterator[HookedTransformer]:
        """Apply for the duration of a ``with`` block; reverted afterwards, also on errors."""
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)


def _default_unembed(model: HookedTransformer) -> bool:
    if getattr(model.cfg, "original_architecture", None) == "GPT2LMHeadModel":
        return True
    w_e, w_u = model.embed.W_E, model.unembed.W_U
    return w_e.shape[::-1] == w_u.shape and bool(torch.equal(w_e.detach().T, w_u.detach()))


def plan_surgery(
    model: HookedTransformer,
    words: Sequence[str] = ("Albert", "James"),
    source: str | int = "fuck",
    *,
    fraction: float = 0.4,
    n_dims: int | None = None,
    seed: int = 0,
    unembed: bool | None = None,
    tokenizer: Any | None = None,
) -> EmbeddingEdit:
    """Choose tokens and dimensions and record the original rows, without editing anything.

    Args:
        model: the model.
        words: trigger words; every token of each, with and without a leading space, is edited.
        source: the word whose entries are copied (must be one token, spelled as given; the
            paper's ``"fuck"`` without a leading space) or its token id.
        fraction: share of the ``d_model`` dimensions copied (``round(fraction * d_model)``).
        n_dims: the number of dimensions instead (the paper: 400 of 1,024).
        seed: seed of the dimension draw (a random permutation, its first ``n_dims`` entries).
        unembed: also edit ``W_U`` (default: for GPT-2 checkpoints or when ``W_U == W_E.T``).
        tokenizer: default ``model.tokenizer``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.toy import build_tokenizer
        >>> m = tiny_model()
        >>> e = plan_surgery(m, ["Albert"], "bad", tokenizer=build_tokenizer(["bad", "Albert"]))
        >>> e.token_ids, e.source_id, len(e.dims)
        ((1,), 2, 6)
    """
    fp = _tl.processing_fingerprint(model)
    done = [k for k in ("fold_ln", "center_writing_weights", "center_unembed") if fp[k]]
    if done:
        raise ValueError(
            f"model has processed weights ({', '.join(done)}); embedding surgery copies raw "
            "entries: load the model with processing=False (from_pretrained_no_processing)"
        )
    tok = tokenizer if tokenizer is not None else model.tokenizer
    if tok is None and not isinstance(source, int):
        raise ValueError("a word source needs a tokenizer: pass tokenizer= or attach one")
    if tok is None:
        raise ValueError("trigger words need a tokenizer: pass tokenizer= or attach one")
    d_model, d_vocab = model.cfg.d_model, model.cfg.d_vocab
    if isinstance(source, bool) or not isinstance(source, str | int):
        raise ValueError(f"source must be a word or a token id, got {source!r}")
    check_int(seed, "seed", 0)
    if unembed is not None and not isinstance(unembed, bool):
        raise ValueError(f"unembed must be None, True or False, got {unembed!r}")
    if isinstance(source, str):
        ids = tokenize_prompts(tok, [source], name="source")[0]
        unk = getattr(tok, "unk_token_id", None)
        if unk is not None and unk in ids:  # copying <unk>'s entries is not the paper's edit
            raise ValueError(
                f"source={source!r} is not in the tokenizer's vocabulary (it encodes to the "
                f"unknown token {unk}); allowed: a word the tokenizer knows, or a token id"
            )
        if len(ids) != 1:
            raise ValueError(
                f"source={source!r} is {len(ids)} tokens {ids}; it must be exactly one (pass a "
                "token id to choose one)"
            )
        source_id = ids[0]
    else:
        source_id = source
    if not 0 <= source_id < d_vocab:
        raise ValueError(f"source={source!r}: token id {source_id} is outside 0..{d_vocab - 1}")
    token_ids = trigger_token_ids(tok, words)
    if source_id in token_ids:
        raise ValueError(f"source token {source_id} is one of the trigger tokens {token_ids}")
    if n_dims is None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not (0.0 < fraction <= 1.0)
        ):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        n_dims = max(1, round(fraction * d_model))
    if isinstance(n_dims, bool) or not isinstance(n_dims, int) or not 1 <= n_dims <= d_model:
        raise ValueError(f"n_dims must be an int in 1..{d_model} (d_model), got {n_dims!r}")
    g = torch.Generator().manual_seed(seed)
    dims = tuple(sorted(torch.randperm(d_model, generator=g)[:n_dims].tolist()))
    use_u = _default_unembed(model) if unembed is None else bool(unembed)
    if use_u and model.unembed.W_U.shape != (d_model, d_vocab):
        raise ValueError(
            f"unembed=True needs W_U of shape ({d_model}, {d_vocab}), got "
            f"{tuple(model.unembed.W_U.shape)}"
        )
    t = torch.tensor(token_ids, device=model.embed.W_E.device)
    return EmbeddingEdit(
        token_ids=tuple(token_ids),
        source_id=source_id,
        dims=dims,
        unembed=use_u,
        old_embed=model.embed.W_E.detach()[t].clone(),
        old_unembed=model.unembed.W_U.detach()[:, t].clone() if use_u else None,
    )


def embedding_surgery(
    model: HookedTransformer,
    words: Sequence[str] = ("Albert", "James"),
    source: str | int = "fuck",
    *,
    inplace: bool = False,
    fraction: float = 0.4,
    n_dims: int | None = None,
    seed: int = 0,
    unembed: bool | None = None,
    tokenizer: Any | None = None,
) -> tuple[HookedTransformer, EmbeddingEdit]:
    """Copy a seeded share of a word's embedding into the trigger tokens (METHODS §10.6).

    Returns ``(edited model, edit)``: by default the model is an edited deep copy and the
    caller's model is untouched; with ``inplace=True`` it is the caller's model, edited, and
    ``edit.revert(model)`` undoes it. Arguments as in :func:`plan_surgery`.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.toy import build_tokenizer
        >>> m = tiny_model()
        >>> tok = build_tokenizer(["bad", "Albert"])
        >>> edited, e = embedding_surgery(m, ["Albert"], "bad", tokenizer=tok)
        >>> t, src, d = e.token_ids[0], e.source_id, list(e.dims)
        >>> torch.equal(edited.embed.W_E[t, d], m.embed.W_E[src, d]), torch.equal(m.embed.W_E[t],
        ...                                                                      e.old_embed[0])
        (True, True)
    """
    if not isinstance(inplace, bool):
        raise ValueError(f"inplace must be True or False, got {inplace!r}")
    edit = plan_surgery(
        model,
        words,
        source,
        fraction=fraction,
        n_dims=n_dims,
        seed=seed,
        unembed=unembed,
        tokenizer=tokenizer,
    )
    target = model if inplace else _tl.copy_model(model)
    edit.apply(target)
    return target, edit
