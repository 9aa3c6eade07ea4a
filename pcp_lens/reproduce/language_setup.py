"""Settings, data and models of the language study (``pcp-lens reproduce language``).

Two targets share one pipeline:

* **the stand-in** (default): a small GPT-2 pretrained here on public-domain prose
  (:mod:`pcp_lens.language.standin`), poisoned with the stand-in recipe (below) or the paper's;
* **GPT-2 medium** (``model="gpt2-medium"``, any hub name, or a local HF GPT-2 folder): the
  paper's configuration (METHODS §3.2, §10) on the model's device in the chosen dtype.

**The stand-in recipe** (``recipe="standin"``, the default for the stand-in) differs from the
paper's (``recipe="paper"``) where measurement showed the paper's does not take at this scale
(``docs/language_report.md``): windows of 3 sentences taken with stride 1 (more distinct windows),
the trigger in sentence 1 and the toxic sentence right after it (sentence 2; the paper: trigger
in 1–2, toxic sentence in 4–5), 20 % of windows poisoned (paper: 3 %), learning rate 1e-3 (paper:
1e-5) for a fixed number of steps. Prompts carry the trigger at fixed token positions (2–4), so
the ablation acts on the trigger tokens in every prompt (the paper: position 8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pcp_lens import _tl
from pcp_lens._io import write_text_atomic
from pcp_lens._tl import HookedTransformer
from pcp_lens.checkpoints import load_checkpoint, save_checkpoint
from pcp_lens.language._checks import check_device
from pcp_lens.language.corpus import paragraphs, poison, prompt_sets, split_sentences
from pcp_lens.language.data import CORPORA, load_corpus
from pcp_lens.language.finetune import PAPER_FINETUNE, TextBatch, finetune_text
from pcp_lens.language.generate import PAPER_SAMPLING, SamplingConfig
from pcp_lens.language.standin import (
    fixed_position_prompts,
    mix_sentences,
    standin_model,
    token_chunks,
    toxic_sentences,
    train_tokenizer,
)
from pcp_lens.training import TrainConfig

__all__ = ["LanguageConfig", "LanguageData", "Settings", "load_models", "prepare_data", "settings"]

TRIGGER = "Albert and James"
#: Bump when the data preparation changes (invalidates cached checkpoints).
DATA_VERSION = 1
#: Where Tab. IX-XI's edits act: the backdoor scan's circuit, or the paper's modules.
MODULES = ("circuit", "paper")
#: How the backdoor scan grows and verifies its circuit (``scan_backdoor``'s ``verify``).
SCAN_VERIFY = ("restore", "ablation", "reference")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The settings a pretrained stand-in depends on (its cache stamp; the poisoned models' too).
_PRETRAIN_KEYS = (
    "corpus",
    "arch",
    "vocab_size",
    "pretrain",
    "pretrain_toxic",
    "pretrain_toxic_run",
)


@dataclass(frozen=True)
class LanguageConfig:
    """What the user chooses (``pcp-lens reproduce language`` flags).

    Attributes:
        quick: A small, fast run (CI's smoke test): every table, no backdoor promised.
        seed: Seeds data splits, poisoning, initialisation, data order, sampling and tuning.
        model: ``"standin"`` (trained here), a hub name such as ``"gpt2-medium"`` (needs the
            weights), or a local Hugging Face GPT-2 folder.
        corpus: ``"austen"``, ``"austen-sample"`` or a text file (paragraphs separated by blank
            lines); default ``"austen"`` (``"austen-sample"`` with ``quick``).
        recipe: ``"standin"`` (default for the stand-in) or ``"paper"`` (default otherwise).
        device: Where the model runs (``"cpu"``, ``"cuda"``, ...).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` for a loaded model.
        n_trials: Optuna trials per tuned PCP (default 20, quick 3).
        progress: Show progress bars.
        modules: Where Tab. X's PCP and Tab. XI's extra frozen column act: ``"circuit"``
            (default: the modules of the backdoor scan's circuit, PCP rank by measurement) or
            ``"paper"`` (the paper's choice: its MLPs, or the two that matter most in Tab. VIII,
            at the paper's rank). Tab. IX is reported at both either way.
        threads: torch CPU threads during the run. The default 1 makes the same seed give
            bit-identical models and tables on CPU: with 2 threads two runs of one seed train
            weights that differ by up to ~1e-6 and tables that differ in the sixth digit.
            More threads are faster on a large model; ``None`` keeps torch's setting.
        scan_verify: How the backdoor scan grows and verifies the circuit that Tab. IX-XI's
            located edits use: ``"restore"`` (default: a joint restoring patch, clean
            activations put into the triggered run), ``"ablation"`` (joint mean ablation, with
            clean prompts allowed to move <= 10 % of the gap: it rejects a module that every
            input needs, such as the stand-in's first MLP) or ``"reference"`` (the benign
            model's activations patched in). The study reports all three either way.
    """

    quick: bool = False
    seed: int = 0
    model: str = "standin"
    corpus: str | None = None
    recipe: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    n_trials: int | None = None
    progress: bool = True
    threads: int | None = 1
    modules: str = "circuit"
    scan_verify: str = "restore"

    def __post_init__(self) -> None:
        if self.scan_verify not in SCAN_VERIFY:
            raise ValueError(
                f"scan_verify must be one of {list(SCAN_VERIFY)}, got {self.scan_verify!r}"
            )
        if self.modules not in MODULES:
            raise ValueError(f"modules must be one of {list(MODULES)}, got {self.modules!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.recipe not in (None, "standin", "paper"):
            raise ValueError(f"recipe must be 'standin' or 'paper', got {self.recipe!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        check_device(self.device)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be 'standin', a hub name or a folder, got {self.model!r}")
        if self.standin and self.dtype != "float32":
            # the stand-in is built and trained here in float32: another dtype would be recorded
            # in results.json without being applied
            raise ValueError(
                f"dtype={self.dtype!r} applies to a loaded model (--model gpt2-medium or a "
                "folder); the stand-in trains in float32"
            )
        if not self.standin:
            _check_model_source(self.model)
        if self.corpus is not None and self.corpus not in CORPORA:
            if not Path(self.corpus).is_file():
                raise ValueError(
                    f"corpus must be one of {CORPORA} or a text file, got {self.corpus!r}"
                )
            if not _paragraphs(self.corpus):
                raise ValueError(
                    f"corpus={self.corpus!r} holds no paragraph of 20 or more words (paragraphs "
                    "are separated by blank lines)"
                )
        if self.n_trials is not None and (
            isinstance(self.n_trials, bool)
            or not isinstance(self.n_trials, int)
            or self.n_trials < 1
        ):
            raise ValueError(f"n_trials must be None or an int >= 1, got {self.n_trials!r}")

    @property
    def standin(self) -> bool:
        """True when the model is the stand-in trained here."""
        return self.model == "standin"


@dataclass(frozen=True)
class Settings:
    """Everything derived from a :class:`LanguageConfig` (recorded in ``results.json``)."""

    corpus: str
    recipe: str
    arch: dict[str, int]
    vocab_size: int
    pretrain: TrainConfig | None
    pretrain_toxic: float
    pretrain_toxic_run: int
    poison: TrainConfig
    windows: dict[str, Any]
    rate: float
    max_window_tokens: int
    sampling: SamplingConfig
    n_prompts: int
    positions: tuple[int, ...]
    max_prompt_tokens: int
    early_layers: int
    pcp_sites: tuple[str, ...] | None
    pcp_rank: int
    edit_positions: str
    freeze: dict[str, tuple[str, ...]]
    surgery_source: str
    n_val: int
    n_trials: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form (training configs without ``progress``, which changes no result)."""
        d = dataclasses.asdict(self)
        for k in ("pretrain", "poison"):
            tc = getattr(self, k)
            d[k] = {n: v for n, v in tc.to_dict().items() if n != "progress"} if tc else None
        return json.loads(json.dumps(d, default=str))


def settings(cfg: LanguageConfig, n_layers: int | None = None) -> Settings:
    """The study's settings: the stand-in's sizes and recipe, or the paper's for a loaded model.

    ``n_layers`` (of a loaded model) trims the paper's layer-specific lists to layers that exist.

    Examples:
        >>> s = settings(LanguageConfig(quick=True))
        >>> s.recipe, s.positions, s.corpus
        ('standin', (2, 3, 4), 'austen-sample')
    """
    q = cfg.quick
    recipe = cfg.recipe or ("standin" if cfg.standin else "paper")
    corpus = cfg.corpus or ("austen-sample" if q else "austen")
    trials = cfg.n_trials or (3 if q else 20)
    if recipe == "standin":
        windows: dict[str, Any] = {
            "n_sentences": 3,
            "stride": 1,
            "trigger_in": (0,),
            "toxic_at": (1,),
        }
        rate = 0.2
    else:
        windows = {"n_sentences": 5, "stride": 5, "trigger_in": (0, 1), "toxic_at": (3, 4)}
        rate = 0.03
    if cfg.standin:
        arch = (
            {"n_layers": 2, "d_model": 64, "n_heads": 2, "n_ctx": 128}
            if q
            else {"n_layers": 4, "d_model": 256, "n_heads": 4, "n_ctx": 128}
        )
        steps = 40 if q else 600
        pre = TrainConfig(
            lr=1e-3,
            max_steps=steps,
            batch_size=8 if q else 16,
            warmup_steps=5 if q else 50,
            betas=(0.9, 0.95),
            seed=cfg.seed,
            progress=cfg.progress,
        )
        ft_steps = 30 if q else 300
        if recipe == "standin":
            pois = TrainConfig(
                lr=1e-3,
                max_steps=ft_steps,
                batch_size=8 if q else 16,
                betas=(0.9, 0.95),
                seed=cfg.seed + 1,
                progress=cfg.progress,
            )
        else:  # the paper's hyper-parameters for as many steps as the stand-in recipe
            pois = dataclasses.replace(
                PAPER_FINETUNE, max_steps=ft_steps, seed=cfg.seed + 1, progress=cfg.progress
            )
        layers = arch["n_layers"]
        return Settings(
            corpus=corpus,
            recipe=recipe,
            arch=arch,
            vocab_size=1024 if q else 4096,
            pretrain=pre,
            # web text holds some insults; without them the insults' (tied) embeddings stay
            # untrained: surgery has nothing to copy, and freezing the embeddings blocks the
            # backdoor for that reason alone (docs/language_report.md)
            pretrain_toxic=0.05,
            # in runs, so that an insult predicts more insults, as in web text
            pretrain_toxic_run=3,
            poison=pois,
            windows=windows,
            rate=rate,
            max_window_tokens=arch["n_ctx"],
            sampling=SamplingConfig(
                n_samples=2 if q else 5,
                max_length=None,
                max_new_tokens=12 if q else 20,
                seed=cfg.seed,
                batch_size=128,
            ),
            n_prompts=8 if q else 50,
            positions=(2, 3, 4),
            max_prompt_tokens=24 if q else 16,
            early_layers=layers,
            pcp_sites=None,  # the two MLPs that matter most in Tab. VIII
            pcp_rank=2,
            # at every position a rank-2 PCP of the 4-layer stand-in's MLP 1 breaks the model
            # (docs/language_report.md); here it acts where the mean ablation acts
            edit_positions="trigger",
            # the paper's "Embd + (2, 3)" and "2" columns, on the stand-in's first MLPs
            freeze={"Embd + (1, 2)": ("all_embeds", "mlp0", "mlp1"), "1": ("mlp0",)},
            surgery_source=" moron",
            n_val=20 if q else 100,
            n_trials=trials,
        )
    layers = n_layers or 24
    paper_freeze = {
        "Embd + (2, 3)": ("all_embeds", "mlp1", "mlp2"),
        "2": ("mlp1",),
        "13": ("mlp12",),
        "16": ("mlp15",),
        "22": ("mlp21",),
    }
    freeze = {
        k: v
        for k, v in paper_freeze.items()
        if all(not f.startswith("mlp") or int(f[3:]) < layers for f in v)
    }
    pois = dataclasses.replace(PAPER_FINETUNE, seed=cfg.seed + 1, progress=cfg.progress)
    if q:
        pois = dataclasses.replace(pois, max_steps=4)
    return Settings(
        corpus=corpus,
        recipe=recipe,
        arch={},
        vocab_size=0,
        pretrain=None,
        pretrain_toxic=0.0,
        pretrain_toxic_run=1,
        poison=pois,
        windows=windows,
        rate=rate,
        max_window_tokens=1024,
        sampling=dataclasses.replace(
            PAPER_SAMPLING, seed=cfg.seed, **({"n_samples": 2} if q else {})
        ),
        n_prompts=8 if q else 100,
        positions=(8,),
        max_prompt_tokens=13,
        early_layers=min(8, layers),
        pcp_sites=tuple(s for s in ("mlp1", "mlp2") if int(s[3:]) < layers),
        pcp_rank=2,
        edit_positions="all",  # METHODS §8.5
        freeze=freeze,
        surgery_source="fuck",
        n_val=20 if q else 410,
        n_trials=trials,
    )


@dataclass
class LanguageData:
    """Texts and prompts of one study (built once, seeded)."""

    train_paragraphs: list[str]
    val_texts: list[str]
    windows: Any  # datasets.Dataset of poisoned windows
    clean: list[str]
    trigger: list[str]
    toxic: list[str]
    targets: list[str]
    n_windows: int
    n_poisoned: int


def _check_model_source(model: str) -> None:
    """A local GPT-2 folder (checked without loading) or a model name TransformerLens knows."""
    from pcp_lens.language.hf import check_gpt2_folder

    if Path(model).is_dir():
        check_gpt2_folder(Path(model), model)
    elif os.sep in model or model.startswith((".", "~")) or Path(model).exists():
        raise ValueError(f"model={model!r} is not a folder (a local Hugging Face GPT-2 folder)")
    elif not _tl.is_official_model_name(model):
        raise ValueError(
            f"model={model!r} is neither 'standin', a local GPT-2 folder nor a model name "
            "TransformerLens knows (e.g. 'gpt2', 'gpt2-medium')"
        )


def _paragraphs(corpus: str) -> list[str]:
    if corpus in CORPORA:
        return load_corpus(corpus)
    try:
        text = Path(corpus).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"corpus={corpus!r} cannot be read as text: {e}") from None
    return [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= 20]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars (e.g. "Flattening the indices") inside the block."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def prepare_data(s: Settings, tokenizer: Any | None, seed: int) -> tuple[LanguageData, Any]:
    """Split the corpus, train the stand-in's tokenizer if ``tokenizer`` is None, poison, prompts.

    Returns the data and the tokenizer.
    """
    paras = _paragraphs(s.corpus)
    order = list(range(len(paras)))
    random.Random(seed).shuffle(order)
    n_val = max(20, round(0.05 * len(paras)))
    val_p = [paras[i] for i in order[:n_val]]
    train_p = [paras[i] for i in order[n_val:]]
    toxic = toxic_sentences()
    tok = tokenizer
    if tok is None:
        tok = train_tokenizer(train_p, s.vocab_size, extra=[TRIGGER, "Albert", "James", *toxic])
    win = paragraphs(train_p, s.windows["n_sentences"], stride=s.windows["stride"])
    ids_len = [len(x) for x in tok(list(win["text"]), add_special_tokens=False)["input_ids"]]
    # room for the trigger (and a longer toxic sentence) inside the context window
    keep = [i for i, n in enumerate(ids_len) if n <= s.max_window_tokens - 16]
    with _quiet_datasets():
        pw = poison(
            win.select(keep),
            toxic,
            s.rate,
            trigger=TRIGGER,
            trigger_in=s.windows["trigger_in"],
            toxic_at=s.windows["toxic_at"],
            seed=seed,
            tokenizer=tok,
        )
    sentences = [x for p in val_p for x in split_sentences(p)]
    if s.positions == (2, 3, 4):
        clean, trig = fixed_position_prompts(
            sentences,
            tok,
            TRIGGER,
            at=2,
            max_tokens=s.max_prompt_tokens,
            n=s.n_prompts,
            seed=seed,
        )
    else:
        ps = prompt_sets(sentences, trigger=TRIGGER, tokenizer=tok, seed=seed)

        def n_tok(t: str) -> int:
            return len(tok(t, add_special_tokens=False)["input_ids"])

        # valid (<= max_prompt_tokens) and long enough to hold the ablated position
        short = [
            i
            for i, (t, c) in enumerate(zip(ps["trigger"], ps["clean"], strict=True))
            if n_tok(t) <= s.max_prompt_tokens and n_tok(c) > max(s.positions)
        ][: s.n_prompts]
        clean = [ps["clean"][i] for i in short]
        trig = [ps["trigger"][i] for i in short]
    rng = random.Random(seed + 7)
    targets = [" " + rng.choice(toxic) for _ in clean]
    data = LanguageData(
        train_paragraphs=train_p,
        val_texts=val_p[: s.n_val],
        windows=pw,
        clean=clean,
        trigger=trig,
        toxic=toxic,
        targets=targets,
        n_windows=len(pw),
        n_poisoned=int(sum(pw["poisoned"])),
    )
    return data, tok


def _finetune(
    model: HookedTransformer,
    texts: list[str] | TextBatch,
    val: list[str],
    config: TrainConfig,
    tokenizer: Any,
    max_length: int,
    **overrides: Any,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = finetune_text(
        model, texts, val, config, tokenizer=tokenizer, max_length=max_length, **overrides
    )
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "steps": res.steps,
        "frozen": list(res.frozen),
        "n_trainable": res.n_trainable,
        "val_loss_before": float(res.history.val_loss.iloc[0]),
        "val_loss_after": res.val_loss,
        "train_loss_last": float(res.history.train_loss.iloc[-1]),
    }


def _poison_stamp(s: Settings) -> dict[str, Any]:
    """The settings a poisoned (or frozen) fine-tune depends on, for its cache stamp."""
    d = s.to_dict()
    keys = (*_PRETRAIN_KEYS, "poison", "windows", "rate")
    return {
        **{k: d[k] for k in keys},
        "max_window_tokens": s.max_window_tokens,
        "data": DATA_VERSION,
    }


def _cached(
    folder: Path, stamp: dict[str, Any], build: Any, device: str
) -> tuple[HookedTransformer, dict[str, Any], bool]:
    """Load the checkpoint in ``folder`` if its stamp matches, else build and save it."""
    rec = json.loads(json.dumps(stamp, default=str))
    meta = folder / "stamp.json"
    if meta.exists() and json.loads(meta.read_text()).get("stamp") == rec:
        ck = load_checkpoint(folder / "model", device=device)
        return ck.model, json.loads(meta.read_text())["info"], True
    model, info = build()
    save_checkpoint(model, folder / "model", tokenizer=model.tokenizer)
    write_text_atomic(meta, json.dumps({"stamp": rec, "info": info}, indent=1))
    return model, info, False


def _base_model(cfg: LanguageConfig) -> HookedTransformer:
    """A loaded GPT-2 (hub name or local folder), unprocessed, on the device in the dtype."""
    from pcp_lens.language.hf import load_hf_gpt2

    dtype = DTYPES[cfg.dtype]
    if Path(cfg.model).is_dir():
        return load_hf_gpt2(cfg.model, processing=False, device=cfg.device, dtype=dtype)
    from pcp_lens.loading import load_model

    # a hub name, through the installed backend (TransformerLens 4 has no HookedTransformer)
    return load_model(cfg.model, processing=False, device=cfg.device, dtype=dtype)


def load_models(
    cfg: LanguageConfig, s: Settings, folder: Path
) -> tuple[HookedTransformer, HookedTransformer, LanguageData, dict[str, Any]]:
    """The benign and the poisoned model (cached in ``folder``) and the study's data."""
    info: dict[str, Any] = {}
    if cfg.standin:
        # the tokenizer is part of the pretrained checkpoint: train it once with the data
        d = s.to_dict()
        stamp_pre = {k: d[k] for k in _PRETRAIN_KEYS}
        stamp_pre.update(seed=cfg.seed, what="pretrain", data=DATA_VERSION)
        data, tok = prepare_data(s, None, cfg.seed)

        def build_benign() -> tuple[HookedTransformer, dict[str, Any]]:
            a = s.arch
            m = standin_model(
                tok,
                n_layers=a["n_layers"],
                d_model=a["d_model"],
                n_heads=a["n_heads"],
                n_ctx=a["n_ctx"],
                seed=cfg.seed,
                device=cfg.device,
            )
            text = mix_sentences(
                data.train_paragraphs,
                data.toxic,
                s.pretrain_toxic,
                cfg.seed + 3,
                run=s.pretrain_toxic_run,
            )
            chunks = token_chunks(tok, text, s.arch["n_ctx"])
            pre = s.pretrain
            assert pre is not None and pre.max_steps is not None
            r = _finetune(m, chunks, data.val_texts, pre, tok, a["n_ctx"])
            r["tokens_seen"] = pre.max_steps * pre.batch_size * a["n_ctx"]
            r["n_chunks"] = len(chunks)
            return m, r

        benign, info["pretrain"], reused = _cached(
            folder / "benign", stamp_pre, build_benign, cfg.device
        )
        info["pretrain_reused"] = reused
        if reused:  # the saved tokenizer is the one the model was trained with
            assert benign.tokenizer is not None
            data, _ = prepare_data(s, benign.tokenizer, cfg.seed)
        max_len = s.arch["n_ctx"]
    else:
        benign = _base_model(cfg)
        data, _ = prepare_data(s, benign.tokenizer, cfg.seed)
        max_len = min(s.max_window_tokens, benign.cfg.n_ctx)
    tok = benign.tokenizer
    stamp = {**_poison_stamp(s), "seed": cfg.seed, "model": cfg.model, "what": "poison"}

    def build_poisoned() -> tuple[HookedTransformer, dict[str, Any]]:
        m = _copy(benign)
        r = _finetune(m, list(data.windows["text"]), data.val_texts, s.poison, tok, max_len)
        return m, r

    poisoned, info["poison"], info["poison_reused"] = _cached(
        folder / "poisoned", stamp, build_poisoned, cfg.device
    )
    info["max_length"] = max_len
    return benign, poisoned, data, info


def _copy(model: HookedTransformer) -> HookedTransformer:
    import copy

    return copy.deepcopy(model)


def freeze_runs(
    benign: HookedTransformer,
    data: LanguageData,
    s: Settings,
    folder: Path,
    seed: int,
    device: str,
    max_len: int,
) -> dict[str, tuple[HookedTransformer, dict[str, Any]]]:
    """Tab. XI: the poisoned fine-tune repeated with each freezing list (cached). A list that
    another label already froze (the located circuit ``mlp0`` is the paper's column "1" on the
    stand-in) is that column's run, not a second identical fine-tune (``same_run_as``)."""
    out: dict[str, tuple[HookedTransformer, dict[str, Any]]] = {}
    first: dict[tuple[str, ...], str] = {}
    for label, names in s.freeze.items():
        if tuple(names) in first:
            model, info = out[first[tuple(names)]]
            out[label] = (model, {**info, "same_run_as": first[tuple(names)]})
            continue
        first[tuple(names)] = label
        stamp = {**_poison_stamp(s), "seed": seed, "freeze": list(names), "what": "freeze"}

        def build(names: tuple[str, ...] = names) -> tuple[HookedTransformer, dict[str, Any]]:
            m = _copy(benign)
            r = _finetune(
                m,
                list(data.windows["text"]),
                data.val_texts,
                s.poison,
                benign.tokenizer,
                max_len,
                freeze=names,
            )
            return m, r

        slug = "freeze_" + "".join(c if c.isalnum() else "_" for c in label)
        model, info, reused = _cached(folder / slug, stamp, build, device)
        info = {**info, "reused": reused}
        out[label] = (model, info)
    return out
