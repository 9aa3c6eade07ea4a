"""Fine-tune a ``HookedTransformer`` on text with chosen modules frozen (Tab. XI, METHODS §3.2).

Reuses :mod:`pcp_lens.training`: its :class:`~pcp_lens.training.TrainConfig` (validated
hyper-parameters and freeze names), its freezing rules (names, never substrings; tied
embeddings freeze together), its AdamW parameter groups and learning-rate schedule, and its
:class:`~pcp_lens.training.TrainResult`. Added for natural text:

* **Tokenization and padding as the paper's HF pipeline.** Every text is tokenized on its own
  (GPT-2 adds no special tokens), truncated to ``max_length`` (default ``n_ctx``; the paper
  padded and truncated to 1,024) and right-padded per batch. Labels are the inputs, except
  padding and every token equal to the pad id, as ``DataCollatorForLanguageModeling(mlm=False)``
  does with ``pad_token = eos``: end-of-text tokens are never predicted. The loss is the mean
  over a batch's label tokens (HF's mean over non-ignored labels).
* **Gradient accumulation.** ``micro_batch_size`` splits each batch of ``config.batch_size``
  sequences into micro-batches whose gradients are summed with weights (label tokens of the
  micro-batch / label tokens of the batch), so one step equals the full batch's step exactly
  (up to float rounding), e.g. batch 8 of 1,024 tokens on a small GPU.
* **GPT-2 checkpoints** (``cfg.original_architecture == "GPT2LMHeadModel"``, e.g. from
  :func:`~pcp_lens.language.hf.load_hf_gpt2`) keep ``unembed.b_U`` fixed: GPT-2's LM head has no
  bias, so the result can still be saved as a GPT-2 folder. Tied embeddings stay tied.
* **Mixed precision** (``amp="bf16"`` or ``"fp16"``, with loss scaling) through
  ``torch.autocast`` on the model's device; the weights and optimizer stay in their dtype.

:data:`PAPER_FINETUNE` is the paper's recipe: lr 1e-5, weight decay 0.01, 3 epochs, batch 8,
linear decay, gradient clipping at 1.0, dropout 0.1 (GPT-2's, through temporary hooks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.checkpoints import check_tied, is_tied
from pcp_lens.language.generate import tokenize_prompts
from pcp_lens.training import (  # the same recipe
    TrainConfig,
    TrainResult,
    _dropout_hooks,
    _lr_factor,
    decay_parameter_names,
    freeze_parameter_names,
)

__all__ = ["PAPER_FINETUNE", "TextBatch", "finetune_text", "text_batch"]

#: METHODS §3.2 / §10.3: lr 1e-5, wd 0.01, 3 epochs, batch 8 (HF Trainer defaults otherwise).
PAPER_FINETUNE = TrainConfig(
    lr=1e-5, weight_decay=0.01, epochs=3, batch_size=8, dropout=0.1, eval_batch_size=8
)


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """Tokenized texts: ``tokens [n, pos]`` right-padded, ``labels [n, pos]`` (bool)."""

    tokens: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]


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
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    ids = [p[:max_length] for p in tokenize_prompts(tokenizer, texts)]
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


def _loss_sum(model: HookedTransformer, tokens: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    # Trim the batch's trailing padding: right padding never affects earlier positions.
    width = int(labels.any(0).nonzero().max()) + 1 if bool(labels.any()) else 2
    tokens, labels = tokens[:, : max(width, 2)], labels[:, : max(width, 2)]
    logits = model(tokens[:, :-1], return_type="logits")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    keep = labels[:, 1:].reshape(-1)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return (ce * keep).sum(), keep.sum()


@torch.no_grad()
def _eval(model: HookedTransformer, data: TextBatch, batch_size: int) -> float:
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(data), batch_size):
        s, n = _loss_sum(model, data.tokens[i : i + batch_size], data.labels[i : i + batch_size])
        total += s.double().cpu()
        count += int(n)
    return float(total / count) if count else math.nan


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
    cfg = dataclasses.replace(config, **overrides) if overrides else config
    tok = tokenizer if tokenizer is not None else model.tokenizer
    limit = model.cfg.n_ctx if max_length is None else max_length
    if limit > model.cfg.n_ctx:
        raise ValueError(f"max_length={limit} exceeds the model's n_ctx={model.cfg.n_ctx}")

    def as_batch(x: Sequence[str] | TextBatch, name: str) -> TextBatch:
        if isinstance(x, TextBatch):
            return x
        if tok is None:
            raise ValueError(f"{name} are strings: pass tokenizer= or attach one to the model")
        if isinstance(x, str) or len(x) == 0:
            raise ValueError(f"{name} must be a non-empty sequence of strings")
        return text_batch(tok, x, limit)

    tr = as_batch(texts, "texts")
    va = as_batch(val_texts, "val_texts") if val_texts is not None else None
    if int(tr.labels[:, 1:].sum()) == 0:
        raise ValueError("texts have no label token after the first position of any text")
    mb = cfg.batch_size if micro_batch_size is None else micro_batch_size
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
        raise ValueError(f"micro_batch_size must be None or an int >= 1, got {micro_batch_size!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    device = torch.device(str(model.cfg.device))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    frozen = freeze_parameter_names(model, cfg.freeze)
    if getattr(model.cfg, "original_architecture", None) == "GPT2LMHeadModel":
        # GPT-2's LM head has no bias; TransformerLens's b_U stays what the checkpoint implies
        frozen += [n for n in ("unembed.b_U",) if n in dict(model.named_parameters())]
        frozen = list(dict.fromkeys(frozen))
    named = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in named.items()}
    tied = is_tied(model)
    if tied:
        check_tied(model)
    trainable = [n for n, p in named.items() if p.requires_grad and n not in frozen]
    w_e, w_u = _tl.W_E_NAME, _tl.W_U_NAME
    tie_grads = tied and w_e in trainable and w_u in trainable
    if tied and (w_e in trainable) != (w_u in trainable):
        raise ValueError("embed.W_E and unembed.W_U are tied but only one of them is trainable")
    stepped = [n for n in trainable if not (tie_grads and n == w_u)]
    if not stepped:
        raise ValueError("nothing to train: every parameter is frozen or has requires_grad=False")
    decay = set(decay_parameter_names(model))
    groups = [
        {"params": [named[n] for n in stepped if n in decay], "weight_decay": cfg.weight_decay},
        {"params": [named[n] for n in stepped if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=False
    )
    n = len(tr)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    drop_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    drop_hooks = _dropout_hooks(model, cfg.dropout, drop_gen)
    rows: list[dict[str, float]] = []
    t0 = time.perf_counter()
    was_training = model.training

    def record(step: int, losses: list[float]) -> None:
        model.eval()
        val = _eval(model, va, cfg.eval_batch_size) if va is not None else math.nan
        more = dict(callback(step, model) or {}) if callback is not None else {}
        model.train()
        rows.append(
            {
                "epoch": step / per_epoch,
                "step": float(step),
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val,
                "lr": cfg.lr * _lr_factor(step, total, cfg),
                "seconds": time.perf_counter() - t0,
                **{str(k): float(v) for k, v in more.items()},
            }
        )

    try:
        for name, p in named.items():
            p.requires_grad_(name in trainable)
        model.train()
        record(0, [])
        step, losses = 0, []
        bar = tqdm(total=total, desc="finetune", disable=not cfg.progress, leave=False)
        while step < total:
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _lr_factor(step, total, cfg)
                opt.zero_grad(set_to_none=True)
                n_labels = int(tr.labels[idx][:, 1:].sum())
                step_loss = 0.0
                for j in range(0, len(idx), mb):
                    sub = idx[j : j + mb]
                    x, y = tr.tokens[sub].to(device), tr.labels[sub].to(device)
                    with (
                        (
                            torch.autocast(device.type, dtype=amp_dtype)
                            if amp_dtype is not None
                            else contextlib.nullcontext()
                        ),
                        _tl.attached(model, drop_hooks),
                    ):
                        s, _ = _loss_sum(model, x, y)
                    part = s / max(n_labels, 1)
                    (scaler.scale(part) if scaler is not None else part).backward()
                    step_loss += float(part.detach())
                if scaler is not None:
                    scaler.unscale_(opt)
                if tie_grads:
                    a, b = named[w_e], named[w_u]
                    if a.grad is not None and b.grad is not None:
                        a.grad += b.grad.T
                    b.grad = None
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_([named[k] for k in stepped], cfg.max_grad_norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if tie_grads:
                    with torch.no_grad():
                        named[w_u].copy_(named[w_e].T)
                step += 1
                losses.append(step_loss)
                bar.update(1)
                if step >= total:
                    break
                if cfg.eval_every is not None and step % cfg.eval_every == 0 and step % per_epoch:
                    record(step, losses)
                    losses = []
            if step % per_epoch == 0 or step >= total:
                record(step, losses)
                losses = []
        bar.close()
    finally:
        for name, p in named.items():
            p.requires_grad_(flags[name])
        model.train(was_training)
        opt.zero_grad(set_to_none=True)
    return TrainResult(
        history=pd.DataFrame(rows),
        frozen=tuple(frozen),
        n_trainable=sum(named[k].numel() for k in stepped),
        steps=total,
        seconds=time.perf_counter() - t0,
        config=cfg,
    )
