"""Checkpoints: a model's weights (safetensors), config (JSON) and tokenizer in one folder.

:func:`save_checkpoint` writes a folder atomically; :func:`load_checkpoint` reads it back, checks
every field of ``config.json``, every weight and the tokenizer, and names the file and field at
fault; nothing is unpickled. GPT-2-style tied embeddings (:func:`tie_embeddings`) are part of the
model config, so they live here too (training keeps them tied).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcp_lens import _tl
from pcp_lens._io import atomic_dir, check_format, package_version
from pcp_lens._tl import HookedTransformer, HookedTransformerConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "check_tied",
    "config_from_json",
    "config_to_json",
    "is_tied",
    "load_checkpoint",
    "save_checkpoint",
    "shares_embeddings",
    "tie_embeddings",
]

#: ``format`` entry of a checkpoint's ``config.json``.
CHECKPOINT_FORMAT = "pcp_lens.checkpoint"
CHECKPOINT_VERSION = 1
_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"
_TOKENIZER = "tokenizer"
# size fields of a model config: ints >= 1 where given (the first five must be given)
_REQUIRED_INTS = ("n_layers", "d_model", "n_ctx", "d_vocab")
_POSITIVE_INTS = (*_REQUIRED_INTS, "d_head", "n_heads", "d_mlp")


def is_tied(model: HookedTransformer) -> bool:
    """Whether the model declares GPT-2-style tied embeddings (``cfg.tie_word_embeddings``).

    TransformerLens's ``HookedTransformer`` always has a separate ``W_U``; a model that declares
    tying must hold ``W_U == W_E.T`` (checked by :func:`train`), and :func:`train` keeps it so:
    the two gradients are summed into one update of the shared matrix, as in GPT-2.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> is_tied(tiny_model())
        False
    """
    return bool(getattr(model.cfg, "tie_word_embeddings", False))


def check_tied(model: HookedTransformer) -> None:
    """Raise ``ValueError`` if the model declares tied embeddings but ``W_U != W_E.T``."""
    w_e, w_u = model.embed.W_E, model.unembed.W_U
    if w_e.shape[::-1] != w_u.shape or not torch.equal(w_e.detach().T, w_u.detach()):
        raise ValueError(
            "model.cfg.tie_word_embeddings is True but unembed.W_U != embed.W_E.T; tie them "
            "first (pcp_lens.training.tie_embeddings(model))"
        )


def tie_embeddings(model: HookedTransformer) -> HookedTransformer:
    """Tie the unembedding to the token embedding, GPT-2 style, in place; return the model.

    Sets ``W_U = W_E.T`` (copied) and ``model.cfg.tie_word_embeddings = True``, which
    :func:`train`, freezing and checkpoints honour. ``b_U`` is left as it is (GPT-2's LM head has
    no bias; TransformerLens's has one).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tie_embeddings(tiny_model())
        >>> is_tied(m), torch.equal(m.unembed.W_U, m.embed.W_E.T)
        (True, True)
    """
    w_e, w_u = model.embed.W_E, model.unembed.W_U
    if w_e.shape[::-1] != w_u.shape:
        raise ValueError(
            f"cannot tie: W_E is {tuple(w_e.shape)} but W_U is {tuple(w_u.shape)} "
            "(d_vocab_out must equal d_vocab)"
        )
    with torch.no_grad():
        w_u.copy_(w_e.T)
    model.cfg.tie_word_embeddings = True
    return model


def shares_embeddings(model: HookedTransformer) -> bool:
    """Whether ``unembed.W_U`` is a view of ``embed.W_E``'s own parameter, not a copy kept equal.

    A Hugging Face GPT-2 on the bridge backend (TransformerLens 4) has its LM head tied that way;
    a ``HookedTransformer`` and pcp_lens's toy models never do. Checkpoints record it, so a
    reloaded model has the same parameters (``model.parameters()`` counts the matrix once).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> shares_embeddings(tiny_model())
        False
    """
    leaves = _tl.parameter_leaves(model)
    return _tl.W_E_NAME in leaves and leaves.get(_tl.W_U_NAME) is leaves[_tl.W_E_NAME]


def _jsonable(v: Any) -> tuple[bool, Any]:
    if v is None or isinstance(v, bool | str):
        return True, v
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, int | float):
        return (True, v) if not (isinstance(v, float) and not math.isfinite(v)) else (False, None)
    if isinstance(v, list | tuple):
        items = [_jsonable(x) for x in v]
        return (all(ok for ok, _ in items), [x for _, x in items])
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        items = {k: _jsonable(x) for k, x in v.items()}
        return (all(ok for ok, _ in items.values()), {k: x for k, (_, x) in items.items()})
    return False, None


def config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The JSON-serialisable init fields of a config (``dtype`` as e.g. ``"float32"``).

    Fields whose value is not JSON-serialisable are left out; they are listed under
    ``"_dropped"`` so that loading can say what was lost.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> d = config_to_json(tiny_model().cfg)
        >>> d["d_model"], d["dtype"], d["_dropped"]
        (16, 'float32', [])
    """
    out: dict[str, Any] = {}
    dropped = []
    for name in _tl.config_fields():
        v = getattr(cfg, name)
        if name == "dtype":
            out["dtype"] = str(v).removeprefix("torch.")
            continue
        if name == "device" and v is not None:
            out["device"] = str(v)
            continue
        ok, j = _jsonable(v)
        if ok:
            out[name] = j
        else:
            dropped.append(name)
    out["_dropped"] = dropped
    return out


def config_from_json(
    d: Mapping[str, Any], device: str | torch.device | None = None
) -> HookedTransformerConfig:
    """Rebuild a config from :func:`config_to_json` output, with clear errors.

    Args:
        d: The JSON object.
        device: Put the model here instead of the saved device (``None``: keep the saved device
            if it is available, else TransformerLens's default choice).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> cfg = tiny_model().cfg
        >>> config_from_json(config_to_json(cfg)).d_vocab == cfg.d_vocab
        True
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"model config must be a JSON object, got {type(d).__name__}")
    init = set(_tl.config_fields())
    kw = {k: v for k, v in d.items() if k != "_dropped"}
    unknown = sorted(set(kw) - init)
    if unknown:
        raise ValueError(
            f"model config has fields this TransformerLens does not know: {unknown} (saved with "
            "another TransformerLens version, or not a pcp_lens checkpoint)"
        )
    missing = [k for k in ("n_layers", "d_model", "n_ctx", "d_vocab", "act_fn") if k not in kw]
    if missing:
        raise ValueError(f"model config lacks required fields: {missing}")
    for k in _POSITIVE_INTS:
        v = kw.get(k)
        if (k in _REQUIRED_INTS or v is not None) and (
            isinstance(v, bool) or not isinstance(v, int) or v < 1
        ):
            raise ValueError(f"model config field {k!r} must be an int >= 1, got {v!r}")
    if not isinstance(kw["act_fn"], str):
        raise ValueError(f"model config field 'act_fn' must be a string, got {kw['act_fn']!r}")
    dtype_name = kw.pop("dtype", "float32")
    dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"model config field 'dtype' must name a torch floating-point dtype (e.g. "
            f"'float32'), got {dtype_name!r}"
        )
    kw["dtype"] = dtype
    if device is not None:
        kw["device"] = str(device)
    elif kw.get("device") is not None and not _device_available(str(kw["device"])):
        kw["device"] = None
    try:
        return HookedTransformerConfig(**kw)
    except Exception as e:  # TransformerLens checks fields with asserts, TypeErrors and more
        raise ValueError(f"model config is invalid: {type(e).__name__}: {e}") from e


def _device_available(device: str) -> bool:
    try:
        d = torch.device(device)
    except RuntimeError:
        return False
    if d.type == "cpu":
        return True
    mod = getattr(torch, d.type, None)
    return bool(mod is not None and getattr(mod, "is_available", lambda: False)())


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint: the model (tokenizer attached), the tokenizer and ``extra``."""

    model: HookedTransformer
    tokenizer: Any | None
    extra: dict[str, Any]
    path: Path


def _is_checkpoint_dir(path: Path) -> bool:
    try:
        meta = json.loads((path / _CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT


def save_checkpoint(
    model: HookedTransformer,
    directory: str | os.PathLike[str],
    tokenizer: Any | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save weights (safetensors), config (JSON), tokenizer and ``extra`` to a folder, atomically.

    Layout: ``model.safetensors`` (the full ``state_dict``), ``config.json`` (``format``,
    ``format_version``, the model config via :func:`config_to_json`, ``extra``, and
    ``shared_embeddings: true`` where :func:`shares_embeddings`) and, if a
    tokenizer is given (default: ``model.tokenizer``), ``tokenizer/`` via ``save_pretrained``.
    Everything is written to a temporary folder beside ``directory`` and renamed into place, so
    a crash never leaves a half-written checkpoint. An existing ``directory`` is replaced only if
    it is an earlier checkpoint or empty; anything else raises ``FileExistsError``.

    Args:
        model: The model.
        directory: Target folder.
        tokenizer: Tokenizer to save (``None``: the model's, if any; ``False``: none).
        extra: JSON-serialisable metadata (e.g. the training history), returned by
            :func:`load_checkpoint`.

    Examples:
        >>> import tempfile, os
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_checkpoint(m, os.path.join(d, "ckpt"), extra={"note": "hi"})
        ...     ck = load_checkpoint(p)
        ...     torch.equal(ck.model.embed.W_E, m.embed.W_E), ck.extra
        (True, {'note': 'hi'})
    """
    from safetensors.torch import save_file


    target = Path(directory)
    extra_d = dict(extra) if extra is not None else {}
    try:
        extra_json = json.loads(json.dumps(extra_d, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"extra must be JSON-serialisable: {e}") from e
    if target.exists() and not (
        target.is_dir() and (_is_checkpoint_dir(target) or not any(target.iterdir()))
    ):
        raise FileExistsError(
            f"{str(target)!r} exists and is not a pcp_lens checkpoint; refusing to replace it"
        )
    tok = model.tokenizer if tokenizer is None else (None if tokenizer is False else tokenizer)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "pcp_lens_version": package_version(),
        "model_config": config_to_json(model.cfg),
        "tokenizer": None
        if tok is None
        else {
            "class": type(tok).__name__,
            "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
        },
        "extra": extra_json,
    }
    if shares_embeddings(model):  # written only then: other checkpoints stay as they were
        meta["shared_embeddings"] = True
    with atomic_dir(target) as tmp:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / _WEIGHTS), metadata={"format": CHECKPOINT_FORMAT})
        if tok is not None:
            tok.save_pretrained(str(tmp / _TOKENIZER))
        (tmp / _CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return target


def load_checkpoint(
    directory: str | os.PathLike[str], device: str | torch.device | None = None
) -> Checkpoint:
    """Load a folder written by :func:`save_checkpoint`; never unpickles.

    Args:
        directory: The checkpoint folder.
        device: Where to put the model (``None``: the saved device if available, else
            TransformerLens's default).

    Returns:
        A :class:`Checkpoint`; its model is in eval mode with the tokenizer attached.

    Raises:
        FileNotFoundError: No checkpoint at ``directory``.
        ValueError: ``config.json`` is malformed or of another format, or the weights do not
            match the config (missing, unexpected, wrong shape or dtype).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    cfg_file, w_file = path / _CONFIG, path / _WEIGHTS
    if not cfg_file.is_file() or not w_file.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (needs {_CONFIG} and {_WEIGHTS})")

    def bad(msg: str) -> ValueError:
        return ValueError(f"checkpoint {str(path)!r}: {msg}")

    try:
        meta = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"{_CONFIG} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise bad(f"{_CONFIG} must hold a JSON object, got {type(meta).__name__}")
    check_format(meta, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, bad)
    try:
        cfg = config_from_json(meta.get("model_config"), device=device)  # type: ignore[arg-type]
    except ValueError as e:
        raise bad(f"{_CONFIG}: {e}") from e
    try:
        state = load_file(str(w_file), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise bad(f"{_WEIGHTS} is not a readable safetensors file: {e}") from e

    tok = None
    tok_meta = meta.get("tokenizer")
    if tok_meta is not None:
        if not isinstance(tok_meta, dict):
            raise bad(
                f"{_CONFIG} field 'tokenizer' must be null or an object "
                f"{{'class': ..., 'add_bos_token': ...}}, got {tok_meta!r}"
            )
        if not (path / _TOKENIZER).is_dir():
            raise bad(f"config names a tokenizer but the {_TOKENIZER}/ folder is missing")
        from transformers import AutoTokenizer

        kw = {"add_bos_token": True} if tok_meta.get("add_bos_token") else {}
        try:
            tok = AutoTokenizer.from_pretrained(
                str(path / _TOKENIZER), local_files_only=True, **kw
            )
        except Exception as e:  # corrupted files raise JSON, OS, value or plain Exceptions
            raise bad(
                f"the tokenizer in {_TOKENIZER}/ cannot be loaded ({type(e).__name__}: {e})"
            ) from e

    shared = meta.get("shared_embeddings", False)
    if not isinstance(shared, bool):
        raise bad(f"{_CONFIG} field 'shared_embeddings' must be true or false, got {shared!r}")
    kw: dict[str, Any] = {"shared_embeddings": True} if shared else {}
    if tok is not None:
        kw["tokenizer"] = tok
    try:
        # without the shared matrix a reloaded tied GPT-2 would have two (the same model, but
        # not the same parameters: a rerun reusing it would report another parameter count)
        model = _tl.new_model(cfg, **kw)
    except Exception as e:  # a config TransformerLens accepts may still fail to build
        raise bad(f"{_CONFIG} 'model_config' cannot build a model ({type(e).__name__}: {e})") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise bad(
            f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in expected.items():
        if v.shape != state[k].shape or v.dtype != state[k].dtype:
            raise bad(
                f"tensor {k!r} is {state[k].dtype} {tuple(state[k].shape)}, the config expects "
                f"{v.dtype} {tuple(v.shape)}"
            )
    model.load_state_dict(state, strict=True)
    if is_tied(model):
        try:
            check_tied(model)
        except ValueError:
            raise bad(
                "the config declares tied embeddings (tie_word_embeddings) but the saved "
                "weights have unembed.W_U != embed.W_E.T"
            ) from None
    model.eval()
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict):
        raise bad(f"'extra' must be a JSON object, got {type(extra).__name__}")
    return Checkpoint(model=model, tokenizer=tok, extra=extra, path=path)
