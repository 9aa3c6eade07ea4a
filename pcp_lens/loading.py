"""One loader for every model pcp_lens accepts, on either TransformerLens backend.

``load_model`` takes a Hugging Face folder (``save_pretrained``: ``config.json`` and weights,
tokenizer files optional), a pcp_lens checkpoint folder, or a hub model name, and returns a model
every technique accepts: a ``HookedTransformer`` under TransformerLens 3 (GPT-2 folders) or a
``TransformerBridge`` under TransformerLens 4 (any architecture TransformerLens 4 adapts: GPT-2,
Llama, Pythia, Qwen, Mistral, Gemma, ...). See docs/tl4.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer

__all__ = ["BACKENDS", "load_model"]

#: the values ``load_model(backend=...)`` accepts
BACKENDS = ("auto", "hooked", "bridge")
_INSTALL = {
    "hooked": "pip install 'transformer-lens>=3.9,<4'",
    "bridge": "pip install 'transformer-lens==4.3.*' 'transformers>=5.9,<5.24'",
}
_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in ("auto", _tl.BACKEND):
        raise ValueError(
            f"backend={backend!r} needs another TransformerLens line than the installed one "
            f"(which gives {_tl.BACKEND!r}); install it with {_INSTALL[backend]}, or pass "
            "backend='auto'"
        )
    return _tl.BACKEND


def load_model(
    path_or_name: str | os.PathLike[str],
    backend: str = "auto",
    processing: bool = False,
    *,
    tokenizer: Any | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedTransformer:
    """Load a Hugging Face folder, a pcp_lens checkpoint or a hub name as a pcp_lens model.

    Args:
        path_or_name: a folder, or a hub name (needs the hub or its local cache).
        backend: ``"auto"`` (what the installed TransformerLens offers), ``"hooked"``
            (TransformerLens 3, ``HookedTransformer``) or ``"bridge"`` (TransformerLens 4,
            ``TransformerBridge``); naming the one not installed raises with its install line.
        processing: ``from_pretrained``'s weight processing (fold LayerNorms, centre writing
            weights and the unembedding, fold value biases); ``False`` keeps the raw weights,
            whose module inputs are the paper's (METHODS §8). Recorded for
            :func:`pcp_lens._tl.processing_fingerprint`. Ignored for pcp_lens checkpoints.
        tokenizer: tokenizer to attach; ``None``: the folder's own, if it has one.
        device: target device (``None``: the backend's default).
        dtype: target dtype (``None``: the checkpoint's).

    Examples:
        >>> import tempfile
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40,
        ...                                 n_positions=8)).eval()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     hf.save_pretrained(d)
        ...     m = load_model(d, device="cpu")
        >>> x = torch.randint(0, 40, (2, 5))
        >>> bool((m(x) - hf(x).logits).abs().max() < 1e-4)
        True
    """
    _check_backend(backend)
    if not isinstance(processing, bool):
        raise ValueError(f"processing must be True or False, got {processing!r}")
    flags: dict[str, bool] = dict.fromkeys(_FLAGS, processing)
    path = Path(path_or_name)
    if not path.is_dir():
        if path.exists() or os.sep in str(path_or_name).rstrip(os.sep).lstrip("."):
            raise ValueError(
                f"path_or_name {str(path_or_name)!r} is not a folder (a Hugging Face "
                "save_pretrained folder or a pcp_lens checkpoint) nor a hub model name"
            )
        return _tl.load_named(str(path_or_name), flags, device=device, dtype=dtype)
    from pcp_lens.checkpoints import _is_checkpoint_dir, load_checkpoint

    if _is_checkpoint_dir(path):
        kw: dict[str, Any] = {} if device is None else {"device": str(device)}
        return load_checkpoint(path, **kw).model
    if not (path / "config.json").is_file():
        raise ValueError(f"path_or_name {str(path)!r} has no config.json: not a model folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
    if _tl.BACKEND == "hooked" and type(hf).__name__ != "GPT2LMHeadModel":
        raise ValueError(
            f"{path}: a {type(hf).__name__}; TransformerLens 3 (backend 'hooked') is supported "
            f"for GPT-2 folders only: install TransformerLens 4 ({_INSTALL['bridge']}) for "
            "other architectures"
        )
    if tokenizer is None and any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = _tl.from_hf(hf, flags, device=device, dtype=dtype, tokenizer=tokenizer, keep=False)
    return model.eval()
