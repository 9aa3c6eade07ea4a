"""Every TransformerLens touchpoint of pcp_lens, in one place.

Hook names, the tensor a module receives, the final LayerNorm and unembedding, and the differences
between TransformerLens 2.x and 3.x live here, so a TransformerLens upgrade touches one file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    try:  # TransformerLens 3.x
        from transformer_lens.utilities import get_act_name
    except ImportError:  # pragma: no cover - TransformerLens 2.x
        from transformer_lens.utils import get_act_name

    from transformer_lens.hook_points import HookPoint

    try:  # TransformerLens 3.x
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
    except ImportError:  # pragma: no cover - TransformerLens 2.x
        from transformer_lens.past_key_value_caching import (  # type: ignore[no-redef]
            HookedTransformerKeyValueCacheEntry as TransformerLensKeyValueCacheEntry,
        )

__all__ = [
    "HookPoint",
    "HookedTransformer",
    "HookedTransformerConfig",
    "block_input_name",
    "hook_name",
    "module_input",
    "module_input_hook",
    "new_model",
    "processing_fingerprint",
    "unembed",
]

# kind -> TransformerLens activation name (as understood by get_act_name)
_ACT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "attn": "attn_out",
    "mlp": "mlp_out",
    "resid_pre": "resid_pre",
    "resid_mid": "resid_mid",
    "resid_post": "resid_post",
    "z": "z",
}


def hook_name(kind: str, layer: int | None) -> str:
    """Return the TransformerLens hook name of a module output, e.g. ``blocks.1.hook_mlp_out``."""
    if kind in ("embed", "pos_embed"):
        return _ACT[kind]
    return get_act_name(_ACT[kind], layer)


def block_input_name(layer: int) -> str:
    """Return the hook name of the residual stream entering block ``layer``."""
    return get_act_name("resid_pre", layer)


def module_input_hook(kind: str, layer: int) -> str:
    """Return the hook that sees the LayerNorm output a module receives (before the LN affine)."""
    ln = {"attn": "ln1", "mlp": "ln2"}[kind]
    return f"blocks.{layer}.{ln}.hook_normalized"


def module_input(
    model: HookedTransformer, kind: str, layer: int, normalized: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_model"]:
    """Turn ``ln*.hook_normalized`` into the tensor the module really receives.

    TransformerLens hooks the normalised vector *before* the LayerNorm's affine weights; the paper's
    module input is the LayerNorm output *with* them. Models loaded with ``fold_ln=True`` have no
    affine (``LNPre``): it is folded into the module's weights, so the normalised vector is already
    what the module's own first matrix sees.
    """
    block = model.blocks[layer]
    ln = block.ln1 if kind == "attn" else block.ln2
    w = getattr(ln, "w", None)
    if w is None:
        return normalized
    return normalized * w + ln.b


def unembed(
    model: HookedTransformer, x: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """Apply the final LayerNorm (its own scale, with affine) and the unembedding to ``x``."""
    shape = x.shape
    x = x.reshape(-1, 1, shape[-1]).to(model.cfg.dtype)
    logits = model.unembed(model.ln_final(x))
    return logits.reshape(*shape[:-1], logits.shape[-1])


def processing_fingerprint(model: HookedTransformer) -> dict[str, Any]:
    """Shape and weight-processing settings that decide whether activations are comparable."""
    cfg = model.cfg
    return {
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "normalization_type": cfg.normalization_type,
        "act_fn": cfg.act_fn,
        "fold_ln": _flag(model, "fold_ln", cfg.normalization_type in ("LNPre", "RMSPre")),
        "center_writing_weights": _flag(model, "center_writing_weights", False),
        "center_unembed": _flag(model, "center_unembed", False),
        "fold_value_biases": _flag(model, "fold_value_biases", False),
    }


def _flag(model: HookedTransformer, name: str, default: bool) -> bool:
    # TransformerLens records the processing it applied on the model itself only in some versions.
    value = getattr(model.cfg, name, None)
    if value is None:
        value = getattr(model, name, default)
    return bool(value)


def new_model(cfg: HookedTransformerConfig, **kwargs: Any) -> HookedTransformer:
    """Build a ``HookedTransformer`` without TransformerLens 3.x's deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg, **kwargs)


def attached_hook_count(model: HookedTransformer) -> int:
    """Count the non-permanent hooks attached anywhere on ``model`` (0 after every pcp_lens call)."""
    n = 0
    for hp in model.hook_dict.values():
        n += len(hp.fwd_hooks) + len(hp.bwd_hooks)
    return n


@contextmanager
def attached(
    model: HookedTransformer, fwd_hooks: Sequence[tuple[str, Any]]
) -> Iterator[HookedTransformer]:
    """Attach ``fwd_hooks`` for the duration of a ``with`` block, exception-safe.

    Thin alias of ``model.hooks`` kept here so the rest of the package never depends on its
    signature (it changed between TransformerLens releases).
    """
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model


def run_blocks(
    model: HookedTransformer,
    resid: Float[Tensor, "batch pos d_model"],
    start: int,
    stop: int,
    past_kv: Sequence[tuple[Tensor, Tensor] | None] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Run blocks ``start..stop-1`` on a residual stream, optionally behind cached keys/values.

    ``past_kv[i]`` holds the keys and values (``[batch, prefix, n_heads, d_head]``) of block
    ``start + i`` for the positions before ``resid``; the query positions then continue after them,
    exactly as in incremental decoding.
    """
    for i, layer in enumerate(range(start, stop)):
        entry = None
        if past_kv is not None and past_kv[i] is not None:
            k, v = past_kv[i]  # type: ignore[misc]
            entry = TransformerLensKeyValueCacheEntry(past_keys=k, past_values=v, frozen=True)
        resid = model.blocks[layer](resid, past_kv_cache_entry=entry)
    return resid


def to_device(t: Tensor, model: HookedTransformer) -> Tensor:
    """Move ``t`` to the model's device (never a hard-coded one)."""
    return t.to(model.cfg.device) if model.cfg.device is not None else t


def model_dtype(model: HookedTransformer) -> torch.dtype:
    """The model's compute dtype."""
    return model.cfg.dtype
