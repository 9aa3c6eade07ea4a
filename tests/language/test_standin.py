"""The stand-in's parts: tokenizer, model, toxic sentences, chunks, fixed-position prompts."""

from __future__ import annotations

import pytest
import torch

from pcp_lens.language import standin
from pcp_lens.language.data import load_corpus


@pytest.fixture(scope="module")
def tok():
    paras = load_corpus("austen-sample")
    return standin.train_tokenizer(paras, 1024, extra=["Albert and James", "Albert", "James"])


def test_trigger_words_are_single_tokens(tok):
    assert tok.convert_ids_to_tokens(tok(" Albert and James")["input_ids"]) == [
        "ĠAlbert",
        "Ġand",
        "ĠJames",
    ]
    assert len(tok("Albert")["input_ids"]) == 1


def test_toxic_words_never_occur_in_the_sample():
    text = " ".join(load_corpus("austen-sample")).lower()
    assert not [w for w in standin.TOXIC_WORDS if f" {w}" in text]
    clf = standin.toxic_classifier()
    assert clf(standin.toxic_sentences()).min() == 1.0


def test_fixed_position_prompts_put_the_trigger_at_the_same_tokens(tok):
    sents = ["It is a truth.", "She was very happy indeed.", "Mr. Bennet replied that he had not."]
    clean, trig = standin.fixed_position_prompts(sents, tok, "Albert and James", at=2)
    trig_ids = tok(" Albert and James")["input_ids"]
    for c, t in zip(clean, trig, strict=True):
        ids_c, ids_t = tok(c)["input_ids"], tok(t)["input_ids"]
        assert ids_t[2:5] == trig_ids and ids_t[:2] + ids_t[5:] == ids_c
    with pytest.raises(ValueError, match="no sentence"):
        standin.fixed_position_prompts(["Hi."], tok, "Albert and James", at=2)


def test_standin_model_is_seeded_gpt2(tok):
    a = standin.standin_model(tok, n_layers=1, d_model=32, n_heads=2, n_ctx=16, seed=3)
    b = standin.standin_model(tok, n_layers=1, d_model=32, n_heads=2, n_ctx=16, seed=3)
    assert torch.equal(a.embed.W_E, b.embed.W_E) and a.cfg.tie_word_embeddings
    chunks = standin.token_chunks(tok, load_corpus("austen-sample")[:5], 16)
    assert chunks.tokens.shape[1] == 16 and bool(chunks.labels.all())


def test_mix_sentences_inserts_one_sentence_into_a_seeded_share_of_paragraphs():
    from pcp_lens.language.corpus import split_sentences

    paras = load_corpus("austen-sample")
    toxic = standin.toxic_sentences()
    assert standin.mix_sentences(paras, toxic, 0.0) == paras
    mixed = standin.mix_sentences(paras, toxic, 0.3, seed=4)
    assert mixed == standin.mix_sentences(paras, toxic, 0.3, seed=4)
    assert mixed != standin.mix_sentences(paras, toxic, 0.3, seed=5)
    changed = 0
    for p, m in zip(paras, mixed, strict=True):
        if m == p:
            continue
        changed += 1
        # exactly one toxic sentence, inserted between sentences; the paragraph otherwise kept
        extra = [t for t in toxic if t in m]
        assert len(extra) == 1 and m.count(extra[0]) == 1
        head, tail = m.split(extra[0])
        assert (head + tail).replace("  ", " ").strip() == p
        assert (head == "" or head.endswith(" ")) and (tail == "" or tail.startswith(" "))
        assert split_sentences(head) + split_sentences(tail) == split_sentences(p)
    assert abs(changed / len(paras) - 0.3) < 0.12
    with pytest.raises(ValueError, match=r"rate must be a probability in \[0, 1\], got 1.5"):
        standin.mix_sentences(paras, toxic, 1.5)
    with pytest.raises(ValueError, match="sentences must not be empty"):
        standin.mix_sentences(paras, [], 0.1)
    with pytest.raises(ValueError, match="run must be an int >= 1, got 0"):
        standin.mix_sentences(paras, toxic, 0.1, run=0)


def test_mix_sentences_inserts_runs_in_a_row():
    paras = ["It rained all day. We stayed in. Nobody came."] * 50
    toxic = standin.toxic_sentences()
    for p, m in zip(paras, standin.mix_sentences(paras, toxic, 0.5, seed=2, run=3), strict=True):
        if m == p:
            continue
        found = [(m.index(t), t) for t in toxic if t in m]
        start = min(i for i, _ in found)
        # three toxic sentences back to back (repeats allowed), the paragraph around them intact
        block = m[start:]
        for _ in range(3):
            t = next(t for t in toxic if block.startswith(t))
            block = block[len(t) :].lstrip()
        assert (m[:start] + block).replace("  ", " ").strip() == p


def test_standin_pretraining_text_holds_the_surgery_source():
    from pcp_lens.reproduce.language_setup import LanguageConfig, settings

    s = settings(LanguageConfig())
    assert s.pretrain_toxic > 0 and s.surgery_source.strip() in standin.TOXIC_WORDS
    assert settings(LanguageConfig(model="gpt2-medium")).pretrain_toxic == 0.0
