"""Train or fine-tune a ``HookedTransformer`` on tokens, with validated freezing.

Checkpoints live in :mod:`pcp_lens.checkpoints` (re-exported here).

The recipe is the Hugging Face ``Trainer``'s that the paper used (METHODS §3): AdamW
(β = (0.9, 0.999), ε = 1e-8), weight decay on every weight except biases and normalisation
parameters, a linear learning-rate decay to 0 (optionally after a linear warm-up), gradient-norm
clipping at 1.0, and a validation loss per epoch that is the mean next-token cross-entropy over
the non-padding label tokens (HF ``eval_loss``). The data order is seeded.

TransformerLens models have **no dropout**; ``TrainConfig(dropout=0.1)`` adds GPT-2's dropout
(embedding sum, attention pattern, attention and MLP outputs) through temporary hooks during the
training steps only. The default is 0: train and eval mode then compute the same function.

**Tied embeddings.** TransformerLens keeps a separate unembedding ``W_U``; GPT-2 (the paper's
models) ties it to the token embedding. A model whose ``cfg.tie_word_embeddings`` is True (see
:func:`tie_embeddings`) is trained as GPT-2 is: ``W_U`` stays ``W_E.T`` (one shared matrix, one
AdamW state, gradients summed), and freezing ``"embed"`` or ``"unembed"`` freezes both, as
freezing ``wte`` does in GPT-2 (METHODS §12.12). ``b_U`` (GPT-2 has none) is an ordinary parameter.

Freezing takes names, never substrings, and every name is validated against the model:

======================  =====================================================================
name                    parameters
======================  =====================================================================
``"mlp1"``              ``blocks.1.mlp.*`` (``W_in``, ``b_in``, ``W_out``, ``b_out``)
``"attn0"``             ``blocks.0.attn.*`` (``W_Q/K/V/O`` and their biases)
``"block2"``            every parameter of block 2 (its LayerNorms included)
``"embed"``             the token embedding ``embed.W_E``
``"pos_embed"``         the positional embedding ``pos_embed.W_pos``
``"unembed"``           the unembedding ``unembed.W_U`` and ``unembed.b_U``
``"ln_final"``          the final LayerNorm
``"all_mlps"``          every MLP; likewise ``"all_attns"`` and ``"all_blocks"``
``"all_embeds"``        ``embed`` + ``pos_embed`` + ``unembed``: what freezing GPT-2's ``wte`` and
                        ``wpe`` freezes (GPT-2 ties ``wte`` to the LM head), also for an
                        untied model
``"blocks.0.ln1.w"``    one parameter, by its exact ``named_parameters()`` name
======================  =====================================================================

Hook names such as ``"blocks.1.hook_mlp_out"`` are accepted for MLP and attention sites (parsed by
:class:`~pcp_lens.sites.Site`). An unknown name, a layer out of range, a site without parameters
(``"resid_pre1"``), an attention head (``"attn1.h2"``) or two names run together (``"mlp1mlp2"``,
the missing-comma bug of METHODS §10.7) raise ``ValueError``.

Examples:
    >>> from pcp_lens.testing import tiny_model
    >>> model = tiny_model(n_layers=2)
    >>> tokens = torch.randint(0, 50, (64, 8), generator=torch.Generator().manual_seed(0))
    >>> res = train(model, tokens, tokens[:16], TrainConfig(lr=1e-2, batch_size=16, progress=False,
    ...                                                     freeze=("mlp0",)))
    >>> res.history[["epoch", "step"]].values.tolist()
    [[0.0, 0.0], [1.0, 4.0]]
    >>> bool(res.history["val_loss"].iloc[1] < res.history["val_loss"].iloc[0])
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.checkpoints import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    check_tied,
    config_from_json,
    config_to_json,
    is_tied,
    load_checkpoint,
    save_checkpoint,
    tie_embeddings,
)
from pcp_lens.checkpoints import CHECKPOINT_VERSION as CHECKPOINT_VERSION  # its former home
from pcp_lens.inputs import TokenBatch, check_batch_size, check_token_dtype
from pcp_lens.sites import Site

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "TextBatch",
    "TrainConfig",
    "TrainResult",
    "config_from_json",
    "config_to_json",
    "decay_parameter_names",
    "evaluate_loss",
    "freeze_parameter_names",
    "is_tied",
    "load_checkpoint",
    "save_checkpoint",
    "tie_embeddings",
    "tokenize_texts",
    "train",
]



@dataclass(frozen=True)
class TextBatch:
    """Right-padded tokens ``[n, pos]`` and the tokens that are predicted, ``labels [n, pos]``.

    :func:`train` and :func:`evaluate_loss` average the next-token loss over the label tokens
    (position 0 never is one). A :class:`~pcp_lens.inputs.TokenBatch`'s mask gives the labels of
    plain token data; text as HF's ``DataCollatorForLanguageModeling`` prepares it also leaves
    out every pad-id token, e.g. GPT-2's end-of-text (:func:`pcp_lens.language.text_batch`).

    Examples:
        >>> b = TextBatch(torch.tensor([[5, 6, 0]]), torch.tensor([[True, True, False]]))
        >>> len(b), b.n_labels
        (1, 1)
    """

    tokens: Int[Tensor, "n pos"]
    labels: Bool[Tensor, "n pos"]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_labels(self) -> int:
        """Label tokens after position 0 (the tokens a loss is averaged over)."""
        return int(self.labels[:, 1:].sum())


TokensLike = Int[Tensor, "batch pos"] | TokenBatch | TextBatch



# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train` (defaults: the HF ``Trainer``'s, except ``lr``/batch).

    Attributes:
        lr: Peak learning rate.
        epochs: Passes over the training data (ignored when ``max_steps`` is set).
        max_steps: Train exactly this many optimizer steps, continuing into further
            (re-shuffled) epochs as needed; the learning-rate schedule spans these steps.
        batch_size: Sequences per optimizer step (the last batch of an epoch may be smaller).
        eval_batch_size: Sequences per forward pass when computing the validation loss.
        weight_decay: AdamW decoupled weight decay on weights (not biases or norm parameters).
        betas: AdamW β₁, β₂.
        eps: AdamW ε.
        max_grad_norm: Clip the global gradient norm to this (``None``: no clipping).
        warmup_steps: Linear warm-up steps before the linear decay.
        schedule: ``"linear"`` (decay to 0 at the last step, as HF) or ``"constant"``.
        dropout: GPT-2-style dropout probability during training steps only (embedding sum,
            attention pattern, attention and MLP outputs, as HF's ``embd_pdrop``, ``attn_pdrop``,
            ``resid_pdrop``), applied through temporary hooks with a seeded generator.
            TransformerLens models have no dropout of their own; 0 (default) trains without.
        eval_every: Also record a history row every this many steps (not only per epoch).
        seed: Seed of the data order (model initialisation is seeded by the model's config).
        freeze: Names of parameters to keep fixed (see the module docstring); validated.
        progress: Show a tqdm bar.

    Examples:
        >>> TrainConfig(lr=1e-3, freeze=("mlp0",)).freeze
        ('mlp0',)
        >>> TrainConfig(batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: TrainConfig.batch_size must be an int >= 1, got 0
    """

    lr: float = 1e-3
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 256
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    schedule: Literal["linear", "constant"] = "linear"
    dropout: float = 0.0
    eval_every: int | None = None
    seed: int = 0
    freeze: tuple[str, ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        def is_int(x: object) -> bool:
            return isinstance(x, int | np.integer) and not isinstance(x, bool)

        def is_real(x: object) -> bool:
            return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)

        if not is_real(self.lr) or not self.lr > 0 or not math.isfinite(self.lr):
            raise bad("lr", "a finite float > 0")
        if not is_int(self.epochs) or self.epochs < 1:
            raise bad("epochs", "an int >= 1")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            raise bad("max_steps", "None or an int >= 1")
        for name in ("batch_size", "eval_batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an int >= 1")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a float >= 0")
        if len(self.betas) != 2 or not all(is_real(b) and 0 <= b < 1 for b in self.betas):
            raise bad("betas", "two floats in [0, 1)")
        if not is_real(self.eps) or not self.eps > 0:
            raise bad("eps", "a float > 0")
        if self.max_grad_norm is not None and (
            not is_real(self.max_grad_norm) or not self.max_grad_norm > 0
        ):
            raise bad("max_grad_norm", "None or a float > 0")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an int >= 0")
        if self.schedule not in ("linear", "constant"):
            raise bad("schedule", "'linear' or 'constant'")
        if not is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a probability in [0, 1)")
        if self.eval_every is not None and (not is_int(self.eval_every) or self.eval_every < 1):
            raise bad("eval_every", "None or an int >= 1")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        # A bare string is one name, never a sequence of characters.
        freeze = (self.freeze,) if isinstance(self.freeze, str) else tuple(self.freeze)
        for f in freeze:
            if not isinstance(f, str):
                raise ValueError(f"TrainConfig.freeze must hold strings, got {f!r}")
        object.__setattr__(self, "freeze", freeze)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (e.g. for a checkpoint's ``extra``).

        Examples:
            >>> TrainConfig().to_dict()["weight_decay"]
            0.01
        """
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["freeze"] = list(self.freeze)
        return d


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: One row per evaluation: ``epoch`` (float; 0 = before training), ``step``,
            ``train_loss`` (mean of the step losses since the previous row, NaN at epoch 0),
            ``val_loss`` (NaN without validation data), ``lr`` (after the row's last step) and
            ``seconds`` (wall time since the start, evaluation included).
        frozen: Names of the parameters kept fixed.
        n_trainable: Number of trained scalar parameters.
        steps: Optimizer steps taken.
        seconds: Total wall time.
        config: The configuration used.
    """

    history: pd.DataFrame
    frozen: tuple[str, ...]
    n_trainable: int
    steps: int
    seconds: float
    config: TrainConfig = field(repr=False)

    @property
    def val_loss(self) -> float:
        """The last validation loss (NaN without validation data)."""
        return float(self.history["val_loss"].iloc[-1])


# -- freezing --------------------------------------------------------------------------------
_GLOBAL = _tl.GLOBAL_PARAM_PREFIXES
_ALIASES = {
    "all_mlps": "mlp",
    "all_attns": "attn",
    "all_blocks": "block",
    "all_embeds": "embeds",
}
_FREEZE_FORMS = (
    "'mlp<L>', 'attn<L>', 'block<L>', 'embed', 'pos_embed', 'unembed', 'ln_final', 'all_mlps', "
    "'all_attns', 'all_blocks', 'all_embeds', a hook name like 'blocks.0.hook_mlp_out', or an "
    "exact TransformerLens parameter name like 'blocks.0.attn.W_Q'"
)


def _under(names: Iterable[str], prefixes: Sequence[str]) -> list[str]:
    return [n for n in names if n.startswith(tuple(prefixes))]


def _split_hint(spec: str, model: HookedTransformer, params: Sequence[str]) -> str:
    # "mlp1mlp2" or "embedpos_embed": two valid names run together (a missing comma)
    for i in range(1, len(spec)):
        a, b = spec[:i], spec[i:]
        try:
            _resolve_one(a, model, params)
            _resolve_one(b, model, params)
        except ValueError:
            continue
        return f" — did you mean two names, {a!r} and {b!r} (a missing comma)?"
    return ""


def _resolve_one(spec: str, model: HookedTransformer, params: Sequence[str]) -> list[str]:
    out = _resolve_raw(spec, model, params)
    if is_tied(model) and ({_W_E, _W_U} & set(out)):
        out = [*out, *(n for n in (_W_E, _W_U) if n not in out)]  # one shared matrix
    return out


def _resolve_raw(spec: str, model: HookedTransformer, params: Sequence[str]) -> list[str]:
    n_layers = model.cfg.n_layers
    if spec in params:
        return [spec]
    if spec in _GLOBAL:
        out = _under(params, _GLOBAL[spec])
        if not out:
            raise ValueError(f"freeze name {spec!r}: this model has no such parameters")
        return out
    if spec in _ALIASES:
        kind = _ALIASES[spec]
        if kind == "embeds":
            parts = ("embed", "pos_embed", "unembed")
            return [n for g in parts for n in _under(params, _GLOBAL[g])]
        if kind == "block":
            return _under(params, [_tl.param_prefix(i) for i in range(n_layers)])
        out = _under(params, [_tl.param_prefix(i, kind) for i in range(n_layers)])
        if not out:
            raise ValueError(f"freeze name {spec!r}: this model has no {kind} parameters")
        return out
    if spec.startswith("block") and spec[5:].isdigit() and str(int(spec[5:])) == spec[5:]:
        layer = int(spec[5:])
        if layer >= n_layers:
            raise ValueError(
                f"freeze name {spec!r}: layer out of range: {layer}, model has layers "
                f"0..{n_layers - 1}"
            )
        return _under(params, [_tl.param_prefix(layer)])
    site = Site.parse(spec)  # ValueError for anything unparseable
    if site.kind not in ("attn", "mlp"):
        raise ValueError(
            f"freeze name {spec!r} names the site {site.name!r}, which has no parameters; "
            "freeze 'mlp<L>', 'attn<L>', 'block<L>' or an embedding instead"
        )
    if site.head is not None:
        raise ValueError(
            f"freeze name {spec!r}: single attention heads cannot be frozen (their weights are "
            f"slices of shared tensors); freeze the whole layer, 'attn{site.layer}'"
        )
    site.validate(model)
    assert site.layer is not None  # attn and mlp sites always have one
    out = _under(params, [_tl.param_prefix(site.layer, site.kind)])
    if not out:
        raise ValueError(f"freeze name {spec!r}: this model has no parameters under {site.name!r}")
    return out


_W_E, _W_U = _tl.W_E_NAME, _tl.W_U_NAME
_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "lr", "seconds")


def freeze_parameter_names(model: HookedTransformer, freeze: str | Iterable[str]) -> list[str]:
    """Resolve and validate freeze names to the model's parameter names.

    Args:
        model: The model whose parameters are meant.
        freeze: One name or several (see the module docstring for the forms).

    Returns:
        The matching parameter names, in ``named_parameters()`` order, without duplicates.

    Raises:
        ValueError: A name is unknown, malformed, out of range, or names no parameters.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> freeze_parameter_names(tiny_model(n_layers=2), ["mlp1", "pos_embed"])[:3]
        ['pos_embed.W_pos', 'blocks.1.mlp.W_in', 'blocks.1.mlp.b_in']
        >>> freeze_parameter_names(tiny_model(n_layers=2), ["mlp1" "mlp0"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown freeze name 'mlp1mlp0' — did you mean two names, 'mlp1' and 'mlp0' ...
    """
    names = [freeze] if isinstance(freeze, str) else list(freeze)
    params = list(_tl.named_parameters(model))
    chosen: set[str] = set()
    for spec in names:
        if not isinstance(spec, str):
            raise ValueError(f"freeze names must be strings, got {spec!r}")
        s = spec.strip()
        if not s:
            raise ValueError("freeze names must be non-empty strings, got ''")
        try:
            chosen.update(_resolve_one(s, model, params))
        except ValueError as e:
            if "cannot parse site" not in str(e):
                raise
            raise ValueError(
                f"unknown freeze name {spec!r}{_split_hint(s, model, params)}; allowed: "
                f"{_FREEZE_FORMS}"
            ) from None
    return [n for n in params if n in chosen]


def decay_parameter_names(model: HookedTransformer) -> list[str]:
    """Names of the parameters that get weight decay: all but biases and normalisation weights.

    As the HF ``Trainer``: a parameter is exempt if its own name starts with ``b`` (``b_in``,
    ``b_U``, a LayerNorm's ``b``) or its module is a LayerNorm/RMSNorm (TransformerLens names
    them ``ln1``, ``ln2``, ``ln_final``, ``mlp.ln``). Embeddings are decayed.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> names = decay_parameter_names(tiny_model(n_layers=1))
        >>> "embed.W_E" in names, "blocks.0.ln1.w" in names, "blocks.0.mlp.b_in" in names
        (True, False, False)
    """
    out = []
    for name in _tl.named_parameters(model):
        parts = name.split(".")
        module = parts[-2] if len(parts) > 1 else ""
        if not module.startswith("ln") and not parts[-1].startswith("b"):
            out.append(name)
    return out


# -- data ------------------------------------------------------------------------------------
def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int | None = None,
    add_special_tokens: bool | None = None,
) -> TokenBatch:
    """Tokenize texts (with the tokenizer's special tokens, e.g. a prepended bos), right-padded.

    The mask comes from the tokenizer's ``attention_mask`` (a bos that doubles as the pad token
    still counts as real).

    Args:
        tokenizer: A Hugging Face tokenizer with a pad token, or a ``HookedTransformer`` with
            one: then ``max_length`` defaults to its ``n_ctx`` and ``add_special_tokens`` to its
            ``cfg.default_prepend_bos``, i.e. the tokens the model is trained and read on.
        texts: The texts.
        max_length: Refuse (``ValueError``) any text longer than this many tokens instead of
            truncating it silently; usually the model's ``n_ctx``.
        add_special_tokens: Passed to the tokenizer (default True); ``False`` leaves out the bos
            that the toy tokenizer prepends.

    Examples:
        >>> from pcp_lens.toy import build_tokenizer
        >>> tb = tokenize_texts(build_tokenizer(["a", "b"]), ["a b", "b"])
        >>> tb.tokens.tolist(), tb.mask.tolist()
        ([[0, 1, 2], [0, 2, 0]], [[True, True, True], [True, True, False]])
    """
    if _tl.is_model(tokenizer):
        model = cast(HookedTransformer, tokenizer)
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer; pass one")
        tokenizer = model.tokenizer
        max_length = model.cfg.n_ctx if max_length is None else max_length
        if add_special_tokens is None:
            add_special_tokens = bool(model.cfg.default_prepend_bos)
    add_special_tokens = True if add_special_tokens is None else add_special_tokens
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("texts is empty")
    enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=add_special_tokens)
    tokens, mask = enc["input_ids"].long(), enc["attention_mask"].bool()
    if max_length is not None and tokens.shape[1] > max_length:
        longest = int(mask.sum(1).argmax())
        raise ValueError(
            f"text {longest} has {int(mask[longest].sum())} tokens, more than max_length="
            f"{max_length}: {texts[longest][:80]!r}"
        )
    return TokenBatch(tokens, mask)


def _as_batch(x: TokensLike, model: HookedTransformer, name: str) -> TextBatch:
    """Validated ``(tokens, labels)`` of any training-data form (left where they are)."""
    right_padded = True
    if isinstance(x, TextBatch):
        tokens, labels, right_padded = x.tokens, x.labels, False
        if not isinstance(labels, Tensor) or labels.dtype != torch.bool:
            raise ValueError(
                f"{name}.labels must be a bool tensor [batch, pos], got {type(labels).__name__} "
                f"{getattr(labels, 'dtype', '')}"
            )
    elif isinstance(x, TokenBatch):
        tokens, labels = x.tokens, x.mask
    elif isinstance(x, Tensor):
        tokens = x[None] if x.dim() == 1 else x
        labels = torch.ones_like(tokens, dtype=torch.bool)
    else:
        raise ValueError(
            f"{name} must be a [batch, pos] token tensor, a TokenBatch or a TextBatch, got "
            f"{type(x).__name__}"
        )
    check_token_dtype(tokens, name)
    if tokens.dim() != 2 or tokens.shape != labels.shape:
        raise ValueError(
            f"{name} must be an integer tensor [batch, pos] with a mask of the same shape, got "
            f"{tokens.dtype} {tuple(tokens.shape)}"
        )
    if tokens.shape[0] < 1 or tokens.shape[1] < 2:
        raise ValueError(
            f"{name} needs at least one sequence of >= 2 tokens, got {tuple(tokens.shape)}"
        )
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(
            f"{name} have {tokens.shape[1]} positions, more than the model's "
            f"n_ctx={model.cfg.n_ctx}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab):
        raise ValueError(f"{name} contain token ids outside 0..{model.cfg.d_vocab - 1}")
    m = labels.bool()
    # right padding only: once a row's mask is False it stays False
    if right_padded and (m[:, 1:] & ~m[:, :-1]).any():
        raise ValueError(
            f"{name} must be right-padded (each mask row True then False); left padding would "
            "shift positions"
        )
    return TextBatch(tokens.long(), m)


def _dropout_hooks(
    model: HookedTransformer, p: float, generator: torch.Generator
) -> list[tuple[str, Any]]:
    """Forward hooks that apply dropout where HF GPT-2 does (inverted dropout, seeded)."""
    if p <= 0:
        return []

    def drop(x: Tensor, hook: Any) -> Tensor:
        keep = torch.empty(x.shape, dtype=x.dtype, device=x.device).bernoulli_(
            1.0 - p, generator=generator
        )
        return x * keep / (1.0 - p)

    names = [_tl.block_input_name(0)]
    for layer in range(model.cfg.n_layers):
        names += [_tl.hook_name(kind, layer) for kind in ("pattern", "attn", "mlp")]
    return [(n, drop) for n in names if n in model.hook_dict]


def _token_losses(
    model: HookedTransformer, tokens: Int[Tensor, "b p"], labels: Bool[Tensor, "b p"]
) -> tuple[Tensor, Tensor]:
    """Sum of next-token cross-entropies over the label tokens, and their count.

    Columns after the last label are dropped first: with right padding they change no earlier
    position, and a batch of short texts then runs at its own length.
    """
    targets = labels[:, 1:].any(0)
    width = int(targets.nonzero().max()) + 2 if bool(targets.any()) else 2
    if width < tokens.shape[1]:
        tokens, labels = tokens[:, :width], labels[:, :width]
    logits = model(tokens[:, :-1], return_type="logits")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    keep = labels[:, 1:].reshape(-1)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return (ce * keep).sum(), keep.sum()


@torch.no_grad()
def evaluate_loss(model: HookedTransformer, data: TokensLike, batch_size: int = 256) -> float:
    """Mean next-token cross-entropy (nats) over all label tokens (non-padding, by default).

    This is HF ``Trainer.evaluate()``'s ``eval_loss`` when every sequence has the same number of
    tokens (the toy data); with ragged sequences HF averages per-batch means, this averages tokens.
    Position 0 is never a label; a :class:`TextBatch` names the labels itself.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model()
        >>> x = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(0))
        >>> expected = float(m(x, return_type="loss").detach())
        >>> abs(evaluate_loss(m, x) - expected) < 1e-5
        True
    """
    batch = _as_batch(data, model, "data")
    check_batch_size(batch_size)
    device = torch.device(str(model.cfg.device))
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for i in range(0, len(batch), batch_size):
        sl = slice(i, i + batch_size)
        s, n = _token_losses(model, batch.tokens[sl].to(device), batch.labels[sl].to(device))
        total += s.double().cpu()
        count += int(n)
    if count == 0:
        raise ValueError("data has no label tokens (every position after the first is padding)")
    return float(total / count)


# -- training --------------------------------------------------------------------------------
def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    # HF get_linear_schedule_with_warmup; `step` is the number of steps already taken.
    if step < cfg.warmup_steps:
        return step / max(1, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))


def train(
    model: HookedTransformer,
    train_data: TokensLike,
    val_data: TokensLike | None = None,
    config: TrainConfig | None = None,
    *,
    callback: Callable[[int, HookedTransformer], Mapping[str, float] | None] | None = None,
    micro_batch_size: int | None = None,
    amp: Literal["bf16", "fp16"] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` in place with AdamW on next-token prediction; return the history.

    Args:
        model: The model to train (its parameters change in place; device and dtype are kept).
        train_data: ``[n, pos]`` tokens, a :class:`~pcp_lens.inputs.TokenBatch` whose mask
            marks right padding (padding is never a label), or a :class:`TextBatch` that names
            the label tokens itself (e.g. text with pad-id tokens left out, as HF's collator).
            The data stays where it is; each micro-batch is moved to the model's device.
        val_data: Optional validation data of the same forms; evaluated before training and
            after each epoch (and after the last step when ``max_steps`` ends mid-epoch).
        config: Hyper-parameters; defaults to ``TrainConfig()``.
        callback: Called as ``callback(step, model)`` (model in eval mode, no gradients needed)
            at every history row; the numbers it returns become extra history columns, e.g. a
            backdoor metric monitored during fine-tuning.
        micro_batch_size: Sequences per forward/backward pass (gradient accumulation; default
            the whole batch). Each micro-batch's loss sum is divided by the label tokens of the
            whole batch, so a step equals the full batch's step up to float rounding, e.g. batch
            8 of 1,024 tokens on a small GPU.
        amp: ``"bf16"`` or ``"fp16"`` autocast of the forward pass on the model's device (fp16
            with loss scaling); the weights and AdamW's state stay in their dtype. ``None``: the
            model's dtype throughout.
        **overrides: Fields of ``config`` to replace, e.g. ``lr=3e-3``.

    Returns:
        A :class:`TrainResult` with the per-epoch history.

    Raises:
        ValueError: Bad data, a bad freeze name, or nothing left to train.

    The parameters named in ``config.freeze`` and those with ``requires_grad=False`` are left out
    of the optimizer, so they stay bit-identical (weight decay never touches them). The model's
    ``requires_grad`` flags and train/eval mode are restored afterwards.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> x = torch.randint(0, 50, (32, 6), generator=torch.Generator().manual_seed(0))
        >>> train(m, x, max_steps=3, batch_size=8, progress=False).steps
        3
        >>> train(m, x, max_steps=1, batch_size=8, micro_batch_size=2, progress=False).steps
        1
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    tr = _as_batch(train_data, model, "train_data")
    va = _as_batch(val_data, model, "val_data") if val_data is not None else None
    if micro_batch_size is not None and (
        isinstance(micro_batch_size, bool)
        or not isinstance(micro_batch_size, int)
        or micro_batch_size < 1
    ):
        raise ValueError(f"micro_batch_size must be None or an int >= 1, got {micro_batch_size!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    mb = cfg.batch_size if micro_batch_size is None else micro_batch_size
    frozen = freeze_parameter_names(model, cfg.freeze)
    # the optimizer steps the real parameters; on the bridge a TransformerLens name is a view
    named = _tl.parameter_leaves(model)
    views = _tl.named_parameters(model)
    flags = {n: p.requires_grad for n, p in named.items()}
    tied = is_tied(model)
    if tied:
        check_tied(model)
    trainable = [n for n, p in named.items() if p.requires_grad and n not in frozen]
    # a tied W_U is no parameter of its own: it receives W_E's update (GPT-2's shared matrix)
    tie_grads = tied and _W_E in trainable and _W_U in trainable and named[_W_E] is not named[_W_U]
    if tied and (_W_E in trainable) != (_W_U in trainable):
        raise ValueError(
            "embed.W_E and unembed.W_U are tied but only one of them has requires_grad=True"
        )
    stepped, seen = [], set()
    for n in trainable:  # one entry per real parameter (names can share one)
        if not (tie_grads and n == _W_U) and id(named[n]) not in seen:
            stepped.append(n)
            seen.add(id(named[n]))
    if not stepped:
        raise ValueError("nothing to train: every parameter is frozen or has requires_grad=False")
    decay = set(decay_parameter_names(model))
    groups = [
        {"params": [named[n] for n in stepped if n in decay], "weight_decay": cfg.weight_decay},
        {"params": [named[n] for n in stepped if n not in decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=False)

    n = len(tr)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(str(model.cfg.device))
    drop_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    drop_hooks = _dropout_hooks(model, cfg.dropout, drop_gen)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    rows: list[dict[str, float]] = []
    t0 = time.perf_counter()
    was_training = model.training

    def record(step: int, losses: list[float]) -> None:
        model.eval()
        val = evaluate_loss(model, va, cfg.eval_batch_size) if va is not None else math.nan
        more = dict(callback(step, model) or {}) if callback is not None else {}
        model.train()
        clash = sorted(set(more) & set(_COLUMNS))
        if clash:
            raise ValueError(f"callback returned reserved history columns: {clash}")
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

    def batch_loss(idx: Tensor) -> float:
        """Forward and backward of one batch in micro-batches; its mean loss per label."""
        n_labels = max(int(tr.labels[idx][:, 1:].sum()), 1)
        loss = 0.0
        for j in range(0, len(idx), mb):
            sub = idx[j : j + mb]
            x, y = tr.tokens[sub].to(device), tr.labels[sub].to(device)
            cast = (
                torch.autocast(device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else contextlib.nullcontext()
            )
            with cast, _tl.attached(model, drop_hooks):
                s, _ = _token_losses(model, x, y)
            part = s / n_labels
            (scaler.scale(part) if scaler is not None else part).backward()
            loss += float(part.detach())
        return loss

    try:
        for name, p in named.items():
            p.requires_grad_(name in trainable)
        model.train()
        record(0, [])
        step, losses = 0, []
        bar = tqdm(total=total, desc="train", disable=not cfg.progress, leave=False)
        while step < total:
            order = torch.randperm(n, generator=gen).to(tr.tokens.device)
            for i in range(0, n, cfg.batch_size):
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _lr_factor(step, total, cfg)
                opt.zero_grad(set_to_none=True)
                loss = batch_loss(order[i : i + cfg.batch_size])
                if tie_grads:  # before unscaling: W_U is not in the optimizer
                    w_e, w_u = named[_W_E], named[_W_U]
                    if w_u.grad is not None:
                        g_u = _tl.grad_of(w_u, views[_W_U])
                        _tl.add_to_grad(w_e, views[_W_E], g_u.T)
                    w_u.grad = None
                if scaler is not None:
                    scaler.unscale_(opt)
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_([named[n] for n in stepped], cfg.max_grad_norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if tie_grads:
                    with torch.no_grad():
                        views[_W_U].copy_(views[_W_E].T)
                step += 1
                losses.append(loss)
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                if step >= total:
                    break
                # every eval_every steps; epoch ends are recorded below
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
    history = pd.DataFrame(rows)
    return TrainResult(
        history=history,
        frozen=tuple(frozen),
        n_trainable=sum(named[n].numel() for n in stepped),
        steps=total,
        seconds=time.perf_counter() - t0,
        config=cfg,
    )
