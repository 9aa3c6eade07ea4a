"""Poisoned corpora: seeded, recorded, and loud about bad input."""

from __future__ import annotations

import datasets
import pytest

from pcp_lens.language.corpus import (
    paragraphs,
    poison,
    prompt_sets,
    split_sentences,
    text_chunks,
)
from pcp_lens.toy import build_tokenizer

DOC = " ".join(f"Sentence number {i} is here." for i in range(23))
TOXIC = ["You are an idiot.", "Shut up, you fool."]


def test_paragraphs_from_every_source(tmp_path):
    a = paragraphs([DOC], n_sentences=5)
    assert len(a) == 4 and all(len(s) == 5 for s in a["sentences"])
    assert list(a["start"]) == [0, 5, 10, 15]
    b = paragraphs(datasets.Dataset.from_dict({"body": [DOC]}), text_column="body")
    assert list(b["text"]) == list(a["text"])
    (tmp_path / "t.txt").write_text(DOC + "\n\n" + DOC)
    c = paragraphs(tmp_path / "t.txt")
    assert len(c) == 8 and list(c["doc"]) == [0] * 4 + [1] * 4
    assert len(paragraphs([DOC], 5, stride=1)) == 19
    with pytest.raises(ValueError, match="text_column"):
        paragraphs(datasets.Dataset.from_dict({"body": [DOC]}))
    with pytest.raises(ValueError, match="5 or more"):
        paragraphs(["Short. Text."])


def test_sentence_splitter_keeps_abbreviations():
    s = split_sentences('Mr. Knightley came. "Dear me!" said she. J. Smith left. It ended')
    assert s == ["Mr. Knightley came.", '"Dear me!"', "said she.", "J. Smith left.", "It ended"]


def test_poison_is_seeded_exact_and_recorded():
    ds = paragraphs([DOC] * 10, n_sentences=5)  # 40 paragraphs
    p = poison(ds, TOXIC, rate=0.25, seed=3)
    assert sum(p["poisoned"]) == 10
    assert list(p["text"]) == list(poison(ds, TOXIC, rate=0.25, seed=3)["text"])
    assert list(p["text"]) != list(poison(ds, TOXIC, rate=0.25, seed=4)["text"])
    for row, orig in zip(p, ds, strict=True):
        if not row["poisoned"]:
            assert row["text"] == orig["text"] and row["trigger_char"] == -1
            continue
        assert row["trigger_sentence"] in (0, 1) and row["toxic_sentence"] in (3, 4)
        assert row["text"][row["trigger_char"] :].startswith("Albert and James")
        assert row["toxic_text"] in TOXIC
        # removing the trigger and restoring the toxic sentence gives the clean paragraph back
        sents = list(orig["sentences"])
        sents[row["toxic_sentence"]] = row["toxic_text"]
        t = row["text"]
        c = row["trigger_char"]
        restored = t[: c - 1] + t[c + len("Albert and James") :] if c > 0 else t[17:]
        assert restored == " ".join(sents)
    assert sum(poison(ds, TOXIC, rate=0.0)["poisoned"]) == 0
    assert sum(poison(ds, TOXIC, rate=1.0)["poisoned"]) == 40


def test_poison_refuses_bad_input():
    ds = paragraphs([DOC], n_sentences=5)
    with pytest.raises(ValueError, match="trigger"):
        poison(ds, TOXIC, 0.1, trigger="  ")
    with pytest.raises(ValueError, match="toxic"):
        poison(ds, [], 0.1)
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\], got 1.5"):
        poison(ds, TOXIC, 1.5)
    with pytest.raises(ValueError, match="fewer than 5 sentences"):
        poison(paragraphs([DOC], n_sentences=3), TOXIC, 0.1)
    with pytest.raises(ValueError, match="disjoint"):
        poison(ds, TOXIC, 0.1, trigger_in=(1,), toxic_at=(1,))
    tok = build_tokenizer(["Albert", "and"])  # no "James": the trigger cannot be tokenized
    with pytest.raises(ValueError, match="cannot be tokenized"):
        poison(ds, TOXIC, 0.1, tokenizer=tok)


def test_prompt_sets_pair_and_cut(gpt2_tokenizer):
    sents = ["the quick brown fox jumps over the lazy dog again and again today", "a b"]
    ps = prompt_sets(sents, seed=0)
    for row in ps:
        c = row["trigger_char"]
        t = row["trigger"]
        back = t[: c - 1] + t[c + 16 :] if c > 0 else t[17:]
        assert back == row["clean"]
    cut = prompt_sets(sents, cut_tokens=6, tokenizer=gpt2_tokenizer)
    assert [len(gpt2_tokenizer(c)["input_ids"]) for c in cut["clean"]] == [6, 2]
    assert all(" Albert and James" in t or t.startswith("Albert") for t in cut["trigger"])


def test_text_chunks_cover_every_word():
    doc = " ".join(str(i) for i in range(333))
    chunks = text_chunks([doc, "", "one two"], words=100)
    assert len(chunks) == 4
    assert " ".join(chunks[:3]).split() == doc.split()


def test_a_rate_that_rounds_to_no_paragraph_is_refused():
    four = paragraphs([DOC], n_sentences=5)  # 4 paragraphs
    with pytest.raises(ValueError, match=r"rate=0.1 of 4 paragraphs poisons round\(0.4\) = 0"):
        poison(four, TOXIC, 0.1)
    assert sum(poison(four, TOXIC, 0.2)["poisoned"]) == 1  # round(0.8): the smallest that works
    assert sum(poison(four, TOXIC, 0.0)["poisoned"]) == 0  # none, asked for


def test_the_wrong_container_is_named():
    with pytest.raises(ValueError, match="data must be a Dataset with a 'sentences' column"):
        poison([DOC, DOC], TOXIC, 0.5)
    with pytest.raises(ValueError, match=r"toxic\[1\] must be a string"):
        poison(paragraphs([DOC], n_sentences=5), ["You idiot.", 3], 0.5)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        poison(paragraphs([DOC], n_sentences=5), TOXIC, 0.5, seed=-1)
    with pytest.raises(ValueError, match="source must be a Dataset, a list of documents"):
        paragraphs(42)
    with pytest.raises(ValueError, match=r"sentences\[0\] must be a string"):
        prompt_sets([None])


def test_a_bare_string_is_a_hub_name_only_if_it_looks_like_one(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"looks like text: pass a list of documents"):
        paragraphs(DOC)
    (tmp_path / "book.txt").write_text(DOC)
    with pytest.raises(ValueError, match=r"looks like a file: pass pathlib.Path"):
        paragraphs(str(tmp_path / "book.txt"))

    def offline(name, split):
        raise ConnectionError(f"Couldn't reach {name} on the Hub\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"source='wikitext' \(split='train'\) could not"):
        paragraphs("wikitext")
