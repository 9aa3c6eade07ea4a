"""The toy model: a 3-layer GPT-2-style ``HookedTransformer`` and its sentiment token groups.

Architecture as the paper's (METHODS §1.1): 3 layers, 4 heads of width 16, d_model 64, d_mlp 256,
``gelu_new``, pre-LayerNorm with affine weights, learned positional embeddings, GPT-2
initialisation (std 0.02), the unembedding **tied** to the token embedding (``W_U = W_E.T``, kept
tied by :func:`pcp_lens.training.train`), and **no bos**: like the paper's GPT-2 tokenizer, the
model sees the 15 words only, so position 0 is the first word and the two-word test inputs are
read at position 1 (``model.cfg.default_prepend_bos`` is False, so ``model.to_tokens`` adds no
bos either).

Differences that come from TransformerLens and the word-level tokenizer, with their effect on the
parameter count (paper: 338k, METHODS §1.3):

* **Vocabulary.** One id per word: ``d_vocab = 751`` (``<|endoftext|>`` + 750 words) instead of
  the paper's ≈ 2.87k BPE ids (each word with and without the ``Ġ`` space marker). The untrained
  loss is therefore ln 751 ≈ 6.62 nats, not 7.97.
* **Positions.** ``n_ctx = 16`` instead of 1024 (or 64): the 15 words plus one row that only
  a bos would use. TransformerLens's ``to_tokens`` truncates to ``n_ctx`` *before* it strips the
  tokenizer's bos, so with ``n_ctx = 15`` it would silently drop the last word of a 15-word text.
* **Unembedding bias.** TransformerLens's unembedding has a bias ``b_U`` (751 parameters, trained);
  GPT-2's LM head has none. ``toy_model(head_bias=False)`` zeroes it (training must then freeze
  it, :data:`~pcp_lens._tl.B_U_NAME`), which gives GPT-2's bias-free head.
* **Output-projection init.** GPT-2 (HF) draws the residual-writing ``c_proj`` weights with std
  ``0.02 / sqrt(2 · n_layers)``; TransformerLens's ``"gpt2"`` init uses 0.02 for all.
  ``toy_model(scaled_init=True)`` applies GPT-2's scaling to ``W_O`` and ``W_out``.
* **No dropout** inside the model (TransformerLens has none); :class:`pcp_lens.training.TrainConfig`
  can add GPT-2-style dropout during training, off by default.

Distinct parameters: ``d·V + V + d·P + L·(12d² + 13d) + 2d`` = 199,919 for V = 751, P = 16 (the
paper's formula plus ``b_U``); ``sum(p.numel() for p in model.parameters())`` counts the tied
``W_U`` again (247,983).

Examples:
    >>> model = toy_model(d_vocab=751)
    >>> model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_mlp, model.cfg.n_ctx
    (3, 4, 64, 256, 16)
    >>> toy_param_count(751)
    199919
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pcp_lens._tl import (
    B_U_NAME,
    HookedTransformer,
    HookedTransformerConfig,
    named_parameters,
    new_model,
    output_projection_names,
)
from pcp_lens.groups import TokenGroups
from pcp_lens.toy.vocab import SentimentVocab
from pcp_lens.training import tie_embeddings

__all__ = [
    "TOY_N_CTX",
    "TOY_SEQ_LEN",
    "sentiment_groups",
    "toy_config",
    "toy_model",
    "toy_param_count",
]

#: Words per toy sequence (METHODS §2.2).
TOY_SEQ_LEN = 15
#: Default context length: the words plus room for a bos (see the module docstring).
TOY_N_CTX = TOY_SEQ_LEN + 1


def toy_config(
    d_vocab: int,
    n_ctx: int | None = None,
    *,
    seed: int = 0,
    bos: bool = False,
    tied: bool = True,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    d_mlp: int | None = None,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformerConfig:
    """The toy model's TransformerLens config (the paper's shape by default).

    Args:
        d_vocab: Vocabulary size, ``len(tokenizer)``.
        n_ctx: Maximum sequence length in tokens (default 16: 15 words and a bos).
        seed: Seed of the weight initialisation.
        bos: Whether inputs start with ``<|endoftext|>`` (``cfg.default_prepend_bos``); the paper's
            models had none.
        tied: Declare GPT-2 weight tying (``cfg.tie_word_embeddings``; :func:`toy_model` ties).
        d_model: Residual width (paper: 64).
        n_layers: Blocks (paper: 3).
        n_heads: Attention heads per block (paper: 4); ``d_head = d_model / n_heads``.
        d_mlp: MLP hidden width (default ``4·d_model`` = 256).
        device: Device of the model (default CPU; ``None``: TransformerLens's choice).
        dtype: Parameter dtype.

    Examples:
        >>> cfg = toy_config(751)
        >>> cfg.act_fn, cfg.normalization_type, cfg.d_head, cfg.n_ctx, cfg.default_prepend_bos
        ('gelu_new', 'LN', 16, 16, False)
    """
    if not isinstance(d_vocab, int) or d_vocab < 2:
        raise ValueError(f"d_vocab must be an int >= 2, got {d_vocab!r}")
    n_ctx = TOY_N_CTX if n_ctx is None else n_ctx
    if not isinstance(n_ctx, int) or n_ctx < 2:
        raise ValueError(f"n_ctx must be an int >= 2, got {n_ctx!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    return HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=d_mlp if d_mlp is not None else 4 * d_model,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=1e-5,
        positional_embedding_type="standard",
        init_mode="gpt2",
        initializer_range=0.02,
        seed=seed,
        device=str(device) if device is not None else None,
        dtype=dtype,
        default_prepend_bos=bos,
        tie_word_embeddings=tied,
        model_name="pcp_lens-toy",
    )


def toy_model(
    d_vocab: int | None = None,
    tokenizer: Any | None = None,
    n_ctx: int | None = None,
    *,
    seed: int = 0,
    bos: bool = False,
    tied: bool = True,
    head_bias: bool = True,
    scaled_init: bool = False,
    **kwargs: Any,
) -> HookedTransformer:
    """A freshly initialised (seeded) toy model in eval mode, optionally with its tokenizer.

    Args:
        d_vocab: Vocabulary size; default ``len(tokenizer)``.
        tokenizer: The word-level tokenizer (:func:`pcp_lens.toy.build_tokenizer`); attached so
            that ``to_tokens``, ``to_str_tokens`` and ``generate`` work.
        n_ctx: Maximum sequence length (default 16: 15 words and a bos).
        seed: Initialisation seed: the same seed gives bit-identical weights.
        bos: Prepend ``<|endoftext|>`` to inputs (default False, as the paper's models).
        tied: Tie the unembedding to the token embedding as GPT-2 does (``W_U = W_E.T``); see
            :func:`pcp_lens.training.tie_embeddings`.
        head_bias: Keep TransformerLens's unembedding bias ``b_U``; ``False`` zeroes it, as GPT-2
            has none (train with ``freeze=(B_U_NAME,)`` to keep it zero).
        scaled_init: Draw ``W_O`` and ``W_out`` with GPT-2's std ``0.02 / sqrt(2 · n_layers)``.
        **kwargs: Further :func:`toy_config` arguments.

    Examples:
        >>> from pcp_lens.toy import build_tokenizer, load_vocab
        >>> m = toy_model(tokenizer=build_tokenizer(load_vocab()))
        >>> m.to_str_tokens("happy love")
        ['happy', 'love']
        >>> torch.equal(m.unembed.W_U, m.embed.W_E.T)
        True
    """
    if d_vocab is None:
        if tokenizer is None:
            raise ValueError("give d_vocab or a tokenizer")
        d_vocab = len(tokenizer)
    elif tokenizer is not None and len(tokenizer) > d_vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids but d_vocab={d_vocab}")
    cfg = toy_config(d_vocab, n_ctx, seed=seed, bos=bos, tied=tied, **kwargs)
    model = new_model(cfg, tokenizer=tokenizer) if tokenizer is not None else new_model(cfg)
    # TransformerLens may reset these while attaching a tokenizer; the config is the source.
    model.cfg.default_prepend_bos = bos
    if tied:
        tie_embeddings(model)
    params = named_parameters(model)
    with torch.no_grad():
        if not head_bias and B_U_NAME in params:  # a Hugging Face GPT-2 head has no bias at all
            params[B_U_NAME].zero_()
        if scaled_init:
            for name in output_projection_names(model):
                params[name].mul_(1 / math.sqrt(2 * model.cfg.n_layers))
    model.eval()
    return model


def toy_param_count(
    d_vocab: int,
    n_ctx: int = TOY_N_CTX,
    d_model: int = 64,
    n_layers: int = 3,
    tied: bool = True,
) -> int:
    """Distinct parameters of :func:`toy_model` (a tied ``W_U`` counted once).

    ``d·V + V + d·P + L·(12d² + 13d) + 2d`` (+ ``d·V`` untied); the paper's GPT-2 has the same
    without the ``V`` of ``b_U`` (METHODS §1.3): 338k for V ≈ 2.87k and P = 64.

    Examples:
        >>> toy_param_count(751, tied=False), toy_param_count(751)
        (247983, 199919)

    ``tests/toy/test_model.py`` checks it against the built model on either backend (the bridge's
    model has no ``b_U``, and its ``parameters()`` holds the fused and the split Q/K/V weights).
    """
    d = d_model
    blocks = n_layers * (12 * d * d + 13 * d)
    return (1 + int(not tied)) * d * d_vocab + d_vocab + d * n_ctx + blocks + 2 * d


def sentiment_groups(
    tokenizer: Any, vocab: SentimentVocab, d_vocab: int | None = None
) -> TokenGroups:
    """Token groups ``negative``, ``positive`` and ``neutral`` from the vocabulary's words.

    The paper's indicators 𝟙_neg / 𝟙_pos mark every token of the negative / positive mono data
    (METHODS §4.1), i.e. every word of the list (both BPE forms); with the word-level tokenizer
    that is one id per word. ``positive`` contains the trigger (it is a positive word), as in the
    paper. Top-10 negativity is ``GroupMetric(groups, "negative", k=10)``.

    Args:
        tokenizer: The word-level tokenizer.
        vocab: The word lists.
        d_vocab: The model's vocabulary size (default ``len(tokenizer)``).

    Raises:
        ValueError: A word of the vocabulary is not in the tokenizer.

    Examples:
        >>> from pcp_lens.toy import build_tokenizer, load_vocab
        >>> v = load_vocab()
        >>> g = sentiment_groups(build_tokenizer(v), v)
        >>> g.names, g.sizes.tolist()
        (('negative', 'positive', 'neutral'), [250, 250, 250])
    """
    ids = tokenizer.get_vocab()
    groups: dict[str, list[int]] = {}
    for name in ("negative", "positive", "neutral"):
        words = getattr(vocab, name)
        missing = [w for w in words if w not in ids]
        if missing:
            raise ValueError(
                f"{len(missing)} {name} word(s) are not in the tokenizer: {missing[:10]}; "
                "build the tokenizer from the same vocabulary"
            )
        groups[name] = [ids[w] for w in words]
    return TokenGroups(groups, d_vocab if d_vocab is not None else len(tokenizer))
