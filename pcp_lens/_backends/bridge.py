"""The ``TransformerBridge`` backend (TransformerLens 4.x).

Only :mod:`pcp_lens._tl` imports this module. Every model runs in TransformerLens's compatibility
mode, so the TL-3 hook names pcp_lens uses exist and fire with TL-3 shapes; this module handles the
places where the bridge still behaves differently (docs/tl4.md lists them):

* ``hook.name``: ``hook_resid_pre``/``hook_resid_post`` points report ``blocks.L.hook_in``/
  ``hook_out``; they are renamed to the TL-3 names after booting.
* Aliases: a TL-3 name and its canonical twin share one hook point (counted once).
* ``stop_at_layer=n_layers`` returns logits on the bridge: a hook on ``ln_final.hook_in`` raises
  TransformerLens's own ``StopAtLayerException`` instead, which the bridge returns as the output.
* KV caches: TransformerLens's ``past_kv_cache=`` is ignored by the bridge; the Hugging Face
  ``DynamicCache`` is used instead, and refused on transformers versions whose cache the bridge
  does not fill (5.24: TransformerLens 4.3 reads the renamed ``past_key_values`` argument).
* Parameter names: ``named_parameters()`` has Hugging Face names; pcp_lens reads
  ``tl_named_parameters()`` (TL-3 names, views sharing storage with the real parameters).
* Tokenizers: the bridge probes ``tokenizer.encode("a")``, which a word-level vocabulary without
  ``"a"`` cannot encode; pcp_lens then probes with a word the vocabulary has.
"""

from __future__ import annotations

import copy
import importlib.metadata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import ActivationCache
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

from pcp_lens._backends import local_tokenizer

NAME = "bridge"
MODEL_CLASS = TransformerBridge
#: ``HookedTransformerConfig``'s stand-in: the same field names (n_layers, d_model, ... seed)
Config = TransformerBridgeConfig

GLOBAL_PARAM_PREFIXES = {
    "embed": ("embed.",),
    "pos_embed": ("pos_embed.",),
    "unembed": ("unembed.",),
    "ln_final": ("ln_final.",),
}
W_E_NAME, W_U_NAME, B_U_NAME = "embed.W_E", "unembed.W_U", "unembed.b_U"

# transformers releases whose model forward renamed ``past_key_values`` to ``cache``, which
# TransformerLens 4.3's attention bridge does not read: its KV cache then stays empty and cached
# generation is silently wrong (0.08 on GPT-2, 0.64 on Llama, measured in TL4_BRIDGE.md)
_BROKEN_CACHE_FROM = (5, 24)


def _version(package: str) -> tuple[int, ...]:
    parts = []
    for p in importlib.metadata.version(package).split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


#: ``None`` when the installed transformers fills the bridge's KV cache; else why not (at import)
KV_CACHE_PROBLEM: str | None = (
    f"transformers {importlib.metadata.version('transformers')} with transformer-lens "
    f"{importlib.metadata.version('transformer-lens')}: the bridge's KV cache stays empty (the "
    "model argument past_key_values was renamed), so cached generation would be silently wrong; "
    "install transformers<5.24 (pip install 'transformers>=5.9,<5.24') or generate with "
    "use_cache=False"
    if _version("transformers")[:2] >= _BROKEN_CACHE_FROM
    else None
)


def param_prefix(layer: int, kind: str | None = None) -> str:
    """Prefix of the TL-3 parameter names of block ``layer`` (or of its ``"attn"``/``"mlp"``)."""
    return f"blocks.{layer}." if kind is None else f"blocks.{layer}.{kind}."


def named_parameters(model: TransformerBridge) -> dict[str, Any]:
    """TL-3-named views of the model's parameters, as TL 3 has them.

    ``unembed.b_U`` only where it is a parameter; after ``fold_ln`` no LayerNorm weights (the
    bridge keeps them as unit parameters that TL 3's ``LNPre`` does not have, and writing them
    would silently undo the folding).
    """
    folded = model.cfg.normalization_type in ("LNPre", "RMSPre")
    # parameters and views of one, frozen or not (as TL 3 lists them); not plain tensors (b_U)
    items = [
        (n, t)
        for n, t in model.tl_named_parameters()
        if isinstance(_leaf(t), torch.nn.Parameter)
        and not (folded and n.rsplit(".", 2)[-2].startswith("ln"))
    ]
    # TL 3's order (freezing lists names in it): the bridge lists an MLP's weights first
    first = {}
    for i, (n, _) in enumerate(items):
        first.setdefault(n.rsplit(".", 1)[0], i)
    items.sort(key=lambda it: (first[it[0].rsplit(".", 1)[0]], _mlp_rank(it[0].rsplit(".", 1)[1])))
    return dict(items)


def _leaf(t: Tensor) -> Tensor:
    """The tensor ``t`` is a view of (itself if none); a view of a frozen parameter is a leaf
    too, so ``is_leaf`` cannot tell."""
    return t if t._base is None else t._base


def _mlp_rank(name: str) -> int:
    return {"W_in": 0, "W_gate": 1, "b_in": 2, "W_out": 3, "b_out": 4}.get(name, 0)


def copy_model(model: TransformerBridge) -> TransformerBridge:
    """An independent copy: its own weights, and its forward hooks on its own modules.

    A plain ``copy.deepcopy`` leaves each block's capture hooks (``hook_mlp_in``, the split-QKV
    input fork) as closures over the *original's* modules, partly through weak references: the
    copy then fires the original's hook points, and fails once the original is freed. It also
    refuses the non-leaf tensors a forward pass with gradients leaves cached on the attention
    bridges; those are copied detached.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    copied = copy.deepcopy(model, memo)
    for block in copied.blocks:
        teardown = getattr(block, "_teardown_capture_hooks", None)
        if teardown is not None:
            teardown()  # the copied handles remove the copied closures from the copy's modules
            block._maybe_wire_capture_hooks()
    return copied


def parameter_leaves(model: TransformerBridge) -> dict[str, Any]:
    """The real parameter behind each TL-3 name (``W_Q`` is a view of the ``q`` projection's
    weight): what an optimizer steps and ``requires_grad`` switches."""
    out = {}
    for name, t in named_parameters(model).items():
        leaf = _leaf(t)
        if not isinstance(leaf, torch.nn.Parameter):
            raise ValueError(f"parameter {name!r} is not a view of one parameter of the model")
        out[name] = leaf
    return out


def hook_points(model: TransformerBridge) -> list[Any]:
    """Every distinct hook point (aliases share one with their canonical name)."""
    return list({id(hp): hp for hp in model.hook_dict.values()}.values())


def _tl3_mode(model: TransformerBridge, **processing: bool) -> TransformerBridge:
    """Compatibility mode (TL-3 aliases and hook behaviour), and TL-3 names on every hook."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if processing and any(processing.values()):
            model.enable_compatibility_mode(disable_warnings=True, **processing)
        else:
            model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    for name, hp in model.hook_dict.items():
        if name.endswith((".hook_resid_pre", ".hook_resid_post")):
            hp.name = name
    return model.eval()


def _gpt2_config(cfg: TransformerBridgeConfig, shared_embeddings: bool = False) -> Any:
    """The Hugging Face ``GPT2Config`` of a GPT-2-shaped TransformerLens config, else ``None``."""
    from transformers import GPT2Config

    gpt2_like = (
        cfg.normalization_type in ("LN", "LNPre")
        and (cfg.positional_embedding_type or "standard") == "standard"
        and cfg.d_head * cfg.n_heads == cfg.d_model
        and not getattr(cfg, "attn_only", False)
        and not getattr(cfg, "gated_mlp", False)
        and not getattr(cfg, "parallel_attn_mlp", False)
    )
    if not gpt2_like:
        return None
    return GPT2Config(
        n_layer=cfg.n_layers,
        n_embd=cfg.d_model,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        n_positions=cfg.n_ctx,
        vocab_size=cfg.d_vocab,
        activation_function=cfg.act_fn,
        layer_norm_epsilon=cfg.eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # TransformerLens's own default (0.8 / sqrt(d_model)), not GPT-2's 0.02
        initializer_range=cfg.initializer_range,
        # TransformerLens 3's random models have their own W_U (pcp_lens ties it by copying);
        # a checkpoint of a Hugging Face GPT-2 whose LM head *is* wte asks for that again
        tie_word_embeddings=shared_embeddings,
    )


def new_model(cfg: TransformerBridgeConfig, **kwargs: Any) -> TransformerBridge:
    """A random model from a TransformerLens config, as a bridge in compatibility mode.

    GPT-2-shaped configs (LayerNorm, learned positions) become a Hugging Face
    ``GPT2LMHeadModel`` (seeded by ``cfg.seed``), so the KV cache and block resumption work;
    ``normalization_type="LNPre"`` folds its LayerNorms (``fold_ln``), as TL 3's ``LNPre`` is. Other
    configs become a TL-native model (``boot_native``), which has no KV cache. ``tokenizer=``
    attaches a tokenizer; ``move_to_device`` is accepted for the ``hooked`` backend's sake.
    ``shared_embeddings=True`` makes the LM head's weight the token embedding's own parameter,
    as a Hugging Face GPT-2 has it (``load_checkpoint`` rebuilds such a model so).
    """
    tokenizer = kwargs.pop("tokenizer", None)
    kwargs.pop("move_to_device", None)
    shared = kwargs.pop("shared_embeddings", False)
    if kwargs:
        raise ValueError(f"new_model: unknown arguments {sorted(kwargs)} for the bridge backend")
    if not isinstance(shared, bool):
        raise ValueError(f"shared_embeddings must be True or False, got {shared!r}")
    bos = cfg.default_prepend_bos
    hf_cfg = _gpt2_config(cfg, shared)
    if hf_cfg is None and shared:
        raise ValueError(
            "shared_embeddings=True needs a GPT-2-shaped config (LayerNorm, learned positions): "
            "a TL-native bridge (boot_native) has its own unembedding"
        )
    if hf_cfg is None:
        model = TransformerBridge.boot_native(cfg, device=cfg.device, dtype=cfg.dtype)
        _tl3_mode(model)
        if tokenizer is not None:
            attach_tokenizer(model, tokenizer)
    else:
        from transformers import GPT2LMHeadModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if cfg.seed is None else cfg.seed)
            hf = GPT2LMHeadModel(hf_cfg)
        flags: dict[str, bool] = dict.fromkeys(
            ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"), False
        )
        flags["fold_ln"] = cfg.normalization_type == "LNPre"
        device = None if cfg.device is None else str(cfg.device)
        model = from_hf(hf.eval(), flags, device, cfg.dtype, tokenizer, keep=False)
    model.cfg.default_prepend_bos = bos
    # pcp_lens's own flag (training keeps W_U = W_E.T); the bridge rebuilds cfg without it
    model.cfg.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
    return model


def _native(model: TransformerBridge) -> bool:
    """A TL-native bridge (``boot_native``), which has no KV cache."""
    return type(getattr(model, "original_model", None)).__name__ == "NativeModel"


def resumes_from_kv(model: TransformerBridge) -> bool:
    """A Hugging Face model's blocks continue behind a ``DynamicCache``; a native one's cannot."""
    return not _native(model) and KV_CACHE_PROBLEM is None


def _has_kv_cache(model: TransformerBridge) -> None:
    if _native(model):
        raise ValueError(
            "this model is a TL-native bridge (boot_native), which has no KV cache: resuming "
            "blocks and cached generation need a Hugging Face model (a GPT-2-shaped config, or "
            "pcp_lens.load_model on a Hugging Face folder)"
        )


def _stop_hook(tensor: Tensor, hook: Any) -> None:
    raise StopAtLayerException(tensor)


def _stop_hooks(model: TransformerBridge, stop_at_layer: int | None) -> list[tuple[str, Any]]:
    """A hook returning the residual entering block ``stop_at_layer`` (or ``ln_final``).

    The bridge returns logits for ``stop_at_layer=n_layers``, and for smaller values it stops
    only after ``blocks.L.hook_resid_pre`` has fired; TL 3 stops before either.
    """
    if stop_at_layer is None:
        return []
    n = model.cfg.n_layers
    layer = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer
    if not 0 < layer <= n:
        raise ValueError(f"stop_at_layer must be in 1..{n} or -{n - 1}..-1, got {stop_at_layer}")
    return [(f"blocks.{layer - 1}.hook_resid_post", _stop_hook)]


def forward(model: TransformerBridge, tokens: Tensor, stop_at_layer: int | None = None) -> Tensor:
    """``model(tokens)``, or the residual entering block ``stop_at_layer`` (``ln_final``)."""
    return run_with_hooks(model, tokens, [], stop_at_layer)


def run_with_hooks(
    model: TransformerBridge, tokens: Tensor, hooks: list[Any], stop_at_layer: int | None
) -> Tensor:
    """``model.run_with_hooks`` stopping where TransformerLens 3 does."""
    if stop_at_layer == 0:
        return model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=0)
    return model.run_with_hooks(tokens, fwd_hooks=hooks + _stop_hooks(model, stop_at_layer))


def run_with_cache(
    model: TransformerBridge, tokens: Tensor, wanted: set[str], stop_at_layer: int | None
) -> tuple[Tensor, Any]:
    """``model.run_with_cache`` keeping only ``wanted`` (TL-3 names; unknown names ignored).

    The caching hooks are registered before the stop hook: ``model.run_with_cache`` inside the
    stop hook's context would add them after it, so the last cached block's ``hook_resid_post``
    never fired (TL 3 caches it).
    """
    store: dict[str, Tensor] = {}

    def keep(name: str) -> Any:
        def hook(tensor: Tensor, hook: Any) -> None:
            store[name] = tensor.detach()  # keyed by the TL-3 name: hook.name may be canonical

        return hook

    names = sorted(n for n in wanted if n in model.hook_dict)
    out = run_with_hooks(model, tokens, [(n, keep(n)) for n in names], stop_at_layer)
    return out, ActivationCache(store, model)


def _dynamic_cache(model: TransformerBridge) -> Any:
    from transformers import DynamicCache

    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    try:
        return DynamicCache(config=hf_config) if hf_config is not None else DynamicCache()
    except TypeError:  # pragma: no cover - older transformers
        return DynamicCache()


def _rotary(model: TransformerBridge) -> Any:
    """The Hugging Face model's shared rotary embedding (Llama, GPT-NeoX, ...), if it has one."""
    hf = getattr(model, "original_model", None)
    if hf is None:
        return None
    for name, module in hf.named_modules():
        if type(module).__name__.endswith("RotaryEmbedding") and ".layers." not in name:
            return module
    return None


def _rotate(rotary: Any, k: Float[Tensor, "batch pos n_kv d_head"]) -> Tensor:
    """Keys as the Hugging Face cache holds them: rotated at their positions (``hook_k`` is the
    key before the rotary embedding). Llama/GPT-NeoX's rotate-half form, on the first
    ``cos.shape[-1]`` dimensions (GPT-NeoX rotates only part of each head)."""
    pos = torch.arange(k.shape[1], device=k.device).expand(k.shape[0], -1)
    cos, sin = rotary(k, pos)
    r = cos.shape[-1]
    cos, sin = cos[:, :, None, :].to(k.dtype), sin[:, :, None, :].to(k.dtype)
    x, rest = k[..., :r], k[..., r:]
    x1, x2 = x[..., : r // 2], x[..., r // 2 :]
    rotated = x * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, rest], dim=-1)


def run_block(
    model: TransformerBridge,
    layer: int,
    resid: Float[Tensor, "batch pos d_model"],
    past: tuple[Tensor, Tensor] | None,
) -> Float[Tensor, "batch pos d_model"]:
    """Block ``layer`` on ``resid``, behind cached keys/values ``past`` if given.

    The keys/values go into a fresh Hugging Face ``DynamicCache`` (the bridge's block grows it
    in place, so one per call), and the query positions continue after them.
    """
    p = 0 if past is None else past[0].shape[1]
    q = resid.shape[1]
    pos = torch.arange(p, p + q, device=resid.device).expand(resid.shape[0], q)
    kwargs: dict[str, Any] = {"position_ids": pos}
    rotary = _rotary(model)
    if rotary is not None:
        # rotary models compute (cos, sin) once at the model level and hand them to each block
        kwargs["position_embeddings"] = rotary(resid, pos)
    if past is not None:
        _has_kv_cache(model)
        if KV_CACHE_PROBLEM is not None:
            raise RuntimeError(f"resuming a block from cached keys/values: {KV_CACHE_PROBLEM}")
        cache = _dynamic_cache(model)
        k, v = past
        if rotary is not None:
            k = _rotate(rotary, k)
        for i in range(layer + 1):
            # layers below ``layer`` only need a length; the block reads its own layer's entry
            cache.update(k.transpose(1, 2), v.transpose(1, 2), i)
        kwargs["past_key_values"] = cache
    out = model.blocks[layer](resid, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def fast_activations(model: TransformerBridge) -> Iterator[None]:
    """Nothing to speed up here: the Hugging Face blocks' activations run as they are."""
    yield


def from_hf(
    hf_model: Any,
    flags: dict[str, bool],
    device: str | None,
    dtype: torch.dtype,
    tokenizer: Any | None,
    *,
    keep: bool = True,
) -> TransformerBridge:
    """A bridge around a Hugging Face causal LM (any architecture TransformerLens 4 adapts).

    ``flags`` all False: compatibility mode without processing (= TL 3's
    ``from_pretrained_no_processing``); otherwise ``enable_compatibility_mode(**flags)``. The
    flags are recorded on ``cfg`` (the bridge records none); the model's own dropout is switched
    off, as TL 3's models have none. The bridge replaces the model's
    modules by its own and processing rewrites its weights, so with ``keep=True`` it wraps a
    copy and ``hf_model`` stays as it was.
    """
    if keep:
        hf_model = copy.deepcopy(hf_model)
    hf_model = hf_model.to(dtype)
    if device is not None:
        hf_model = hf_model.to(device)
    arch = type(hf_model).__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        model = build_bridge_from_module(
            hf_model, arch, hf_config=hf_model.config, dtype=dtype, device=device
        )
    _processed(model, flags)
    # TL 3's models have no dropout (pcp_lens.training adds its own, through hooks); the Hugging
    # Face model's (GPT-2: 0.1) would otherwise fire in train mode, on top of those hooks
    # (the embedding dropout, ``transformer.drop``, is in the wrapped model only)
    for module in (*model.modules(), *hf_model.modules()):
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # Llama-style
            cast(Any, module).attention_dropout = 0.0
    if tokenizer is not None:
        attach_tokenizer(model, tokenizer)
    return model


def _processed(model: TransformerBridge, flags: dict[str, bool]) -> TransformerBridge:
    """Compatibility mode with ``flags``' weight processing, recorded on ``cfg`` as TL 3 does."""
    _tl3_mode(model, **flags)
    for name, value in flags.items():
        setattr(model.cfg, name, value)
    if flags.get("fold_ln") and model.cfg.normalization_type in ("LN", "RMS"):
        # the bridge keeps "LN" (and unit LayerNorm weights) after folding; TL 3 says "LNPre"
        model.cfg.normalization_type += "Pre"
    return model


def load_named(
    name: str, flags: dict[str, bool], device: str | None, dtype: torch.dtype | None
) -> TransformerBridge:
    """``boot_transformers(name)``, processed as ``flags`` say (needs the hub or its cache)."""
    kwargs: dict[str, Any] = {"device": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return _processed(TransformerBridge.boot_transformers(name, **kwargs), flags)


def check_cached_generation() -> None:
    """Refuse KV-cached generation on a transformers release whose cache the bridge ignores."""
    if KV_CACHE_PROBLEM is not None:
        raise RuntimeError(f"KV-cached generation refused: {KV_CACHE_PROBLEM}")


class _HFCache:
    """A Hugging Face ``DynamicCache`` that every :func:`cached_residual` call continues."""

    def __init__(self, model: TransformerBridge):
        self.cache = _dynamic_cache(model)
        self.length = 0


def new_kv_cache(model: TransformerBridge, batch: int) -> _HFCache:
    """An empty cache (the bridge ignores TransformerLens's own ``past_kv_cache``)."""
    _has_kv_cache(model)
    return _HFCache(model)


def cached_residual(model: TransformerBridge, tokens: Tensor, kv_cache: _HFCache) -> Tensor:
    """The final residual of ``tokens`` continuing the cached sequence (the cache grows in place).

    No attention mask is passed: a mask over the new tokens only is wrong on the bridge, and
    without one every position attends to the whole cached prefix, as a full forward pass does.
    """
    n = tokens.shape[1]
    pos = torch.arange(kv_cache.length, kv_cache.length + n, device=tokens.device)
    with model.hooks(fwd_hooks=_stop_hooks(model, model.cfg.n_layers)):
        out = model(
            tokens,
            past_key_values=kv_cache.cache,
            use_cache=True,
            position_ids=pos.expand(tokens.shape[0], n),
        )
    kv_cache.length += n
    return out


def _probe_word(tokenizer: Any) -> str:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in range(len(tokenizer)):
        if i not in special:
            return tokenizer.convert_ids_to_tokens(i)
    raise ValueError("tokenizer has no non-special token to probe its BOS/EOS behaviour with")


def attach_tokenizer(model: TransformerBridge, tokenizer: Any) -> None:
    """Attach a Hugging Face tokenizer, offline, normalised as TransformerLens 3 attaches one.

    The bridge's ``tokenizer`` setter normalises a tokenizer (``add_bos_token=True`` copy, pad
    = eos, BOS/EOS detection) only when it *replaces* one, and then also rewrites ``d_vocab``
    from the tokenizer's size; on a model built without one it stores the tokenizer as given
    (GPT-2's has no pad token, so padded batches fail). Here every tokenizer gets
    TransformerLens's own normalisation (``setup_tokenizer``) and ``d_vocab`` is left alone.
    The BOS/EOS detection encodes ``"a"``; a vocabulary that cannot gets it on one of its own
    words.
    """
    from transformer_lens.model_bridge.sources._hf_format import (  # type: ignore[import-not-found]
        setup_tokenizer,
    )

    with local_tokenizer(tokenizer) as local:
        tok = setup_tokenizer(local, default_padding_side=model.cfg.default_padding_side)
    try:
        ids = tok.encode("a")
    except Exception:  # a word-level vocabulary without "a" raises its own error
        ids = tok.encode(_probe_word(tok))
    lead = {i for i in (tok.bos_token_id, getattr(tok, "cls_token_id", None)) if i is not None}
    model.cfg.tokenizer_prepends_bos = len(ids) > 1 and ids[0] in lead
    model.cfg.tokenizer_appends_eos = (
        len(ids) > 1 and tok.eos_token_id is not None and ids[-1] == tok.eos_token_id
    )
    model._tokenizer = tok
