"""The means that mean ablation replaces a site's output by (METHODS §5.1).

:func:`ablation_means` is the plain mean over all inputs (the paper's intent);
:func:`mean_reference_code` reproduces what the paper's code computed (:func:`nested_average`).
Both stream float64 statistics (:func:`pcp_lens.collect_stats`). Re-exported by
:mod:`pcp_lens.ablation`, whose hooks and sweep take them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import Inputs, named_sets
from pcp_lens.scoring import Positions, check_positions
from pcp_lens.sites import Site, SiteLike, as_sites
from pcp_lens.stats import collect_stats

__all__ = ["ablation_means", "mean_reference_code", "nested_average"]


def _per_set_means(
    model: HookedTransformer,
    inputs: Inputs | Mapping[str, Inputs],
    sites: SiteLike | Iterable[SiteLike],
    positions: Positions,
    batch_size: int,
    progress: bool,
) -> tuple[list[Site], list[tuple[int, dict[str, Tensor]]]]:
    """Per input set: (count, {site name: float64 mean}), via streaming statistics."""
    ss = as_sites(sites, model)
    ps = check_positions(positions)
    keys = {s.name: (s.hook_name if s.head is not None else s.name) for s in ss}
    out: list[tuple[int, dict[str, Tensor]]] = []
    for set_name, inp in named_sets(inputs).items():
        try:
            st = collect_stats(
                model,
                inp,
                sorted(set(keys.values())),
                ps,
                batch_size,
                cov=False,
                progress=progress,
            )
        except ValueError as e:
            raise ValueError(f"input set {set_name!r}: {e}") from e
        means: dict[str, Tensor] = {}
        for s in ss:
            m = st[keys[s.name]].mean
            if s.head is not None:
                d_head = _tl.head_dims(model)[1]
                m = m[s.head * d_head : (s.head + 1) * d_head]
            means[s.name] = m
        n = st[keys[ss[0].name]].n if ss else 0
        out.append((n, means))
    return ss, out


def ablation_means(
    model: HookedTransformer,
    inputs: Inputs | Mapping[str, Inputs],
    sites: SiteLike | Iterable[SiteLike],
    positions: Positions = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Float[Tensor, " d"]]:
    """The plain mean of each site's output over all inputs at ``positions`` (the paper's intent).

    Every collected vector counts once: with several named input sets this is the mean over
    their union, not a mean of per-set means. Computed with streaming float64 statistics
    (:func:`pcp_lens.collect_stats`), so inputs may be large and of unequal lengths.

    Args:
        model: the model to run.
        inputs: tokens or strings, or ``{name: inputs}`` (e.g. the toy model's pp, nn, pn, np).
        sites: sites to average (head sites give ``d_head`` means of ``hook_z``).
        positions: positions to pool (METHODS §5.1: 1 for the toy model, 8 for GPT-2 medium);
            ``None`` pools every position. Negative ones count from each sequence's end.
        batch_size: rows per forward pass.
        progress: show tqdm bars.

    Returns:
        ``{site name: float64 mean}``, ready for :func:`mean_ablation` / :func:`ablation_sweep`.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> sets = {"a": torch.randint(0, 50, (6, 4)), "b": torch.randint(0, 50, (2, 4))}
        >>> m = ablation_means(model, sets, ["mlp0", "attn1.h0"], positions=[1], progress=False)
        >>> {k: tuple(v.shape) for k, v in m.items()}
        {'mlp0': (16,), 'attn1.h0': (4,)}
    """
    ss, per_set = _per_set_means(model, inputs, sites, positions, batch_size, progress)
    total = sum(n for n, _ in per_set)
    return {s.name: torch.stack([m[s.name] * n for n, m in per_set]).sum(0) / total for s in ss}


def nested_average(
    means: Sequence[Float[Tensor, " d"]], counts: Sequence[int], counts_per_input: int = 1
) -> Float[Tensor, " d"]:
    """The reference code's averaging over consecutive data sets (METHODS §5.1, quirk 8).

    The authors' ``get_mean_activations`` keeps one running sum across data sets but divides it
    by the current set's counter at the end of each set::

        r_1 = S_1 / (c n_1),   r_j = (r_{j-1} + S_j) / (c n_j),   S_j = n_j * mean_j

    where ``c = counts_per_input`` is how often the counter advances per input (1 in the toy code;
    20 in the GPT-2-medium code, whose counter runs once per hooked layer). The result is
    dominated by the last set: ``mean_K/c + mean_{K-1}/(c² n_K) + ...``.

    Args:
        means: per-set means, in the order the code visits the sets.
        counts: per-set numbers of inputs.
        counts_per_input: counter increments per input.

    Examples:
        >>> nested_average([torch.tensor([2.0]), torch.tensor([4.0])], [2, 4]).tolist()
        [4.5]
    """
    if len(means) != len(counts) or not means:
        raise ValueError(
            f"means and counts must be non-empty and of equal length, got {len(means)} and "
            f"{len(counts)}"
        )
    if counts_per_input < 1:
        raise ValueError(f"counts_per_input must be >= 1, got {counts_per_input}")
    r = torch.zeros_like(means[0])
    for m, n in zip(means, counts, strict=True):
        if n < 1:
            raise ValueError(f"counts must be >= 1, got {list(counts)}")
        r = (r + m * n) / (counts_per_input * n)
    return r


def mean_reference_code(
    model: HookedTransformer,
    inputs: Mapping[str, Inputs],
    sites: SiteLike | Iterable[SiteLike],
    positions: Positions = None,
    *,
    counts_per_input: int = 1,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Float[Tensor, " d"]]:
    """The "mean" the paper's code actually ablated with: :func:`nested_average` over input sets.

    Use it only to reproduce the paper's numbers exactly; :func:`ablation_means` is the intended
    plain mean. The order of ``inputs`` matters (toy code: pp, nn, pn, np at position 1; GPT-2
    medium: clean then toxic at position 8 with ``counts_per_input=20``).

    Args:
        model: the model to run.
        inputs: ``{name: inputs}`` in the order the code visits them.
        sites: sites to average.
        positions: positions to pool (one per input in the paper's code).
        counts_per_input: counter increments per input (see :func:`nested_average`).
        batch_size: rows per forward pass.
        progress: show tqdm bars.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> sets = {"pp": torch.randint(0, 50, (5, 2)), "np": torch.randint(0, 50, (5, 2))}
        >>> m = mean_reference_code(model, sets, ["mlp0"], positions=[1], progress=False)
        >>> tuple(m["mlp0"].shape)
        (16,)
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(
            "mean_reference_code needs inputs as an ordered mapping {name: inputs}; the nested "
            "division depends on the data sets and their order"
        )
    ss, per_set = _per_set_means(model, inputs, sites, positions, batch_size, progress)
    counts = [n for n, _ in per_set]
    return {
        s.name: nested_average([m[s.name] for _, m in per_set], counts, counts_per_input)
        for s in ss
    }
