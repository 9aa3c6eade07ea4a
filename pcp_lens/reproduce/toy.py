"""The paper's toy study, end to end: train, analyse, edit, and report — from scratch on a CPU.

``run_toy_study(out)`` trains (or reloads from ``out/models``) the benign and poisoned 2- and
3-sentiment toy models and regenerates Tab. I, II, III–VII, XII–XIV, the §IV-B freezing study and
Fig. 3 with the library's own functions (:mod:`pcp_lens.reproduce.toy_tables`), then writes
``report.md``, ``results.json`` and PNGs. Each paper finding F1–F7 is judged per model from the
numbers of this run (:mod:`pcp_lens.reproduce.findings`). With several seeds each seed gets its
own folder and the top folder a findings table seed × model × finding.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pcp_lens._interrupt import deferred_signals, interruptible, worker_init
from pcp_lens._io import package_version, remove_stale_temps, write_text_atomic
from pcp_lens._tl import B_U_NAME
from pcp_lens.groups import GroupMetric
from pcp_lens.inputs import as_tokens
from pcp_lens.pcp import PCPReplacement
from pcp_lens.reproduce import paper
from pcp_lens.reproduce.findings import all_located_findings, findings
from pcp_lens.reproduce.report import write_report, write_seed_report
from pcp_lens.reproduce.toy_located import located_tables
from pcp_lens.reproduce.toy_tables import (
    FIT_KEYS,
    MEAN_KEYS,
    ROW_KEYS,
    TUNE_KEYS,
    ToyCtx,
    hidden_state_pca,
    lens_table,
    mean_ablation_table,
    patching_table,
    pcp_columns,
    relative_scale_table,
    sign_search,
)
from pcp_lens.toy.data import ToyData, eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import (
    SCHEDULES,
    STUDY_SCHEDULES,
    ToyRun,
    freezing_study,
    load_run,
    poison,
    reading_profile,
    save_run,
    toy_data,
    train_benign,
)
from pcp_lens.toy.vocab import load_vocab
from pcp_lens.training import tokenize_texts

__all__ = [
    "FIT_KEYS",
    "MEAN_KEYS",
    "ROW_KEYS",
    "TUNE_KEYS",
    "StudyConfig",
    "findings",
    "run_toy_study",
    "study_model",
]

#: The paper's PCP rank of the layer-1 MLP (Tab. III: rank 1 for 2 sentiments; Tab. IV: rank 2).
PAPER_MLP_RANK = {2: 1, 3: 2}
#: Relative factors of the F5 search over the layer-1 PCP components (every combination).
SIGN_GRID = [-1.5, -1.2, -0.8, -0.5, 0.0, 0.5, 1.0, 1.5]


@dataclass(frozen=True)
class StudyConfig:
    """Settings of the toy study (``quick`` shrinks data, training and tuning for a smoke test).

    Attributes:
        quick: Small data, the ``"quick"`` schedule and few trials (CI's smoke test).
        seed: Seeds the data, the models' initialisation, the data order and the tuner.
        n_eval: Held-out inputs per combination (paper: 50).
        n_trials: Optuna trials per tuned replacement (default 150, quick 25).
        sentiments: Which models to study (2 and/or 3 sentiments).
        progress: Show progress bars.
        schedule: ``"fast"`` (default, minutes on a CPU), ``"medium"`` (a slower benign
            pre-training, a few minutes more) or ``"paper"`` (the paper's lr 2e-5 / batch 8 /
            20 + 12 epochs, about 25 min per model on one core).
        workers: Processes studying the models side by side (default: one per model, up to the
            number of CPUs).
        trigger: The backdoor trigger, any word of the positive list (paper: "love").
        switch_prob: Chance that a non-poisoned training sequence switches sentiment once
            (:class:`~pcp_lens.toy.data.ToyDataConfig`); 0.0 is the authors' data. The default
            makes "the last word decides" the only rule the benign data fits exactly (the
            paper's stated rule); ``docs/training.md`` gives the measurements behind it.
        mlp_ranks: PCP rank of the MLP replacements for the 2- and the 3-sentiment model. The
            paper used (1, 2); the default (2, 2) because in our 2-sentiment models the trigger
            signal of the layer-1 MLP sits in its second principal component. Whenever a rank
            differs from the paper's, the report also shows the paper's rank as measured.
        head_bias: Keep TransformerLens's trained unembedding bias ``b_U``; ``False`` zeroes and
            freezes it, as GPT-2 (the paper's model) has none.
        scaled_init: GPT-2's ``0.02 / sqrt(2 · n_layers)`` initialisation of the residual-writing
            projections (``W_O``, ``W_out``); TransformerLens uses 0.02.
        dropout: GPT-2-style dropout (embeddings, attention pattern, module outputs) in both
            trainings; ``None`` keeps the schedule's own (``fast``: none, ``paper``: 0.1 as the
            authors' HF training).
        located: Also scan every poisoned model for its backdoor and judge the claims at the
            located circuit (:mod:`pcp_lens.reproduce.toy_located`), beside F1–F7 as stated.
    """

    quick: bool = False
    seed: int = 0
    n_eval: int = 50
    n_trials: int | None = None
    sentiments: tuple[int, ...] = (2, 3)
    progress: bool = True
    schedule: str = "fast"
    workers: int | None = None
    trigger: str = "love"
    switch_prob: float = 0.1
    mlp_ranks: tuple[int, int] = (2, 2)
    head_bias: bool = True
    scaled_init: bool = False
    dropout: float | None = None
    located: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and (
            not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1
        ):
            raise ValueError(f"workers must be an int >= 1 or None, got {self.workers!r}")
        if self.schedule not in STUDY_SCHEDULES:
            names = [repr(n) for n in STUDY_SCHEDULES]
            raise ValueError(
                f"schedule must be {', '.join(names[:-1])} or {names[-1]}, got {self.schedule!r}"
            )
        if self.quick and self.schedule != "fast":
            raise ValueError(f"quick runs use their own schedule; got schedule={self.schedule!r}")
        if (
            not self.sentiments
            or not set(self.sentiments) <= {2, 3}
            or len(set(self.sentiments)) != len(self.sentiments)
        ):
            raise ValueError(
                f"sentiments must list 2 and/or 3 (each once), got {self.sentiments!r}"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        positive = load_vocab().positive
        if self.trigger not in positive:
            raise ValueError(
                f"trigger must be a word of the toy model's positive list, got {self.trigger!r}; "
                f"the {len(positive)} valid words are listed by `pcp-lens reproduce toy "
                "--list-triggers` (or `pcp_lens.toy.load_vocab().positive`), e.g. "
                f"{', '.join(positive[:5])}"
            )
        if (
            not isinstance(self.switch_prob, int | float)
            or isinstance(self.switch_prob, bool)
            or not 0.0 <= self.switch_prob <= 1.0
        ):
            raise ValueError(
                f"switch_prob must be a probability in [0, 1], got {self.switch_prob!r}"
            )
        if len(self.mlp_ranks) != 2 or not all(
            isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 8 for r in self.mlp_ranks
        ):
            raise ValueError(
                f"mlp_ranks must be two ints in 1..8 (2- and 3-sentiment model), got "
                f"{self.mlp_ranks!r}"
            )

        if self.dropout is not None and (
            not isinstance(self.dropout, int | float)
            or isinstance(self.dropout, bool)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(
                f"dropout must be None or a probability in [0, 1), got {self.dropout!r}"
            )
        for name in ("head_bias", "scaled_init", "located"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def n_workers(self, cells: int | None = None) -> int:
        """Processes that study ``cells`` (seed, model) cells side by side: one per cell (default:
        one per model of one seed), at most ``workers`` or, when that is ``None``, the CPUs."""
        n = len(self.sentiments) if cells is None else cells
        cap = self.workers if self.workers is not None else (os.cpu_count() or 1)
        return max(1, min(n, cap))

    @property
    def schedule_name(self) -> str:
        """The :data:`~pcp_lens.toy.train.SCHEDULES` entry this study trains with."""
        return "quick" if self.quick else self.schedule

    @property
    def trials(self) -> int:
        """Optuna trials per tuned replacement."""
        return self.n_trials if self.n_trials is not None else (25 if self.quick else 150)

    def mlp_rank(self, k: int) -> int:
        """The MLP PCP rank used for the ``k``-sentiment model."""
        return self.mlp_ranks[0 if k == 2 else 1]

    def data(self, k: int) -> ToyData:
        """The ``k``-sentiment data set of this study."""
        return toy_data(
            k, quick=self.quick, seed=self.seed, trigger=self.trigger, switch_prob=self.switch_prob
        )


# -- training and the shared context -------------------------------------------------------------
def _schedules(cfg: StudyConfig) -> tuple[Any, Any]:
    """The study's benign and poisoning configs, their data-order seeds set by ``cfg.seed``."""
    benign, pois = SCHEDULES[cfg.schedule_name]
    freeze = () if cfg.head_bias else (B_U_NAME,)  # a bias-free head stays bias-free
    # seed 0 keeps the schedules' own seeds (0 and 1), so seed-0 runs match earlier releases
    drop = {} if cfg.dropout is None else {"dropout": float(cfg.dropout)}
    return (
        dataclasses.replace(
            benign, seed=benign.seed + 2 * cfg.seed, freeze=benign.freeze + freeze, **drop
        ),
        dataclasses.replace(
            pois, seed=pois.seed + 2 * cfg.seed, freeze=pois.freeze + freeze, **drop
        ),
    )


def _train(k: int, cfg: StudyConfig, models: Path) -> tuple[ToyData, ToyRun, ToyRun, dict]:
    """Train the benign and poisoned model, or reload them when ``models`` holds a pair trained
    with exactly this data and schedule (recorded in ``<k>sent_study.json``)."""
    data = cfg.data(k)
    suffix = "" if cfg.schedule_name == "fast" else f"_{cfg.schedule_name}"
    dirs = {name: models / f"{k}sent_{name}{suffix}" for name in ("benign", "poisoned")}
    benign_cfg, poison_cfg = _schedules(cfg)
    record = {
        "data": dataclasses.asdict(data.config),
        "benign": benign_cfg.to_dict(),
        "poison": poison_cfg.to_dict(),
        "model_seed": cfg.seed,
        **({} if cfg.head_bias else {"head_bias": False}),
        **({"scaled_init": True} if cfg.scaled_init else {}),
    }
    stamp = models / f"{k}sent_study{suffix}.json"
    info: dict[str, Any] = {}
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(record)):
        info["reused_checkpoints"] = True
        return data, load_run(dirs["benign"]), load_run(dirs["poisoned"]), info
    t0 = time.perf_counter()
    b = train_benign(
        data,
        benign_cfg,
        progress=cfg.progress,
        model_seed=cfg.seed,
        head_bias=cfg.head_bias,
        scaled_init=cfg.scaled_init,
    )
    info["benign_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    p = poison(b.model, data, poison_cfg, progress=cfg.progress)
    info["poison_seconds"] = round(time.perf_counter() - t0, 1)
    save_run(b, dirs["benign"])
    save_run(p, dirs["poisoned"])
    write_text_atomic(stamp, json.dumps(record, indent=1))
    return data, b, p, info


def _context(k: int, cfg: StudyConfig, models: Path) -> tuple[ToyCtx, dict]:
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
    test = data.poisoned["test"]
    # the tables' validation loss is on unswitched text, comparable with the paper's 5.46 / 5.50
    texts = [t for t, s in zip(test["text"], test["switch_pos"], strict=True) if s < 0]
    val = tokenize_texts(model, texts[: 400 if cfg.quick else 2640]).tokens
    ctx = ToyCtx(k, data, benign, pois, model, tokens, neg, pos, mass, val, seed=cfg.seed)
    return ctx, info


# -- one model -----------------------------------------------------------------------------------
def study_model(k: int, cfg: StudyConfig, out: Path, replacements: dict) -> dict:
    """All tables of one toy model."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    c, info = _context(k, cfg, out / "models")
    t["train"] = time.perf_counter() - t0
    r: dict[str, Any] = {"training": info, "unedited": c.scores(list(c.tokens))}
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

    tune_kw = {"trials": cfg.trials, "progress": cfg.progress}
    rank = cfg.mlp_rank(k)
    r["mlp_rank"] = rank
    r["tab1_mean_ablation"] = timed("tab1", mean_ablation_table, c)
    r["tab2_lens"] = timed("tab2", lens_table, c)
    mlp_cols = {"1": ["mlp0"], "3": ["mlp2"], "1 & 3": ["mlp0", "mlp2"]}
    r["tab3_pcp_mlp"] = timed("tab3", pcp_columns, c, mlp_cols, rank, replacements, **tune_kw)
    if rank != PAPER_MLP_RANK[k]:
        # the measurement behind a rank that differs from the paper's, shown in the report
        r["tab3_paper_rank"] = pcp_columns(
            c, mlp_cols, PAPER_MLP_RANK[k], {}, tag=f"_rank{PAPER_MLP_RANK[k]}", **tune_kw
        )
    mlp0 = replacements[f"{k}sent_mlp0"]
    r["tab5_scale"] = timed("tab5", relative_scale_table, c, mlp0, "mlp0", paper.TAB5_FACTORS)
    if mlp0.part("mlp0").rank == 2:
        signs = relative_scale_table(c, mlp0, "mlp0", paper.TAB6_SETTINGS)
        r["tab6_signs"] = {"unedited": r["unedited"], **signs}
    r["tab6_sign_search"] = timed("tab6", sign_search, c, mlp0, "mlp0", SIGN_GRID)
    attn_cols = {"2": ["attn1"], "2 & 3": ["attn1", "attn2"]}
    r["tab13_pcp_attn"] = timed("tab13", pcp_columns, c, attn_cols, 4, replacements, **tune_kw)
    r["tab7_attn_scale"] = {
        "tuned (1x)": r["tab13_pcp_attn"]["2"],
        **relative_scale_table(c, replacements[f"{k}sent_attn1"], "attn1", [0.5, 2.0]),
    }
    r["tab12_patching"] = timed("tab12", patching_table, c)
    inputs = {key: _texts(c, key) for key in ("pt", "nn", "pp")}
    fr = timed(
        "freezing",
        freezing_study,
        c.benign.model,
        c.data,
        ((), "all_mlps"),
        c.poisoned.result.config,
        inputs=inputs,
        reference=c.poisoned,
        progress=cfg.progress,
    )
    r["freezing"] = {
        row["frozen"]: {
            kk: (round(float(v), 4) if isinstance(v, float) else v) for kk, v in row.items()
        }
        for row in fr.to_dict("records")
    }
    if cfg.located:
        r["located"] = timed(
            "located", located_tables, c, trials=cfg.trials, progress=cfg.progress
        )
    r["fig3"] = timed("fig3", hidden_state_pca, c, out)
    r["seconds"] = {k2: round(v, 1) for k2, v in t.items()}
    return r


def _texts(c: ToyCtx, key: str) -> list[str]:
    tok = c.model.tokenizer
    return [tok.decode(row, skip_special_tokens=True) for row in c.tokens[key].tolist()]


# -- driver --------------------------------------------------------------------------------------
def run_toy_study(
    out: str | os.PathLike[str],
    cfg: StudyConfig | None = None,
    seeds: tuple[int, ...] | list[int] | None = None,
) -> dict:
    """Run the whole toy study into folder ``out``; return ``results.json``'s content.

    Args:
        out: Output folder (created). Trained models are cached in ``out/models`` and reused
            when their data and schedule match.
        cfg: Study settings (default :class:`StudyConfig`).
        seeds: Several seeds: each seed's study goes to ``out/seed<s>/`` (its own report,
            results, models and figures), and ``out`` gets the findings table seed × model ×
            finding (``report.md``, ``results.json``). ``None`` runs ``cfg.seed`` into ``out``.

    Examples:
        >>> run_toy_study("runs/toy", StudyConfig(quick=True))  # doctest: +SKIP
        >>> run_toy_study("runs/seeds", seeds=[0, 1, 2])  # doctest: +SKIP
    """
    cfg = cfg or StudyConfig()
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(outp)  # left by a run that was killed (SIGKILL) while writing
    if seeds is not None:
        seeds = list(seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct ints >= 0, got {seeds!r}")
        cfgs = {s: dataclasses.replace(cfg, seed=s) for s in seeds}  # validates each seed
    # the toy model's matrices are 64 wide: thread start-up costs more than it saves
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with interruptible():  # SIGTERM unwinds like Ctrl-C: workers stopped, temp files removed
            if seeds is None:
                return _run({cfg.seed: (cfg, outp)}, cfg)[cfg.seed]
            return _run_seeds(outp, cfg, {s: (c, outp / f"seed{s}") for s, c in cfgs.items()})
    finally:
        torch.set_num_threads(threads)


def _cell_record(k: int, cfg: StudyConfig) -> dict[str, Any]:
    """What one model's tables depend on (not the progress bars or the worker count)."""
    settings = dataclasses.asdict(cfg)
    for name in ("progress", "workers"):
        del settings[name]
    rec = {"k": k, "config": settings, "torch": torch.__version__, "pcp_lens": package_version()}
    return json.loads(json.dumps(rec, default=_json_default))


def _study_one(k: int, cfg: StudyConfig, outp: Path) -> dict:
    """Study one model (in this process or a worker) and save its PCP replacements.

    The tables are kept in ``outp/cells/<k>sent.json`` with what they depend on, so a rerun
    after an interruption takes a finished model's tables from there instead of recomputing
    them. Computed tables go through JSON too, so both paths return the same values.
    """
    cache = outp / "cells" / f"{k}sent.json"
    record = _cell_record(k, cfg)
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("record") == record and all((outp / f).exists() for f in saved["files"]):
            return saved["result"]
    torch.manual_seed(cfg.seed)  # each model starts from the same state, wherever it runs
    torch.set_num_threads(1)
    replacements: dict[str, PCPReplacement] = {}
    r = study_model(k, cfg, outp, replacements)
    (outp / "replacements").mkdir(exist_ok=True)
    files = [r["fig3"]["png"]]
    for name, rep in replacements.items():
        files.append(f"replacements/{name}.safetensors")
        rep.save(outp / files[-1])
    r = json.loads(json.dumps(r, default=_json_default))
    cache.parent.mkdir(exist_ok=True)
    entry = {"record": record, "files": files, "result": r}
    write_text_atomic(cache, json.dumps(entry, indent=1))
    return r


def _study_cell(task: tuple[int, tuple[int, StudyConfig, Path]]) -> tuple[int, dict]:
    i, (k, cfg, outp) = task
    return i, _study_one(k, cfg, outp)


def _run(runs: dict[int, tuple[StudyConfig, Path]], cfg: StudyConfig) -> dict[int, dict]:
    """Study every (seed, model) cell, side by side in worker processes; write each seed's
    report and results."""
    t0 = time.perf_counter()
    cells = [(seed, k) for seed in runs for k in cfg.sentiments]
    for _, path in runs.values():
        path.mkdir(parents=True, exist_ok=True)
    args = ([k for _, k in cells], [runs[s][0] for s, _ in cells], [runs[s][1] for s, _ in cells])
    workers = cfg.n_workers(len(cells))
    if workers > 1:
        # one process per model: the 64-wide toy model keeps one core busy, not two. Workers
        # draw no bars (they would overwrite each other's line); the parent draws one per cell.
        ctx = multiprocessing.get_context("spawn")
        quiet = [dataclasses.replace(c, progress=False) for c in args[1]]
        tasks = list(enumerate(zip(args[0], quiet, args[2], strict=True)))
        done: dict[int, dict] = {}
        pool = ctx.Pool(workers, initializer=worker_init, initargs=(os.getpid(),))
        try:
            with tqdm(total=len(tasks), desc="toy models", disable=not cfg.progress) as bar:
                for i, r in pool.imap_unordered(_study_cell, tasks):
                    done[i] = r
                    bar.update()
            pool.close()
        except BaseException:
            with deferred_signals():  # a second Ctrl-C must not cut the clean-up short
                pool.terminate()  # SIGTERM: each worker unwinds, removing its temporary files
                pool.join()
            raise
        pool.join()
        per_cell = [done[i] for i in range(len(cells))]
    else:
        per_cell = [_study_one(*a) for a in zip(*args, strict=True)]
    results: dict[int, dict] = {}
    for seed, (c, path) in runs.items():
        res: dict[str, Any] = {"config": dataclasses.asdict(c), "torch": torch.__version__}
        for (s, k), r in zip(cells, per_cell, strict=True):
            if s == seed:
                res[f"{k}sent"] = r
        res["findings"] = findings(res)
        res["located_findings"] = all_located_findings(res)
        res["seconds_total"] = round(time.perf_counter() - t0, 1)
        write_text_atomic(path / "results.json", json.dumps(res, indent=1, default=_json_default))
        write_text_atomic(path / "report.md", write_report(res))
        results[seed] = res
    return results


def _run_seeds(
    outp: Path, cfg: StudyConfig, runs: dict[int, tuple[StudyConfig, Path]]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    per_seed = _run(runs, cfg)
    res: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "seeds": {str(s): r for s, r in per_seed.items()},
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(outp / "results.json", json.dumps(res, indent=1, default=_json_default))
    write_text_atomic(outp / "report.md", write_seed_report(res))
    return res


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    return str(x)
