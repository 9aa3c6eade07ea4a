"""Streaming mean and covariance of hook points over an input set.

Each batch's activations are reduced to (count, mean, centred scatter) inside the hook and merged
into float64 accumulators with Chan's parallel update, so peak memory is one batch of activations
plus O(d_model²) per site, however many inputs pass through. The forward pass stops after the last
layer that any requested site needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, TokenBatch, as_tokens
from pcp_lens.scoring import Positions, check_positions
from pcp_lens.sites import Site, SiteLike


@dataclass(frozen=True)
class ActivationStats:
    """Mean and (unbiased) covariance of one activation, in float64.

    Examples:
        >>> m = RunningMoments(2); m.update(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> s = m.result(); s.n, s.mean.tolist(), s.cov.tolist()
        (2, [1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
    """

    n: int
    mean: Float[Tensor, " d"]
    cov: Float[Tensor, "d d"] | None

    @property
    def std(self) -> Float[Tensor, " d"]:
        """Per-dimension standard deviation."""
        if self.cov is None:
            raise ValueError("these statistics were collected with cov=False")
        return self.cov.diagonal().clamp_min(0).sqrt()


class RunningMoments:
    """Float64 running count, mean and centred scatter of row vectors (Chan et al. merge).

    Examples:
        >>> m = RunningMoments(3)
        >>> for chunk in torch.randn(100, 3, dtype=torch.float64).split(7):
        ...     m.update(chunk)
        >>> m.result().n
        100
    """

    def __init__(self, d: int, cov: bool = True, device: torch.device | str | None = None):
        self.d = d
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(d, d, dtype=torch.float64, device=device) if cov else None

    def update(self, x: Float[Tensor, "n d"]) -> None:
        """Add rows ``x``; raises ``ValueError`` on non-finite values."""
        if x.shape[-1] != self.d:
            raise ValueError(f"expected rows of width {self.d}, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.d).to(device=self.mean.device, dtype=torch.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        if not torch.isfinite(x).all():
            raise ValueError("non-finite activations (nan or inf) reached the statistics")
        mb = x.mean(0)
        delta = mb - self.mean
        n = self.n + nb
        if self.m2 is not None:
            xc = x - mb
            self.m2 += xc.T @ xc + torch.outer(delta, delta) * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    def result(self) -> ActivationStats:
        """The statistics so far (covariance divides by n - 1)."""
        if self.n == 0:
            raise ValueError("no activations were collected (empty inputs or no valid positions)")
        cov = None
        if self.m2 is not None:
            cov = self.m2 / max(self.n - 1, 1)
        return ActivationStats(self.n, self.mean.clone(), cov)


def _key_of(spec: SiteLike) -> tuple[str, Site | None]:
    """Hook name (and Site, if any) for a site or a raw hook name."""
    if isinstance(spec, Site):
        return spec.hook_name, spec
    try:
        site = Site.parse(spec)
        return site.hook_name, site
    except ValueError:
        return spec, None  # a raw hook name such as 'blocks.0.ln2.hook_normalized'


def _stop_layer(model: HookedTransformer, names: Iterable[str]) -> int | None:
    last = -1
    for name in names:
        if name not in model.hook_dict:
            raise ValueError(f"unknown hook point {name!r} for this model")
        if name.startswith("blocks."):
            last = max(last, int(name.split(".")[1]))
        elif name.startswith(("ln_final", "unembed")):
            return None
    return last + 1 if last + 1 < model.cfg.n_layers else None


def stream_activations(
    model: HookedTransformer,
    tokens: TokenBatch,
    hook_names: Sequence[str],
    positions: Positions = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Iterator[dict[str, Float[Tensor, "n d"]]]:
    """Yield, batch by batch, each hook's activations at the chosen real positions as rows.

    Positions may be negative (counted from each row's own last real token). Heads' ``hook_z``
    activations are flattened to ``n_heads * d_head`` columns.
    """
    stop = _stop_layer(model, hook_names)
    positions = check_positions(positions)
    batches = list(tokens.batches(batch_size))
    for tb in tqdm(batches, desc="activations", disable=not progress, leave=False):
        rows = position_mask(tb, positions)
        got: dict[str, Tensor] = {}

        def grab(
            act: Tensor, hook: _tl.HookPoint, got: dict[str, Tensor] = got, rows: Tensor = rows
        ) -> None:
            got[hook.name] = act.reshape(act.shape[0], act.shape[1], -1)[rows]  # type: ignore[index]

        with torch.no_grad():
            _tl.run_with_hooks(model, tb.tokens, [(n, grab) for n in hook_names], stop)
        yield got


def position_mask(tb: TokenBatch, positions: Positions) -> Bool[Tensor, "batch pos"]:
    """Bool ``[batch, pos]``: real positions that are among ``positions`` (all if None).

    Negative positions count from each row's own last real token (rows may be padded).

    Examples:
        >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
        >>> tb = TokenBatch(torch.zeros(2, 3, dtype=torch.long), mask)
        >>> position_mask(tb, -1).int().tolist()
        [[0, 0, 1], [0, 1, 0]]
    """
    ps = check_positions(positions)
    if ps is None:
        return tb.mask
    lengths = tb.mask.sum(1)
    sel = torch.zeros_like(tb.mask)
    for p in ps:
        idx = torch.where(torch.tensor(p >= 0, device=lengths.device), p, lengths + p)
        if ((idx < 0) | (idx >= lengths)).any():
            n = int(lengths.min())
            raise ValueError(
                f"positions: position out of range: {p}; the shortest sequence has {n} tokens, "
                f"allowed positions are 0..{n - 1} or -{n}..-1"
            )
        sel[torch.arange(len(idx), device=sel.device), idx] = True
    return sel


def collect_stats(
    model: HookedTransformer,
    inputs: Inputs,
    sites: SiteLike | Iterable[SiteLike],
    positions: Positions = None,
    batch_size: int = 32,
    cov: bool = True,
    progress: bool = True,
) -> dict[str, ActivationStats]:
    """Mean and covariance of each site's output over ``inputs``, without storing activations.

    Args:
        model: the model to run.
        inputs: tokens ``[batch, pos]`` or strings; unequal lengths are right-padded and the padding
            is excluded.
        sites: sites (``"mlp0"``, ``Site(1, "attn")``) or raw hook names.
        positions: positions to include (pooled): an int or distinct ints; ``None`` pools every
            real position. Negative positions count from each sequence's own end.
        batch_size: rows per forward pass.
        cov: also accumulate the ``d × d`` covariance (turn off to save memory for mean ablation).
        progress: show a tqdm bar.

    Returns:
        ``{name: ActivationStats}`` keyed by the site's short name (or the raw hook name).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> st = collect_stats(model, torch.randint(0, 50, (8, 6)), ["mlp0"], positions=[1])
        >>> st["mlp0"].n, tuple(st["mlp0"].cov.shape)
        (8, (16, 16))
    """
    specs = [sites] if isinstance(sites, (str, Site)) else list(sites)
    keyed: dict[str, str] = {}
    for spec in specs:
        hook, site = _key_of(spec)
        if site is not None:
            site.validate(model)
            if site.head is not None:
                raise ValueError(f"statistics of single heads are not supported: {site.name!r}")
        keyed[site.name if site is not None else hook] = hook
    tb = as_tokens(model, inputs, allow_ragged=True)
    hooks = sorted(set(keyed.values()))
    acc: dict[str, RunningMoments] = {}
    for got in stream_activations(model, tb, hooks, positions, batch_size, progress):
        for h, x in got.items():
            if h not in acc:
                acc[h] = RunningMoments(x.shape[-1], cov=cov, device=x.device)
            acc[h].update(x)
    return {k: acc[h].result() for k, h in keyed.items()}


def check_finite(stats: Mapping[str, ActivationStats]) -> None:
    """Raise ``ValueError`` naming any statistics with non-finite entries."""
    for k, s in stats.items():
        bad_cov = s.cov is not None and not bool(torch.isfinite(s.cov).all())
        if bad_cov or not bool(torch.isfinite(s.mean).all()):
            raise ValueError(f"statistics for {k!r} contain non-finite values (nan or inf)")
