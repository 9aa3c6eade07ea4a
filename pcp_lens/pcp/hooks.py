"""The forward hooks that insert a PCP replacement: ``y = x·M (+ b)`` in place of a module's output.

:meth:`pcp_lens.PCPReplacement.hooks` returns :func:`site_hooks` for each replaced site; the map is
applied in factored form (:class:`FactoredMap`), never as a dense ``d_model × d_model`` matrix.
Both take plain tensors, not the replacement value, so this module imports no other
:mod:`pcp_lens.pcp` module.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer, Hooks
from pcp_lens.sites import Site

__all__ = ["FactoredMap", "site_hooks"]


class FactoredMap:
    """û ``[r, d]``, α ``[r]``, b ``[d]`` and the read vectors ``[r, d]`` of one site in one dtype,
    cached per device.

    ``x·M (+ b)`` is computed as ``((x·Bᵀ)·diag(α))·Û (+ b)``: 4·d·r flops per position instead of
    the d² of a dense M. The read vectors B are Û itself for the paper's symmetric M.

    Examples:
        >>> fac = FactoredMap(torch.eye(3)[:1], torch.tensor([2.0]), None, torch.float32)
        >>> fac(torch.tensor([[1.0, 1.0, 1.0]]))
        tensor([[2., 0., 0.]])
    """

    def __init__(
        self,
        directions: Float[Tensor, "r d_model"],
        scales: Float[Tensor, " r"],
        bias: Float[Tensor, " d_model"] | None,
        dtype: torch.dtype,
        reads: Float[Tensor, "r d_model"] | None = None,
    ) -> None:
        self.dtype = dtype
        self._cpu = (
            directions.to(dtype),
            scales.to(dtype),
            None if bias is None else bias.to(dtype),
            (directions if reads is None else reads).to(dtype),
        )
        self._on: dict[torch.device, tuple[Tensor, Tensor, Tensor | None, Tensor]] = {}

    def on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        if device not in self._on:
            self._on[device] = tuple(  # type: ignore[assignment]
                None if t is None else t.to(device) for t in self._cpu
            )
        return self._on[device]

    def finish(self, z: Float[Tensor, "... r"]) -> Float[Tensor, "... d_model"]:
        """From coordinates ``z = x·Bᵀ`` to ``x·M (+ b)``."""
        u, alpha, b, _ = self.on(z.device)
        y = (z * alpha) @ u
        return y if b is None else y + b

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        reads = self.on(x.device)[3]
        return self.finish(x.to(self.dtype) @ reads.T)


def site_hooks(model: HookedTransformer, site: Site, fac: FactoredMap) -> Hooks:
    """The capture and replace hooks of one site (see :meth:`pcp_lens.PCPReplacement.hooks`)."""
    kind, layer = site.kind, site.layer
    assert layer is not None
    state: dict[str, Tensor] = {}

    def pcp_capture(act: Tensor, hook: Any) -> None:
        # attention runs its LayerNorm once each for queries, keys and values: keep the last
        state["x"] = act

    def pcp_replace(act: Tensor, hook: Any) -> Tensor:
        normalized = state.pop("x", None)
        if normalized is None:
            raise RuntimeError(
                f"PCP hook on {site.hook_name} found no module input: the capture hook on "
                f"{site.input_hook_name} must be attached too and fire first in the same forward"
            )
        if normalized.shape != act.shape:
            raise RuntimeError(
                f"PCP at site {site.name!r}: module input of shape {tuple(normalized.shape)} "
                f"does not match the module output {tuple(act.shape)} (per-head inputs such as "
                "use_split_qkv_input are not supported)"
            )
        # The module input x = module_input(n) is an affine map of the normalised vector n
        # (n ⊙ w + b for LayerNorm): fold it into the r directions instead of materialising x,
        # x·bᵀ = n·(module_input(b) − module_input(0))ᵀ + module_input(0)·bᵀ for each read
        # vector b. It is re-read on every call, so hooks follow LayerNorm weights that change
        # while they are attached.
        reads = fac.on(normalized.device)[3]
        x0 = _tl.module_input(model, kind, layer, normalized.new_zeros(normalized.shape[-1]))
        r_in = (_tl.module_input(model, kind, layer, reads) - x0).to(fac.dtype)
        z = normalized.to(fac.dtype) @ r_in.T + x0.to(fac.dtype) @ reads.T
        return fac.finish(z).to(act.dtype)

    return [(site.input_hook_name, pcp_capture), (site.hook_name, pcp_replace)]
