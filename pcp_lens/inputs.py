"""Turning user inputs (strings or token tensors) into checked token batches.

Position-reading techniques (ablation tables, lenses, patching) need every sequence to have the same
length, because "the last position" must mean the same token in every row; they refuse ragged input
instead of padding it silently. Statistics collection pads on the right and masks the padding out,
which is exact for causal models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from pcp_lens._tl import HookedTransformer

#: token ids ``[batch, pos]``, one string, strings, or 1-d token-id rows
Inputs = Int[Tensor, "batch pos"] | str | Sequence[str] | Sequence[Int[Tensor, " pos"]]


@dataclass(frozen=True)
class TokenBatch:
    """Tokens ``[batch, pos]`` with a mask of real (non-padding) positions."""

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]

    @property
    def ragged(self) -> bool:
        """True if some row is padded."""
        return not bool(self.mask.all())

    def batches(self, batch_size: int) -> Iterator[TokenBatch]:
        """Split into consecutive batches of at most ``batch_size`` rows."""
        check_batch_size(batch_size)
        for i in range(0, self.tokens.shape[0], batch_size):
            yield TokenBatch(self.tokens[i : i + batch_size], self.mask[i : i + batch_size])


def check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
    """Return ``batch_size`` if it is an int >= 1, else raise ``ValueError`` naming ``name``.

    Examples:
        >>> check_batch_size(0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be an int >= 1, got 0
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {batch_size!r}")
    return batch_size


def check_token_dtype(tokens: Tensor, name: str = "inputs") -> None:
    """Refuse float, complex and bool tensors as tokens (a bool tensor is not ids 0 and 1).

    Examples:
        >>> check_token_dtype(torch.tensor([[True, False]]))
        Traceback (most recent call last):
        ...
        ValueError: inputs must be an integer tensor of token ids [batch, pos], got torch.bool
    """
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(
            f"{name} must be an integer tensor of token ids [batch, pos], got {tokens.dtype}"
        )


def as_tokens(
    model: HookedTransformer,
    inputs: Inputs,
    *,
    allow_ragged: bool = False,
    prepend_bos: bool | None = None,
    name: str = "inputs",
) -> TokenBatch:
    """Tokenize strings (or check a token tensor) and put them on the model's device.

    Args:
        model: supplies the tokenizer, ``d_vocab`` and device.
        inputs: a ``[batch, pos]`` integer tensor, a string, a list of strings or of 1-d tensors.
        allow_ragged: right-pad unequal lengths and return a mask; otherwise unequal lengths raise.
        prepend_bos: passed to ``model.to_tokens`` (default: the model's own setting).
        name: the argument name used in error messages.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> as_tokens(tiny_model(), torch.tensor([[1, 2], [3, 4]])).tokens.shape
        torch.Size([2, 2])
    """
    if isinstance(inputs, Tensor):
        if inputs.dim() == 1:
            inputs = inputs[None]
        check_token_dtype(inputs, name)
        if inputs.dim() != 2:
            raise ValueError(
                f"{name} must be an integer tensor [batch, pos], got {inputs.dtype} of shape "
                f"{tuple(inputs.shape)}"
            )
        if inputs.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        if inputs.shape[1] == 0:
            raise ValueError(f"{name} contains an empty sequence")
        # a rectangular tensor needs no padding: one copy, no per-row Python objects
        tokens = inputs.to("cpu", torch.long, copy=True)
        mask = torch.ones(tokens.shape, dtype=torch.bool)
    else:
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, Sequence):
            raise ValueError(
                f"{name} must be a token tensor [batch, pos], a string or a list of strings or of "
                f"1-d token tensors, got {type(inputs).__name__}"
            )
        if len(inputs) == 0:
            raise ValueError(f"{name} is empty")
        if all(isinstance(x, str) for x in inputs):
            if model.tokenizer is None:
                raise ValueError(f"{name} are strings but the model has no tokenizer; pass tokens")
            rows = [_tokenize(model, x, prepend_bos, f"{name}[{i}]") for i, x in enumerate(inputs)]  # type: ignore[arg-type]
        elif all(isinstance(x, Tensor) for x in inputs):
            rows = [torch.as_tensor(x).flatten() for x in inputs]
            for i, r in enumerate(rows):
                check_token_dtype(r, f"{name}[{i}]")
        else:
            raise ValueError(f"{name} must be strings or token tensors, not a mix")
        tokens, mask = _pad(rows, allow_ragged, name)
    bad = tokens[(tokens < 0) | (tokens >= model.cfg.d_vocab)]
    if bad.numel():
        raise ValueError(
            f"{name} contain token ids out of range: {bad.unique()[:5].tolist()}; allowed "
            f"0..{model.cfg.d_vocab - 1} (d_vocab={model.cfg.d_vocab})"
        )
    device = model.cfg.device
    return TokenBatch(tokens.to(device), mask.to(device))


def _tokenize(
    model: HookedTransformer, text: str, prepend_bos: bool | None, name: str
) -> Int[Tensor, " pos"]:
    try:
        return model.to_tokens(text, prepend_bos=prepend_bos)[0]
    except Exception as e:  # tokenizers raise bare Exceptions for words they lack
        raise ValueError(
            f"{name} = {text!r} cannot be tokenized by the model's tokenizer ({e}); pass text "
            "its vocabulary covers, or token ids"
        ) from e


def _pad(rows: list[Tensor], allow_ragged: bool, name: str) -> tuple[Tensor, Tensor]:
    """Right-pad 1-d token rows into ``[batch, pos]`` tokens and a mask of real positions."""
    if len(rows) == 0:
        raise ValueError(f"{name} is empty")
    lengths = torch.tensor([len(r) for r in rows])
    if lengths.min() < 1:
        raise ValueError(f"{name} contains an empty sequence")
    if not allow_ragged and (lengths != lengths[0]).any():
        raise ValueError(
            f"{name} have unequal lengths {sorted(set(lengths.tolist()))} (in tokens); this "
            "function reads fixed positions, so pass sequences of equal length (e.g. group your "
            "prompts by token length) — padding them would silently shift 'the last position'"
        )
    n, p = len(rows), int(lengths.max())
    tokens = torch.zeros(n, p, dtype=torch.long)
    mask = torch.zeros(n, p, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r.long().cpu()
        mask[i, : len(r)] = True
    return tokens, mask


def check_same_shape(a: TokenBatch, b: TokenBatch, names: tuple[str, str]) -> None:
    """Refuse paired batches (clean/corrupted, source/target) of different shapes."""
    if a.tokens.shape != b.tokens.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape [batch, pos], got "
            f"{tuple(a.tokens.shape)} and {tuple(b.tokens.shape)}"
        )


def named_sets(inputs: Inputs | Mapping[str, Inputs], default: str = "inputs") -> dict[str, Any]:
    """``{name: inputs}`` from one input set (named ``default``) or a non-empty mapping.

    Examples:
        >>> list(named_sets(["a b"])), list(named_sets({"pp": ["a"], "pt": ["b"]}))
        (['inputs'], ['pp', 'pt'])
    """
    if isinstance(inputs, Mapping):
        if not inputs:
            raise ValueError("inputs is an empty mapping; name at least one input set")
        return dict(inputs)
    return {default: inputs}
