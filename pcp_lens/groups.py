"""Named groups of token ids and the metrics that score logits against them.

The paper's *top-k negativity* is the share of the k largest next-token logits that are negative
words (k = 10). :func:`topk_share` computes that share for every group at once, for logits of any
leading shape; :func:`prob_mass` and :func:`mean_logit` are the softmax-mass and mean-logit
analogues.

A *metric* follows the one contract of :mod:`pcp_lens.scoring` (``docs/metrics.md``).
:class:`GroupMetric` is the library's own: it also declares which positions it reads
(``metric.positions``), so that ablation, patching and tuning compute logits only there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from pcp_lens.scoring import Metric as Metric  # re-exported: its former home
from pcp_lens.scoring import check_positions, resolve_positions

Stat = Literal["topk", "prob", "logit"]


@dataclass(frozen=True)
class TokenGroups:
    """Named, validated groups of token ids over a vocabulary of size ``d_vocab``.

    Groups may overlap (the paper's positive list contains the trigger); overlaps are reported by
    :meth:`overlaps` and by a warning at construction.

    Examples:
        >>> g = TokenGroups({"negative": [3, 4], "positive": [5, 6, 7]}, d_vocab=10)
        >>> g.names, g.sizes.tolist()
        (('negative', 'positive'), [2, 3])
    """

    groups: Mapping[str, Sequence[int]]
    d_vocab: int
    _mask: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.d_vocab, int) or self.d_vocab < 1:
            raise ValueError(f"d_vocab must be a positive int, got {self.d_vocab!r}")
        if not self.groups:
            raise ValueError("groups must name at least one group, got an empty mapping")
        clean: dict[str, tuple[int, ...]] = {}
        for name, ids in self.groups.items():
            t = torch.as_tensor(list(ids) if not isinstance(ids, Tensor) else ids)
            if t.numel() == 0:
                raise ValueError(
                    f"group {name!r} is empty; every group needs at least one token id"
                )
            if t.is_floating_point() or t.dtype == torch.bool:
                raise ValueError(f"group {name!r} must hold integer token ids, got dtype {t.dtype}")
            bad = t[(t < 0) | (t >= self.d_vocab)]
            if bad.numel():
                raise ValueError(
                    f"group {name!r} has token ids out of range: {bad[:5].tolist()}; "
                    f"allowed: 0..{self.d_vocab - 1} (d_vocab={self.d_vocab})"
                )
            clean[name] = tuple(sorted(set(t.flatten().tolist())))
        mask = torch.zeros(len(clean), self.d_vocab, dtype=torch.bool)
        for i, ids in enumerate(clean.values()):
            mask[i, list(ids)] = True
        object.__setattr__(self, "groups", clean)
        object.__setattr__(self, "_mask", mask)
        if ov := self.overlaps():
            warnings.warn(f"token groups overlap: {ov}", stacklevel=3)

    @classmethod
    def from_words(
        cls,
        tokenizer: Any,
        words: Mapping[str, Iterable[str]],
        d_vocab: int | None = None,
        with_space: bool = True,
    ) -> TokenGroups:
        """Build groups from words, keeping every single-token form (``word`` and ``" word"``).

        Words that are not a single token in either form are skipped with a warning (a multi-token
        word has no single next-token logit to rank).
        """
        out: dict[str, list[int]] = {}
        skipped: list[str] = []
        unk = getattr(tokenizer, "unk_token_id", None)
        unk_token = getattr(tokenizer, "unk_token", None)
        for name, ws in words.items():
            ids: list[int] = []
            for w in ws:
                forms = [w, " " + w] if with_space else [w]
                found = False
                for f in forms:
                    try:
                        enc = tokenizer.encode(f, add_special_tokens=False)
                    except Exception:  # some tokenizers raise on words they lack: not a token
                        continue
                    # a word-level tokenizer maps unknown words to its unk token: not the word
                    if len(enc) == 1 and (enc[0] != unk or f.strip() == unk_token):
                        ids.append(int(enc[0]))
                        found = True
                if not found:
                    skipped.append(w)
            out[name] = ids
        if skipped:
            warnings.warn(
                f"{len(skipped)} words are not single tokens: {skipped[:10]}", stacklevel=2
            )
        return cls(out, d_vocab if d_vocab is not None else len(tokenizer))

    def __repr__(self) -> str:
        from pcp_lens.display import groups_text

        return groups_text(self)

    def _repr_html_(self) -> str:
        from pcp_lens.display import groups_html  # Jupyter's summary table

        return groups_html(self)

    @property
    def names(self) -> tuple[str, ...]:
        """Group names in order."""
        return tuple(self.groups)

    @property
    def sizes(self) -> Tensor:
        """Number of token ids per group."""
        return self._mask.sum(-1)

    def mask(self, device: torch.device | str | None = None) -> Tensor:
        """Membership matrix ``[n_groups, d_vocab]`` (bool) on ``device``."""
        return self._mask.to(device) if device is not None else self._mask

    def overlaps(self) -> dict[tuple[str, str], int]:
        """Number of shared token ids for each overlapping pair of groups."""
        n = self._mask.float() @ self._mask.float().T
        names = self.names
        return {
            (names[i], names[j]): int(n[i, j])
            for i in range(len(names))
            for j in range(i + 1, len(names))
            if n[i, j] > 0
        }

    def index(self, group: str) -> int:
        """Position of ``group`` in :attr:`names`."""
        try:
            return self.names.index(group)
        except ValueError:
            raise ValueError(f"unknown group {group!r}; groups are {list(self.names)}") from None


def _check(logits: Tensor, groups: TokenGroups) -> None:
    if logits.shape[-1] != groups.d_vocab:
        raise ValueError(
            f"logits have {logits.shape[-1]} entries in the last dimension but the groups were "
            f"built for d_vocab={groups.d_vocab}"
        )


def _float_dtype(logits: Tensor) -> torch.dtype:
    # at least float32 (half logits are summed in float32), but never drop float64 to float32
    return torch.promote_types(logits.dtype, torch.float32)


def topk_share(
    logits: Float[Tensor, "... d_vocab"], groups: TokenGroups, k: int = 10
) -> Float[Tensor, "... n_groups"]:
    """Share of the ``k`` largest logits that belong to each group (the paper's top-k negativity).

    Examples:
        >>> g = TokenGroups({"neg": [0, 1], "pos": [2]}, d_vocab=4)
        >>> topk_share(torch.tensor([3.0, 2.0, 1.0, 0.0]), g, k=2).tolist()
        [1.0, 0.0]
    """
    _check(logits, groups)
    if not isinstance(k, int) or k < 1 or k > groups.d_vocab:
        raise ValueError(f"k must be an int in 1..{groups.d_vocab} (d_vocab), got {k!r}")
    idx = logits.topk(k, dim=-1).indices  # [..., k]
    member = groups.mask(logits.device).T[idx]  # [..., k, n_groups]
    return member.to(logits.dtype if logits.is_floating_point() else torch.float32).mean(-2)


def prob_mass(
    logits: Float[Tensor, "... d_vocab"], groups: TokenGroups
) -> Float[Tensor, "... n_groups"]:
    """Softmax probability mass that each group receives.

    Examples:
        >>> g = TokenGroups({"a": [0], "b": [1, 2, 3]}, d_vocab=4)
        >>> prob_mass(torch.zeros(4), g).tolist()
        [0.25, 0.75]
    """
    _check(logits, groups)
    dt = _float_dtype(logits)
    probs = logits.to(dt).softmax(-1)
    return probs @ groups.mask(logits.device).T.to(dt)


def mean_logit(
    logits: Float[Tensor, "... d_vocab"], groups: TokenGroups
) -> Float[Tensor, "... n_groups"]:
    """Mean raw logit over each group's token ids.

    Examples:
        >>> g = TokenGroups({"a": [0, 1], "b": [2]}, d_vocab=3)
        >>> mean_logit(torch.tensor([1.0, 3.0, 5.0]), g).tolist()
        [2.0, 5.0]
    """
    _check(logits, groups)
    dt = _float_dtype(logits)
    m = groups.mask(logits.device).T.to(dt)
    return (logits.to(dt) @ m) / m.sum(0)


def group_scores(
    logits: Float[Tensor, "... d_vocab"], groups: TokenGroups, stat: Stat = "topk", k: int = 10
) -> Float[Tensor, "... n_groups"]:
    """Dispatch to :func:`topk_share`, :func:`prob_mass` or :func:`mean_logit` by name."""
    if stat == "topk":
        return topk_share(logits, groups, k)
    if stat == "prob":
        return prob_mass(logits, groups)
    if stat == "logit":
        return mean_logit(logits, groups)
    raise ValueError(f"stat must be one of 'topk', 'prob', 'logit', got {stat!r}")


def select_positions(
    x: Float[Tensor, "batch pos *rest"], positions: int | Sequence[int]
) -> Float[Tensor, "batch n_positions *rest"]:
    """Index the position axis (dim 1), with a clear error for positions out of range.

    Examples:
        >>> select_positions(torch.arange(6).reshape(1, 3, 2), [-1]).tolist()
        [[[4, 5]]]
    """
    if x.dim() < 2:
        raise ValueError(
            f"logits must be [batch, pos, d_vocab] (a position axis to select from), got shape "
            f"{tuple(x.shape)}"
        )
    idx = resolve_positions(positions, x.shape[1])
    assert idx is not None
    return x[:, idx]


@dataclass(frozen=True)
class GroupMetric:
    """A group score at chosen positions, averaged over the batch: a metric ``logits -> scalar``.

    ``positions`` tells patching and lenses where logits are needed; ``reduce="none"`` returns the
    per-prompt, per-position values ``[batch, n_positions]`` instead of their mean.

    Examples:
        >>> g = TokenGroups({"neg": [0, 1], "pos": [2, 3]}, d_vocab=8)
        >>> neg = GroupMetric(g, "neg", k=2)
        >>> logits = torch.zeros(5, 3, 8); logits[..., 0] = 1; logits[..., 1] = 1
        >>> float(neg(logits))
        1.0
    """

    groups: TokenGroups
    group: str
    stat: Stat = "topk"
    k: int = 10
    positions: tuple[int, ...] = (-1,)
    reduce: Literal["mean", "none"] = "mean"

    def __post_init__(self) -> None:
        self.groups.index(self.group)
        group_scores(torch.zeros(self.groups.d_vocab), self.groups, self.stat, self.k)
        if self.reduce not in ("mean", "none"):
            raise ValueError(f"reduce must be 'mean' or 'none', got {self.reduce!r}")
        if self.positions is None:
            raise ValueError("positions must name the positions the metric reads, got None")
        object.__setattr__(self, "positions", check_positions(self.positions))

    def score(self, selected: Float[Tensor, "batch n_positions d_vocab"]) -> Tensor:
        """Score logits already restricted to :attr:`positions`."""
        s = group_scores(selected, self.groups, self.stat, self.k)[
            ..., self.groups.index(self.group)
        ]
        return s.mean() if self.reduce == "mean" else s

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        _check_logits(logits, self.groups.d_vocab)
        return self.score(select_positions(logits, self.positions))


def _check_logits(logits: Tensor, d_vocab: int | None = None) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor [batch, pos, d_vocab], got {shape}")
    if d_vocab is not None and logits.shape[-1] != d_vocab:
        raise ValueError(
            f"logits have {logits.shape[-1]} entries in the last dimension but the groups were "
            f"built for d_vocab={d_vocab}"
        )


def group_metrics(
    groups: TokenGroups,
    stat: Stat = "topk",
    k: int = 10,
    positions: int | Sequence[int] = (-1,),
) -> dict[str, GroupMetric]:
    """One :class:`GroupMetric` per group, keyed by group name."""
    return {g: GroupMetric(groups, g, stat, k, positions) for g in groups.names}  # type: ignore[arg-type]


@dataclass(frozen=True)
class PositionMetric:
    """Wrap ``fn(selected_logits) -> scalar`` into a metric that declares the positions it reads.

    ``fn`` receives logits at ``positions`` only (``[batch, n_positions, d_vocab]``), so patching
    and lenses need not compute the rest.

    Examples:
        >>> diff = PositionMetric(lambda lg: (lg[:, -1, 3] - lg[:, -1, 5]).mean(), positions=(-1,))
        >>> float(diff(torch.arange(20.0).reshape(1, 2, 10)))
        -2.0
    """

    fn: Callable[[Tensor], Tensor]
    positions: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValueError(f"fn must be a callable selected_logits -> Tensor, got {self.fn!r}")
        if self.positions is None:
            raise ValueError("positions must name the positions the metric reads, got None")
        object.__setattr__(self, "positions", check_positions(self.positions))

    def score(self, selected: Float[Tensor, "batch n_positions d_vocab"]) -> Tensor:
        """Score logits already restricted to :attr:`positions`."""
        return self.fn(selected)

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        _check_logits(logits)
        return self.fn(select_positions(logits, self.positions))
