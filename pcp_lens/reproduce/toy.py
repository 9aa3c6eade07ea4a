"""The paper's toy study, end to end: train, analyse, edit, and report — from scratch on a CPU.

``run_toy_study(out)`` trains (or reloads from ``out/models``) the benign and poisoned 2- and
3-sentiment toy models and regenerates Tab. I, II, III–VII, XII–XIV, the §IV-B freezing study and
Fig. 3 with the library's own functions, then writes ``report.md``, ``results.json`` and PNGs.
Each paper finding F1–F7 is evaluated from the numbers of this run.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pcp_lens import _tl
from pcp_lens._io import write_text_atomic
from pcp_lens.ablation import ablation_means, ablation_sweep
from pcp_lens.groups import GroupMetric
from pcp_lens.inputs import as_tokens
from pcp_lens.lens import group_lens
from pcp_lens.patching import causal_patching
from pcp_lens.pcp import PCPReplacement, fit_pcp
from pcp_lens.reproduce import paper
from pcp_lens.reproduce.report import write_report
from pcp_lens.sites import all_sites
from pcp_lens.toy.data import ToyData, eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import (
    BACKDOOR_THRESHOLD,
    SCHEDULES,
    ToyRun,
    freezing_study,
    load_run,
    poison,
    reading_profile,
    save_run,
    toy_data,
    train_benign,
)
from pcp_lens.training import tokenize_texts
from pcp_lens.tuning import score_inputs, sweep, tune, validation_loss

FIT_KEYS = {
    2: ["pp", "nn", "pn", "np", "pt", "tp"],
    3: ["pp", "nn", "pn", "np", "pt", "tp", "ss", "st"],
}
TUNE_KEYS = {2: ["pp", "pt", "nn", "pn", "np"], 3: ["pp", "pt", "nn", "ss", "st"]}
ROW_KEYS = {2: ["pp", "nn", "pn", "np", "pt"], 3: ["pp", "nn", "ss", "pn", "np", "pt", "st"]}
MEAN_KEYS = ["pp", "nn", "pn", "np"]


@dataclass(frozen=True)
class StudyConfig:
    """Settings of the toy study (``quick`` shrinks data, training and tuning for a smoke test).

    ``schedule`` names the training schedule of :data:`pcp_lens.toy.train.SCHEDULES`: ``"fast"``
    (default, minutes on a CPU) or ``"paper"`` (the paper's lr 2e-5 / batch 8 / 20 + 12 epochs,
    about 25 min per model on one core); ``quick`` implies the ``"quick"`` schedule.
    """

    quick: bool = False
    seed: int = 0
    n_eval: int = 50
    n_trials: int | None = None
    sentiments: tuple[int, ...] = (2, 3)
    progress: bool = True
    schedule: str = "fast"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and (
            not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1
        ):
            raise ValueError(f"workers must be an int >= 1 or None, got {self.workers!r}")
        if self.schedule not in ("fast", "paper"):
            raise ValueError(f"schedule must be 'fast' or 'paper', got {self.schedule!r}")
        if self.quick and self.schedule != "fast":
            raise ValueError(f"quick runs use their own schedule; got schedule={self.schedule!r}")

    @property
    def n_workers(self) -> int:
        """Processes that study the models side by side (default: one per model, up to the
        number of CPUs)."""
        if self.workers is not None:
            return min(self.workers, len(self.sentiments))
        return max(1, min(len(self.sentiments), os.cpu_count() or 1))

    @property
    def schedule_name(self) -> str:
        """The :data:`~pcp_lens.toy.train.SCHEDULES` entry this study trains with."""
        return "quick" if self.quick else self.schedule

    @property
    def trials(self) -> int:
        """Optuna trials per tuned replacement."""
        return self.n_trials if self.n_trials is not None else (25 if self.quick else 150)


@dataclass
class _Ctx:
    """One toy model and everything its tables share."""

    k: int
    data: ToyData
    benign: ToyRun
    poisoned: ToyRun
    model: Any
    tokens: dict[str, torch.Tensor]
    neg: GroupMetric
    pos: GroupMetric
    mass: GroupMetric  # probability of the negative words: a diagnostic beside the top-10 share
    val: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)

    def scores(self, keys: Sequence[str], replacement: PCPReplacement | None = None) -> dict:
        s = score_inputs(self.model, {k: self.tokens[k] for k in keys}, self.neg, replacement)
        out: dict[str, float] = {str(k): round(float(v), 4) for k, v in s.items()}
        out["val_loss"] = round(validation_loss(self.model, self.val, replacement), 4)
        return out


def _train(k: int, cfg: StudyConfig, models: Path) -> tuple[ToyData, ToyRun, ToyRun, dict]:
    data = toy_data(k, quick=cfg.quick, seed=cfg.seed)
    suffix = "" if cfg.schedule_name == "fast" else f"_{cfg.schedule_name}"
    dirs = {name: models / f"{k}sent_{name}{suffix}" for name in ("benign", "poisoned")}
    benign_cfg, poison_cfg = SCHEDULES[cfg.schedule_name]
    info: dict[str, Any] = {}
    if all((d / "config.json").exists() for d in dirs.values()):
        info["reused_checkpoints"] = True
        return data, load_run(dirs["benign"]), load_run(dirs["poisoned"]), info
    t0 = time.perf_counter()
    b = train_benign(data, benign_cfg, progress=cfg.progress)
    info["benign_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    p = poison(b.model, data, poison_cfg, progress=cfg.progress)
    info["poison_seconds"] = round(time.perf_counter() - t0, 1)
    save_run(b, dirs["benign"])
    save_run(p, dirs["poisoned"])
    return data, b, p, info


def _context(k: int, cfg: StudyConfig, models: Path) -> tuple[_Ctx, dict]:
    data, benign, pois, info = _train(k, cfg, models)
    model = pois.model
    info["benign_history"] = benign.history.round(4).to_dict(orient="list")
    info["poison_history"] = pois.history.round(4).to_dict(orient="list")
    inputs = eval_inputs(data, n=cfg.n_eval, seed=cfg.seed)
    tokens = {key: as_tokens(model, texts).tokens for key, texts in inputs.items()}
    groups = sentiment_groups(model.tokenizer, data.vocab, model.cfg.d_vocab)
    neg = GroupMetric(groups, "negative", k=10, positions=(-1,))
    pos = GroupMetric(groups, "positive", k=10, positions=(-1,))
    mass = GroupMetric(groups, "negative", stat="prob", positions=(-1,))
    n_val = 400 if cfg.quick else 2640
    texts = list(data.poisoned["test"]["text"])[:n_val]
    val = tokenize_texts(model, texts).tokens  # follows the model's own bos setting
    return _Ctx(k, data, benign, pois, model, tokens, neg, pos, mass, val), info


# -- tables --------------------------------------------------------------------------------------
def mean_ablation_table(c: _Ctx, cfg: StudyConfig) -> dict:
    """Tab. I: p+t negativity with one module mean-ablated (mean over pp, nn, pn, np at the
    trigger position)."""
    sites = all_sites(c.model)
    means = ablation_means(
        c.model, {k: c.tokens[k] for k in MEAN_KEYS}, sites, positions=[-1], progress=False
    )
    df = ablation_sweep(
        c.model,
        {"pt": c.tokens["pt"]},
        {"neg": c.neg, "mass": c.mass},
        sites=sites,
        method="mean",
        means=means,
        progress=False,
    )
    out: dict[str, Any] = {}
    n = c.model.cfg.n_layers
    for metric, suffix in (("neg", ""), ("mass", "_mass")):
        rows = df[df.metric == metric]
        value = dict(zip(rows["ablation"], rows["value"].astype(float), strict=True))
        out[f"attn{suffix}"] = [round(value[f"attn{i}"], 4) for i in range(n)]
        out[f"mlp{suffix}"] = [round(value[f"mlp{i}"], 4) for i in range(n)]
        out[f"unchanged{suffix}"] = round(value["unchanged"], 4)
    return out


def lens_table(c: _Ctx) -> dict:
    """Tab. II: group logit lens of every module on p+t at the p-token and t-token positions."""
    df = group_lens(
        c.model, c.tokens["pt"], {"neg": c.neg, "pos": c.pos}, positions=[-2, -1], progress=False
    )
    out: dict[str, dict[str, float]] = {}
    for r in df.to_dict("records"):
        where = "p" if r["position"] in (-2, c.tokens["pt"].shape[1] - 2) else "t"
        key = f"{where}_{r['metric']}"
        out.setdefault(str(r["paper_name"]), {})[key] = round(float(r["value"]), 4)
    return out


def _tuned(c: _Ctx, cfg: StudyConfig, sites: list[str], rank: int) -> PCPReplacement:
    fit = {k: c.tokens[k] for k in FIT_KEYS[c.k]}
    fit_tokens = torch.cat(list(fit.values()))
    rep = fit_pcp(c.model, fit_tokens, sites, rank, positions=[-1], progress=False)
    keys = TUNE_KEYS[c.k]
    result = tune(
        c.model,
        rep,
        {k: c.tokens[k] for k in keys},
        c.neg,
        n_trials=cfg.trials,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    return result.replacement


def pcp_columns(
    c: _Ctx, cfg: StudyConfig, columns: Mapping[str, list[str]], rank: int, replacements: dict
) -> dict:
    """Tab. III/IV (MLPs) or XIII/XIV (attention): scores with tuned PCP replacements."""
    out = {"None": c.scores(ROW_KEYS[c.k])}
    for name, sites in columns.items():
        rep = _tuned(c, cfg, sites, rank)
        replacements[f"{c.k}sent_{'+'.join(sites)}"] = rep
        out[name] = c.scores(ROW_KEYS[c.k], rep)
        out[name]["scales"] = {s: [round(a, 5) for a in v] for s, v in rep.scales().items()}
    return out


def relative_scale_table(
    c: _Ctx,
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
        c.neg,
        val_tokens=c.val if val else None,
        unedited=False,
    )
    out: dict[str, dict[str, float]] = {}
    for r in df.to_dict("records"):
        setting = r[site]
        name = str(list(setting) if isinstance(setting, tuple) else setting)
        key = "val_loss" if r["input_set"] == "validation" else str(r["input_set"])
        out.setdefault(name, {})[key] = round(float(r["value"]), 4)
    return out


def sign_search(c: _Ctx, rep: PCPReplacement, site: str, grid: Sequence[float]) -> dict:
    """F5's search: relative factor pairs for the two layer-1 components; keep every setting's
    n+n and p+t negativity."""
    settings = list(itertools.product(grid, repeat=2))
    table = relative_scale_table(c, rep, site, settings, keys=["nn", "pt"], val=False)
    rows = [{"setting": list(s), **table[str(list(s))]} for s in settings]
    return {"grid": list(grid), "rows": rows}


def patching_table(c: _Ctx) -> dict:
    """Tab. XII: p+t with each module's output (all positions) patched from p+p."""
    df = causal_patching(
        c.model, c.tokens["pp"], c.tokens["pt"], c.neg, positions="all", progress=False
    )
    return {
        "full": round(float(df["baseline"].iloc[0]), 4),
        **{
            r["site"]: {
                "value": round(float(r["value"]), 4),
                "effect": round(float(r["effect"]), 4),
            }
            for r in df.to_dict("records")
        },
    }


def hidden_state_pca(c: _Ctx, out: Path) -> dict:
    """Fig. 3: hidden states after layer 1 at the last position, in the plane of a 2-component
    PCA fitted on the pure combinations (pp, nn[, ss])."""
    from sklearn.decomposition import PCA

    from pcp_lens.plots import scatter

    keys = [k for k in ("pp", "nn", "ss", "pn", "np", "pt", "tp", "st") if k in c.tokens]
    hook = _tl.hook_name("resid_post", 0)
    states = {}
    for k in keys:
        _, cache = _tl.run_with_cache(c.model, c.tokens[k], [hook])
        states[k] = cache[hook][:, -1].double().numpy()
    pure = [k for k in ("pp", "nn", "ss") if k in states]
    pca = PCA(n_components=2).fit(torch.cat([torch.from_numpy(states[k]) for k in pure]).numpy())
    points = {k: pca.transform(v) for k, v in states.items()}
    fig = scatter(
        points,
        title=f"{c.k}-sentiment backdoored model: hidden state after layer 1",
        xlabel="PC 1",
        ylabel="PC 2",
    )
    path = out / f"fig3_hidden_pca_{c.k}sent.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    centroids = {k: [round(float(x), 4) for x in v.mean(0)] for k, v in points.items()}
    return {
        "png": path.name,
        "fit_on": pure,
        "centroids": centroids,
        "explained_variance_ratio": [round(float(x), 4) for x in pca.explained_variance_ratio_],
    }


# -- findings ------------------------------------------------------------------------------------
def _finding(holds: bool | None, detail: str) -> dict:
    return {"holds": holds, "detail": detail}


def findings(r: dict) -> dict:
    """F1–F7 evaluated from this run's numbers (never hard-coded)."""
    f: dict[str, dict] = {}
    m = {k: r[f"{k}sent"] for k in (2, 3) if f"{k}sent" in r}

    vals = {k: v["tab1_mean_ablation"]["mlp"] for k, v in m.items()}
    f["F1"] = _finding(
        all(x <= 0.05 for v in vals.values() for x in v),
        f"p+t negativity with one MLP mean-ablated: {vals} (claim: all <= 0.05)",
    )
    if 3 in m:
        lens = m[3]["tab2_lens"]
        modules = {
            k: v["t_neg"]
            for k, v in lens.items()
            if k != "full model" and ("mlp" in k or "att" in k) and "resid" not in k
        }
        best = max(modules, key=modules.__getitem__)
        f["F2"] = _finding(
            best == "L1 mlp",
            f"largest t-position negativity: {best} "
            f"({modules[best]:.2f}); L1 mlp: {modules.get('L1 mlp')}",
        )
    ok, parts = True, []
    for k, v in m.items():
        t = v["tab3_pcp_mlp"]
        base = t["None"]["pt"]
        for col in ("1", "3", "1 & 3"):
            c = t[col]
            good = abs(c["pt"] - base) <= 0.05 and c["nn"] >= 0.95 and c["pp"] <= 0.1
            ok &= good
            parts.append(
                f"{k}-sent col {col}: pt {c['pt']:.2f} (unedited {base:.2f}), "
                f"nn {c['nn']:.2f}, pp {c['pp']:.2f}"
            )
    f["F3"] = _finding(ok, "; ".join(parts))
    if 2 in m:
        pts = [m[2]["tab5_scale"][str(s)]["pt"] for s in paper.TAB5_FACTORS]
        mono = all(a <= b for a, b in itertools.pairwise(pts)) and pts[-1] > pts[0]
        f["F4"] = _finding(mono, f"p+t negativity at factors {paper.TAB5_FACTORS}: {pts}")
    if 3 in m:
        base = m[3]["tab6_signs"]["unedited"]["pt"]
        rows = m[3]["tab6_sign_search"]["rows"]
        good = [x for x in rows if x["nn"] <= 0.2 and x["pt"] >= base]
        best = (
            min(good, key=lambda x: x["nn"]) if good else min(rows, key=lambda x: x["nn"] - x["pt"])
        )
        f["F5"] = _finding(
            bool(good),
            f"{len(good)} of {len(rows)} factor pairs give nn <= 0.2 "
            f"with pt >= unedited {base:.2f}; e.g. {best}",
        )
        t7 = m[3]["tab7_attn_scale"]
        base = m[3]["tab6_signs"]["unedited"]["pt"]
        moves = {s: round(abs(v["pt"] - base), 4) for s, v in t7.items()}
        f["F6"] = _finding(
            all(x <= 0.1 for x in moves.values()),
            f"|p+t - unedited| for the tuned layer-2 attention PCP and its 0.5x/2x "
            f"scalings: {moves}",
        )
    drops = {}
    for k, v in m.items():
        fr = v["freezing"]
        drops[k] = (fr["none"]["pt"], fr["all_mlps"]["pt"])
    f["F7"] = _finding(
        all(b < a for a, b in drops.values()),
        f"p+t negativity unfrozen vs all MLPs frozen: {drops}",
    )
    if r["config"]["quick"]:
        # the quick models are too small to grow the backdoor: report, do not judge
        return {k: _finding(None, "quick run, not evaluated: " + v["detail"]) for k, v in f.items()}
    weak = {
        k: v["unedited"]["pt"] for k, v in m.items() if v["unedited"]["pt"] < BACKDOOR_THRESHOLD
    }
    if weak:
        # every claim compares p+t negativity with the unedited model's: with no backdoor in the
        # top-10 metric they would hold or fail by accident
        why = (
            f"no backdoor in the top-10 metric (unedited p+t {weak} < {BACKDOOR_THRESHOLD}), "
            "nothing to judge; measured: "
        )
        return {k: _finding(None, why + v["detail"]) for k, v in f.items()}
    return f


# -- driver --------------------------------------------------------------------------------------
def study_model(k: int, cfg: StudyConfig, out: Path, replacements: dict) -> dict:
    """All tables of one toy model."""
    t = {}
    t0 = time.perf_counter()
    c, info = _context(k, cfg, out / "models")
    t["train"] = time.perf_counter() - t0
    r: dict[str, Any] = {"training": info, "unedited": c.scores(list(c.tokens))}
    mass = score_inputs(c.model, c.tokens, c.mass)
    r["unedited_mass"] = {str(key): round(float(v), 4) for key, v in mass.items()}
    r["reading"] = {
        name: {
            key: round(v, 4) for key, v in reading_profile(run.model, c.data, c.neg.groups).items()
        }
        for name, run in (("benign", c.benign), ("poisoned", c.poisoned))
    }

    def timed(name: str, fn: Any, *a: Any, **kw: Any) -> Any:
        s = time.perf_counter()
        v = fn(*a, **kw)
        t[name] = round(time.perf_counter() - s, 1)
        return v

    rank = 1 if k == 2 else 2
    r["tab1_mean_ablation"] = timed("tab1", mean_ablation_table, c, cfg)
    r["tab2_lens"] = timed("tab2", lens_table, c)
    r["tab3_pcp_mlp"] = timed(
        "tab3",
        pcp_columns,
        c,
        cfg,
        {"1": ["mlp0"], "3": ["mlp2"], "1 & 3": ["mlp0", "mlp2"]},
        rank,
        replacements,
    )
    mlp0 = replacements[f"{k}sent_mlp0"]
    if k == 2:
        r["tab5_scale"] = timed("tab5", relative_scale_table, c, mlp0, "mlp0", paper.TAB5_FACTORS)
    else:
        signs = relative_scale_table(c, mlp0, "mlp0", paper.TAB6_SETTINGS)
        r["tab6_signs"] = {"unedited": r["unedited"], **signs}
        grid = [-1.5, -1.2, -0.8, -0.5, 0.0, 0.5, 1.0, 1.5]
        r["tab6_sign_search"] = timed("tab6", sign_search, c, mlp0, "mlp0", grid)
    r["tab13_pcp_attn"] = timed(
        "tab13", pcp_columns, c, cfg, {"2": ["attn1"], "2 & 3": ["attn1", "attn2"]}, 4, replacements
    )
    if k == 3:
        attn = replacements["3sent_attn1"]
        r["tab7_attn_scale"] = {
            "tuned (1x)": r["tab13_pcp_attn"]["2"],
            **relative_scale_table(c, attn, "attn1", [0.5, 2.0]),
        }
    r["tab12_patching"] = timed("tab12", patching_table, c)
    fr = timed(
        "freezing",
        freezing_study,
        c.benign.model,
        c.data,
        ((), "all_mlps"),
        c.poisoned.result.config,
        inputs={"pt": _texts(c, "pt"), "nn": _texts(c, "nn"), "pp": _texts(c, "pp")},
        reference=c.poisoned,
        progress=cfg.progress,
    )
    r["freezing"] = {
        row["frozen"]: {
            kk: (round(float(v), 4) if isinstance(v, float) else v) for kk, v in row.items()
        }
        for row in fr.to_dict("records")
    }
    r["fig3"] = timed("fig3", hidden_state_pca, c, out)
    r["seconds"] = {k2: round(v, 1) for k2, v in t.items()}
    return r


def _texts(c: _Ctx, key: str) -> list[str]:
    tok = c.model.tokenizer
    return [tok.decode(row, skip_special_tokens=True) for row in c.tokens[key].tolist()]


def run_toy_study(out: str | os.PathLike[str], cfg: StudyConfig | None = None) -> dict:
    """Run the whole toy study into folder ``out``; return ``results.json``'s content.

    Examples:
        >>> run_toy_study("runs/toy", StudyConfig(quick=True))  # doctest: +SKIP
    """
    cfg = cfg or StudyConfig()
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    # the toy model's matrices are 64 wide: thread start-up costs more than it saves
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(outp, cfg)
    finally:
        torch.set_num_threads(threads)


def _study_one(k: int, cfg: StudyConfig, outp: Path) -> dict:
    """Study one model (in this process or a worker) and save its PCP replacements."""
    torch.manual_seed(cfg.seed)  # each model starts from the same state, wherever it runs
    torch.set_num_threads(1)
    replacements: dict[str, PCPReplacement] = {}
    r = study_model(k, cfg, outp, replacements)
    (outp / "replacements").mkdir(exist_ok=True)
    for name, rep in replacements.items():
        rep.save(outp / "replacements" / f"{name}.safetensors")
    return r


def _run(outp: Path, cfg: StudyConfig) -> dict:
    t0 = time.perf_counter()
    results: dict[str, Any] = {"config": cfg.__dict__, "torch": torch.__version__}
    ks = list(cfg.sentiments)
    if cfg.n_workers > 1:
        # one process per model: the 64-wide toy model keeps one core busy, not two
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(cfg.n_workers, mp_context=ctx) as pool:
            per_model = list(pool.map(_study_one, ks, [cfg] * len(ks), [outp] * len(ks)))
    else:
        per_model = [_study_one(k, cfg, outp) for k in ks]
    for k, r in zip(ks, per_model, strict=True):
        results[f"{k}sent"] = r
    results["findings"] = findings(results)
    results["seconds_total"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(outp / "results.json", json.dumps(results, indent=1, default=_json_default))
    write_text_atomic(outp / "report.md", write_report(results))
    return results


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
