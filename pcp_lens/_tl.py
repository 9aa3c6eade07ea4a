"""Every TransformerLens touchpoint of pcp_lens, in one place.

Hook names, the tensor a module receives, the final LayerNorm and unembedding, and the differences
between TransformerLens lines live here, so a TransformerLens upgrade touches one file. What differs
between ``HookedTransformer`` (TransformerLens 2.x/3.x) and ``TransformerBridge`` (4.x) is in
:mod:`pcp_lens._backends.hooked` and :mod:`pcp_lens._backends.bridge`; this module imports the one
the installed TransformerLens offers (:data:`BACKEND`) and no other module imports either.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, cast

import torch
from jaxtyping import Float
from torch import Tensor


def installed_backend() -> str:
    """``"hooked"`` (TransformerLens 2.x/3.x, ``HookedTransformer``) or ``"bridge"`` (4.x,
    ``TransformerBridge``): the one the installed TransformerLens offers."""
    major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    return "bridge" if major >= 4 else "hooked"


#: the backend in use in this process (TransformerLens 3 and 4 cannot be installed together)
BACKEND = installed_backend()

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import ActivationCache

    try:  # TransformerLens 3.x and 4.x
        from transformer_lens.utilities import get_act_name
    except ImportError:  # pragma: no cover - TransformerLens 2.x
        from transformer_lens.utils import get_act_name

    from transformer_lens.hook_points import HookPoint

# ``pcp_lens._backends.hooked`` or ``.bridge``: the same functions, typed against their own model
# class; every caller goes through the functions below, which take a :class:`Model`
_impl: Any = importlib.import_module(f"pcp_lens._backends.{BACKEND}")


class Model(Protocol):
    """What every pcp_lens function takes: a ``HookedTransformer`` or a ``TransformerBridge``.

    Both carry TransformerLens's TL-3 surface: ``cfg``, ``hook_dict``, ``hooks()``,
    ``run_with_hooks``, ``run_with_cache``, ``blocks[i].attn.W_O``, ``W_U``, ``ln_final``,
    ``to_tokens``, ``tokenizer``. The functions of this module cover where they differ.
    """

    cfg: Any
    hook_dict: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __getattr__(self, name: str) -> Any: ...


#: the former annotation of every model argument, kept importable (it is :class:`Model`)
HookedTransformer = Model
#: the config :func:`new_model` takes (``HookedTransformerConfig`` on both backends)
HookedTransformerConfig = _impl.Config


def config_fields() -> list[str]:
    """The arguments :data:`HookedTransformerConfig` takes, which its instances carry.

    ``TransformerBridgeConfig``'s dataclass fields are only its base class's (24: no ``seed``,
    ``initializer_range``, ...) and its ``__init__`` names the rest.

    Examples:
        >>> {"n_layers", "d_model", "seed", "dtype"} <= set(config_fields())
        True
    """
    names = [f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init]
    params = inspect.signature(HookedTransformerConfig.__init__).parameters.values()
    more = [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    return list(dict.fromkeys([*names, *more]))

__all__ = [
    "ActivationCache",
    "HookFn",
    "HookPoint",
    "HookedTransformer",
    "HookedTransformerConfig",
    "Hooks",
    "Model",
    "block_input_name",
    "copy_model",
    "hook_name",
    "module_input",
    "module_input_hook",
    "new_model",
    "processing_fingerprint",
]

#: a forward hook: it returns the replacement activation, or ``None`` to leave it unchanged
HookFn = Callable[[Tensor, HookPoint], "Tensor | None"]
#: hooks as values, ready for ``model.hooks(fwd_hooks=...)`` and ``run_with_hooks``
Hooks = list[tuple[str, HookFn]]

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
    "pattern": "pattern",
    "post": "post",
}


def hook_name(kind: str, layer: int | None) -> str:
    """Return the TransformerLens hook name of a module output, e.g. ``blocks.1.hook_mlp_out``
    (``"z"``: the heads' values mixed by the pattern; ``"post"``: the MLP's neurons)."""
    if kind in ("embed", "pos_embed"):
        return _ACT[kind]
    return get_act_name(_ACT[kind], layer)


#: Parameter-name prefixes of the parts outside the blocks (see :func:`named_parameters`).
GLOBAL_PARAM_PREFIXES = _impl.GLOBAL_PARAM_PREFIXES
#: The token embedding and the unembedding (tied in GPT-2: one matrix), and the unembedding bias
#: (TransformerLens has one; GPT-2's LM head has none).
W_E_NAME, W_U_NAME, B_U_NAME = _impl.W_E_NAME, _impl.W_U_NAME, _impl.B_U_NAME
#: Prefix of the parameters of block ``layer`` (or of its ``"attn"``/``"mlp"``).
param_prefix = _impl.param_prefix


def is_model(obj: object) -> bool:
    """Whether ``obj`` is a model of the installed backend."""
    return isinstance(obj, _impl.MODEL_CLASS)


def named_parameters(model: Model) -> dict[str, torch.nn.Parameter]:
    """The model's parameters by TransformerLens name (``blocks.0.attn.W_Q``, ``embed.W_E``)."""
    return _impl.named_parameters(model)


def parameter_leaves(model: Model) -> dict[str, torch.nn.Parameter]:
    """The real parameter behind each :func:`named_parameters` name, for optimizers and freezing.

    On ``HookedTransformer`` each name is its own parameter; on the bridge a TL-3 name can be a
    view (``W_Q`` of the ``q`` projection's weight, ``W_U`` of the LM head's), and two names can
    share one parameter (a Hugging Face model with tied embeddings).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> leaves = parameter_leaves(tiny_model(n_layers=1))
        >>> leaves["blocks.0.attn.W_Q"].numel() == named_parameters(tiny_model(n_layers=1))[
        ...     "blocks.0.attn.W_Q"].numel()
        True
    """
    return _impl.parameter_leaves(model)


def _view_index(leaf: Tensor, view: Tensor) -> Tensor:
    """For each element of ``view`` (a view of ``leaf``'s storage), its flat index in ``leaf``."""
    n = leaf.untyped_storage().nbytes() // leaf.element_size()
    probe = torch.full((n,), -1, dtype=torch.long, device=leaf.device)
    probe.as_strided(leaf.size(), leaf.stride(), leaf.storage_offset()).copy_(
        torch.arange(leaf.numel(), device=leaf.device).view(leaf.shape)
    )
    idx = probe.as_strided(view.size(), view.stride(), view.storage_offset())
    if (idx < 0).any():
        raise ValueError("view must lie inside leaf")
    return idx


def grad_of(leaf: torch.nn.Parameter, view: Tensor) -> Tensor:
    """``leaf.grad`` in the shape of ``view`` (a copy), e.g. ``W_U``'s from the LM head's.

    On the bridge ``W_U [d_model d_vocab]`` is a transposed view of the LM head's weight and
    ``W_Q`` a reshaped one of the ``q`` projection's, whose gradients have the weights' shapes.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> m(torch.tensor([[1, 2, 3]])).sum().backward()
        >>> name = "blocks.0.attn.W_Q"
        >>> grad_of(parameter_leaves(m)[name], named_parameters(m)[name]).shape
        torch.Size([4, 16, 4])
    """
    if leaf.grad is None:
        raise ValueError("leaf has no gradient")
    return leaf.grad.reshape(-1)[_view_index(leaf, view)]


def add_to_grad(leaf: torch.nn.Parameter, view: Tensor, value: Tensor) -> None:
    """Add ``value`` (shaped as ``view``, a view of ``leaf``) to ``leaf.grad`` (zeros if none).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> leaf, view = parameter_leaves(m)["unembed.W_U"], named_parameters(m)["unembed.W_U"]
        >>> add_to_grad(leaf, view, torch.ones(view.shape))
        >>> float(grad_of(leaf, view).sum()) == view.numel()
        True
    """
    grad = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
    flat = grad.reshape(-1).clone()
    flat.index_add_(0, _view_index(leaf, view).reshape(-1), value.reshape(-1).to(flat.dtype))
    leaf.grad = flat.view(leaf.shape)


def output_projection_names(model: HookedTransformer) -> list[str]:
    """Weights that write into the residual stream from each block: attention ``W_O`` and MLP
    ``W_out`` (GPT-2's ``c_proj`` matrices)."""
    n = model.cfg.n_layers
    return [
        f"{param_prefix(i, k)}{w}" for i in range(n) for k, w in (("attn", "W_O"), ("mlp", "W_out"))
    ]


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
    b = getattr(ln, "b", None)  # RMSNorm has no bias
    return normalized * w if b is None else normalized * w + b


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
    # Only real bools count: ``HookedTransformer`` has *methods* named ``center_writing_weights``,
    # ``center_unembed`` and ``fold_value_biases``, which are truthy.
    for value in (getattr(model.cfg, name, None), getattr(model, name, None)):
        if isinstance(value, bool):
            return value
    return default


def new_model(cfg: HookedTransformerConfig, **kwargs: Any) -> HookedTransformer:
    """Build a random model of the installed backend from a ``HookedTransformerConfig``."""
    return _impl.new_model(cfg, **kwargs)


def copy_model(model: Model) -> Model:
    """An independent copy of ``model``: its own weights, hook points and forward hooks.

    Use it instead of ``copy.deepcopy``, which on the bridge leaves the copy's internal hooks
    pointing at the original's modules.

    Args:
        model: the model to copy (not modified).

    Returns:
        The copy, in ``model``'s mode, device and dtype.

    Examples:
        >>> import torch
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> c = copy_model(m)
        >>> with torch.no_grad():
        ...     _ = mlp_weights(c, 0)["W_in"].zero_()
        >>> bool(mlp_weights(m, 0)["W_in"].abs().sum() > 0)
        True
    """
    return _impl.copy_model(model)


def hook_points(model: Model) -> list[HookPoint]:
    """Every distinct hook point of ``model`` (on the bridge, aliases share one)."""
    return _impl.hook_points(model)


#: the hook point the logits pass through
LOGITS_HOOK = "unembed.hook_out"


def has_hooks(model: Model, name: str) -> bool:
    """Whether any forward hook is attached to hook point ``name`` (``False`` if it has none)."""
    hp = model.hook_dict.get(name)
    return hp is not None and len(hp.fwd_hooks) > 0


def attached_hook_count(model: HookedTransformer) -> int:
    """Count the non-permanent hooks attached anywhere on ``model`` (0 after pcp_lens returns).

    Each hook point counts once: on the bridge, TL-3 alias names and canonical names share one
    hook point, so ``hook_dict.values()`` holds it twice.
    """
    n = 0
    for hp in hook_points(model):
        n += sum(not h.is_permanent for h in (*hp.fwd_hooks, *hp.bwd_hooks))
    return n


def check_hooks(model: HookedTransformer, hooks: Any, name: str = "hooks") -> list[tuple[Any, Any]]:
    """``hooks`` as a list of ``(hook point name or name filter, callable)`` pairs, else raise.

    A misspelt hook point would otherwise fail inside TransformerLens with a bare ``KeyError``
    (or, for a filter function, match nothing), far from the argument that caused it.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> check_hooks(tiny_model(n_layers=1), [("blocks.3.hook_mlp_out", print)])
        Traceback (most recent call last):
        ...
        ValueError: hooks[0] names 'blocks.3.hook_mlp_out', not a hook point of this model ...
    """
    if isinstance(hooks, str):
        raise ValueError(f"{name} must be a list of (hook name, fn) pairs, got {hooks!r:.40}")
    if isinstance(hooks, tuple) and len(hooks) == 2 and isinstance(hooks[0], str):
        raise ValueError(f"{name} must be a list of (hook name, fn) pairs, got one pair")
    try:
        items = list(hooks)
    except TypeError:
        raise ValueError(
            f"{name} must be a list of (hook name, fn) pairs, got {type(hooks).__name__}"
        ) from None
    for i, h in enumerate(items):
        if not isinstance(h, tuple | list) or len(h) != 2:
            raise ValueError(f"{name}[{i}] must be a (hook name, fn) pair, got {h!r:.60}")
        hook, fn = h
        if callable(hook) and not isinstance(hook, str):  # a name filter, as model.hooks takes
            if not any(hook(n) for n in model.hook_dict):
                raise ValueError(f"{name}[{i}]'s name filter {hook!r:.40} matches no hook point")
        elif not isinstance(hook, str) or hook not in model.hook_dict:
            example = next((n for n in model.hook_dict if n.endswith("hook_mlp_out")), None)
            raise ValueError(
                f"{name}[{i}] names {hook!r}, not a hook point of this model "
                f"({model.cfg.n_layers} layers); allowed: a name in model.hook_dict, e.g. "
                f"{example!r}"
            )
        if not callable(fn):
            raise ValueError(f"{name}[{i}] = ({hook!r}, {fn!r:.40}): the hook is not callable")
    return [(h[0], h[1]) for h in items]


@contextmanager
def attached(
    model: HookedTransformer, fwd_hooks: Sequence[tuple[str, Any]], name: str = "hooks"
) -> Iterator[HookedTransformer]:
    """Attach ``fwd_hooks`` for the duration of a ``with`` block, exception-safe.

    Thin alias of ``model.hooks`` kept here so the rest of the package never depends on its
    signature (it changed between TransformerLens releases). The hooks are checked first
    (:func:`check_hooks`; ``name`` is the argument the error names).
    """
    with model.hooks(fwd_hooks=cast(Any, check_hooks(model, fwd_hooks, name))):
        yield model


def fast_activations(model: HookedTransformer) -> Any:
    """A context within which the model's activation functions compute the same values faster
    (TransformerLens's ``gelu_new`` with two temporaries instead of eight); restored on exit.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=1)
        >>> x = torch.randint(0, 50, (1, 4))
        >>> with fast_activations(m):
        ...     fast = m(x)
        >>> bool(torch.equal(fast, m(x)))
        True
    """
    return _impl.fast_activations(model)


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
        past = past_kv[i] if past_kv is not None else None
        resid = _impl.run_block(model, layer, resid, past)
    return resid


def resumes_from_kv(model: HookedTransformer) -> bool:
    """Whether :func:`run_blocks` can continue a sequence behind cached keys/values (``past_kv``).

    Not on a TL-native bridge (``boot_native`` models have no KV cache), nor on a bridge whose
    transformers release leaves the cache empty; callers then rerun the prefix instead.
    """
    return bool(_impl.resumes_from_kv(model))


def blocks_resumable(model: HookedTransformer) -> bool:
    """Whether :func:`run_blocks` from a cached residual equals the full forward pass's blocks.

    Shortformer models add positional embeddings inside every block from the tokens' positions,
    which a residual alone does not carry.
    """
    return model.cfg.positional_embedding_type != "shortformer"


def block_inputs(
    model: HookedTransformer, tokens: Tensor, layers: Iterable[int]
) -> tuple[dict[int, Float[Tensor, "batch pos d_model"]], Float[Tensor, "batch pos d_model"]]:
    """The residual entering each block in ``layers``, and the final residual, in one pass."""
    layers = list(layers)
    final, cache = run_with_cache(
        model, tokens, [block_input_name(i) for i in layers], stop_at_layer=model.cfg.n_layers
    )
    return {i: cache[block_input_name(i)] for i in layers}, final


def kv_hook_names(layer: int) -> tuple[str, str]:
    """Hooks holding block ``layer``'s keys and values, exactly as its KV cache stores them."""
    return get_act_name("k", layer), get_act_name("v", layer)


class FinalLogits:
    """Final LayerNorm + unembedding, with the transposed unembedding prepared once.

    With ``columns``, only those vocabulary entries' logits are computed.

    TransformerLens's ``Unembed.forward`` copies ``W_U.T`` into contiguous memory on every call
    (154 MB for GPT-2 small); a function that unembeds many small batches does that copy once
    here and keeps the same arithmetic (``F.linear`` on the transposed weight) and hook points.
    """

    def __init__(self, model: HookedTransformer, columns: Sequence[int] | None = None):
        self.model = model
        self.w_t = model.unembed.W_U.T.contiguous()
        self.b_u = model.unembed.b_U
        if columns is not None:
            # logits of these vocabulary entries only (``[..., len(columns)]``)
            cols = torch.tensor(list(columns), device=self.w_t.device)
            self.w_t, self.b_u = self.w_t[cols], self.b_u[cols]

    def __call__(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Final LayerNorm (its own scale, with affine; none without normalisation), then the
        unembedding."""
        x = resid.to(self.model.cfg.dtype)
        ln = getattr(self.model, "ln_final", None)  # absent when normalization_type=None
        return self.raw(ln(x) if ln is not None else x)

    def raw(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """The unembedding alone (``x @ W_U + b_U``), no final LayerNorm."""
        unembed = self.model.unembed
        hook_in = getattr(unembed, "hook_in", None)
        hook_out = getattr(unembed, "hook_out", None)
        x = x.to(self.model.cfg.dtype)
        x = hook_in(x) if hook_in is not None else x
        logits = torch.nn.functional.linear(x, self.w_t, self.b_u)
        return hook_out(logits) if hook_out is not None else logits

    def cached(
        self, x: Float[Tensor, "... d_model"], scale: Float[Tensor, "... 1"]
    ) -> Float[Tensor, "... d_vocab"]:
        """Final LayerNorm with a given (cached) scale, then its affine weights and the unembedding.

        The normalisation is ``ActivationCache.apply_ln_to_stack``'s: centre ``x`` (LayerNorm
        models only) and divide by ``scale``, the scale of the *full* residual stream at that
        position; then the final LayerNorm's ``w`` and ``b`` (where it has them).
        """
        nt = self.model.cfg.normalization_type
        if nt in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
        if nt in ("LN", "LNPre", "RMS", "RMSPre"):
            x = x / scale
        ln = getattr(self.model, "ln_final", None)
        w = getattr(ln, "w", None)
        if w is not None:
            x = x * w
            b = getattr(ln, "b", None)
            if b is not None:
                x = x + b
        return self.raw(x)


def check_resumable(model: HookedTransformer) -> None:
    """Refuse architectures whose blocks cannot be resumed mid-sequence from cached keys/values."""
    cfg = model.cfg
    problems = []
    if cfg.positional_embedding_type == "shortformer":
        problems.append("shortformer positional embeddings")
    if getattr(cfg, "use_attn_in", False) or getattr(cfg, "use_split_qkv_input", False):
        problems.append("use_attn_in/use_split_qkv_input (per-head inputs)")
    if problems:
        raise ValueError(
            "batched patching resumes blocks from cached residuals and keys/values, which is not "
            f"supported for this model: {', '.join(problems)}"
        )


# -- added for ablation.py / lens.py ---------------------------------------------------------


def final_residual(model: HookedTransformer, tokens: Tensor) -> Float[Tensor, "batch pos d_model"]:
    """Run every block and return the residual stream that enters the final LayerNorm.

    No logits are computed, so callers can unembed only the positions they need (``d_vocab`` may be
    50k). Hooks attached to the model fire as in a normal forward pass.
    """
    return forward(model, tokens, stop_at_layer=model.cfg.n_layers)


def forward(
    model: HookedTransformer, tokens: Tensor, stop_at_layer: int | None = None
) -> Float[Tensor, "batch pos d_out"]:
    """``model(tokens, stop_at_layer=...)`` with TransformerLens 3's meaning on both backends.

    ``stop_at_layer=n_layers`` is the residual entering the final LayerNorm (the bridge would
    return logits there); ``None`` gives the logits.
    """
    return _impl.forward(model, tokens, stop_at_layer)


def final_ln_scale(
    model: HookedTransformer, resid: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... 1"]:
    """The scale the final LayerNorm divides ``resid`` by (TransformerLens ``ln_final.hook_scale``).

    Computed by TransformerLens's own ``ln_final`` on each vector; ones if the model has no final
    normalisation (``normalization_type=None``).
    """
    hp = getattr(getattr(model, "ln_final", None), "hook_scale", None)
    if hp is None:
        return torch.ones(*resid.shape[:-1], 1, dtype=resid.dtype, device=resid.device)
    got: list[Tensor] = []

    def grab(scale: Tensor, hook: HookPoint) -> None:
        got.append(scale)

    shape = resid.shape
    with model.hooks(fwd_hooks=[(hp.name, grab)]):
        model.ln_final(resid.reshape(-1, 1, shape[-1]).to(model.cfg.dtype))
    return got[-1].reshape(*shape[:-1], 1)


def head_outputs(
    model: HookedTransformer,
    layer: int,
    z: Float[Tensor, "... n_heads d_head"],
    bias: bool = True,
) -> Float[Tensor, "... n_heads d_model"]:
    """Each head's contribution to ``attn_out``: ``z_h @ W_O[h]``, plus ``b_O`` if ``bias``.

    With ``bias=True`` every head carries the full output bias (as the paper's pruned-head rows
    do), so ``sum_h out_h - (n_heads - 1) * b_O == attn_out``.
    """
    attn = model.blocks[layer].attn
    out = torch.einsum("...hd,hdm->...hm", z.to(attn.W_O.dtype), attn.W_O)
    b_o = getattr(attn, "b_O", None)  # Llama-style attention has no output bias
    return out + b_o if bias and b_o is not None else out


def head_dims(model: HookedTransformer) -> tuple[int, int]:
    """``(n_heads, d_head)`` of the model's attention layers."""
    return model.cfg.n_heads, model.cfg.d_head


def run_with_hooks(
    model: HookedTransformer,
    tokens: Tensor,
    fwd_hooks: Sequence[tuple[str, Any]],
    stop_at_layer: int | None = None,
) -> Float[Tensor, "batch pos d_out"]:
    """``model.run_with_hooks`` where ``stop_at_layer`` means what it means in TransformerLens 3:
    the residual entering that block, with none of its hooks fired."""
    return _impl.run_with_hooks(model, tokens, list(fwd_hooks), stop_at_layer)


def run_with_cache(
    model: HookedTransformer, tokens: Tensor, names: Iterable[str], stop_at_layer: int | None = None
) -> tuple[Float[Tensor, "batch pos d_out"], ActivationCache]:
    """Forward pass caching only the hooks in ``names`` (caching everything costs memory).

    Returns the logits, or with ``stop_at_layer`` the residual entering that block (``n_layers``:
    the residual entering the final LayerNorm, without computing any logits).
    """
    out, cache = _impl.run_with_cache(model, tokens, set(names), stop_at_layer)
    return cast(Tensor, out), cache


# -- added for pcp_lens.language (HF GPT-2 folders, KV-cached generation) ------------------------


def from_hf(
    hf_model: Any,
    flags: dict[str, bool],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tokenizer: Any | None = None,
    *,
    keep: bool = True,
) -> HookedTransformer:
    """A model of the installed backend with a Hugging Face causal LM's weights.

    ``flags`` are ``from_pretrained``'s weight processing (``fold_ln``, ``center_writing_weights``,
    ``center_unembed``, ``fold_value_biases``); they are recorded on ``model.cfg`` for
    :func:`processing_fingerprint`; ``cfg.tie_word_embeddings`` says whether ``W_U == W_E.T``.
    The ``hooked`` backend converts GPT-2 only. ``keep=True``
    leaves ``hf_model`` as it was; ``keep=False`` lets the bridge wrap it in place (its modules
    become the bridge's, and processing rewrites its weights), for a model read only for this.
    """
    dtype = dtype or next(hf_model.parameters()).dtype
    dev = None if device is None else str(device)
    model = _impl.from_hf(hf_model, flags, dev, dtype, tokenizer, keep=keep)
    # pcp_lens's flag (training keeps W_U = W_E.T): true exactly when they are equal, on both
    # backends (the bridge copies the HF config's, which processing may have made untrue)
    model.cfg.tie_word_embeddings = bool(
        torch.equal(unembed_matrix(model).detach(), embedding_matrix(model).detach().T)
    )
    return model


def load_named(
    name: str,
    flags: dict[str, bool],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedTransformer:
    """A model by hub name, processed as ``flags`` say (needs the hub or its local cache)."""
    return _impl.load_named(name, flags, None if device is None else str(device), dtype)


def check_cached_generation() -> None:
    """Raise if KV-cached generation would give wrong numbers with the installed packages."""
    _impl.check_cached_generation()


def new_kv_cache(model: HookedTransformer, batch: int) -> Any:
    """An empty KV cache for ``batch`` rows on the model's device (see :func:`last_logits`)."""
    check_cached_generation()
    return _impl.new_kv_cache(model, batch)


def last_logits(
    model: HookedTransformer,
    tokens: Tensor,
    final: FinalLogits,
    kv_cache: Any | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only; with ``kv_cache``, ``tokens`` continue the cached ones.

    The blocks run on every position (all block hooks fire as usual); the final LayerNorm and the
    unembedding run on the last position only, through ``final`` (which prepares ``W_U.T`` once:
    TransformerLens's ``Unembed`` copies it on every call, which dominates one decoding step of
    GPT-2). With a cache, only the new tokens are embedded, at positions ``cache length + 0,
    1, ...``, and they attend to every cached position (no padding mask).
    """
    if kv_cache is None:
        resid = final_residual(model, tokens)
    else:
        resid = _impl.cached_residual(model, tokens, kv_cache)
    return final(resid[:, -1:])[:, 0]


def attach_tokenizer(model: HookedTransformer, tokenizer: Any) -> None:
    """Attach a Hugging Face tokenizer, offline (nothing is fetched by its ``name_or_path``)."""
    _impl.attach_tokenizer(model, tokenizer)


_SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx")


def check_same_shape_models(model: HookedTransformer, other: Any, name: str) -> None:
    """Refuse ``other`` unless it has ``model``'s shape (layers, widths, heads, vocabulary).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> check_same_shape_models(tiny_model(), tiny_model(n_layers=3), "reference")
        Traceback (most recent call last):
        ...
        ValueError: reference must have the model's shape; it differs in n_layers: 3 vs 2 ...
    """
    if not is_model(other):
        raise ValueError(f"{name} must be a model, got {type(other).__name__}")
    diff = [
        f"{f}: {getattr(other.cfg, f, None)} vs {getattr(model.cfg, f, None)}"
        for f in _SHAPE_FIELDS
        if getattr(other.cfg, f, None) != getattr(model.cfg, f, None)
    ]
    if diff:
        raise ValueError(
            f"{name} must have the model's shape; it differs in {', '.join(diff)} ({name} vs model)"
        )


def mlp_weights(model: HookedTransformer, layer: int) -> dict[str, Tensor]:
    """Block ``layer``'s MLP weights: ``W_in [d_model d_mlp]``, ``b_in``, ``W_out``, ``b_out``."""
    mlp = model.blocks[layer].mlp
    got = {k: getattr(mlp, k, None) for k in ("W_in", "b_in", "W_out", "b_out")}
    return {k: v for k, v in got.items() if v is not None}  # a bias-free model has no b_in


def attn_weights(model: HookedTransformer, layer: int) -> dict[str, Tensor]:
    """Block ``layer``'s attention parameters: ``W_Q [n_heads d_model d_head]``, ..., ``b_O``."""
    attn = model.blocks[layer].attn
    names = ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")
    got = {k: getattr(attn, k, None) for k in names}
    return {k: v for k, v in got.items() if v is not None}


def unembed_matrix(model: HookedTransformer) -> Float[Tensor, "d_model d_vocab"]:
    """The unembedding ``W_U``."""
    return model.W_U


def final_ln_weight(model: HookedTransformer) -> Float[Tensor, " d_model"] | None:
    """The final LayerNorm's gain ``w`` (``None`` without one, e.g. after ``fold_ln``)."""
    return getattr(model.ln_final, "w", None)


def embedding_matrix(model: HookedTransformer) -> Float[Tensor, "d_vocab d_model"]:
    """The token embedding ``W_E``."""
    return model.W_E


def is_official_model_name(name: str) -> bool:
    """Whether ``HookedTransformer.from_pretrained`` knows ``name`` (an official name or alias).

    Asked before loading so a typo gets one line, not TransformerLens's list of every model.
    ``True`` when this TransformerLens has no such list (it then judges the name itself).

    Examples:
        >>> is_official_model_name("gpt2-medium"), is_official_model_name("gpt3-mediun")
        (True, False)
    """
    try:  # TransformerLens 2.x/3.x
        from transformer_lens import loading_from_pretrained as loading
    except ImportError:  # TransformerLens 4.x keeps the list (and aliases) here
        try:
            from transformer_lens import supported_models as loading
        except ImportError:  # pragma: no cover - a TransformerLens without either module
            return True
    names = getattr(loading, "OFFICIAL_MODEL_NAMES", None)
    aliases = getattr(loading, "MODEL_ALIASES", None)
    if names is None:  # pragma: no cover
        return True
    known = {n.lower() for n in names}
    known |= {a.lower() for v in (aliases or {}).values() for a in v}
    return name.lower() in known

# -- added for attribution.py (gradients, RelP's rules, attention patterns) ----------------------


def pattern_name(layer: int) -> str:
    """The hook of block ``layer``'s attention pattern ``[batch, head, query_pos, key_pos]``."""
    return get_act_name("pattern", layer)


def check_relp(model: HookedTransformer) -> None:
    """Refuse MLPs whose activation is not one elementwise function of one pre-activation."""
    cfg = model.cfg
    problems = []
    if getattr(cfg, "gated_mlp", False):
        problems.append("gated_mlp=True")
    if cfg.act_fn is not None and cfg.act_fn.endswith("_ln"):
        problems.append(f"act_fn={cfg.act_fn!r} (a LayerNorm inside the MLP)")
    if getattr(cfg, "num_experts", None):
        problems.append("mixture-of-experts MLPs")
    if getattr(cfg, "attn_only", False):
        return
    if problems:
        raise ValueError(
            "method='relp' holds each MLP activation at its output/input ratio, which is not "
            f"defined for this model: {', '.join(problems)}"
        )


def relp_hooks(model: HookedTransformer) -> Hooks:
    """RelP's propagation rules as forward hooks that leave every forward value unchanged.

    Every LayerNorm scale (``hook_scale``) and attention pattern is detached, so gradients treat
    them as constants; each MLP activation keeps its value but passes gradient by the ratio
    ``post / pre`` (``act(x) / x``, the derivative at 0 where ``x = 0``), as if it were the
    linear map ``x -> x * act(x) / x`` at this input.
    """
    detach: HookFn = lambda act, hook: act.detach()  # noqa: E731
    hooks: Hooks = [(n, detach) for n in model.hook_dict if n.endswith("hook_scale")]
    for layer in range(model.cfg.n_layers):
        hooks.append((pattern_name(layer), detach))
        if getattr(model.cfg, "attn_only", False):
            continue
        pre: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: HookPoint, pre: dict[str, Tensor] = pre) -> Tensor:
            pre["x"] = act
            return act  # the bridge goes on from a hook's return value only (docs/tl4.md)

        def ratio(act: Tensor, hook: HookPoint, pre: dict[str, Tensor] = pre) -> Tensor:
            x = pre.pop("x")
            small = x.abs() < 1e-6
            slope = torch.where(small, torch.full_like(x, 0.5), act / torch.where(small, 1.0, x))
            lin = x * slope.detach()
            # the value stays ``act`` bit for bit; the gradient is that of ``lin``
            return act.detach() + (lin - lin.detach())

        hooks += [(f"blocks.{layer}.mlp.hook_pre", keep), (f"blocks.{layer}.mlp.hook_post", ratio)]
    return hooks


class _Reached(Exception):
    """Raised by :func:`block_activations` once it has every activation, to skip the rest."""


def block_activations(
    model: HookedTransformer,
    layer: int,
    resid: Float[Tensor, "batch pos d_model"],
    names: Sequence[str],
    past_kv: tuple[Tensor, Tensor] | None = None,
) -> list[Tensor]:
    """The activations ``names`` of block ``layer`` on a residual stream, by its own forward.

    ``past_kv`` as in :func:`run_blocks`. The block stops as soon as the last of ``names`` has
    fired, so what follows it is not computed; the user's hooks on those names fire first.
    """
    got: dict[str, Tensor] = {}

    def grab(name: str) -> Callable[[Tensor, HookPoint], None]:
        # keyed by the name asked for: the bridge's ``hook.name`` may be a canonical alias
        def hook(act: Tensor, hook: HookPoint) -> None:
            got[name] = act
            if len(got) == len(names):
                raise _Reached

        return hook

    try:
        with model.hooks(fwd_hooks=[(nm, grab(nm)) for nm in names]):
            run_blocks(model, resid, layer, layer + 1, [past_kv])
    except _Reached:
        pass
    return [got[nm] for nm in names]


def attention_patterns(
    model: HookedTransformer,
    layer: int,
    resid: Float[Tensor, "batch pos d_model"],
    past_kv: tuple[Tensor, Tensor] | None = None,
) -> Float[Tensor, "batch head pos key_pos"]:
    """Block ``layer``'s attention pattern on a residual stream, by TransformerLens's own block.

    ``past_kv`` as in :func:`run_blocks` (the query positions then continue after the cached
    ones, and the pattern has ``prefix + pos`` key positions). The block stops once the pattern
    is computed: its value and MLP parts are not needed.
    """
    return block_activations(model, layer, resid, [pattern_name(layer)], past_kv)[0]


def block_kv(
    model: HookedTransformer,
    layer: int,
    resid: Float[Tensor, "batch pos d_model"],
    past_kv: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Block ``layer``'s keys and values at ``resid``'s positions, as its KV cache stores them.

    Only the attention's input projections run (the block stops there); ``past_kv`` as in
    :func:`run_blocks`, for models whose keys depend on the position.
    """
    k, v = block_activations(model, layer, resid, kv_hook_names(layer), past_kv)
    return k, v
