"""The ``HookedTransformer`` backend (TransformerLens 2.x and 3.x).

Only :mod:`pcp_lens._tl` imports this module; it holds what differs from the ``TransformerBridge``
backend (:mod:`pcp_lens._backends.bridge`): building models, parameter names, stopping before the
unembedding, resuming blocks from cached keys/values, the KV cache and tokenizers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens._backends import local_tokenizer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.utilities.activation_functions import gelu_new

    try:  # TransformerLens 3.x
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
    except ImportError:  # pragma: no cover - TransformerLens 2.x
        from transformer_lens.past_key_value_caching import (  # type: ignore[no-redef]
            HookedTransformerKeyValueCacheEntry as TransformerLensKeyValueCacheEntry,
        )

#: the constant of ``gelu_new``, the same float64 value it multiplies by
_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)

NAME = "hooked"
#: the class every model of this backend is an instance of
MODEL_CLASS = HookedTransformer
#: the config class :func:`new_model` takes
Config = HookedTransformerConfig

#: Parameter-name prefixes of the parts outside the blocks (``named_parameters()``).
GLOBAL_PARAM_PREFIXES = {
    "embed": ("embed.",),
    "pos_embed": ("pos_embed.",),
    "unembed": ("unembed.",),
    "ln_final": ("ln_final.",),
}
W_E_NAME, W_U_NAME, B_U_NAME = "embed.W_E", "unembed.W_U", "unembed.b_U"


def param_prefix(layer: int, kind: str | None = None) -> str:
    """Prefix of the ``named_parameters()`` of block ``layer`` (or of its ``"attn"``/``"mlp"``)."""
    return f"blocks.{layer}." if kind is None else f"blocks.{layer}.{kind}."


def named_parameters(model: HookedTransformer) -> dict[str, torch.nn.Parameter]:
    """The model's parameters by TransformerLens name (``blocks.0.attn.W_Q``)."""
    return dict(model.named_parameters())


def new_model(cfg: HookedTransformerConfig, **kwargs: Any) -> HookedTransformer:
    """Build a ``HookedTransformer`` without TransformerLens 3.x's deprecation warning."""
    if kwargs.pop("shared_embeddings", False):
        raise ValueError(
            "shared_embeddings=True: a HookedTransformer always has its own unembed.W_U (a "
            "checkpoint whose W_U is W_E's own parameter was written by the bridge backend, "
            "TransformerLens 4)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg, **kwargs)


def copy_model(model: HookedTransformer) -> HookedTransformer:
    """An independent copy (``copy.deepcopy``)."""
    return copy.deepcopy(model)


def parameter_leaves(model: HookedTransformer) -> dict[str, torch.nn.Parameter]:
    """The parameters by TransformerLens name (each is its own parameter)."""
    return dict(model.named_parameters())


def hook_points(model: HookedTransformer) -> list[Any]:
    """Every distinct hook point of the model."""
    return list(model.hook_dict.values())


def forward(model: HookedTransformer, tokens: Tensor, stop_at_layer: int | None = None) -> Tensor:
    """``model(tokens, stop_at_layer=...)``; ``n_layers``: the residual entering ``ln_final``."""
    return model(tokens, stop_at_layer=stop_at_layer)


def run_with_hooks(
    model: HookedTransformer, tokens: Tensor, hooks: list[Any], stop_at_layer: int | None
) -> Tensor:
    """``model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=...)``."""
    return model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=stop_at_layer)


def run_with_cache(
    model: HookedTransformer, tokens: Tensor, wanted: set[str], stop_at_layer: int | None
) -> tuple[Tensor, Any]:
    """``model.run_with_cache`` keeping only the hooks in ``wanted``."""
    out, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name in wanted, stop_at_layer=stop_at_layer
    )
    return cast(Tensor, out), cache


def resumes_from_kv(model: HookedTransformer) -> bool:
    """Every ``HookedTransformer`` block continues behind cached keys/values."""
    return True


def run_block(
    model: HookedTransformer,
    layer: int,
    resid: Float[Tensor, "batch pos d_model"],
    past: tuple[Tensor, Tensor] | None,
) -> Float[Tensor, "batch pos d_model"]:
    """Block ``layer`` on ``resid``, behind frozen cached keys/values ``past`` if given."""
    entry = None
    if past is not None:
        k, v = past
        entry = TransformerLensKeyValueCacheEntry(past_keys=k, past_values=v, frozen=True)
    return model.blocks[layer](resid, past_kv_cache_entry=entry)


def _gelu_new_in_place(x: Tensor) -> Tensor:
    """TransformerLens's ``gelu_new``, bit for bit (the same operations in the same order), with
    two temporaries instead of eight: the formula's fresh ``[batch, pos, d_mlp]`` tensors cost more
    than its arithmetic. In-place steps would break autograd, so with a graph it defers."""
    if torch.is_grad_enabled() and x.requires_grad:
        return gelu_new(x)
    t = torch.pow(x, 3.0)
    t.mul_(0.044715).add_(x).mul_(_SQRT_2_OVER_PI).tanh_().add_(1.0)
    return (0.5 * x).mul_(t)


@contextmanager
def fast_activations(model: HookedTransformer) -> Iterator[None]:
    """Within the block, MLPs computing ``gelu_new`` compute it without its temporaries (the same
    values, bit for bit); restored on exit, also after an error."""
    mlps: list[Any] = [getattr(b, "mlp", None) for b in model.blocks]  # attention-only: None
    swapped = [m for m in mlps if getattr(m, "act_fn", None) is gelu_new]
    for mlp in swapped:
        mlp.act_fn = _gelu_new_in_place
    try:
        yield
    finally:
        for mlp in swapped:
            mlp.act_fn = gelu_new


def gpt2_config_from_hf(hf_config: Any, **overrides: Any) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` for a Hugging Face ``GPT2Config``, without the hub.

    The fields are those TransformerLens's ``from_pretrained`` derives for GPT-2 checkpoints
    (``convert_hf_model_config``), computed here from the config object itself so no model name
    has to be looked up online. ``overrides`` (e.g. ``normalization_type="LNPre"``, ``device``,
    ``dtype``) are applied last.
    """
    n_inner = getattr(hf_config, "n_inner", None)
    cfg: dict[str, Any] = {
        "d_model": hf_config.n_embd,
        "d_head": hf_config.n_embd // hf_config.n_head,
        "n_heads": hf_config.n_head,
        "d_mlp": n_inner if n_inner is not None else 4 * hf_config.n_embd,
        "n_layers": hf_config.n_layer,
        "n_ctx": hf_config.n_positions,
        "eps": hf_config.layer_norm_epsilon,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.activation_function,
        "use_attn_scale": getattr(hf_config, "scale_attn_weights", True),
        "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": bool(
            getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)
        ),
        "normalization_type": "LN",
        "original_architecture": "GPT2LMHeadModel",
        "init_weights": False,
    }
    cfg.update(overrides)
    return HookedTransformerConfig(**cfg)


def gpt2_state_dict_from_hf(hf_model: Any, cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    """TransformerLens's own GPT-2 weight conversion (``convert_gpt2_weights``), offline."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    return convert_gpt2_weights(hf_model, cfg)


def load_processed(
    model: HookedTransformer,
    state_dict: dict[str, Tensor],
    *,
    fold_ln: bool,
    center_writing_weights: bool,
    center_unembed: bool,
    fold_value_biases: bool,
) -> None:
    """Load a TransformerLens state dict with ``from_pretrained``'s weight processing.

    The flags are recorded on ``model.cfg`` so ``processing_fingerprint`` sees them.
    """
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=False,
    )
    for name, value in (
        ("fold_ln", fold_ln),
        ("center_writing_weights", center_writing_weights),
        ("center_unembed", center_unembed),
        ("fold_value_biases", fold_value_biases),
    ):
        setattr(model.cfg, name, value)


def from_hf(
    hf_model: Any,
    flags: dict[str, bool],
    device: str | None,
    dtype: torch.dtype,
    tokenizer: Any | None,
    *,
    keep: bool = True,
) -> HookedTransformer:
    """A ``HookedTransformer`` with ``hf_model``'s GPT-2 weights, processed as ``flags`` say.

    ``hf_model`` is only read (its weights are copied), whatever ``keep`` says.
    """
    hf_cfg = hf_model.config
    over: dict[str, Any] = {"dtype": dtype}
    if device is not None:
        over["device"] = str(device)
    if flags["fold_ln"]:
        over["normalization_type"] = "LNPre"
    cfg = gpt2_config_from_hf(hf_cfg, **over)
    base = gpt2_config_from_hf(hf_cfg, device="cpu", dtype=dtype)
    with torch.no_grad():
        state = {
            k: v.detach().to(dtype).clone()
            for k, v in gpt2_state_dict_from_hf(hf_model, base).items()
        }
    model = new_model(cfg, move_to_device=False)
    load_processed(model, state, **flags)
    model.to(str(cfg.device), print_details=False)
    if tokenizer is not None:
        attach_tokenizer(model, tokenizer)
    return model


def check_cached_generation() -> None:
    """TransformerLens 3's own KV cache has no known-bad version: nothing to refuse."""


def new_kv_cache(model: HookedTransformer, batch: int) -> Any:
    """An empty TransformerLens KV cache for ``batch`` rows on the model's device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:  # TransformerLens 3.x
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as C
        except ImportError:  # pragma: no cover - TransformerLens 2.x
            from transformer_lens.past_key_value_caching import (  # type: ignore[no-redef]
                HookedTransformerKeyValueCache as C,
            )
    return C.init_cache(model.cfg, model.cfg.device, batch)


def cached_residual(model: HookedTransformer, tokens: Tensor, kv_cache: Any) -> Tensor:
    """The final residual of ``tokens`` continuing the sequence held in ``kv_cache`` (grows it).

    The attention mask is passed explicitly as all ones: without it TransformerLens derives one
    from the tokenizer and would treat every generated ``<|endoftext|>`` (GPT-2's pad id) as
    padding, which a full forward pass does not.
    """
    mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
    return model(
        tokens, past_kv_cache=kv_cache, attention_mask=mask, stop_at_layer=model.cfg.n_layers
    )


def attach_tokenizer(model: HookedTransformer, tokenizer: Any) -> None:
    """Attach a Hugging Face tokenizer, offline (see :func:`pcp_lens._backends.local_tokenizer`)."""
    with local_tokenizer(tokenizer) as local:
        model.set_tokenizer(local)


def load_named(
    name: str, flags: dict[str, bool], device: str | None, dtype: torch.dtype | None
) -> HookedTransformer:
    """``HookedTransformer.from_pretrained(name, **flags)`` (needs the hub or its cache)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer.from_pretrained(
            name,
            device=device,
            dtype=cast(Any, dtype or torch.float32),
            fold_ln=flags["fold_ln"],
            center_writing_weights=flags["center_writing_weights"],
            center_unembed=flags["center_unembed"],
            fold_value_biases=flags["fold_value_biases"],
        )
    for key, value in flags.items():
        setattr(model.cfg, key, value)
    return model


