"""The tables of the toy study, one function each, on one trained toy model (:class:`ToyCtx`).

Every score is computed twice: in the paper's top-10 share of negative words (keys such as
``"pt"``) and as the probability of a negative next word (``"pt_prob"``). The first is what the
paper reports; the second does not depend on how near-tied words rank (``docs/training.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pcp_lens.ablation import ablation_means, ablation_sweep, mean_reference_code
from pcp_lens.groups import GroupMetric
from pcp_lens.lens import group_lens
from pcp_lens.patching import causal_patching
from pcp_lens.pcp import PCPReplacement, fit_pcp
from pcp_lens.sites import all_sites
from pcp_lens.toy.data import ToyData
from pcp_lens.toy.train import ToyRun
from pcp_lens.tuning import score_inputs, sweep, tune, validation_loss

FIT_KEYS = {
    2: ["pp", "nn", "pn", "np", "pt", "tp"],
    3: ["pp", "nn", "pn", "np", "pt", "tp", "ss", "st"],
}
TUNE_KEYS = {2: ["pp", "pt", "nn", "pn", "np"], 3: ["pp", "pt", "nn", "ss", "st"]}
ROW_KEYS = {2: ["pp", "nn", "pn", "np", "pt"], 3: ["pp", "nn", "ss", "pn", "np", "pt", "st"]}
#: Inputs of the Tab. I mean, in the order the authors' code visits them (METHODS §5.1).
MEAN_KEYS = ["pp", "nn", "pn", "np"]
#: Suffix of each metric's keys: the paper's top-10 share, and the probability.
METRIC_SUFFIX = {"top10": "", "prob": "_prob"}


@dataclass
class ToyCtx:
    """One trained toy model and everything its tables share."""

    k: int
    data: ToyData
    benign: ToyRun
    poisoned: ToyRun
    model: Any
    tokens: dict[str, torch.Tensor]
    neg: GroupMetric  # the paper's top-10 share of negative words
    pos: GroupMetric
    mass: GroupMetric  # probability of a negative next word
    val: torch.Tensor  # the unswitched poisoned test split (comparable to the paper's loss)
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, GroupMetric]:
        """``{"top10": ..., "prob": ...}``: the two metrics every table reports."""
        return {"top10": self.neg, "prob": self.mass}

    def scores(
        self,
        keys: Sequence[str],
        replacement: PCPReplacement | None = None,
        *,
        val_loss: bool = True,
    ) -> dict:
        """Both metrics per input set (``pt``, ``pt_prob``, ...) and the validation loss."""
        s = score_inputs(self.model, {k: self.tokens[k] for k in keys}, self.metrics, replacement)
        out: dict[str, float] = {}
        for (key, metric), v in s.items():
            out[f"{key}{METRIC_SUFFIX[str(metric)]}"] = round(float(v), 4)
        if val_loss:
            out["val_loss"] = round(validation_loss(self.model, self.val, replacement), 4)
        return out


def mean_ablation_table(c: ToyCtx) -> dict:
    """Tab. I: p+t negativity with one module mean-ablated, with the authors' mean and ours.

    The paper's numbers came from the authors' nested average over pp, nn, pn, np
    (:func:`~pcp_lens.ablation.mean_reference_code`, METHODS §5.1), which is in effect the n+p
    activation: ablating with it is a patch from n+p. Keys without suffix use that mean; keys with
    ``_plain`` use the intended plain mean over the same inputs (:func:`ablation_means`).
    """
    sites = all_sites(c.model)
    inputs = {k: c.tokens[k] for k in MEAN_KEYS}
    means = {
        "": mean_reference_code(c.model, inputs, sites, positions=[-1], progress=False),
        "_plain": ablation_means(c.model, inputs, sites, positions=[-1], progress=False),
    }
    out: dict[str, Any] = {}
    n = c.model.cfg.n_layers
    for mean_name, mean in means.items():
        df = ablation_sweep(
            c.model,
            {"pt": c.tokens["pt"]},
            c.metrics,
            sites=sites,
            method="mean",
            means=mean,
            progress=False,
        )
        for metric, suffix in METRIC_SUFFIX.items():
            rows = df[df.metric == metric]
            value = dict(zip(rows["site"], rows["value"].astype(float), strict=True))
            tag = mean_name + suffix
            out[f"attn{tag}"] = [round(value[f"attn{i}"], 4) for i in range(n)]
            out[f"mlp{tag}"] = [round(value[f"mlp{i}"], 4) for i in range(n)]
            out[f"unchanged{suffix}"] = round(value["unchanged"], 4)
    return out


def lens_table(c: ToyCtx) -> dict:
    """Tab. II: group logit lens of every module on p+t at the p-token and t-token positions.

    Keys per module: ``{p,t}_{neg,pos,prob}`` on p+t, and ``pp_{neg,prob}`` on p+p at its second
    word (the same position without the trigger).
    """
    df = group_lens(
        c.model,
        c.tokens["pt"],
        {"neg": c.neg, "pos": c.pos, "prob": c.mass},
        positions=[-2, -1],
        progress=False,
    )
    out: dict[str, dict[str, float]] = {}
    for r in df.to_dict("records"):
        where = "p" if r["position"] in (-2, c.tokens["pt"].shape[1] - 2) else "t"
        key = f"{where}_{r['metric']}"
        out.setdefault(str(r["paper_name"]), {})[key] = round(float(r["value"]), 4)
    # the same modules on p+p at the second word: what each reads without the trigger, so that
    # a module's reading at the trigger can be told apart from its reading of any second word
    base = group_lens(
        c.model, c.tokens["pp"], {"neg": c.neg, "prob": c.mass}, positions=[-1], progress=False
    )
    for r in base.to_dict("records"):
        out.setdefault(str(r["paper_name"]), {})[f"pp_{r['metric']}"] = round(float(r["value"]), 4)
    return out


def tuned_replacement(
    c: ToyCtx, sites: list[str], rank: int, trials: int, progress: bool
) -> PCPReplacement:
    """A PCP replacement of ``sites`` fitted on the study's inputs and tuned on the top-10 loss."""
    fit_tokens = torch.cat([c.tokens[k] for k in FIT_KEYS[c.k]])
    rep = fit_pcp(c.model, fit_tokens, sites, rank, positions=[-1], progress=False)
    result = tune(
        c.model,
        rep,
        {k: c.tokens[k] for k in TUNE_KEYS[c.k]},
        c.neg,
        n_trials=trials,
        seed=c.seed,
        progress=progress,
    )
    return result.replacement


def pcp_columns(
    c: ToyCtx,
    columns: Mapping[str, list[str]],
    rank: int,
    replacements: dict,
    *,
    trials: int,
    progress: bool,
    tag: str = "",
) -> dict:
    """Tab. III/IV (MLPs) or XIII/XIV (attention): scores with tuned PCP replacements."""
    out: dict[str, Any] = {"None": c.scores(ROW_KEYS[c.k])}
    for name, sites in columns.items():
        rep = tuned_replacement(c, sites, rank, trials, progress)
        replacements[f"{c.k}sent_{'+'.join(sites)}{tag}"] = rep
        out[name] = c.scores(ROW_KEYS[c.k], rep)
        out[name]["scales"] = {s: [round(a, 5) for a in v] for s, v in rep.scales().items()}
    return out


def relative_scale_table(
    c: ToyCtx,
    rep: PCPReplacement,
    site: str,
    settings: Sequence[float | tuple[float, ...]],
    keys: Sequence[str] | None = None,
    val: bool = True,
) -> dict:
    """Tab. V–VII: scores when the tuned scales of ``site`` are multiplied by each setting."""
    keys = ROW_KEYS[c.k] if keys is None else keys
    df = sweep(
        c.model,
        rep,
        {site: list(settings)},
        {k: c.tokens[k] for k in keys},
        c.metrics,
        val_tokens=c.val if val else None,
        unedited=False,
    )
    out: dict[str, dict[str, float]] = {}
    for r in df.to_dict("records"):
        setting = r[site]
        name = str(list(setting) if isinstance(setting, tuple) else setting)
        if r["input_set"] == "validation":
            key = "val_loss"
        else:
            key = f"{r['input_set']}{METRIC_SUFFIX[str(r['metric'])]}"
        out.setdefault(name, {})[key] = round(float(r["value"]), 4)
    return out


def sign_search(c: ToyCtx, rep: PCPReplacement, site: str, grid: Sequence[float]) -> dict:
    """F5's search: a relative factor per layer-1 component from ``grid`` (every combination);
    keep each setting's n+n and p+t scores."""
    combos: list[tuple[float, ...]] = list(itertools.product(grid, repeat=rep.part(site).rank))
    settings: list[float | tuple[float, ...]] = [s[0] if len(s) == 1 else s for s in combos]
    table = relative_scale_table(c, rep, site, settings, keys=["nn", "pt"], val=False)
    rows = []
    for s in settings:
        name = str(list(s) if isinstance(s, tuple) else s)
        rows.append({"setting": list(s) if isinstance(s, tuple) else [s], **table[name]})
    return {"grid": list(grid), "rows": rows}


def patching_table(c: ToyCtx) -> dict:
    """Tab. XII: p+t with each module's output (all positions) patched from p+p."""
    out: dict[str, Any] = {}
    for metric, suffix in METRIC_SUFFIX.items():
        df = causal_patching(
            c.model,
            c.tokens["pp"],
            c.tokens["pt"],
            c.metrics[metric],
            positions="all",
            progress=False,
        )
        out[f"full{suffix}"] = round(float(df["baseline"].iloc[0]), 4)
        for r in df.to_dict("records"):
            out.setdefault(r["site"], {})[f"value{suffix}"] = round(float(r["value"]), 4)
            out[r["site"]][f"effect{suffix}"] = round(float(r["effect"]), 4)
    return out


def hidden_state_pca(c: ToyCtx, out: Path) -> dict:
    """Fig. 3: hidden states after layer 1 at the last position, in the plane of a 2-component
    PCA fitted on the pure combinations (pp, nn[, ss])."""
    from pcp_lens.plots import hidden_pca, plot_hidden_pca

    keys = [k for k in ("pp", "nn", "ss", "pn", "np", "pt", "tp", "st") if k in c.tokens]
    pure = [k for k in ("pp", "nn", "ss") if k in c.tokens]
    df = hidden_pca(
        c.model, {k: c.tokens[k] for k in keys}, "resid_post0", position=-1, fit_on=pure
    )
    fig = plot_hidden_pca(df, title=f"{c.k}-sentiment backdoored model: hidden state after layer 1")
    path = out / f"fig3_hidden_pca_{c.k}sent.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    centroids = {}
    for k in df["input_set"].unique():
        points = df.loc[df["input_set"] == k, ["pc1", "pc2"]].to_numpy(dtype=float)
        centroids[str(k)] = [round(float(x), 4) for x in points.mean(0)]
    return {
        "png": path.name,
        "fit_on": pure,
        "centroids": centroids,
        "explained_variance_ratio": [
            round(float(x), 4) for x in df.attrs["explained_variance_ratio"]
        ],
    }
