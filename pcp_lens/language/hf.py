"""Hugging Face GPT-2 checkpoint folders ↔ ``HookedTransformer``, fully offline.

:func:`load_hf_gpt2` reads a folder written by ``GPT2LMHeadModel.save_pretrained`` (``config.json``
plus safetensors weights, optionally the tokenizer files) and builds a ``HookedTransformer`` with
the same weight processing as TransformerLens's ``from_pretrained`` (default) or
``from_pretrained_no_processing`` (``processing=False``). :func:`save_hf_gpt2` writes a
``HookedTransformer`` back as such a folder (e.g. a model fine-tuned with frozen modules), so it
can be shared and reloaded with ``GPT2LMHeadModel.from_pretrained``.

Users with hub access keep the documented path ``HookedTransformer.from_pretrained("gpt2-medium")``;
these functions are for checkpoints on disk (fine-tuned, poisoned, edited models).

**What processing means for the saved folder.** ``fold_ln`` folds LayerNorm gains into the next
weights (the folder then has unit LayerNorm gains and zero biases: the same function);
``center_writing_weights`` and ``fold_value_biases`` change weights, not the function;
``center_unembed`` subtracts each position's mean logit (the softmax, and so every probability and
loss, is unchanged; raw logits shift by a constant). A processed ``W_U`` is no longer ``W_E.T``, so
such a folder is written with ``tie_word_embeddings=False`` (a separate LM head). Only a model with
``W_U == W_E.T`` (e.g. loaded with ``processing=False``) is written tied, as GPT-2 ships.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import einops
import torch
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._io import atomic_dir
from pcp_lens._tl import HookedTransformer
from pcp_lens.language._checks import check_device, check_dtype

__all__ = ["hf_from_hooked", "hooked_from_hf", "load_hf_gpt2", "save_hf_gpt2"]

#: ``from_pretrained``'s weight processing (``processing=True``).
PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}


def hooked_from_hf(
    hf_model: Any,
    *,
    processing: bool = True,
    tokenizer: Any | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> HookedTransformer:
    """Convert an in-memory ``GPT2LMHeadModel`` into a ``HookedTransformer`` (no hub access).

    Args:
        hf_model: a ``transformers.GPT2LMHeadModel`` (left unchanged).
        processing: ``True`` applies ``from_pretrained``'s defaults (fold LayerNorm, centre
            writing weights and the unembedding, fold value biases); ``False`` is
            ``from_pretrained_no_processing`` (the paper's raw module inputs, METHODS §8).
        tokenizer: tokenizer to attach (e.g. the GPT-2 tokenizer), or ``None``.
        device: target device (``None``: TransformerLens's default).
        dtype: target dtype or its name (``"float16"``; ``None``: the HF model's).

    Returns:
        The model in eval mode; ``cfg.tie_word_embeddings`` is True when ``W_U == W_E.T``.

    Examples:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> torch.manual_seed(0) and None
        >>> hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40,
        ...                                 n_positions=8)).eval()
        >>> m = hooked_from_hf(hf, processing=False, device="cpu")
        >>> x = torch.randint(0, 40, (2, 5))
        >>> bool((m(x) - hf(x).logits).abs().max() < 1e-4)
        True
    """
    return _convert(hf_model, processing, tokenizer, device, dtype, keep=True)


def _convert(
    hf_model: Any,
    processing: bool,
    tokenizer: Any | None,
    device: str | torch.device | None,
    dtype: torch.dtype | str | None,
    *,
    keep: bool,
) -> HookedTransformer:
    """:func:`hooked_from_hf`; ``keep=False`` lets the backend take ``hf_model`` over (the bridge
    wraps it in place instead of copying it, for a model nobody else holds)."""
    if type(hf_model).__name__ != "GPT2LMHeadModel":
        raise ValueError(
            f"hf_model must be a transformers GPT2LMHeadModel, got {type(hf_model).__name__}"
        )
    if not isinstance(processing, bool):
        raise ValueError(f"processing must be True or False, got {processing!r}")
    device = check_device(device)
    dtype = check_dtype(dtype)
    if tokenizer is not None:
        _check_tokenizer(tokenizer, hf_model.config.vocab_size)
    flags = PROCESSING if processing else dict.fromkeys(PROCESSING, False)
    model = _tl.from_hf(
        hf_model, flags, device=device, dtype=dtype, tokenizer=tokenizer, keep=keep
    )
    return model.eval()


def load_hf_gpt2(
    path: str | os.PathLike[str],
    *,
    processing: bool = True,
    tokenizer: Any | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> HookedTransformer:
    """Load a ``GPT2LMHeadModel.save_pretrained`` folder as a ``HookedTransformer``, offline.

    Args:
        path: the folder (``config.json`` and ``model.safetensors``; tokenizer files optional).
        processing: as in :func:`hooked_from_hf`.
        tokenizer: tokenizer to attach; ``None`` loads the folder's own if it has one.
        device: target device (``None``: TransformerLens's default).
        dtype: target dtype or its name (``"float16"``; ``None``: the checkpoint's).

    Raises:
        FileNotFoundError: no such folder, or it has no ``config.json`` or no safetensors.
        ValueError: another architecture, a truncated or unreadable weight file, a weight
            missing or of the wrong shape (which ``from_pretrained`` would initialise at
            random), a tokenizer larger than ``vocab_size``, an unknown device or dtype.

    Examples:
        >>> import tempfile
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40,
        ...                                 n_positions=8))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     hf.save_pretrained(d)
        ...     load_hf_gpt2(d, device="cpu").cfg.n_layers
        1
    """
    from transformers import AutoTokenizer

    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ValueError(f"path must be a folder path (str or os.PathLike), got {path!r}")
    if not isinstance(processing, bool):
        raise ValueError(f"processing must be True or False, got {processing!r}")
    device = check_device(device)
    dtype = check_dtype(dtype)
    folder = Path(path)
    hf = _read_gpt2_folder(folder, str(path))
    if tokenizer is None and any(
        (folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    ):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # tokenizers and transformers raise many types for bad files
            raise ValueError(
                f"path={str(path)!r} has tokenizer files that cannot be loaded ({e}); fix them "
                "or pass tokenizer="
            ) from None
    # the model was read here and nobody else holds it: the bridge may wrap it without a copy
    return _convert(hf, processing, tokenizer, device, dtype, keep=False)


def _check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """Refuse a tokenizer whose ids run past the embedding (they would index out of range)."""
    if not callable(tokenizer) or not all(hasattr(tokenizer, a) for a in ("decode", "__len__")):
        raise ValueError(
            f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}"
        )
    n = len(cast(Any, tokenizer))
    if n > vocab_size:
        raise ValueError(
            f"tokenizer has {n} tokens but the model's vocab_size is {vocab_size}: ids "
            f"{vocab_size}..{n - 1} have no embedding; allowed: a tokenizer of at most "
            f"{vocab_size} tokens (the one the model was trained with)"
        )


def check_gpt2_folder(folder: Path, shown: str) -> None:
    """Refuse a folder that is not a GPT-2 ``save_pretrained`` folder, without loading weights.

    Examples:
        >>> check_gpt2_folder(Path("no/such/folder"), "no/such/folder")
        Traceback (most recent call last):
        ...
        FileNotFoundError: path='no/such/folder' is not a folder; ...
    """
    import json

    if not folder.is_dir():
        raise FileNotFoundError(
            f"path={shown!r} is not a folder; expected one written by "
            "GPT2LMHeadModel.save_pretrained (config.json + model.safetensors)"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"path={shown!r} has no config.json; expected a folder written by "
            "GPT2LMHeadModel.save_pretrained"
        )
    try:
        kind = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"path={shown!r}: config.json is not a JSON object ({e})") from None
    if kind != "gpt2":
        raise ValueError(
            f"path={shown!r} holds a {kind!r} model (config.json model_type); allowed: GPT-2 "
            "checkpoints (model_type 'gpt2')"
        )
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        raise FileNotFoundError(
            f"path={shown!r} has no model.safetensors (weights are read from safetensors only; "
            "re-save with save_pretrained(..., safe_serialization=True))"
        )


def _read_gpt2_folder(folder: Path, shown: str) -> Any:
    """``GPT2LMHeadModel`` from a ``save_pretrained`` folder, every weight present and readable.

    ``from_pretrained`` initialises a missing weight at random with at most a log line, and
    reports unreadable files and other architectures in the words of safetensors or of the model
    class: each of these is refused here naming the folder and what it lacks.
    """
    from safetensors import safe_open
    from transformers import GPT2LMHeadModel

    check_gpt2_folder(folder, shown)
    for f in sorted(folder.glob("model*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):  # checks the header against the size
                pass
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ValueError(
                f"path={shown!r}: {f.name} cannot be read ({e}); the file is truncated or not "
                "safetensors"
            ) from None
    try:
        hf, info = cast(
            Any,
            GPT2LMHeadModel.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True
            ),
        )
    except (OSError, RuntimeError, ValueError) as e:  # e.g. a weight of the wrong shape
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"path={shown!r} cannot be loaded as GPT-2: {first}") from None
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"path={shown!r} lacks {len(missing)} weight(s) of its config's GPT-2 (e.g. "
            f"{missing[:3]}); they would be random. Allowed: a complete checkpoint"
        )
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        raise ValueError(f"path={shown!r} has weights of the wrong shape: {mismatched[:3]}")
    return hf.eval()


def _check_exportable(model: HookedTransformer) -> None:
    cfg = model.cfg
    problems = []
    if cfg.normalization_type not in ("LN", "LNPre"):
        problems.append(f"normalization_type={cfg.normalization_type!r} (allowed: 'LN', 'LNPre')")
    if cfg.positional_embedding_type != "standard":
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r}")
    if cfg.attn_only or getattr(cfg, "parallel_attn_mlp", False):
        problems.append("attn_only or parallel_attn_mlp")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append(f"n_heads*d_head={cfg.n_heads * cfg.d_head} != d_model={cfg.d_model}")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("grouped-query attention")
    if cfg.d_vocab_out != cfg.d_vocab:
        problems.append(f"d_vocab_out={cfg.d_vocab_out} != d_vocab={cfg.d_vocab}")
    if cfg.act_fn not in ("gelu_new", "gelu", "relu", "gelu_fast", "silu", "gelu_pytorch_tanh"):
        problems.append(f"act_fn={cfg.act_fn!r}")
    if getattr(cfg, "use_local_attn", False) or cfg.positional_embedding_type == "rotary":
        problems.append("local or rotary attention")
    if problems:
        raise ValueError("model cannot be written as a GPT2LMHeadModel: " + "; ".join(problems))


def _bias_into_head(model: HookedTransformer) -> Tensor | None:
    """``r [d_vocab]``: an LM head ``W_U + 1 r^T`` after a final-LN bias of ones adds ``b_U``.

    GPT-2's LM head has no bias, but ``fold_ln`` moves the final LayerNorm's bias into ``b_U``.
    With a weightless final LayerNorm (``LNPre``) the normalised vector ``x`` is zero-mean, so
    ``x @ (W_U + 1 r^T) == x @ W_U``; a final-LN bias of ones then adds
    ``colsum(W_U) + d_model * r``, which equals ``b_U`` for ``r = (b_U - colsum(W_U)) / d_model``.
    ``None`` when ``b_U`` is constant (a constant shifts every logit equally).
    """
    b_u = model.unembed.b_U.detach()
    if not bool((b_u != b_u.flatten()[0]).any()):
        return None
    if model.cfg.normalization_type != "LNPre":
        raise ValueError(
            "model.unembed.b_U is not constant and the final LayerNorm has weights: GPT-2's LM "
            f"head has no bias, so it cannot be saved (max |b_U| = {float(b_u.abs().max()):.3g})"
        )
    w_u = model.unembed.W_U.detach().double()
    return ((b_u.double() - w_u.sum(0)) / model.cfg.d_model).cpu()


def hf_from_hooked(model: HookedTransformer) -> Any:
    """Build a ``GPT2LMHeadModel`` computing the same next-token distribution as ``model``.

    Logits are equal when ``model`` is unprocessed; after ``center_unembed`` (or with a constant
    ``b_U``) they differ by a constant per position, so probabilities and losses are equal. A
    ``b_U`` that ``fold_ln`` made from the final LayerNorm's bias is carried by the final
    LayerNorm's bias and the LM head (exact, since the folded LayerNorm output is zero-mean).
    Tied (``tie_word_embeddings=True``) exactly when ``W_U == W_E.T``.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> with torch.no_grad():
        ...     _ = m.unembed.b_U.zero_()
        >>> hf = hf_from_hooked(m)
        >>> x = torch.randint(0, 50, (2, 5))
        >>> bool((m(x) - hf(x).logits).abs().max() < 1e-4)
        True
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if not _tl.is_model(model):
        raise ValueError(f"model must be a HookedTransformer, got {type(model).__name__}")
    _check_exportable(model)
    cfg = model.cfg
    head_shift = _bias_into_head(model)
    tied = head_shift is None and bool(
        torch.equal(model.unembed.W_U.detach(), model.embed.W_E.detach().T)
    )
    tok = model.tokenizer
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    eos = eos if eos is not None else cfg.d_vocab - 1
    hf_cfg = GPT2Config(
        vocab_size=cfg.d_vocab,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        activation_function=cfg.act_fn,
        layer_norm_epsilon=cfg.eps,
        scale_attn_weights=cfg.use_attn_scale,
        scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx,
        tie_word_embeddings=tied,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    hf: Any = GPT2LMHeadModel(hf_cfg)
    hf = hf.to(cfg.dtype).eval()
    # TL-3 names and shapes on both backends (the bridge's state_dict has Hugging Face's)
    sd = {k: v.detach().cpu() for k, v in _tl.named_parameters(model).items()}

    def ln(prefix: str, target: Any) -> None:
        w, b = sd.get(f"{prefix}.w"), sd.get(f"{prefix}.b")
        # LNPre (folded LayerNorm): unit gain and zero bias compute the same function
        target.weight.copy_(w if w is not None else torch.ones_like(target.weight))
        target.bias.copy_(b if b is not None else torch.zeros_like(target.bias))

    with torch.no_grad():
        t = hf.transformer
        t.wte.weight.copy_(sd["embed.W_E"])
        t.wpe.weight.copy_(sd["pos_embed.W_pos"])
        for i, h in enumerate(t.h):
            p = f"blocks.{i}"
            ln(f"{p}.ln1", h.ln_1)
            ln(f"{p}.ln2", h.ln_2)
            qkv = [sd[f"{p}.attn.W_{x}"] for x in "QKV"]
            h.attn.c_attn.weight.copy_(
                torch.cat([einops.rearrange(w, "i m h -> m (i h)") for w in qkv], dim=1)
            )
            h.attn.c_attn.bias.copy_(torch.cat([sd[f"{p}.attn.b_{x}"].reshape(-1) for x in "QKV"]))
            h.attn.c_proj.weight.copy_(einops.rearrange(sd[f"{p}.attn.W_O"], "i h m -> (i h) m"))
            h.attn.c_proj.bias.copy_(sd[f"{p}.attn.b_O"])
            h.mlp.c_fc.weight.copy_(sd[f"{p}.mlp.W_in"])
            h.mlp.c_fc.bias.copy_(sd[f"{p}.mlp.b_in"])
            h.mlp.c_proj.weight.copy_(sd[f"{p}.mlp.W_out"])
            h.mlp.c_proj.bias.copy_(sd[f"{p}.mlp.b_out"])
        ln("ln_final", t.ln_f)
        if not tied:
            w_u = sd["unembed.W_U"]
            if head_shift is not None:
                t.ln_f.bias.fill_(1.0)
                w_u = (w_u.double() + head_shift[None, :]).to(w_u.dtype)
            hf.lm_head.weight.copy_(w_u.T)
    return hf


def save_hf_gpt2(
    model: HookedTransformer,
    path: str | os.PathLike[str],
    tokenizer: Any | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 folder (safetensors + config.json), atomically.

    Everything is written to a temporary folder beside ``path`` and renamed into place. An
    existing ``path`` is replaced only if it is empty or an earlier GPT-2 folder (it has a
    ``config.json`` with ``model_type == "gpt2"``); anything else raises ``FileExistsError``.

    Args:
        model: the model (unchanged); see :func:`hf_from_hooked` for what is representable.
        path: target folder.
        tokenizer: tokenizer to save beside the weights (``None``: the model's, if any;
            ``False``: none). TransformerLens keeps a copy of the tokenizer with
            ``add_bos_token=True``; pass the original tokenizer to save it unchanged.

    Examples:
        >>> import tempfile, os
        >>> from transformers import GPT2LMHeadModel
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> with torch.no_grad():
        ...     _ = m.unembed.b_U.zero_()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_hf_gpt2(m, os.path.join(d, "out"))
        ...     GPT2LMHeadModel.from_pretrained(p).config.n_layer
        1
    """
    import json

    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ValueError(f"path must be a folder path (str or os.PathLike), got {path!r}")
    if tokenizer is not None and tokenizer is not False:
        if not hasattr(tokenizer, "save_pretrained"):
            raise ValueError(
                "tokenizer must be a Hugging Face tokenizer, None (the model's) or False "
                f"(none), got {type(tokenizer).__name__}"
            )
        _check_tokenizer(tokenizer, model.cfg.d_vocab)
    target = Path(path)
    if target.exists():
        ok = target.is_dir() and not any(target.iterdir())
        cfg_file = target / "config.json"
        if not ok and cfg_file.is_file():
            try:
                ok = json.loads(cfg_file.read_text()).get("model_type") == "gpt2"
            except (OSError, ValueError):
                ok = False
        if not ok:
            raise FileExistsError(
                f"path={str(path)!r} exists and is not a GPT-2 checkpoint folder; refusing to "
                "replace it"
            )
    hf = hf_from_hooked(model)
    tok = model.tokenizer if tokenizer is None else (None if tokenizer is False else tokenizer)
    with atomic_dir(target) as tmp:
        hf.save_pretrained(str(tmp))
        if tok is not None:
            tok.save_pretrained(str(tmp))
    return target
