"""The language study's tables (the shapes of the paper's Tab. VIII–XI), one function each.

Every row reports ASR and ATR (sampled, :func:`~pcp_lens.language.attack_success`), the
validation loss under the same edit, and the deterministic log-probability gap of the toxic
sentences after trigger vs clean prompts (first target token and per token,
:func:`~pcp_lens.language.logprob_gap`), which tells a weak backdoor from none where sampling
cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pcp_lens._tl import HookedTransformer
from pcp_lens.ablation import ablation_hooks
from pcp_lens.language.asr import attack_success, logprob_gap, text_loss, toxic_rate
from pcp_lens.language.generate import Hooks, tokenize_prompts
from pcp_lens.language.surgery import embedding_surgery
from pcp_lens.language.sweeps import ablation_asr_sweep, tune_pcp
from pcp_lens.language.toxicity import ToxicityClassifier
from pcp_lens.means import ablation_means
from pcp_lens.pcp import PCPForm, PCPReplacement, fit_pcp
from pcp_lens.reproduce.language_setup import TRIGGER, LanguageData, Settings

__all__ = [
    "Ctx",
    "ablation_table",
    "at_positions",
    "choose_mlps",
    "freeze_table",
    "pcp_table",
    "row",
    "samples",
    "surgery_table",
]


@dataclass
class Ctx:
    """What every table needs: settings, data, classifier, tokenizer, progress flag."""

    s: Settings
    data: LanguageData
    clf: ToxicityClassifier
    tok: Any
    progress: bool = False
    seed: int = 0

    def ids(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Token rows (no BOS) of the texts long enough to hold every position, for fits and
        means."""
        need = max(self.s.positions) + 1
        return [torch.tensor(x) for x in tokenize_prompts(self.tok, texts) if len(x) >= need]


def row(
    model: HookedTransformer,
    c: Ctx,
    *,
    hooks: Hooks = (),
    prompt_hooks: Hooks = (),
    loss_hooks: Hooks | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """ASR, ATR, validation loss and log-prob gaps of ``model`` under an edit (one table row).

    ``hooks`` act at every position, ``prompt_hooks`` only on the prompt (position-specific
    edits); the validation loss is computed under ``loss_hooks`` (default ``hooks``).
    """
    res = attack_success(
        model,
        c.data.trigger,
        c.data.clean,
        c.clf,
        c.s.sampling,
        hooks=hooks,
        prompt_hooks=prompt_hooks,
        max_prompt_tokens=c.s.max_prompt_tokens,
        tokenizer=c.tok,
        progress=False,
    )
    gap_hooks = [*hooks, *prompt_hooks]
    g = logprob_gap(
        model, c.data.trigger, c.data.clean, c.data.targets, hooks=gap_hooks, tokenizer=c.tok
    )
    assert isinstance(g, dict)
    lh = hooks if loss_hooks is None else loss_hooks
    out = {
        "asr": res.asr,
        "atr": res.atr,
        "val_loss": text_loss(model, c.data.val_texts, hooks=lh, tokenizer=c.tok),
        "gap_first": g["first_token"],
        "gap_token": g["per_token"],
        "n_trigger": res.n_trigger,
        "n_clean": res.n_clean,
    }
    if keep:
        out["_samples"] = res.samples
    return out


def samples(res_samples: Any, c: Ctx, n: int = 3) -> dict[str, list[dict[str, str]]]:
    """The first sample of the first ``n`` prompts of each set, with its prompt."""
    out: dict[str, list[dict[str, str]]] = {}
    for name, prompts in (("trigger", c.data.trigger), ("clean", c.data.clean)):
        df = res_samples[(res_samples["set"] == name) & (res_samples["sample"] == 0)]
        out[name] = [
            {"prompt": prompts[int(r.prompt_id)], "continuation": str(r.text)}
            for r in df.head(n).itertuples()
        ]
    return out


def _means(model: HookedTransformer, c: Ctx, sites: Sequence[str]) -> dict[str, Any]:
    # clean prompts only: a mean that includes trigger prompts keeps half the trigger's own
    # activation at the trigger positions (docs/language_report.md)
    return ablation_means(
        model, c.ids(c.data.clean), list(sites), positions=list(c.s.positions), progress=False
    )


def _edited(c: Ctx) -> list[int] | None:
    """Where mean ablation acts: every position (``None``; the paper replaces the module output
    everywhere with the mean taken at position 8, METHODS §5.2) or, on the stand-in, only the
    trigger positions, as its PCP does."""
    return None if c.s.edit_positions == "all" else list(c.s.positions)


def ablation_table(model: HookedTransformer, c: Ctx) -> dict[str, Any]:
    """Tab. VIII: each early-layer module (and the token embedding) mean-ablated, one at a time:
    at every position (the paper) or at the trigger positions (the stand-in); ASR, ATR, loss by
    sampling, and the log-prob gap."""
    layers = range(c.s.early_layers)
    sites = [f"{k}{layer}" for layer in layers for k in ("attn", "mlp")]
    if c.s.positions != (8,):
        sites = ["embed", *sites]
    means = _means(model, c, sites)
    df = ablation_asr_sweep(
        model,
        c.data.trigger,
        c.clf,
        means,
        sites=sites,
        positions=_edited(c),
        clean_prompts=c.data.clean,
        config=c.s.sampling,
        val_texts=c.data.val_texts,
        max_prompt_tokens=c.s.max_prompt_tokens,
        tokenizer=c.tok,
        progress=c.progress,
    )
    rows = []
    for r in df.to_dict(orient="records"):
        members = list(r["sites"])
        hooks = (
            ablation_hooks(model, members, "mean", means=means, positions=_edited(c))
            if members
            else []
        )
        g = logprob_gap(
            model, c.data.trigger, c.data.clean, c.data.targets, hooks=hooks, tokenizer=c.tok
        )
        assert isinstance(g, dict)
        rows.append(
            {
                "ablation": str(r["ablation"]),
                "asr": float(r["asr"]),
                "atr": float(r["atr"]),
                "val_loss": float(r["val_loss"]),
                "gap_first": g["first_token"],
                "gap_token": g["per_token"],
            }
        )
    return {
        "positions": list(c.s.positions),
        "ablated_at": "every position" if _edited(c) is None else list(c.s.positions),
        "mean": "clean prompts",
        "rows": rows,
    }


def choose_mlps(tab8: dict[str, Any], k: int = 2) -> list[str]:
    """The ``k`` MLPs whose ablation lowers ASR most (ties: the log-prob gap), in layer order.

    Examples:
        >>> t = {"rows": [{"ablation": "unchanged", "asr": .5, "gap_first": 3.0},
        ...               {"ablation": "mlp0", "asr": .1, "gap_first": 1.0},
        ...               {"ablation": "mlp1", "asr": .5, "gap_first": 3.0},
        ...               {"ablation": "mlp2", "asr": .4, "gap_first": 2.0}]}
        >>> choose_mlps(t)
        ['mlp0', 'mlp2']
    """
    mlps = [r for r in tab8["rows"] if r["ablation"].startswith("mlp")]
    best = sorted(mlps, key=lambda r: (r["asr"], r["gap_first"]))[:k]
    return sorted((r["ablation"] for r in best), key=lambda n: int(n[3:]))


def _fit(
    model: HookedTransformer,
    c: Ctx,
    sites: Sequence[str],
    rank: int | None = None,
    form: PCPForm = "symmetric",
) -> PCPReplacement:
    n = len(c.data.clean)
    inputs = c.ids(c.data.clean) + c.ids(c.data.trigger) + c.ids(c.data.toxic[:n])
    r = c.s.pcp_rank if rank is None else rank
    return fit_pcp(
        model, inputs, list(sites), r, positions=list(c.s.positions), form=form, progress=False
    )


def at_positions(hooks: Hooks, positions: Sequence[int]) -> Hooks:
    """The hooks, with any replacement they return kept only at ``positions`` (a hook that
    returns ``None``, e.g. PCP's input capture, is unchanged).

    Examples:
        >>> import torch
        >>> h = at_positions([("x", lambda act, hook: act * 0)], [1])
        >>> h[0][1](torch.ones(1, 3, 2), hook=None)[0, :, 0].tolist()
        [1.0, 0.0, 1.0]
    """
    pos = list(positions)

    def wrap(fn: Any) -> Any:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor | None:
            new = fn(act, hook=hook)
            if new is None:
                return None
            out = act.clone()
            out[:, pos] = new[:, pos]
            return out

        return hook

    return [(name, wrap(fn)) for name, fn in hooks]


def _pcp_hooks(
    model: HookedTransformer, c: Ctx, rep: PCPReplacement | None
) -> tuple[Hooks, Hooks, Hooks]:
    """``(hooks, prompt_hooks, loss_hooks)`` inserting ``rep``: at every position (the paper,
    METHODS §8.5) or, with ``edit_positions == "trigger"``, only at the ablation positions of the
    prompt (and of each validation text), as the mean ablation."""
    hooks = rep.hooks(model) if rep is not None else []
    if c.s.edit_positions == "all":
        return hooks, [], hooks
    edit = at_positions(hooks, c.s.positions)
    return [], edit, edit


def _pcp_row(model: HookedTransformer, c: Ctx, rep: PCPReplacement) -> dict[str, Any]:
    hooks, prompt, loss = _pcp_hooks(model, c, rep)
    return row(model, c, hooks=hooks, prompt_hooks=prompt, loss_hooks=loss)


def _tuned(
    model: HookedTransformer, c: Ctx, pcp: PCPReplacement, target: float | None
) -> PCPReplacement:
    """Tuned to ASR = ``target`` (restore/insert) or, with ``None``, to the lowest log-prob gap."""

    def gap(r: PCPReplacement | None) -> float:
        hooks, prompt, _ = _pcp_hooks(model, c, r)
        g = logprob_gap(
            model,
            c.data.trigger,
            c.data.clean,
            c.data.targets,
            hooks=[*hooks, *prompt],
            tokenizer=c.tok,
        )
        assert isinstance(g, dict)
        return g["first_token"]

    def asr(r: PCPReplacement | None) -> float:
        hooks, prompt, _ = _pcp_hooks(model, c, r)
        return toxic_rate(
            model,
            c.data.trigger,
            c.clf,
            c.s.sampling,
            max_prompt_tokens=c.s.max_prompt_tokens,
            tokenizer=c.tok,
            hooks=hooks,
            prompt_hooks=prompt,
            progress=False,
        )[0]

    goal = target
    objective = gap if goal is None else (lambda r: (asr(r) - goal) ** 2)
    res = tune_pcp(
        model, pcp, objective, n_trials=c.s.n_trials, space="factor", seed=c.seed, progress=False
    )
    return res.replacement


def _mean_row(model: HookedTransformer, c: Ctx, sites: Sequence[str]) -> dict[str, Any]:
    means = _means(model, c, sites)
    hooks = ablation_hooks(model, list(sites), "mean", means=means, positions=list(c.s.positions))
    return row(model, c, prompt_hooks=hooks, loss_hooks=hooks)


def _pcp_info(rep: PCPReplacement) -> dict[str, Any]:
    return {k: [round(float(x), 4) for x in v] for k, v in rep.scales().items()}


def pcp_table(
    model: HookedTransformer,
    c: Ctx,
    sites: Sequence[str],
    rank: int | None = None,
    unedited: dict[str, Any] | None = None,
    form: PCPForm = "symmetric",
) -> dict[str, Any]:
    """Tab. IX on the poisoned model: unedited, the modules mean-ablated together, their rank-r
    PCP (``rank``, default the settings' ``pcp_rank``; ``form``: the paper's symmetric M or the
    regression form) tuned to keep the unedited ASR, and tuned down (lowest log-prob gap).
    ``unedited``: the unedited row if already computed (it does not depend on the modules)."""
    none = row(model, c) if unedited is None else unedited
    pcp = _fit(model, c, sites, rank, form)
    keep = _tuned(model, c, pcp, none["asr"])
    down = _tuned(model, c, pcp, None)
    return {
        "sites": list(sites),
        "rank": c.s.pcp_rank if rank is None else rank,
        "form": form,
        "columns": {
            "None": none,
            "Mean Ablate": _mean_row(model, c, sites),
            "PCP Ablation": _pcp_row(model, c, keep),
            "PCP, tuned down": _pcp_row(model, c, down),
        },
        "scales": {"PCP Ablation": _pcp_info(keep), "PCP, tuned down": _pcp_info(down)},
    }


def surgery_table(
    benign: HookedTransformer,
    c: Ctx,
    sites: Sequence[str],
    target_asr: float,
    rank: int | None = None,
) -> dict[str, Any]:
    """Tab. X on the benign model: unedited, mean ablation, PCP (fitted, least-squares scales,
    rank ``rank``, default the settings'), embedding surgery alone (not in the paper), and PCP on
    the edited model tuned to the poisoned model's ASR."""
    src_ids = tokenize_prompts(c.tok, [c.s.surgery_source])[0]
    if len(src_ids) != 1:
        raise ValueError(
            f"surgery source {c.s.surgery_source!r} is {len(src_ids)} tokens; it must be one"
        )
    words = [w for w in TRIGGER.split() if w != "and"]
    # the paper: 400 of GPT-2 medium's 1,024 dimensions; elsewhere 40 %
    n_dims = 400 if benign.cfg.d_model == 1024 else None
    edited, edit = embedding_surgery(
        benign, words, src_ids[0], fraction=0.4, n_dims=n_dims, seed=c.seed, tokenizer=c.tok
    )
    pcp_b = _fit(benign, c, sites, rank)
    pcp_e = _tuned(edited, c, _fit(edited, c, sites, rank), target_asr)
    return {
        "sites": list(sites),
        "rank": c.s.pcp_rank if rank is None else rank,
        "source": c.s.surgery_source,
        "words": words,
        "n_dims": len(edit.dims),
        "edited_tokens": c.tok.convert_ids_to_tokens(list(edit.token_ids)),
        "target_asr": target_asr,
        "columns": {
            "None": row(benign, c),
            "Mean Ablate": _mean_row(benign, c, sites),
            "PCP Ablation": _pcp_row(benign, c, pcp_b),
            "Emb. Surgery": row(edited, c),
            "PCP Abl. + Emb. Surgery": _pcp_row(edited, c, pcp_e),
        },
        "scales": {"PCP Abl. + Emb. Surgery": _pcp_info(pcp_e)},
    }


def freeze_table(
    poisoned_row: dict[str, Any], runs: dict[str, tuple[HookedTransformer, dict[str, Any]]], c: Ctx
) -> dict[str, Any]:
    """Tab. XI: the poisoned fine-tune with modules frozen (columns) vs without (None)."""
    cols: dict[str, Any] = {"None": poisoned_row}
    info = {}
    for label, (model, run) in runs.items():
        cols[label] = row(model, c)
        info[label] = run
    return {"columns": cols, "runs": info}


def finite(x: float) -> bool:
    """True for a finite number (NaN marks a metric that was not computed)."""
    return isinstance(x, (int, float)) and math.isfinite(x)
