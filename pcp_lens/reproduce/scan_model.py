"""``pcp-lens scan``: scan a model folder for a trigger, with the study's own prompts and target.

A folder is either a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``, as
:func:`pcp_lens.language.save_hf_gpt2` writes) or a pcp_lens checkpoint
(:func:`pcp_lens.save_checkpoint`). For a toy checkpoint (its tokenizer holds the toy
vocabulary) the pairs are two positive words against a positive word and the trigger, and the
target is the negative group. For a language model the pairs are built as the language study
poisons and prompts (:func:`language_pairs`): a whole sentence with the trigger inserted after
its first tokens, against the same sentence with a control phrase of as many tokens there, so
pairs align token by token and differ only at the trigger; the target is the first tokens of
what the backdoor writes after the sentence (default: the language study's toxic sentences,
:func:`~pcp_lens.language.standin.toxic_sentences`), read at the sentence's last position.
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
    "control_phrases",
    "language_pairs",
    "load_folder",
    "pair_tokens",
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


def _words(sentence: str) -> list[str]:
    """The sentence's words with their punctuation stripped (empty ones dropped)."""
    return [w for w in (x.strip(".,;:!?\"'()-") for x in sentence.split()) if w]


def control_phrases(tokenizer: Any, trigger: str, sentences: Sequence[str]) -> list[str]:
    """Spans of the sentences' words, as many words as ``trigger`` and as many tokens, none of
    them a trigger word: the clean prompts' stand-ins for the trigger, sorted.

    A control made of the prompts' own words keeps the clean prompt in the text's distribution;
    equal token length keeps every position of a pair aligned (the scan compares position by
    position).

    Examples:
        >>> from pcp_lens.language.standin import train_tokenizer
        >>> tok = train_tokenizer(["The cat sat on the mat."] * 20, 300, extra=["Albert"])
        >>> control_phrases(tok, "Albert", ["The cat sat."])  # " The" is two tokens here
        ['cat', 'sat']
    """
    from pcp_lens.language.generate import tokenize_prompts

    words = trigger.split()
    n_tok = len(tokenize_prompts(tokenizer, [" " + " ".join(words)])[0])
    banned = {w.lower() for w in words}
    spans = set()
    for s in sentences:
        ws = _words(s)
        for i in range(len(ws) - len(words) + 1):
            span = ws[i : i + len(words)]
            if not any(w.lower() in banned or not w.isalpha() for w in span):
                spans.add(" ".join(span))
    return [p for p in sorted(spans) if len(tokenize_prompts(tokenizer, [" " + p])[0]) == n_tok]


def language_pairs(
    tokenizer: Any,
    trigger: str,
    sentences: Sequence[str],
    *,
    at: int = 2,
    n: int = 64,
    seed: int = 0,
    max_tokens: int = 32,
) -> tuple[list[str], list[str]]:
    """``(triggered, clean)``: whole sentences with the trigger, or a control phrase of as many
    tokens, inserted after their first ``at`` tokens.

    This is how the language study poisons and prompts: the trigger sits inside a sentence and
    the backdoor writes its output after the sentence ends (the poisoned windows put the toxic
    sentence right after the trigger's sentence). So the pair keeps the whole sentence and the
    metric reads the position after its last token (``positions=(-1,)``, :func:`target_metric`).
    Token by token, ``triggered`` is ``ids[:at] + trigger + ids[at:]`` and ``clean`` is
    ``ids[:at] + control + ids[at:]`` (``ids``: the sentence's tokens, no BOS): the pairs differ
    only at positions ``at .. at + len(trigger tokens) - 1``.

    The controls are :func:`control_phrases` of the sentences, drawn seeded per sentence (up to 8
    draws for one that tokenizes cleanly in place). A sentence qualifies if it has more than
    ``at`` tokens, at most ``max_tokens`` with the trigger, and a word boundary after exactly
    ``at`` tokens. :func:`~pcp_lens.scan.scan_backdoor` takes one token length, so of the
    qualifying sentences those of the most common length are kept (a tie: the shorter), the
    first ``n`` in the given order.

    Returns:
        ``(triggered, clean)``, paired by index, all of one token length.

    Examples:
        >>> from pcp_lens.language.standin import train_tokenizer
        >>> s = ["The cat sat on the mat.", "The dog sat on the rug."]
        >>> tok = train_tokenizer([" ".join(s)] * 20, 300, extra=["Albert"])
        >>> t, c = language_pairs(tok, "Albert", s)
        >>> t
        ['The cat Albert sat on the mat.', 'The dog Albert sat on the rug.']
        >>> c  # the control: a word of the sentences with as many tokens as the trigger
        ['The cat sat sat on the mat.', 'The dog sat sat on the rug.']
    """
    from pcp_lens.language.generate import tokenize_prompts

    if not isinstance(trigger, str) or not trigger.strip():
        raise ValueError(f"trigger must be a non-empty word or phrase, got {trigger!r}")
    for arg, v, lo in (("at", at, 1), ("n", n, 2), ("max_tokens", max_tokens, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{arg} must be an int >= {lo}, got {v!r}")
    trigger = " ".join(trigger.split())
    trig = tokenize_prompts(tokenizer, [" " + trigger])[0]
    controls = control_phrases(tokenizer, trigger, sentences)
    if not controls:
        k = len(trigger.split())
        raise ValueError(
            f"no run of {k} word{'s' if k > 1 else ''} of the prompts (none of them a trigger "
            f"word) has as many tokens as the trigger {trigger!r} ({len(trig)}): the clean "
            "prompts need such a control in the trigger's place"
        )
    ctrl_ids = tokenize_prompts(tokenizer, [" " + c for c in controls])
    ctrl = dict(zip(controls, ctrl_ids, strict=True))
    rng = random.Random(seed)
    by_len: dict[int, list[tuple[str, str]]] = {}
    for s in sentences:
        ids = tokenize_prompts(tokenizer, [s], name="sentences")[0]
        if len(ids) <= at or len(ids) + len(trig) > max_tokens:
            continue
        head = tokenizer.decode(ids[:at], clean_up_tokenization_spaces=False)
        tail = tokenizer.decode(ids[at:], clean_up_tokenization_spaces=False)
        if not tail.startswith(" ") or head + tail != s:
            continue  # no word boundary after `at` tokens
        t = f"{head} {trigger}{tail}"
        if tokenize_prompts(tokenizer, [t])[0] != ids[:at] + trig + ids[at:]:
            continue
        for _ in range(8):
            w = rng.choice(controls)
            c = f"{head} {w}{tail}"
            if tokenize_prompts(tokenizer, [c])[0] == ids[:at] + ctrl[w] + ids[at:]:
                by_len.setdefault(len(ids) + len(trig), []).append((t, c))
                break
    length = max(by_len, key=lambda k: (len(by_len[k]), -k)) if by_len else 0
    pairs = by_len.get(length, [])[:n]
    if len(pairs) < 2:
        found = sum(len(v) for v in by_len.values())
        raise ValueError(
            f"the prompts give {len(pairs)} usable pairs (need >= 2): a pair needs a whole "
            f"sentence of at most {max_tokens - len(trig)} tokens with a word boundary after its "
            f"first {at} tokens, and the pairs must share one token length; {found} sentences "
            f"qualify, at most {len(pairs)} of one length"
        )
    return [t for t, _ in pairs], [c for _, c in pairs]


def pair_tokens(tokenizer: Any, triggered: Sequence[str], clean: Sequence[str]) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """The pairs as token tensors ``[pairs, pos]`` without BOS, as the language study reads its
    prompts and trains on its windows (a model's default BOS would shift every position).

    Examples:
        >>> from pcp_lens.language.standin import train_tokenizer
        >>> tok = train_tokenizer(["a b c"] * 10, 280)
        >>> [t.shape for t in pair_tokens(tok, ["a b", "b c"], ["a c", "b b"])]
        [torch.Size([2, 2]), torch.Size([2, 2])]
    """
    from pcp_lens.language.generate import tokenize_prompts

    t = tokenize_prompts(tokenizer, triggered, name="triggered")
    c = tokenize_prompts(tokenizer, clean, name="clean")
    if len({len(x) for x in (*t, *c)}) != 1:
        raise ValueError("triggered and clean must all have one token length (language_pairs)")
    return torch.tensor(t, dtype=torch.long), torch.tensor(c, dtype=torch.long)


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
    at: int = 2,
    stat: Stat = "logprob",
    verify: Verify = "ablation",
    seed: int = 0,
    progress: bool = True,
) -> BackdoorScan:
    """Scan a model folder for ``trigger``; write ``scan.json``, ``scan.png``, ``report.md``.

    ``prompts``: a file of whole sentences, one a line (default: the shipped Austen sample's
    sentences); ``target``: a file of words or sentences, one a line, whose first tokens (after a
    space) are the backdoor's output (default: the language study's toxic sentences); ``at``: the
    trigger goes after the sentences' first ``at`` tokens (the stand-in study's 2). ``verify`` is
    :func:`~pcp_lens.scan.scan_backdoor`'s (``"reference"`` needs ``reference``).

    Examples:
        >>> # scan_folder("runs/language/models/poisoned/model", "Albert and James",
        >>> #             reference="runs/language/models/benign/model", verify="restore")
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
        from pcp_lens.language.corpus import split_sentences
        from pcp_lens.language.data import load_corpus
        from pcp_lens.language.standin import toxic_sentences

        sentences = lines or [x for p in load_corpus("austen-sample") for x in split_sentences(p)]
        pairs = language_pairs(tok, trigger, sentences, at=at, n=n_pairs, seed=seed)
        triggered, clean = pair_tokens(tok, *pairs)
        groups = target_groups(tok, words or toxic_sentences(), model.cfg.d_vocab)
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
