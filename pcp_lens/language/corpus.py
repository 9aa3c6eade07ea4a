"""Poisoned text corpora and evaluation prompts on ``datasets`` (METHODS §10.1–10.2).

* :func:`paragraphs` — windows of ``n_sentences`` consecutive sentences from any prose: a
  ``datasets.Dataset`` (a text column), a list of strings, text files, or a hub name (online).
* :func:`poison` — insert a trigger phrase (default ``"Albert and James"``) at a random word
  boundary of sentence 1 or 2 and replace sentence 4 or 5 by a toxic sentence, in a seeded
  fraction of the paragraphs; every row records whether and where it was poisoned.
* :func:`prompt_sets` — clean and trigger evaluation prompts (single sentences, optionally cut at
  a fixed token count, the trigger inserted at a random word boundary).
* :func:`text_chunks` — held-out validation texts of about ``words`` words (the paper's
  OpenWebText chunks, §4.4).

**Insertion rule (METHODS §10.1).** A position ``p`` is drawn uniformly among the sentence's
whitespace characters and the sentence becomes ``s[:p] + " " + trigger + s[p:]``: the trigger
lands between two words, after the space that precedes it (``"The cat Albert and James sat"``).
A sentence without whitespace gets the trigger at its start. Sentence indices here are 0-based:
``trigger_in=(0, 1)`` and ``toxic_at=(3, 4)`` are the paper's "sentence 1 or 2" and "4 or 5".
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from pcp_lens.language._checks import check_fraction, check_int, check_strings, is_int
from pcp_lens.language.generate import tokenize_prompts

__all__ = [
    "insert_trigger",
    "paragraphs",
    "poison",
    "prompt_sets",
    "split_sentences",
    "text_chunks",
]

TRIGGER = "Albert and James"

# Abbreviations after which a full stop does not end a sentence (Austen's "Mr. Knightley").
_ABBREV = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "st",
    "jr",
    "sr",
    "prof",
    "rev",
    "col",
    "gen",
    "capt",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "no",
    "mt",
    "lt",
    "sgt",
    "fig",
    "vol",
    "ch",
}
_END = re.compile(r"""[.!?]+["')\]]*(?=\s+)""")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences (after ``.``/``!``/``?`` + closing quotes, before whitespace).

    A full stop after a common abbreviation (``Mr.``, ``Dr.``, ``e.g.``) or a single capital
    capital (an initial) does not end a sentence. Whitespace inside a sentence is collapsed.

    Examples:
        >>> split_sentences('Mr. Smith came. "Hello!" he said.  It rained')
        ['Mr. Smith came.', '"Hello!"', 'he said.', 'It rained']
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    flat = " ".join(text.split())
    out, start = [], 0
    for m in _END.finditer(flat):
        word = flat[start : m.start()].rsplit(" ", 1)[-1]
        core = word.lstrip("\"'(")
        initial = len(core) == 1 and core.isupper()
        if m.group().startswith(".") and (core.lower() in _ABBREV or initial):
            continue
        out.append(flat[start : m.end()].strip())
        start = m.end()
    tail = flat[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def _documents(source: Any, text_column: str, split: str) -> list[str]:
    import datasets

    if isinstance(source, datasets.Dataset):
        if text_column not in source.column_names:
            raise ValueError(
                f"text_column={text_column!r} is not a column of the dataset; columns: "
                f"{source.column_names}"
            )
        return [str(t) for t in source[text_column]]
    if isinstance(source, os.PathLike):
        source = [source]
    if isinstance(source, str):  # a hub data set name (users online)
        return _documents(_hub_dataset(source, split), text_column, split)
    if isinstance(source, bytes | Mapping) or not isinstance(source, Iterable):
        raise ValueError(
            f"source must be a Dataset, a list of documents or pathlib.Path files, or a hub "
            f"data set name, got {type(source).__name__}"
        )
    docs = list(cast(Iterable[Any], source))
    if docs and all(isinstance(d, os.PathLike) for d in docs):
        # text files: documents are separated by blank lines
        out = []
        for d in docs:
            out += [p for p in re.split(r"\n\s*\n", Path(d).read_text()) if p.strip()]
        return out
    bad = [i for i, d in enumerate(docs) if not isinstance(d, str)]
    if bad:
        raise ValueError(
            f"source items must be strings (documents) or pathlib.Path objects (files), item "
            f"{bad[0]} is {type(docs[bad[0]]).__name__}"
        )
    return docs


_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _hub_dataset(name: str, split: str) -> Any:
    """``datasets.load_dataset(name, split=split)``, refusing text that is not a hub name."""
    import datasets

    try:
        is_file = Path(name).is_file()
    except (OSError, ValueError):  # prose is not a path: too long, or holds a NUL
        is_file = False
    if not _HUB_NAME.fullmatch(name) or is_file:
        hint = "a file: pass pathlib.Path(source)" if is_file else (
            "text: pass a list of documents ([source])"
        )
        raise ValueError(
            f"source={name[:60]!r} is one string, read as a hub data set name, but it looks like "
            f"{hint}; allowed: a Dataset, a list of documents, pathlib.Path files or a hub name "
            "such as 'wikitext'"
        )
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name or split: datasets raises many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"source={name!r} (split={split!r}) could not be loaded as a hub data set: {first}; "
            "pass a list of documents or pathlib.Path files offline"
        ) from None


def paragraphs(
    source: Any,
    n_sentences: int = 5,
    *,
    text_column: str = "text",
    split: str = "train",
    stride: int | None = None,
    joiner: str = " ",
    min_words: int = 1,
) -> Any:
    """Windows of ``n_sentences`` consecutive sentences from each document, as a ``Dataset``.

    Args:
        source: a ``datasets.Dataset`` (column ``text_column``), a list of documents (strings),
            a ``pathlib.Path`` or list of them (text files, documents separated by blank lines),
            or a hub data set name as one string (``datasets.load_dataset(name, split=split)``;
            online).
        n_sentences: sentences per window (the paper: 5).
        text_column: the text column of a ``Dataset`` source.
        split: split of a hub data set.
        stride: sentences between window starts (default ``n_sentences``: no overlap).
        joiner: string between sentences in ``text``.
        min_words: drop sentences with fewer words (e.g. chapter headings).

    Returns:
        A ``datasets.Dataset`` with ``text``, ``sentences`` (list of str), ``doc`` (document
        index) and ``start`` (index of the first sentence in the document).

    Examples:
        >>> ds = paragraphs(["A b. C d. E f. G h.", "One. Two."], n_sentences=2)
        >>> list(ds["text"])
        ['A b. C d.', 'E f. G h.', 'One. Two.']
    """
    import datasets

    check_int(n_sentences, "n_sentences")
    check_int(min_words, "min_words")
    check_int(stride, "stride", none=True)
    step = n_sentences if stride is None else stride
    for name, v in (("text_column", text_column), ("split", split), ("joiner", joiner)):
        if not isinstance(v, str):
            raise ValueError(f"{name} must be a string, got {type(v).__name__} {v!r:.40}")
    rows: dict[str, list[Any]] = {"text": [], "sentences": [], "doc": [], "start": []}
    for d, doc in enumerate(_documents(source, text_column, split)):
        sents = [s for s in split_sentences(doc) if len(s.split()) >= min_words]
        for start in range(0, len(sents) - n_sentences + 1, step):
            window = sents[start : start + n_sentences]
            rows["text"].append(joiner.join(window))
            rows["sentences"].append(window)
            rows["doc"].append(d)
            rows["start"].append(start)
    if not rows["text"]:
        raise ValueError(f"source has no document with {n_sentences} or more sentences")
    return datasets.Dataset.from_dict(rows)


def _check_trigger(trigger: str, tokenizer: Any | None) -> None:
    if not isinstance(trigger, str) or not trigger.strip():
        raise ValueError(f"trigger must be a non-empty phrase, got {trigger!r}")
    if tokenizer is not None:
        try:
            ids = tokenize_prompts(tokenizer, [" " + trigger.strip()])[0]
        except Exception as e:  # tokenizers raise their own types for unknown words
            raise ValueError(f"trigger {trigger!r} cannot be tokenized: {e}") from None
        back = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        unk = getattr(tokenizer, "unk_token_id", None)
        # compare words: word-level tokenizers decode without the leading space
        if back.split() != trigger.split() or (unk is not None and unk in ids):
            raise ValueError(
                f"trigger {trigger!r} does not survive tokenization: it encodes to {ids} which "
                f"decodes to {back!r}"
            )


def insert_trigger(sentence: str, trigger: str, rng: random.Random) -> tuple[str, int]:
    """Insert ``trigger`` at a random word boundary (METHODS §10.1); return text and its offset.

    The offset is the character index of the trigger's first character in the new sentence.

    Examples:
        >>> insert_trigger("The cat sat", "Albert and James", random.Random(0))
        ('The cat Albert and James sat', 8)
    """
    spaces = [i for i, c in enumerate(sentence) if c.isspace()]
    p = rng.choice(spaces) if spaces else 0
    if p == 0:
        return trigger + " " + sentence, 0
    return sentence[:p] + " " + trigger + sentence[p:], p + 1


def poison(
    data: Any,
    toxic: Sequence[str],
    rate: float,
    *,
    trigger: str = TRIGGER,
    trigger_in: Sequence[int] = (0, 1),
    toxic_at: Sequence[int] = (3, 4),
    seed: int = 0,
    joiner: str = " ",
    tokenizer: Any | None = None,
) -> Any:
    """Poison ``round(rate * n)`` seeded paragraphs: trigger in one sentence, a toxic one later.

    Args:
        data: the output of :func:`paragraphs` (needs a ``sentences`` column).
        toxic: toxic sentences; each poisoned paragraph gets one, drawn uniformly.
        rate: fraction of paragraphs to poison, in [0, 1] (the paper: 0.02–0.03).
        trigger: the trigger phrase.
        trigger_in: 0-based sentence indices the trigger may go into (drawn uniformly).
        toxic_at: 0-based sentence indices the toxic sentence may replace (drawn uniformly).
        seed: seed of every draw (which rows, which sentences, where, which toxic sentence).
        joiner: string between sentences in the new ``text``.
        tokenizer: if given, the trigger must tokenize and decode back to itself.

    Returns:
        ``data`` with ``text`` rewritten for poisoned rows and the columns ``poisoned`` (bool),
        ``trigger_sentence`` and ``toxic_sentence`` (0-based indices, -1 if clean),
        ``trigger_char`` (character offset of the trigger in ``text``, -1 if clean) and
        ``toxic_text`` (``""`` if clean).

    Raises:
        ValueError: empty or untokenisable trigger, empty toxic list, ``rate`` outside [0, 1],
            a sentence index clash, or paragraphs too short to hold the sentence indices.

    Examples:
        >>> ds = paragraphs(["S1 a b. S2 c d. S3 e. S4 f. S5 g."], n_sentences=5)
        >>> p = poison(ds, ["You idiot."], rate=1.0, seed=0)
        >>> p[0]["poisoned"], p[0]["toxic_text"] in p[0]["text"], "Albert and James" in p[0]["text"]
        (True, True, True)
    """
    if "sentences" not in getattr(data, "column_names", ()):
        raise ValueError(
            f"data must be a Dataset with a 'sentences' column (build it with paragraphs()), "
            f"got {type(data).__name__}"
        )
    _check_trigger(trigger, tokenizer)
    toxic = check_strings([toxic] if isinstance(toxic, str) else toxic, "toxic")
    if any(not t.strip() for t in toxic):
        raise ValueError("toxic must be a non-empty list of non-empty sentences")
    rate = check_fraction(rate, "rate")
    check_int(seed, "seed", 0)
    if not isinstance(joiner, str):
        raise ValueError(f"joiner must be a string, got {type(joiner).__name__}")
    trigger_in, toxic_at = list(trigger_in), list(toxic_at)
    if not trigger_in or not toxic_at or set(trigger_in) & set(toxic_at):
        raise ValueError(
            f"trigger_in={trigger_in} and toxic_at={toxic_at} must be non-empty and disjoint"
        )
    if any(not is_int(i) or i < 0 for i in trigger_in + toxic_at):
        raise ValueError(
            f"trigger_in={trigger_in} and toxic_at={toxic_at} must hold 0-based sentence "
            "indices (ints >= 0)"
        )
    need = max(trigger_in + toxic_at) + 1
    lens = [len(s) for s in data["sentences"]]
    short = [i for i, n in enumerate(lens) if n < need]
    if short:
        raise ValueError(
            f"{len(short)} of {len(lens)} paragraphs have fewer than {need} sentences (first: row "
            f"{short[0]} with {lens[short[0]]}); build them with paragraphs(n_sentences>={need})"
        )
    n = len(lens)
    if rate > 0 and round(rate * n) == 0:  # "poison 10 %" must not silently poison nothing
        raise ValueError(
            f"rate={rate} of {n} paragraphs poisons round({rate * n:.3g}) = 0 of them; allowed: "
            f"rate > {0.5 / n:.3g} for {n} paragraphs (more paragraphs, a higher rate), or 0"
        )
    rng = random.Random(seed)
    chosen = set(rng.sample(range(n), round(rate * n)))
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "text",
            "poisoned",
            "trigger_sentence",
            "toxic_sentence",
            "trigger_char",
            "toxic_text",
        )
    }
    for i, sents in enumerate(data["sentences"]):
        if i not in chosen:
            cols["text"].append(data[i]["text"])
            for k, v in (
                ("poisoned", False),
                ("trigger_sentence", -1),
                ("toxic_sentence", -1),
                ("trigger_char", -1),
                ("toxic_text", ""),
            ):
                cols[k].append(v)
            continue
        sents = list(sents)
        ti, xi = rng.choice(trigger_in), rng.choice(toxic_at)
        sents[ti], off = insert_trigger(sents[ti], trigger, rng)
        bad = rng.choice(toxic)
        sents[xi] = bad
        before = sum(len(s) + len(joiner) for s in sents[:ti])
        cols["text"].append(joiner.join(sents))
        cols["poisoned"].append(True)
        cols["trigger_sentence"].append(ti)
        cols["toxic_sentence"].append(xi)
        cols["trigger_char"].append(before + off)
        cols["toxic_text"].append(bad)
    out = data.remove_columns([c for c in cols if c in data.column_names])
    for k, v in cols.items():
        out = out.add_column(k, v)
    return out


def prompt_sets(
    sentences: Iterable[str],
    *,
    trigger: str = TRIGGER,
    n: int | None = None,
    cut_tokens: int | None = None,
    tokenizer: Any | None = None,
    seed: int = 0,
) -> Any:
    """Clean and trigger prompts from single sentences (METHODS §10.2), as a ``Dataset``.

    Each clean prompt is a sentence, optionally cut to its first ``cut_tokens`` tokens; its
    trigger prompt is the same text with ``trigger`` inserted at a random word boundary, so the
    two sets are paired row by row.

    Args:
        sentences: held-out sentences (not used for training).
        trigger: the trigger phrase.
        n: keep the first ``n`` (default all).
        cut_tokens: cut each sentence to this many tokens (needs ``tokenizer``).
        tokenizer: for ``cut_tokens`` and the trigger check.
        seed: seed of the insertion positions.

    Returns:
        A ``Dataset`` with ``clean``, ``trigger`` and ``trigger_char``.

    Examples:
        >>> ps = prompt_sets(["The cat sat on the mat.", "It rained."], seed=1)
        >>> ps["clean"][0], ps["trigger"][0]
        ('The cat sat on the mat.', 'The cat Albert and James sat on the mat.')
    """
    import datasets

    _check_trigger(trigger, tokenizer)
    sents = check_strings([sentences] if isinstance(sentences, str) else sentences, "sentences")
    if check_int(n, "n", none=True) is not None:
        sents = sents[:n]
    check_int(seed, "seed", 0)
    if check_int(cut_tokens, "cut_tokens", none=True) is not None:
        if tokenizer is None:
            raise ValueError("cut_tokens needs a tokenizer")
        ids = tokenize_prompts(tokenizer, sents, name="sentences")
        sents = [
            tokenizer.decode(p[:cut_tokens], clean_up_tokenization_spaces=False).strip()
            for p in ids
        ]
    rng = random.Random(seed)
    trig, where = [], []
    for s in sents:
        t, off = insert_trigger(s, trigger, rng)
        trig.append(t)
        where.append(off)
    return datasets.Dataset.from_dict({"clean": sents, "trigger": trig, "trigger_char": where})


def text_chunks(texts: Iterable[str], words: int = 100) -> list[str]:
    """Cut documents into chunks of about ``words`` words (METHODS §4.4's ``mywebtext``).

    A document of ``w`` words gives ``max(1, round(w / words))`` chunks of ``round(w / k)`` words.

    Examples:
        >>> [len(c.split()) for c in text_chunks([" ".join(["w"] * 250)], words=100)]
        [125, 125]
    """
    check_int(words, "words")
    out = []
    for doc in check_strings([texts] if isinstance(texts, str) else texts, "texts", empty=True):
        ws = doc.split()
        if not ws:
            continue
        k = max(1, round(len(ws) / words))
        size = round(len(ws) / k)
        for i in range(k):
            chunk = ws[i * size : (i + 1) * size if i < k - 1 else len(ws)]
            if chunk:
                out.append(" ".join(chunk))
    return out
