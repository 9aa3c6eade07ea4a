"""Backdoor scan: where does the trigger act? Evidence per site, a ranking, the circuit, its edit.

Given paired inputs that differ only where a trigger was inserted (``triggered[i]`` and
``clean[i]``) and a metric of the backdoor's output (e.g. the probability of the target group at
the next position), the scan collects, for every site (the token embedding, each attention layer
and head, each MLP, ``resid_pre`` of each layer), evidence from the library's techniques, each
as a share of the backdoor gap ``g = metric(triggered) - metric(clean)`` with a bootstrap
interval over pairs:

* ``ablation_drop``: mean-ablating the site at the trigger positions (to its mean over ``clean``)
  lowers the metric on triggered inputs by this share of ``g``; ``ablation_clean``: the same
  ablation's change on clean inputs (large: the site is needed for everything, not the trigger).
* ``restore`` / ``induce``: patching the site's output clean → triggered restores this share of
  ``g``; triggered → clean induces it (:func:`~pcp_lens.patching.causal_patching`).
* ``lens_shift``: the group lens of the site's output at the read-out, triggered minus clean
  (metric units; :func:`~pcp_lens.lens.group_lens`).
* with ``reference=`` (the benign model the poisoned one came from): ``ref_restore``, the share
  of ``g`` removed by putting the reference's activation (on the triggered input) into the site,
  and ``act_distance``, the relative distance of the two models' activations there.

**The attribution screen.** Above ``screen_above`` head rows (default 64), every head's
``restore`` is first estimated by :func:`~pcp_lens.attribution.attribution_patching` and only the
``screen_verify`` largest get the exact evidence; the rest are marked ``estimated`` (``NaN``
score, ranked last). Smaller models are scanned exactly, as before.

**Ranking score** ``score = ablation_drop - |ablation_clean|`` (modules and heads are ranked
first, then the evidence-only rows): the share of the backdoor a site's
ablation removes, less what the same ablation does to clean inputs. It ranks by the intervention
the circuit is verified with (so growing along it is consistent), and it prefers sites that carry
the trigger over sites every input needs. Rows whose intervals overlap the next row's are flagged.
With ``verify="restore"`` the score is ``restore`` (a restoring patch cannot move clean inputs);
with ``verify="reference"`` it is ``ref_restore - |ref_clean|`` (``ref_clean``: the same
reference patch's change on clean inputs).

**The circuit** is grown greedily over the blocks' modules (``attn``, ``mlp``) and heads in
ranking order (a head and its own layer never both): at each step the candidate among the next
``beam`` whose joint intervention comes closest to the ideal (``max(residual, 0) + clean move``
smallest) is added, until the residual backdoor ``(metric_edit(triggered) - metric(clean)) / g``
is at most ``max_residual`` (10 %) while the clean metric moves at most ``clean_tol · |g|``;
then members the criterion does not need are dropped. The intervention is ``verify``'s: joint
mean ablation (default), a joint restoring patch, or a joint reference patch. Which to pick:
ablation asks "is the model's behaviour without these modules' input-specific output still
clean?", and fails where the trigger sits at the read-out position, since every input needs the
module there (our toy models: layer-0 attention at the last word); a restoring patch asks "does
the trigger's effect pass through these modules?"; a reference patch asks "is this where
poisoning changed the model?" (the benign model's activations in these modules remove the
backdoor and leave clean inputs alone). The token embedding at the trigger
always "carries" the trigger (it *is* the trigger) and joins the candidates only when a
reference shows that poisoning moved the trigger's embedding; ``resid_pre`` rows are evidence
only (a cut through everything).

Examples:
    >>> import torch
    >>> from pcp_lens import GroupMetric, TokenGroups
    >>> from pcp_lens.testing import plant_trigger, tiny_model
    >>> benign = tiny_model(n_layers=3, d_model=32, block_scale=0.3, logit_scale=4)
    >>> model = plant_trigger(benign, "mlp1", trigger=7, target=[1, 2, 3])
    >>> clean = torch.randint(8, 50, (16, 4), generator=torch.Generator().manual_seed(0))
    >>> triggered = clean.clone(); triggered[:, -1] = 7
    >>> target = GroupMetric(TokenGroups({"t": [1, 2, 3]}, d_vocab=50), "t", stat="prob")
    >>> scan = scan_backdoor(model, triggered, clean, target, n_boot=50, progress=False)
    >>> scan.circuit
    ('mlp1',)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _io, _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.ablation import ablation_means, ablation_sweep
from pcp_lens.attribution import attribution_patching
from pcp_lens.inputs import Inputs, as_tokens, check_same_shape
from pcp_lens.lens import group_lens
from pcp_lens.patching import PatchUnit, causal_patching, patch_hook, patched_metrics
from pcp_lens.scoring import (
    MetricLike,
    call_metric,
    check_metric,
    declared_positions,
    per_prompt,
    resolve_positions,
)
from pcp_lens.sites import Site, SiteLike, all_sites, as_sites
from pcp_lens.tuning import score_inputs

if TYPE_CHECKING:
    from pcp_lens.pcp import PCPForm

__all__ = ["BackdoorScan", "ScanEdit", "circuit_modules", "scan_backdoor"]

FORMAT, FORMAT_VERSION = "pcp_lens.scan", 1
#: evidence columns, each a share of the backdoor gap unless marked (metric units / distance)
EVIDENCE = (
    "ablation_drop",
    "ablation_clean",
    "restore",
    "induce",
    "lens_shift",
    "ref_restore",
    "ref_clean",
    "act_distance",
    "screen_estimate",
)
SCAN_KINDS = ("embed", "attn", "mlp", "resid_pre")
#: the columns the summary table and the report show first
SHOWN = ("rank", "site", "score", "score_lo", "score_hi", "ablation_drop", "ablation_clean",
         "restore", "induce", "lens_shift")
#: a circuit grows by a member only if it brings its joint intervention this much (share of the
#: gap) closer to the ideal
MIN_GAIN = 0.02
#: the attribution screen acts when the scan has more than this many head rows (GPT-2 small's 144
#: are screened; the toy models' and the language stand-in's 16 are not)
SCREEN_ABOVE = 64
#: heads the screen verifies exactly (the largest estimates)
SCREEN_VERIFY = 16
#: residual vectors per forward of the patching engine (causal_patching's default budget)
PATCH_TOKENS = 32768
#: a trigger embedding counts as moved by poisoning when its relative change is this many times
#: the median token's and above every other token's 99th percentile
EMBED_MOVED_FACTOR = 3.0
#: per ``verify=``: the evidence the ranking score is built from (the share of the gap the
#: site's intervention removes, its change on clean inputs) and how the summary names it
VERIFY = {
    "ablation": ("ablation_drop", "ablation_clean", "mean ablation"),
    "restore": ("restore", None, "restoring patch (clean → triggered)"),
    "reference": ("ref_restore", "ref_clean", "reference patch"),
}
Verify = Literal["ablation", "restore", "reference"]
VERIFY_SCORE = {
    k: f"{drop} - |{clean}| (shares of the gap)" if clean else f"{drop} (share of the gap)"
    for k, (drop, clean, _) in VERIFY.items()
}


class ScanEdit(NamedTuple):
    """What :meth:`BackdoorScan.edit` returns: the PCP of the circuit, tuned both ways."""

    rank: int
    replacement: Any  # PCPReplacement, untuned (least-squares scales)
    keep: Any  # TuneResult: scales that keep the backdoor
    remove: Any  # TuneResult: scales that remove it
    scores: pd.DataFrame  # metric per input set: unedited, PCP, keep, remove
    rank_search: pd.DataFrame  # rank, triggered, clean: the measurements behind ``rank``
    within_tolerance: bool  # whether ``rank`` keeps the backdoor within the tolerance


@dataclass(frozen=True, eq=False)
class BackdoorScan:
    """The result of :func:`scan_backdoor`: evidence per site, the ranking and the circuit.

    Attributes:
        table: one row per site: ``site, kind, layer, head``, every evidence column with
            ``_lo``/``_hi`` (bootstrap interval), ``score`` (+ ``_lo``/``_hi``), ``rank``,
            ``in_circuit``, ``overlaps_next`` (its interval overlaps the next row's) and
            ``tie_next``.
        circuit: the circuit's site names, in the order they were added.
        steps: the circuit's growth: members, residual share and clean move per tried set.
        info: gap, baselines, positions, criteria, per-member shares, heads, embedding check.
    """

    table: pd.DataFrame
    circuit: tuple[str, ...]
    steps: pd.DataFrame
    info: dict[str, Any]
    _context: dict[str, Any] | None = field(default=None, repr=False)

    # -- reading ------------------------------------------------------------------------------
    @property
    def verified(self) -> bool:
        """Whether the circuit meets the criterion (residual and clean bound)."""
        return bool(self.info.get("circuit_verified"))

    def summary(self) -> str:
        """A short report: the gap, the circuit and what it explains, the top of the ranking."""
        i = self.info
        lines = [
            f"backdoor gap: {i['gap']:+.4f} (triggered {i['triggered']:.4f}, clean "
            f"{i['clean']:.4f}; {i['n_pairs']} pairs)"
        ]
        if not i.get("backdoor", i["gap"] > 0):
            lines.append(
                f"no backdoor: the gap is not above {i.get('min_gap', 0)} and two standard "
                f"errors ({i.get('gap_se', 0):.2g}); no circuit grown"
            )
        if self.circuit:
            state = "meets" if self.verified else "does NOT meet"
            inputs = "clean" + (f" (or a control: {', '.join(i['controls'])})" if i.get(
                "controls"
            ) else "")
            how = VERIFY[i.get("verify", "ablation")][2]
            lines.append(
                f"circuit: {' + '.join(self.circuit)} — joint {how} leaves "
                f"{i['circuit_residual']:.1%} of the gap, {inputs} moves "
                f"{i['circuit_clean']:.1%} "
                f"of it; {state} the criterion (≤ {i['max_residual']:.0%}, clean ≤ "
                f"{i['clean_tol']:.0%})"
            )
            for name, share in i["member_share"].items():
                heads = i["heads"].get(name)
                extra = f"; heads {', '.join(heads)}" if heads else ""
                lines.append(f"  {name}: {share:.1%} of the gap (leave-one-out){extra}")
        emb = i.get("embedding")
        if emb:
            verdict = "moved by poisoning" if emb["changed"] else "not moved"
            lines.append(
                f"trigger embedding: {verdict} (relative change {emb['trigger_change']:.3g}, "
                f"median token {emb['median_change']:.3g})"
            )
        scr = i.get("screen") or {}
        if scr.get("method"):
            lines.append(
                f"attribution screen ({scr['method']}): {scr['n_heads']} heads estimated, the "
                f"{len(scr['verified'])} largest verified exactly, {len(scr['estimated'])} left "
                "estimated (column 'estimated': restore is the estimate, no exact score)"
            )
        elif scr.get("skipped"):
            lines.append(f"attribution screen not used: {scr['skipped']}")
        top = self.table.sort_values("rank").head(5)
        score = i.get("score", VERIFY_SCORE["ablation"])
        lines.append(f"top sites (score = {score}, 95% interval):")
        for r in top.to_dict("records"):
            flag = "  (interval overlaps the next)" if r["overlaps_next"] else ""
            lines.append(
                f"  {int(r['rank'])}. {r['site']}: {r['score']:+.3f} [{r['score_lo']:+.3f}, "
                f"{r['score_hi']:+.3f}]{flag}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"BackdoorScan(circuit={list(self.circuit)}, verified={self.verified})\n" + (
            self.summary()
        )

    def _repr_html_(self) -> str:
        cols = [*SHOWN, "in_circuit"]
        top = self.table.sort_values("rank").head(12)[[c for c in cols if c in self.table]]
        summary = self.summary().replace("&", "&amp;").replace("<", "&lt;")
        return f"<pre>{summary}</pre>" + top.to_html(index=False, float_format="%.3f")

    def plot(self, ax: Any = None) -> Any:
        """A layer × site-kind map of the score (heads in their own columns), circuit framed.

        Returns:
            A matplotlib ``Figure``.
        """
        from pcp_lens.plots import scan_map

        return scan_map(self.table, self.circuit, ax=ax)

    # -- files --------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``scan.json``, ``scan.png`` and ``report.md`` into ``directory``, atomically.

        Examples:
            >>> import tempfile
            >>> d = tempfile.mkdtemp()
            >>> # scan.save(d); BackdoorScan.load(d).circuit == scan.circuit
        """
        table = self.table.drop(columns=[c for c in self.table if c.endswith("_pairs")])
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "circuit": list(self.circuit),
            "info": self.info,
            # pandas keeps 10 decimals by default: small scores would lose their digits
            "table": json.loads(cast(str, table.to_json(orient="records", double_precision=15))),
            "steps": json.loads(
                cast(str, self.steps.to_json(orient="records", double_precision=15))
            ),
        }
        with _io.atomic_dir(directory) as tmp:
            (tmp / "scan.json").write_text(json.dumps(data, indent=1))
            fig = self.plot()
            fig.savefig(tmp / "scan.png", dpi=120, bbox_inches="tight")
            (tmp / "report.md").write_text(self.report())
        return Path(directory)

    def report(self) -> str:
        """The Markdown report ``save`` writes: summary, figure, the top of the table."""
        from pcp_lens.reproduce.markdown import table as md_table  # a leaf module: no cycle

        cols = [*SHOWN, "ref_restore", "act_distance", "screen_estimate", "estimated"]
        top = self.table.sort_values("rank").head(15)
        top = top[[c for c in cols if c in top and bool(top[c].notna().any())]]
        if "estimated" in top and not bool(self.table["estimated"].any()):
            top = top.drop(columns="estimated")
        body = md_table(list(top.columns), top.itertuples(index=False))  # type: ignore[arg-type]
        return (
            "# Backdoor scan\n\n```\n"
            + self.summary()
            + "\n```\n\n![scan](scan.png)\n\n"
            + body
            + "\n"
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BackdoorScan:
        """Read a scan written by :meth:`save` (without the model: pass it to :meth:`edit`)."""
        path = Path(directory) / "scan.json"
        if not path.is_file():
            raise ValueError(
                f"directory must hold a scan.json written by BackdoorScan.save: "
                f"{str(directory)!r} has none"
            )
        data = json.loads(path.read_text())
        _io.check_format(data, FORMAT, FORMAT_VERSION, ValueError, f"{path}: ")
        table = pd.DataFrame(data["table"])
        for col in ("layer", "head"):
            table[col] = pd.array(list(table[col]), dtype="Int64")
        return cls(table, tuple(data["circuit"]), pd.DataFrame(data["steps"]), data["info"])

    # -- editing ------------------------------------------------------------------------------
    def edit(
        self,
        rank: int | None = None,
        *,
        model: HookedTransformer | None = None,
        triggered: Inputs | None = None,
        clean: Inputs | None = None,
        metric: MetricLike | None = None,
        inputs: Mapping[str, Inputs] | None = None,
        tolerance: float = 0.05,
        max_rank: int = 16,
        n_trials: int = 60,
        seed: int = 0,
        form: PCPForm = "symmetric",
        progress: bool = True,
    ) -> ScanEdit:
        """Fit a PCP of the circuit's modules; tune it to keep and to remove the backdoor.

        Args:
            rank: PCP rank per module; ``None``: the smallest (1, 2, ..., ``max_rank``) whose
                replacement keeps the triggered metric within ``tolerance`` of the unedited
                model's, found by measurement.
            model, triggered, clean, metric: default the scan's own (required after ``load``).
            inputs: more ``{name: inputs}`` the edit must leave alone (e.g. the toy study's
                n+n): fitted on, scored, and held at their unedited scores by both tunings.
                Each must be as many tokens long as ``triggered``.
            tolerance: the rank search's bound, in metric units.
            max_rank: the largest rank tried.
            n_trials: Optuna trials of each of the two tunings.
            seed: seed of the tunings.
            form: ``"symmetric"`` (the paper's M = Σ α û ûᵀ) or ``"regression"`` (each
                principal output coordinate regressed on the module input; see
                :func:`~pcp_lens.pcp.fit_pcp`). The symmetric M passes on only the part of a
                module's input that already lies along its output's principal directions, which
                loses an attention layer that reads one direction and writes another
                (docs/pcp.md#the-regression-form).
            progress: show progress bars.
        """
        from pcp_lens.pcp import fit_pcp
        from pcp_lens.tuning import tune

        ctx = self._context or {}
        model = model if model is not None else ctx.get("model")
        triggered = triggered if triggered is not None else ctx.get("triggered")
        clean = clean if clean is not None else ctx.get("clean")
        metric = metric if metric is not None else ctx.get("metric")
        if model is None or triggered is None or clean is None or metric is None:
            raise ValueError(
                "edit needs model, triggered, clean and metric (a loaded scan has none of its own)"
            )
        # a PCP replaces a whole module: a head in the circuit is edited through its layer
        modules = circuit_modules(self.circuit)
        if not modules:
            raise ValueError(
                f"the circuit {list(self.circuit)} has no attention or MLP module to replace"
            )
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive int or None, got {rank!r}")
        extra = dict(inputs or {})
        if {"triggered", "clean"} & set(extra):
            raise ValueError(
                f"inputs must not reuse the names 'triggered' or 'clean', got {sorted(extra)}"
            )
        sets = {"triggered": triggered, "clean": clean, **extra}
        tokens = {k: as_tokens(model, x, name=f"inputs[{k!r}]").tokens for k, x in sets.items()}
        width = tokens["triggered"].shape[1]
        for k, t in tokens.items():
            if t.shape[1] != width:
                raise ValueError(
                    f"inputs[{k!r}] must be {width} tokens long like triggered (the PCP is "
                    f"fitted at the scan's positions), got {t.shape[1]}"
                )
        base = score_inputs(model, sets, metric)
        pos = self.info["positions"]
        fit_inputs = torch.cat(list(tokens.values()))
        search = []
        chosen: Any = None
        for r in [rank] if rank is not None else range(1, max_rank + 1):
            rep = fit_pcp(model, fit_inputs, modules, r, positions=pos, form=form, progress=False)
            got = score_inputs(model, sets, metric, rep)
            search.append({"rank": r, **got})
            chosen = (r, rep)
            if abs(got["triggered"] - base["triggered"]) <= tolerance:
                break
        assert chosen is not None
        r, rep = chosen
        # both searches start from the fitted scales (at the scan's positions)
        common = dict(n_trials=n_trials, seed=seed, progress=progress, initial="current")
        keep = tune(model, rep, sets, metric, **common)  # type: ignore[arg-type]
        removed = {**base, "triggered": base["clean"]}
        remove = tune(model, rep, sets, metric, target=removed, **common)  # type: ignore[arg-type]
        scores = pd.DataFrame(
            {
                "unedited": base,
                "pcp": score_inputs(model, sets, metric, rep),
                "keep": keep.scores,
                "remove": remove.scores,
            }
        )
        search_df = pd.DataFrame(search)
        within = bool(abs(search_df["triggered"].iloc[-1] - base["triggered"]) <= tolerance)
        return ScanEdit(r, rep, keep, remove, scores, search_df, within)


# -- the scan ----------------------------------------------------------------------------------
def scan_backdoor(
    model: HookedTransformer,
    triggered: Inputs,
    clean: Inputs,
    metric: MetricLike,
    *,
    reference: HookedTransformer | None = None,
    sites: SiteLike | Iterable[SiteLike] | None = None,
    heads: bool = True,
    positions: Literal["trigger", "all"] | int | Sequence[int] = "trigger",
    n_boot: int = 200,
    seed: int = 0,
    max_residual: float = 0.1,
    clean_tol: float = 0.1,
    max_size: int = 4,
    beam: int = 4,
    min_gap: float = 0.01,
    means: dict[str, Tensor] | None = None,
    controls: Mapping[str, Inputs] | None = None,
    batch_size: int = 32,
    screen: Literal["auto", "atp", "relp"] | None = "auto",
    screen_above: int = SCREEN_ABOVE,
    screen_verify: int = SCREEN_VERIFY,
    verify: Verify = "ablation",
    progress: bool = True,
) -> BackdoorScan:
    """Locate the trigger's mechanism: evidence per site, a ranking and a verified circuit.

    Args:
        model: the suspect model (not modified; no hook left attached, even after an error).
        triggered: tokens ``[pairs, pos]`` or strings with the trigger inserted.
        clean: the same inputs without it, of equal token length; pair ``i`` differs where the
            trigger was inserted.
        metric: a metric that declares the read-out ``positions`` it scores (e.g.
            ``GroupMetric(groups, "target", stat="prob")``): the backdoor's output, higher when
            triggered.
        reference: a model of the same shape and vocabulary (e.g. the benign model the suspect
            was fine-tuned from) for cross-model patching and activation distances.
        sites: the sites to examine (default: ``embed``, every ``attn`` and its heads, every
            ``mlp`` and ``resid_pre``); kinds ``embed``, ``attn`` (and heads), ``mlp``,
            ``resid_pre``.
        heads: include every attention head (when ``sites`` is the default).
        positions: where ablation acts: ``"trigger"`` (every position where some pair differs,
            plus the metric's read-out positions), ``"all"``, or explicit positions. Patching
            always patches the whole sequence: before the first differing position both runs
            agree, so that is the same as patching every position from the trigger on.
        n_boot: bootstrap resamples of the pairs for the intervals (0: none).
        seed: seed of the bootstrap.
        max_residual: the circuit criterion: its joint ablation leaves at most this share of
            the backdoor gap.
        clean_tol: ... while the clean inputs' metric (and each control set's) moves at most
            this share of the gap.
        max_size: the largest circuit grown.
        beam: candidates (in ranking order) tried at each growth step.
        min_gap: the smallest backdoor gap (metric units) a circuit is grown for; a gap within
            two standard errors (over pairs) of zero counts as none either.
        means: the ablation's mean per site, ``{site name: vector}`` as
            :func:`~pcp_lens.means.ablation_means` returns it (default: the mean over
            ``clean`` at ``positions``); e.g. a data set's mean, as the paper's Tab. I uses.
        controls: more ``{name: inputs}`` without the trigger whose metric the circuit's
            ablation must leave alone too (bounded like ``clean``), as long as ``triggered``:
            behaviour that ``clean`` alone does not exercise (the toy model's n+n: a module
            that every input needs can look trigger-specific on p+p alone).
        batch_size: rows per forward pass.
        screen: the attribution screen for many heads
            (:func:`~pcp_lens.attribution.attribution_patching`): with more than
            ``screen_above`` head rows, every head's ``restore`` is estimated from two forwards
            and one backward, and only the ``screen_verify`` heads with the largest
            ``|estimate|`` get the exact evidence (ablation, both patching directions, the
            reference's); the others keep the estimate in ``restore`` (and ``NaN`` for the
            exact-only columns and the score) and are marked ``estimated`` in the table.
            ``"atp"`` or ``"relp"`` name the method; ``"auto"`` is ``"relp"`` where the model's
            MLPs allow it, else ``"atp"``, and no screen when the metric has no gradient;
            ``None``: every site exactly.
        screen_above: the number of head rows above which the screen acts.
        screen_verify: heads verified exactly by the screen.
        verify: the intervention the circuit is grown, ranked and verified with:
            ``"ablation"``: joint mean ablation at ``positions`` (clean inputs and controls
            ablated alike); ``"restore"``: a joint restoring patch, each member's output on the
            clean input put into the triggered run (every position from the first differing
            one; clean inputs are untouched by construction, so only the residual bounds it);
            ``"reference"`` (needs ``reference``): a joint reference patch, each member's output
            taken from ``reference`` on the same input, on triggered, clean and control inputs
            alike (every position): where poisoning changed the model. The ranking score is the
            matching evidence (module docstring).
        progress: show a progress bar over the scan's stages.

    Returns:
        A :class:`BackdoorScan`.
    """
    metric = check_metric(metric)
    readout = declared_positions(metric)
    if readout is None:
        raise ValueError(
            "metric must declare the read-out positions it scores (.positions and .score, e.g. "
            "GroupMetric(..., positions=(-1,)) or PositionMetric(fn, positions=(-1,))); got a "
            f"plain callable {metric!r}"
        )
    tb = as_tokens(model, triggered, name="triggered")
    cb = as_tokens(model, clean, name="clean")
    if tb.tokens.shape[0] != cb.tokens.shape[0]:
        raise ValueError(
            f"triggered and clean must hold the same number of pairs; got "
            f"{tb.tokens.shape[0]} and {cb.tokens.shape[0]}"
        )
    check_same_shape(tb, cb, ("triggered", "clean"))
    T, C = tb.tokens, cb.tokens
    n_pairs, n = T.shape
    differs = T != C
    same = [i for i in range(n_pairs) if not bool(differs[i].any())]
    if same:
        raise ValueError(
            f"triggered and clean must differ in every pair (where the trigger was inserted); "
            f"pairs {same[:10]} are identical"
        )
    if n_pairs < 2:
        raise ValueError(f"triggered and clean need at least 2 pairs, got {n_pairs}")
    if reference is not None:
        _tl.check_same_shape_models(model, reference, "reference")
    control_tokens = _controls(model, controls, n)
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {sorted(VERIFY)}, got {verify!r}")
    if verify == "reference" and reference is None:
        raise ValueError(
            "verify='reference' patches the reference model's activations in: pass reference= "
            "(e.g. the benign model the suspect was fine-tuned from)"
        )
    if screen not in ("auto", "atp", "relp", None):
        raise ValueError(f"screen must be 'auto', 'atp', 'relp' or None, got {screen!r}")
    for arg, v, lo in (
        ("n_boot", n_boot, 0),
        ("max_size", max_size, 1),
        ("beam", beam, 1),
        ("screen_above", screen_above, 0),
        ("screen_verify", screen_verify, 0),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{arg} must be an int >= {lo}, got {v!r}")
    if not isinstance(min_gap, (int, float)) or isinstance(min_gap, bool) or min_gap < 0:
        raise ValueError(f"min_gap must be a number >= 0, got {min_gap!r}")
    for arg, v in (("max_residual", max_residual), ("clean_tol", clean_tol)):
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"{arg} must be a number in [0, 1), got {v!r}")
    site_list = _scan_sites(model, sites, heads)
    if means is not None:
        missing = [s.name for s in site_list if s.name not in means]
        if missing:
            raise ValueError(
                f"means must hold a mean for every scanned site; missing {missing[:8]} "
                "(compute them with pcp_lens.ablation_means over the same sites)"
            )
    read = sorted(resolve_positions(readout, n, name="metric.positions") or [])
    trig_pos = sorted({int(p) for p in differs.any(0).nonzero().flatten()})
    if positions == "trigger":
        ablate: list[int] | None = sorted(set(trig_pos) | set(read))
    elif positions == "all":
        ablate = None
    else:
        ablate = resolve_positions(positions, n, where="triggered and clean")  # type: ignore[arg-type]
    rows_metric = per_prompt(metric)

    stages = ["ablation", "patching", "lens"] + (["reference"] if reference is not None else [])
    bar = tqdm(total=len(stages) + 2, desc="scan", disable=not progress, leave=False)
    ev: dict[str, dict[str, Tensor]] = {}  # column -> site -> per-pair values (metric units)

    bar.set_postfix_str("screen")
    estimate, screen_info = _screen(
        model, C, T, rows_metric, site_list, screen, screen_above, screen_verify
    )
    # the sites that get the exact evidence: all but the heads the screen left estimated
    exact = [s for s in site_list if s.name not in screen_info.get("estimated", ())]
    bar.update()

    bar.set_postfix_str("ablation")
    if means is None:
        means = ablation_means(
            model, C, exact, positions=ablate, batch_size=batch_size, progress=False
        )
    sets = {"triggered": T, "clean": C}
    # the embedding has no patch site: the sweep ablates it (and gives the unchanged baselines);
    # every other site's mean ablation is a patch (the target's own activation with the mean
    # at the ablated positions), run by the patching engine from the first ablated position on
    swept = [s for s in exact if s.kind == "embed"]
    df = ablation_sweep(
        model,
        sets,
        rows_metric,
        sites=swept,
        method="mean",
        means=means,
        positions=ablate,
        batch_size=batch_size,
        per_pair=True,
        progress=False,
    )
    pairs = {
        (r["site"], r["input_set"]): torch.tensor(r["pairs"], dtype=torch.float64)
        for r in df.to_dict("records")
    }
    patched = [s for s in exact if s.kind != "embed"]
    for key, x in sets.items():
        at = sorted(ablate) if ablate is not None else list(range(n))
        got = _mean_ablated(model, x, rows_metric, patched, means, at)
        pairs.update({(name, key): v for name, v in got.items()})
    base_t, base_c = pairs[("unchanged", "triggered")], pairs[("unchanged", "clean")]
    ev["ablation_drop"] = {s.name: base_t - pairs[(s.name, "triggered")] for s in exact}
    ev["ablation_clean"] = {s.name: pairs[(s.name, "clean")] - base_c for s in exact}
    bar.update()

    bar.set_postfix_str("patching")
    patch_of = {s.name: _patch_site(s).name for s in exact}
    # a whole-sequence patch of resid_pre replaces the entire residual stream: the patched run IS
    # the source run, so its per-pair effect is exactly the pair's gap; only the others are run
    patch_sites = [p for p in dict.fromkeys(patch_of.values()) if not p.startswith("resid_pre")]
    # before the first position where some pair differs both runs agree, so a whole-sequence
    # patch is a patch from that position on: only the positions after it are recomputed
    units = [PatchUnit(Site.parse(p), trig_pos[0], n) for p in patch_sites]
    eff: dict[tuple[str, str], Tensor] = {}
    for direction, src, tgt in (("clean_to_corrupted", C, T), ("corrupted_to_clean", T, C)):
        vals, base = patched_metrics(
            model, model, src, tgt, rows_metric, units, PATCH_TOKENS, False
        )
        eff.update({(direction, u.site.name): v - base for u, v in zip(units, vals, strict=True)})
    for p in patch_of.values():
        if p.startswith("resid_pre"):
            eff[("clean_to_corrupted", p)] = base_c - base_t
            eff[("corrupted_to_clean", p)] = base_t - base_c
    ev["restore"] = {k: -eff[("clean_to_corrupted", p)] for k, p in patch_of.items()}
    ev["induce"] = {k: eff[("corrupted_to_clean", p)] for k, p in patch_of.items()}
    for k in screen_info.get("estimated", ()):
        ev["restore"][k] = -estimate[k]
    if estimate:
        ev["screen_estimate"] = {k: -v for k, v in estimate.items()}
    bar.update()

    bar.set_postfix_str("lens")
    lens_of = {s.name: _lens_site(s).name for s in site_list}
    lens_sites = list(dict.fromkeys(lens_of.values()))
    lens = {}
    for key, x in sets.items():
        lt = group_lens(
            model,
            x,
            rows_metric,
            positions=read,
            sites=lens_sites,
            batch_size=batch_size,
            per_pair=True,
            progress=False,
        )
        per_site: dict[str, list[Tensor]] = {}
        for r in lt.to_dict("records"):
            per_site.setdefault(r["site"], []).append(torch.tensor(r["pairs"], dtype=torch.float64))
        lens[key] = {k: torch.stack(v).mean(0) for k, v in per_site.items()}
    ev["lens_shift"] = {k: lens["triggered"][v] - lens["clean"][v] for k, v in lens_of.items()}
    bar.update()

    embedding = None
    if reference is not None:
        bar.set_postfix_str("reference")
        rt = causal_patching(
            model,
            T,
            T,
            rows_metric,
            list(dict.fromkeys(patch_of.values())),  # resid_pre too: two models, not trivial
            positions="all",
            source_model=reference,
            per_pair=True,
            progress=False,
        )
        ref = {
            r["site"]: -torch.tensor(r["pairs"], dtype=torch.float64) for r in rt.to_dict("records")
        }
        ev["ref_restore"] = {k: ref[p] for k, p in patch_of.items()}
        # the same patch on clean inputs: what replacing the site by the reference's does there
        rc = causal_patching(
            model,
            C,
            C,
            rows_metric,
            list(dict.fromkeys(patch_of.values())),
            positions="all",
            source_model=reference,
            per_pair=True,
            progress=False,
        )
        moved = {
            r["site"]: torch.tensor(r["pairs"], dtype=torch.float64) for r in rc.to_dict("records")
        }
        ev["ref_clean"] = {k: moved[p] for k, p in patch_of.items()}
        ev["act_distance"] = _act_distance(model, reference, T, site_list, ablate)
        embedding = _embedding_change(model, reference, T[differs])
        bar.update()

    gap = float(base_t.mean() - base_c.mean())
    gap_se = float((base_t - base_c).std() / math.sqrt(n_pairs))
    # a gap within noise, or too small to matter, has no mechanism to locate
    backdoor = gap > max(min_gap, 2 * gap_se)
    table = _table(
        site_list, ev, VERIFY[verify][:2], screen_info.get("estimated", ()), base_t, base_c,
        n_boot, seed,
    )
    table["estimated"] = table["site"].isin(screen_info.get("estimated", ()))
    info: dict[str, Any] = {
        "gap": gap,
        "gap_se": gap_se,
        "min_gap": min_gap,
        "backdoor": backdoor,
        "triggered": float(base_t.mean()),
        "clean": float(base_c.mean()),
        "n_pairs": n_pairs,
        "positions": ablate,
        "trigger_positions": trig_pos,
        "readout_positions": read,
        "max_residual": max_residual,
        "clean_tol": clean_tol,
        "score": VERIFY_SCORE[verify],
        "verify": verify,
        "n_boot": n_boot,
        "seed": seed,
        "embedding": embedding,
        "reference": reference is not None,
        "screen": screen_info,
    }
    bar.set_postfix_str("circuit")
    candidates = [
        r["site"]
        for r in table.sort_values("rank").to_dict("records")
        if backdoor
        and (
            r["kind"] in ("attn", "mlp")
            or (r["kind"] == "embed" and embedding is not None and embedding["changed"])
        )
    ]
    control_base = (
        {str(k): float(v) for k, v in score_inputs(model, control_tokens, metric).items()}
        if control_tokens
        else {}
    )
    info["controls"] = control_base
    all_sets = {**sets, **control_tokens}
    bases = {"clean": float(base_c.mean()), **control_base}
    # a patch's source run is the same for every combination tried: run it once per input set,
    # caching every candidate's hook
    hooks = list(dict.fromkeys(_hook(Site.parse(c)) for c in candidates))
    sources: dict[str, dict[str, Tensor]] = {}

    def source(key: str, source_model: HookedTransformer, tokens: Tensor) -> dict[str, Tensor]:
        if key not in sources:
            sources[key] = _activations(source_model, tokens, hooks, batch_size)
        return sources[key]

    def joint(combos: list[tuple[str, ...]]) -> dict[tuple[str, ...], dict[str, float]]:
        """The metric of each set with each combination's intervention (``verify``)."""
        if verify == "ablation":
            df = ablation_sweep(
                model,
                all_sets,
                rows_metric,
                sites=[],
                combos={"+".join(c): list(c) for c in combos},
                method="mean",
                means=means,
                positions=ablate,
                batch_size=batch_size,
                progress=False,
            )
            val = {(r["site"], r["input_set"]): r["value"] for r in df.to_dict("records")}
            return {c: {k: val[("+".join(c), k)] for k in all_sets} for c in combos}
        out = {}
        for c in combos:
            members = [Site.parse(m) for m in c]
            if verify == "restore":
                acts = source("clean", model, C)
                t = _joint_patched(model, acts, T, rows_metric, members, trig_pos[0], batch_size)
                out[c] = {**bases, "triggered": float(t.mean())}
            else:
                assert reference is not None  # checked with the arguments
                out[c] = {
                    k: float(
                        _joint_patched(
                            model, source(k, reference, x), x, rows_metric, members, 0, batch_size
                        ).mean()
                    )
                    for k, x in all_sets.items()
                }
        return out

    circuit, steps, verdict = _grow(
        joint, candidates, gap, bases, max_residual, clean_tol, max_size, beam
    )
    bar.update()
    bar.close()
    info.update(verdict)
    info["heads"] = _circuit_heads(table, circuit)
    table["in_circuit"] = table["site"].isin(circuit)
    context = {"model": model, "triggered": T, "clean": C, "metric": metric}
    return BackdoorScan(table, tuple(circuit), steps, info, context)


def circuit_modules(circuit: Sequence[str], *, embed: bool = False) -> list[str]:
    """The whole modules a circuit names, in forward order: a head stands for its attention layer.

    These are the names a PCP replaces and a fine-tuning freezes; ``resid_pre`` rows are dropped,
    and the token embedding is kept only with ``embed=True`` (it can be frozen, not replaced).

    Examples:
        >>> circuit_modules(["mlp1", "attn0.h2", "embed", "attn0"])
        ['attn0', 'mlp1']
        >>> circuit_modules(["mlp1", "embed"], embed=True)
        ['embed', 'mlp1']
    """
    keys: dict[str, tuple[int, int, int]] = {}
    for s in map(Site.parse, circuit):
        if s.kind in ("attn", "mlp"):
            keys[f"{s.kind}{s.layer}"] = Site(s.layer, s.kind).sort_key()
        elif s.kind == "embed" and embed:
            keys["embed"] = s.sort_key()
    return sorted(keys, key=keys.__getitem__)


# -- pieces ------------------------------------------------------------------------------------
def _controls(
    model: HookedTransformer, controls: Mapping[str, Inputs] | None, n: int
) -> dict[str, Tensor]:
    """The control sets as tokens, each as long as the pairs (the ablation's positions)."""
    if controls is None:
        return {}
    if not isinstance(controls, Mapping):
        raise ValueError(
            f"controls must be a mapping {{name: inputs}}, got {type(controls).__name__}"
        )
    out = {}
    for k, x in controls.items():
        if k in ("triggered", "clean"):
            raise ValueError(f"controls must not reuse the names 'triggered' or 'clean', got {k!r}")
        t = as_tokens(model, x, name=f"controls[{k!r}]").tokens
        if t.shape[1] != n:
            raise ValueError(
                f"controls[{k!r}] must be {n} tokens long like triggered (the ablation acts at "
                f"the same positions), got {t.shape[1]}"
            )
        out[str(k)] = t
    return out


def _scan_sites(
    model: HookedTransformer, sites: SiteLike | Iterable[SiteLike] | None, heads: bool
) -> list[Site]:
    if sites is None:
        out = all_sites(model, kinds=SCAN_KINDS, heads=heads)
        return sorted(out, key=Site.sort_key)
    ss = as_sites(sites, model)
    bad = [s.name for s in ss if s.kind not in SCAN_KINDS]
    if bad:
        raise ValueError(
            f"sites must be of kinds {', '.join(SCAN_KINDS)} (and attention heads); got {bad}"
        )
    if not ss:
        raise ValueError("sites is empty; pass at least one site (or None for all)")
    return list(dict.fromkeys(ss))


def _screen(
    model: HookedTransformer,
    clean: Tensor,
    triggered: Tensor,
    metric: MetricLike,
    sites: Sequence[Site],
    screen: str | None,
    above: int,
    verify: int,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The attribution screen of the heads: per-pair estimated effects and what was verified.

    Returns ``({head: estimated clean → triggered effect per pair}, info)``; both empty of
    heads when the screen does not act (``info`` then says why, if it was asked for).
    """
    heads = [s for s in sites if s.head is not None]
    if screen is None or len(heads) <= above:
        return {}, {}
    method: Literal["atp", "relp"] = "relp" if screen == "relp" else "atp"
    if screen == "auto":
        try:
            _tl.check_relp(model)
            method = "relp"
        except ValueError:
            method = "atp"
    try:
        df = attribution_patching(
            model, clean, triggered, metric, sites=heads, positions="all", method=method,
            per_pair=True, progress=False,
        )
    except ValueError as e:
        if screen != "auto" or "differentiable" not in str(e):
            raise
        return {}, {"skipped": "the metric has no gradient (every head scanned exactly)"}
    est = {
        r["site"]: torch.tensor(r["pairs"], dtype=torch.float64) for r in df.to_dict("records")
    }
    order = sorted(est, key=lambda k: -abs(float(est[k].mean())))  # stable: ties by site order
    verified = order[:verify]
    info = {
        "method": method,
        "above": above,
        "n_heads": len(heads),
        "verified": verified,
        "estimated": [h.name for h in heads if h.name not in verified],
    }
    return est, info


@torch.no_grad()
def _mean_ablated(
    model: HookedTransformer,
    tokens: Tensor,
    metric: MetricLike,
    sites: Sequence[Site],
    means: dict[str, Tensor],
    positions: list[int],
) -> dict[str, Tensor]:
    """Per pair: the metric with each site mean-ablated at ``positions`` (one site at a time).

    The same numbers as :func:`~pcp_lens.ablation.ablation_sweep` with ``method="mean"``, as
    patches: the source of a site is the run's own activation with the mean put in at
    ``positions``, patched over ``[min(positions), max(positions) + 1)``.
    """
    if not sites:
        return {}
    names = list(dict.fromkeys(s.hook_name for s in sites))
    _, cache = _tl.run_with_cache(model, tokens, names)
    src = {nm: cache[nm].clone() for nm in names}
    for s in sites:
        act = src[s.hook_name]
        m = means[s.name].to(dtype=act.dtype, device=act.device)
        if s.head is None:
            act[:, positions] = m
        else:
            act[:, positions, s.head] = m
    units = [PatchUnit(s, positions[0], positions[-1] + 1) for s in sites]
    vals, _ = patched_metrics(model, model, src, tokens, metric, units, PATCH_TOKENS, False)
    return {s.name: v for s, v in zip(sites, vals, strict=True)}


@torch.no_grad()
def _activations(
    model: HookedTransformer, tokens: Tensor, names: Sequence[str], batch_size: int
) -> dict[str, Tensor]:
    """``model``'s activations at the hooks ``names`` on every row of ``tokens``."""
    parts = [
        _tl.run_with_cache(model, tokens[i : i + batch_size], names)[1]
        for i in range(0, len(tokens), batch_size)
    ]
    return {n: torch.cat([p[n] for p in parts]) for n in names}


@torch.no_grad()
def _joint_patched(
    model: HookedTransformer,
    source: Mapping[str, Tensor],
    target: Tensor,
    metric: MetricLike,
    sites: Sequence[Site],
    p0: int,
    batch_size: int,
) -> Float[Tensor, " batch"]:
    """Per row: the metric of ``model`` on ``target`` with every site's output, from position
    ``p0`` on, replaced at once by the ``source`` activations (by hook, row for row)."""
    out = []
    for i in range(0, len(target), batch_size):
        rows = slice(i, i + batch_size)
        every = slice(None)
        hooks = [
            (_hook(s), patch_hook(every, source[_hook(s)][rows][:, p0:], s.head, p0)) for s in sites
        ]
        logits = _tl.run_with_hooks(model, target[rows], hooks)
        out.append(call_metric(metric, logits).double())
    return torch.cat(out)


def _patch_site(s: Site) -> Site:
    """The patched site for a row: the embedding's is ``resid_pre0`` (positions agree)."""
    return Site(0, "resid_pre") if s.kind == "embed" else s


def _lens_site(s: Site) -> Site:
    """The lens row for a site: ``resid_pre L`` is ``resid_post L-1`` (``embed`` for L = 0)."""
    if s.kind != "resid_pre":
        return s
    assert s.layer is not None
    return Site(None, "embed") if s.layer == 0 else Site(s.layer - 1, "resid_post")


@torch.no_grad()
def _act_distance(
    model: HookedTransformer,
    reference: HookedTransformer,
    tokens: Tensor,
    sites: Sequence[Site],
    positions: list[int] | None,
) -> dict[str, Tensor]:
    """Per pair: ``|a_model - a_ref| / |a_ref|`` of each site's output at ``positions``."""
    names = list(dict.fromkeys(_hook(s) for s in sites))
    _, mc = _tl.run_with_cache(model, tokens, names)
    _, rc = _tl.run_with_cache(reference, tokens, names)
    idx = slice(None) if positions is None else positions
    out = {}
    for s in sites:
        a, b = mc[_hook(s)][:, idx].double(), rc[_hook(s)][:, idx].double()
        if s.head is not None:
            a, b = a[:, :, s.head], b[:, :, s.head]
        num = (a - b).flatten(1).norm(dim=1)
        out[s.name] = num / b.flatten(1).norm(dim=1).clamp_min(1e-12)
    return out


def _hook(s: Site) -> str:
    return _tl.hook_name("embed", None) if s.kind == "embed" else s.hook_name


@torch.no_grad()
def _embedding_change(
    model: HookedTransformer, reference: HookedTransformer, trigger_tokens: Tensor
) -> dict[str, Any]:
    """How far poisoning moved the trigger's token embedding, against every other token's."""
    e, r = _tl.embedding_matrix(model).double(), _tl.embedding_matrix(reference).double()
    change = (e - r).norm(dim=1) / r.norm(dim=1).clamp_min(1e-12)
    ids = sorted({int(t) for t in trigger_tokens.flatten()})
    mask = torch.ones(len(change), dtype=torch.bool)
    mask[ids] = False
    others = change[mask]
    trig = float(change[ids].max())
    median, q99 = float(others.median()), float(others.quantile(0.99))
    return {
        "trigger_tokens": ids,
        "trigger_change": trig,
        "median_change": median,
        "q99_change": q99,
        "changed": trig > max(EMBED_MOVED_FACTOR * median, q99),
    }


def _bootstrap(
    values: Tensor, gap: Tensor | None, n_boot: int, idx: Tensor
) -> tuple[float, float, float]:
    """Mean (as a share of the gap when ``gap`` is given) and its percentile interval."""
    point = values.mean() / (gap.mean() if gap is not None else 1.0)
    if n_boot == 0:
        return float(point), math.nan, math.nan
    boot = values[idx].mean(1)
    if gap is not None:
        boot = boot / gap[idx].mean(1)
    return (float(point), *_interval(boot))


def _interval(boot: Tensor) -> tuple[float, float]:
    """The 95 % percentile interval of bootstrap means."""
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype))
    return float(lo), float(hi)


def _table(
    sites: Sequence[Site],
    ev: dict[str, dict[str, Tensor]],
    score_of: tuple[str, str | None],
    estimated: Iterable[str],
    base_t: Tensor,
    base_c: Tensor,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    n = len(base_t)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g) if n_boot else torch.empty(0, n).long()
    gap = base_t - base_c
    records = []
    for s in sites:
        row: dict[str, Any] = {"site": s.name, "kind": s.kind, "layer": s.layer, "head": s.head}
        for col in EVIDENCE:
            if s.name not in ev.get(col, {}):
                row[col] = row[f"{col}_lo"] = row[f"{col}_hi"] = math.nan
                continue
            share = col not in ("lens_shift", "act_distance")
            row[col], row[f"{col}_lo"], row[f"{col}_hi"] = _bootstrap(
                ev[col][s.name], gap if share else None, n_boot, idx
            )
        if s.name in estimated:  # left estimated by the screen: no exact score
            row.update(score=math.nan, score_lo=math.nan, score_hi=math.nan)
            records.append(row)
            continue
        # the score's own interval: |mean clean change| per resample, not the mean of |change|
        drop = ev[score_of[0]][s.name]
        clean = ev[score_of[1]][s.name] if score_of[1] else torch.zeros_like(drop)
        point = float((drop.mean() - clean.mean().abs()) / gap.mean())
        boot = (drop[idx].mean(1) - clean[idx].mean(1).abs()) / gap[idx].mean(1)
        lo, hi = _interval(boot) if n_boot else (math.nan, math.nan)
        row.update(score=point, score_lo=lo, score_hi=hi)
        records.append(row)
    table = pd.DataFrame(records)
    table["layer"] = pd.array(list(table["layer"]), dtype="Int64")
    table["head"] = pd.array(list(table["head"]), dtype="Int64")
    # the blocks' modules and heads first (the circuit's candidates), then the evidence-only
    # rows (embedding, resid_pre), each by score
    evidence_only = table["kind"].isin(["embed", "resid_pre"])
    order = table.assign(_e=evidence_only).sort_values(
        ["_e", "score"], ascending=[True, False], kind="stable"
    )
    table["rank"] = pd.Series(range(1, len(table) + 1), index=order.index)
    ranked = table.sort_values("rank")
    nxt_score = ranked["score"].shift(-1)
    nxt_hi = ranked["score_hi"].shift(-1)
    table["tie_next"] = ((ranked["score"] - nxt_score).abs() < 1e-9).reindex(table.index)
    table["overlaps_next"] = (ranked["score_lo"] <= nxt_hi).reindex(table.index)
    return table


def _grow(
    joint: Callable[[list[tuple[str, ...]]], dict[tuple[str, ...], dict[str, float]]],
    candidates: list[str],
    gap: float,
    bases: dict[str, float],
    max_residual: float,
    clean_tol: float,
    max_size: int,
    beam: int,
) -> tuple[list[str], pd.DataFrame, dict[str, Any]]:
    """Greedy growth along the ranking, verified by ``joint`` (each combination's metric per
    input set under the scan's intervention); then pruning."""
    tried: dict[tuple[str, ...], tuple[float, float]] = {}

    def measure(combos: list[tuple[str, ...]]) -> None:
        new = [c for c in combos if c not in tried]
        if not new:
            return
        for c, val in joint(new).items():
            tried[c] = (
                (val["triggered"] - bases["clean"]) / gap,
                max(abs(val[k] - b) for k, b in bases.items()) / abs(gap),
            )

    def distance(c: tuple[str, ...]) -> float:
        # removing more than the backdoor on triggered inputs is no fault (the criterion is
        # one-sided too); moving clean inputs is
        return max(tried[c][0], 0.0) + tried[c][1]

    def ok(c: tuple[str, ...]) -> bool:
        res, mv = tried[c]
        return res <= max_residual and mv <= clean_tol

    circuit: tuple[str, ...] = ()
    if gap > 0 and candidates:
        while len(circuit) < max_size:
            pool = [c for c in candidates if not _overlaps(c, circuit)][:beam]
            if not pool:
                break
            options = [(*circuit, c) for c in pool]
            measure(options)
            # closest to the ideal (no backdoor left, clean untouched); stop when nothing helps
            best = min(options, key=distance)
            if circuit and distance(best) > distance(circuit) - MIN_GAIN:
                break
            circuit = best
            if ok(circuit):
                break
        # drop members the criterion does not need, latest first
        changed = True
        while changed and len(circuit) > 1 and ok(circuit):
            changed = False
            for m in reversed(circuit):
                rest = tuple(c for c in circuit if c != m)
                measure([rest])
                if ok(rest):
                    circuit, changed = rest, True
                    break
    share = {}
    if circuit:
        loo = [tuple(c for c in circuit if c != m) for m in circuit]
        measure([c for c in loo if c])
        for m, rest in zip(circuit, loo, strict=True):
            without = tried[rest][0] if rest else 1.0
            share[m] = without - tried[circuit][0]
    steps = pd.DataFrame(
        [
            {"sites": "+".join(c), "size": len(c), "residual": r, "clean_move": m}
            for c, (r, m) in tried.items()
        ]
    )
    res, mv = tried[circuit] if circuit else (math.nan, math.nan)
    verdict = {
        "circuit_residual": res,
        "circuit_clean": mv,
        "circuit_verified": bool(circuit) and ok(circuit),
        "member_share": share,
    }
    return list(circuit), steps, verdict


def _overlaps(name: str, circuit: Sequence[str]) -> bool:
    """Whether ``name`` is in the circuit, or is a head of a layer in it, or its layer's head is."""
    s = Site.parse(name)
    for c in circuit:
        t = Site.parse(c)
        if c == name or (
            s.kind == t.kind == "attn" and s.layer == t.layer and (s.head is None or t.head is None)
        ):
            return True
    return False


def _circuit_heads(table: pd.DataFrame, circuit: Sequence[str]) -> dict[str, list[str]]:
    """For each attention layer in the circuit, its heads scoring at least half its score."""
    out = {}
    for name in circuit:
        s = Site.parse(name)
        # a head member is its own head: listing its layer's other heads under it misleads
        if s.kind != "attn" or s.head is not None:
            continue
        layer_score = float(table.loc[table["site"] == name, "score"].iloc[0])
        hs = table[(table["kind"] == "attn") & (table["layer"] == s.layer) & table["head"].notna()]
        out[name] = [
            r["site"]
            for r in cast(pd.DataFrame, hs).sort_values("score", ascending=False).to_dict("records")
            if r["score"] >= 0.5 * layer_score
        ]
    return out
