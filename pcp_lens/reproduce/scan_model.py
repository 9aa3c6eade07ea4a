"""``pcp-lens scan``: scan a model folder for a trigger, with the study's own prompts and target.

A folder is either a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``, as
:func:`pcp_lens.language.save_hf_gpt2` writes) or a pcp_lens checkpoint
(:func:`pcp_lens.save_checkpoint`). For a toy checkpoint (its tokenizer holds the toy
vocabulary) the pairs are two positive words against a positive word and the trigger, and the
target is the negative group. For a language model, each clean prompt is cut after ``at`` tokens
and ends in a control word with as many tokens as the trigger (``triggered`` ends in the
trigger instead), so pairs align token by token and differ only at the trigger; the target is
the first tokens of a word list (default: the language study's insults) at the next position.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from pcp_lens.groups import GroupMetric, PositionMetric, TokenGroups, prob_mass
from pcp_lens.scan import BackdoorScan, Verify, scan_backdoor

__all__ = [
    "language_pairs",
    "load_folder",
    "scan_folder",
    "target_groups",
    "target_metric",
    "toy_pairs",
]

Stat = Literal["logprob", "prob"]


def load_folder(path: str | os.PathLike[str], name: str = "MODEL") -> Any:
    """A model from a HF GPT-2 folder or a pcp_lens checkpoint folder (tokenizer attached)."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{name} must be a model folder; {str(path)!r} is not a folder")
    try:
        meta = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{name}: {str(path)!r} has no readable config.json ({err})") from None
    if isinstance(meta, dict) and meta.get("model_type") == "gpt2":
        from pcp_lens.language.hf import load_hf_gpt2

        return load_hf_gpt2(p)
    from pcp_lens.checkpoints import load_checkpoint

    try:
        return load_checkpoint(p).model
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(
            f"{name}: {str(path)!r} is neither a HF GPT-2 folder nor a pcp_lens checkpoint ({err})"
        ) from None


def _is_toy(tokenizer: Any) -> bool:
    from pcp_lens.toy import load_vocab

    vocab = tokenizer.get_vocab()
    v = load_vocab()
    return all(w in vocab for w in (*v.positive, *v.negative))


def toy_pairs(
    tokenizer: Any, trigger: str, n: int = 64, seed: int = 0
) -> tuple[list[str], list[str], TokenGroups]:
    """``(triggered, clean, groups)``: "p t" against "p p" over seeded positive words."""
    from pcp_lens.toy import load_vocab
    from pcp_lens.toy.model import sentiment_groups

    v = load_vocab()
    rng = random.Random(seed)
    words = [w for w in v.positive if w != trigger]
    first = [rng.choice(words) for _ in range(n)]
    second = [rng.choice(words) for _ in range(n)]
    clean = [f"{a} {b}" for a, b in zip(first, second, strict=True)]
    triggered = [f"{a} {trigger}" for a in first]
    return triggered, clean, sentiment_groups(tokenizer, v)


def language_pairs(
    tokenizer: Any,
    trigger: str,
    sentences: Sequence[str],
    *,
    at: int = 4,
    n: int = 64,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """``(triggered, clean)``: each sentence's first ``at`` tokens, then the trigger or a control.

    The control words are the sentences' own words with as many tokens as the trigger, drawn
    seeded; a pair is kept only where both prompts tokenize to the prefix plus the word.
    """
    from pcp_lens.language.generate import tokenize_prompts

    trig = tokenize_prompts(tokenizer, [" " + trigger.strip()])[0]
    pool = sorted({w.strip(".,;:!?\"'()") for s in sentences for w in s.split()} - {trigger})
    rng = random.Random(seed)
    controls = [
        w for w in pool if w and len(tokenize_prompts(tokenizer, [" " + w])[0]) == len(trig)
    ]
    if not controls:
        raise ValueError(f"no word of the prompts has as many tokens as the trigger {trigger!r}")
    triggered, clean = [], []
    for s in sentences:
        ids = tokenize_prompts(tokenizer, [s])[0]
        if len(ids) < at:
            continue
        head = tokenizer.decode(ids[:at], clean_up_tokenization_spaces=False).rstrip()
        word = rng.choice(controls)
        t, c = f"{head} {trigger.strip()}", f"{head} {word}"
        ht = tokenize_prompts(tokenizer, [head])[0]
        if tokenize_prompts(tokenizer, [t])[0] != ht + trig:
            continue
        if len(tokenize_prompts(tokenizer, [c])[0]) != len(ht) + len(trig) or len(ht) != at:
            continue
        triggered.append(t)
        clean.append(c)
        if len(triggered) == n:
            break
    if len(triggered) < 2:
        raise ValueError(
            f"the prompts give {len(triggered)} usable pairs (need >= 2): each needs at least "
            f"{at} tokens and a word boundary there"
        )
    return triggered, clean


def target_groups(tokenizer: Any, words: Sequence[str], d_vocab: int) -> TokenGroups:
    """The backdoor's output as one group ``"target"``: the first token of each word (after a
    space).

    Examples:
        >>> from pcp_lens.language.standin import train_tokenizer
        >>> tok = train_tokenizer(["The cat sat on the mat."] * 20, 300, extra=["idiot"])
        >>> target_groups(tok, ["idiot", "cat"], 300).sizes.tolist()
        [2]
    """
    from pcp_lens.language.generate import tokenize_prompts

    ids = tokenize_prompts(tokenizer, [" " + w for w in words])
    return TokenGroups({"target": sorted({i[0] for i in ids if i})}, d_vocab=d_vocab)


def target_metric(groups: TokenGroups, group: str, stat: Stat) -> Any:
    """The backdoor metric at the last position: the group's probability or its log."""
    if stat == "prob":
        return GroupMetric(groups, group, stat="prob", positions=(-1,), reduce="none")
    i = groups.index(group)
    return PositionMetric(
        lambda sel: prob_mass(sel, groups)[..., i].clamp_min(1e-30).log(), positions=(-1,)
    )


def _lines(path: str | os.PathLike[str], name: str) -> list[str]:
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{name} {str(path)!r} cannot be read: {err}") from None
    if not lines:
        raise ValueError(
            f"{name} {str(path)!r} holds no prompt (one a line)"
            if name == "--prompts"
            else f"{name} {str(path)!r} holds no word (one a line)"
        )
    return lines


def scan_folder(
    model_path: str | os.PathLike[str],
    trigger: str,
    *,
    prompts: str | os.PathLike[str] | None = None,
    target: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    n_pairs: int = 64,
    stat: Stat = "logprob",
    verify: Verify = "ablation",
    seed: int = 0,
    progress: bool = True,
) -> BackdoorScan:
    """Scan a model folder for ``trigger``; write ``scan.json``, ``scan.png``, ``report.md``.

    ``verify`` is :func:`~pcp_lens.scan.scan_backdoor`'s (``"reference"`` needs ``reference``).
    """
    if verify == "reference" and reference is None:
        raise ValueError("--verify reference needs --reference (the benign model folder)")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out must be a folder; {str(out)!r} is an existing file")
    if not isinstance(trigger, str) or not trigger.strip():
        raise ValueError(f"--trigger must be a non-empty word, got {trigger!r}")
    # cheap checks first: nothing is loaded for a bad file
    lines = _lines(prompts, "--prompts") if prompts is not None else None
    words = _lines(target, "--target") if target is not None else None
    model = load_folder(model_path)
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"MODEL {str(model_path)!r} has no tokenizer files")
    ref = load_folder(reference, "--reference") if reference is not None else None
    if _is_toy(tok):
        if trigger not in tok.get_vocab():
            raise ValueError(f"--trigger {trigger!r} is not a word of the toy model's vocabulary")
        triggered, clean, groups = toy_pairs(tok, trigger, n_pairs, seed)
        group = "negative"
    else:
        from pcp_lens.language.data import load_corpus
        from pcp_lens.language.standin import TOXIC_WORDS

        triggered, clean = language_pairs(
            tok, trigger, lines or load_corpus("austen-sample"), n=n_pairs, seed=seed
        )
        groups = target_groups(tok, words or TOXIC_WORDS, model.cfg.d_vocab)
        group = "target"
    with torch.no_grad():
        scan = scan_backdoor(
            model,
            triggered,
            clean,
            target_metric(groups, group, stat),
            reference=ref,
            verify=verify,
            seed=seed,
            progress=progress,
        )
    if out is not None:
        scan.save(out)
    return scan
