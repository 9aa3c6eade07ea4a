"""Fine-tune a ``HookedTransformer`` on text with chosen modules frozen (Tab. XI, METHODS §3.2).

A thin layer over :func:`pcp_lens.training.train` (the one training loop: validated freezing,
AdamW groups, the learning-rate schedule, dropout hooks, gradient accumulation, autocast) that
adds what natural text needs:

* **Tokenization and padding as the paper's HF pipeline.** Every text is tokenized on its own
  (GPT-2 adds no special tokens), truncated to ``max_length`` (default ``n_ctx``; the paper
  padded and truncated to 1,024) and right-padded (:func:`text_batch`). Labels are the inputs,
  except padding and every token equal to the pad id, as
  ``DataCollatorForLanguageModeling(mlm=False)`` does with ``pad_token = eos``: end-of-text
  tokens are never predicted. The loss is the mean over a batch's label tokens (HF's mean over
  non-ignored labels); each batch runs at its own length (trailing padding is dropped).
* **Gradient accumulation.** ``micro_batch_size`` splits each batch of ``config.batch_size``
  sequences into micro-batches whose loss sums are divided by the label tokens of the whole
  batch, so one step equals the full batch's step (up to float rounding), e.g. batch 8 of 1,024
  tokens on a small GPU.
* **GPT-2 checkpoints** (``cfg.original_architecture == "GPT2LMHeadModel"``, e.g. from
  :func:`~pcp_lens.language.hf.load_hf_gpt2`) keep ``unembed.b_U`` fixed: GPT-2's LM head has no
  bias, so the result can still be saved as a GPT-2 folder. Tied embeddings stay tied.
* **Mixed precision** (``amp="bf16"`` or ``"fp16"``, with loss scaling) through
  ``torch.autocast`` on the model's device; the weights and optimizer stay in their dtype.

:data:`PAPER_FINETUNE` is the paper's recipe: lr 1e-5, weight decay 0.01, 3 epochs, batch 8,
linear decay, gradient clipping at 1.0, dropout 0.1 (GPT-2's, through temporary hooks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from pcp_lens import _tl
from pcp_lens._tl import B_U_NAME, HookedTransformer
from pcp_lens.language._checks import check_int, check_strings, is_int, with_overrides
from pcp_lens.language.generate import tokenize_prompts
from pcp_lens.training import TextBatch, TrainConfig, TrainResult, train

__all__ = ["PAPER_FINETUNE", "TextBatch", "finetune_text", "text_batch"]

#: METHODS §3.2 / §10.3: lr 1e-5, wd 0.01, 3 epochs, batch 8 (HF Trainer defaults otherwise).
PAPER_FINETUNE = TrainConfig(
    lr=1e-5, weight_decay=0.01, epochs=3, batch_size=8, dropout=0.1, eval_batch_size=8
)


def text_batch(
    tokenizer: Any, texts: Sequence[str], max_length: int, *, pad_id: int | None = None
) -> TextBatch:
    """Tokenize, truncate and right-pad texts; mark label tokens as HF's LM collator does.

    A token is a label if it is a real (non-padding) token and not equal to the pad id
    (``pad_id``, default the tokenizer's pad or else its eos id, GPT-2's pad = eos convention).

    Examples:
        >>> from pcp_lens.toy import build_tokenizer
        >>> b = text_batch(build_tokenizer(["a", "b"]), ["a b a", "b"], max_length=2)
        >>> b.tokens.tolist(), b.labels.tolist()
        ([[1, 2], [2, 0]], [[True, True], [True, False]])
    """
    check_int(max_length, "max_length", 2)
    if pad_id is not None and not is_int(pad_id):
        raise ValueError(f"pad_id must be None or a token id (int), got {pad_id!r}")
    ids = [p[:max_length] for p in tokenize_prompts(tokenizer, texts, name="texts")]
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = pad_id if pad_id is not None else getattr(tokenizer, "eos_token_id", None)
    width = max(len(p) for p in ids)
    fill = 0 if pad_id is None else pad_id
    tokens = torch.full((len(ids), width), fill, dtype=torch.long)
    labels = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, p in enumerate(ids):
        tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        labels[i, : len(p)] = True
    if pad_id is not None:
        labels &= tokens != pad_id
    return TextBatch(tokens, labels)


def finetune_text(
    model: HookedTransformer,
    texts: Sequence[str] | TextBatch,
    val_texts: Sequence[str] | TextBatch | None = None,
    config: TrainConfig = PAPER_FINETUNE,
    *,
    tokenizer: Any | None = None,
    max_length: int | None = None,
    micro_batch_size: int | None = None,
    amp: Literal["bf16", "fp16"] | None = None,
    callback: Callable[[int, HookedTransformer], Mapping[str, float] | None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Fine-tune ``model`` in place on texts, with ``config.freeze`` kept bit-identical.

    Args:
        model: the model (trained in place; device, dtype, ``requires_grad`` flags and
            train/eval mode are restored).
        texts: training texts, or a :class:`TextBatch` from :func:`text_batch`.
        val_texts: validation texts (loss before training and after each epoch).
        config: hyper-parameters (default :data:`PAPER_FINETUNE`); ``**overrides`` replace
            fields, e.g. ``freeze=("all_embeds", "mlp1", "mlp2")`` for Tab. XI's "Embd + (2, 3)".
        tokenizer: default ``model.tokenizer``.
        max_length: truncate texts to this many tokens (default ``n_ctx``).
        micro_batch_size: sequences per forward/backward pass (gradient accumulation); default
            the whole batch.
        amp: ``"bf16"`` or ``"fp16"`` autocast (``None``: the model's dtype throughout).
        callback: ``callback(step, model) -> {column: value}`` at every history row, e.g. a
            :func:`~pcp_lens.language.asr.logprob_gap` monitor.

    Returns:
        A :class:`~pcp_lens.training.TrainResult`.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> from pcp_lens.toy import build_tokenizer
        >>> m = tiny_model()
        >>> tok = build_tokenizer(["a", "b", "c"])
        >>> w = m.blocks[0].mlp.W_in.detach().clone()
        >>> res = finetune_text(m, ["a b c a b c"] * 8, ["a b c"], tokenizer=tok, lr=1e-2,
        ...                     epochs=1, dropout=0.0, freeze=("mlp0",), progress=False)
        >>> res.steps, torch.equal(m.blocks[0].mlp.W_in, w)
        (1, True)
        >>> bool(res.history.val_loss.iloc[-1] < res.history.val_loss.iloc[0])
        True
    """
    cfg = with_overrides(config, TrainConfig, overrides, "finetune_text")
    tok = tokenizer if tokenizer is not None else model.tokenizer
    limit = check_int(max_length, "max_length", 2, none=True, high=model.cfg.n_ctx)
    limit = model.cfg.n_ctx if limit is None else limit

    def as_batch(x: Sequence[str] | TextBatch, name: str) -> TextBatch:
        if isinstance(x, TextBatch):
            return x
        xs = check_strings(x, name)
        if tok is None:
            raise ValueError(f"{name} are strings: pass tokenizer= or attach one to the model")
        return text_batch(tok, xs, limit)

    tr = as_batch(texts, "texts")
    va = as_batch(val_texts, "val_texts") if val_texts is not None else None
    if tr.n_labels == 0:
        raise ValueError("texts have no label token after the first position of any text")
    # GPT-2's LM head has no bias: TransformerLens's b_U stays what the checkpoint implies
    if (
        getattr(model.cfg, "original_architecture", None) == "GPT2LMHeadModel"
        and B_U_NAME in _tl.named_parameters(model)
        and B_U_NAME not in cfg.freeze
    ):
        cfg = dataclasses.replace(cfg, freeze=(*cfg.freeze, B_U_NAME))
    return train(model, tr, va, cfg, callback=callback, micro_batch_size=micro_batch_size, amp=amp)
