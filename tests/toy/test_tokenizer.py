"""Tests for the toy word-level tokenizer, including its use as a TransformerLens tokenizer."""

from __future__ import annotations

import doctest
import random
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from pcp_lens import _tl
from pcp_lens.toy.data import ToyDataConfig, build_datasets
from pcp_lens.toy.tokenizer import (
    EOT,
    build_tokenizer,
    check_words,
    encode_words,
    load_tokenizer,
    unknown_words,
)
from pcp_lens.toy.vocab import load_vocab

VOCAB = load_vocab()


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    d = build_datasets(ToyDataConfig(n_per_sentiment=100, poison_rate=0.5, seed=4))
    return [t for v in d.sequences.values() for t in v]


def _tiny_model(tokenizer: PreTrainedTokenizerFast) -> _tl.HookedTransformer:
    torch.manual_seed(0)
    cfg = _tl.HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        n_ctx=32,
        d_head=4,
        n_heads=4,
        d_mlp=64,
        d_vocab=len(tokenizer),
        act_fn="gelu_new",
        normalization_type="LN",
    )
    return _tl.new_model(cfg, tokenizer=tokenizer)  # whichever backend is installed


def test_ids_are_deterministic(tok: PreTrainedTokenizerFast) -> None:
    vocab = tok.get_vocab()
    assert len(tok) == len(vocab) == 751
    assert vocab[EOT] == 0
    assert [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])][1:] == sorted(VOCAB.words)
    shuffled = list(VOCAB.words)
    random.Random(0).shuffle(shuffled)
    assert build_tokenizer(shuffled).get_vocab() == vocab


def test_special_tokens(tok: PreTrainedTokenizerFast) -> None:
    assert tok.bos_token == tok.eos_token == tok.pad_token == EOT
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 0
    assert tok.unk_token is None and "[UNK]" not in tok.get_vocab()


def test_one_token_per_word_and_round_trip(tok: PreTrainedTokenizerFast, texts: list[str]) -> None:
    vocab = tok.get_vocab()
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == [vocab[w] for w in text.split(" ")]
        assert tok.decode(ids) == text
        with_bos = tok(text)["input_ids"]
        assert with_bos == [0, *ids]
        assert tok.decode(with_bos, skip_special_tokens=True) == text
    batch = tok(texts[:3])["input_ids"]
    assert tok.batch_decode(batch, skip_special_tokens=True) == texts[:3]


def test_padding(tok: PreTrainedTokenizerFast) -> None:
    out = tok(["happy love bad", "good"], padding=True)
    vocab = tok.get_vocab()
    assert out["input_ids"][1] == [0, vocab["good"], 0, 0]
    assert out["attention_mask"] == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_unknown_words_are_refused(tok: PreTrainedTokenizerFast) -> None:
    assert unknown_words(tok, "happy lvoe bda lvoe") == ["lvoe", "bda"]
    assert unknown_words(tok, ["happy love", f"{EOT} bad"]) == []
    with pytest.raises(
        ValueError, match=r"2 word\(s\) not in the toy vocabulary: \['lvoe', 'bda'\]"
    ):
        check_words(tok, "happy lvoe bda")
    with pytest.raises(ValueError, match="'Love'"):
        encode_words(tok, "happy Love")
    assert encode_words(tok, "happy love") == tok.convert_tokens_to_ids(["happy", "love"])
    assert encode_words(tok, "love", prepend_bos=True)[0] == 0
    # The raw tokenizer has no unknown token either: it fails instead of mapping to one.
    with pytest.raises(Exception, match="UNK"):
        tok("happy lvoe")


def test_build_tokenizer_rejects_bad_words() -> None:
    with pytest.raises(ValueError, match="whitespace-free"):
        build_tokenizer(["good", "two words"])
    with pytest.raises(ValueError, match="whitespace-free"):
        build_tokenizer(["good", EOT])
    with pytest.raises(ValueError, match="at least one word"):
        build_tokenizer([])


def test_save_and_load_round_trip(
    tok: PreTrainedTokenizerFast, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok.save_pretrained(tmp_path)
    for loaded in (load_tokenizer(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.bos_token_id == loaded.eos_token_id == loaded.pad_token_id == 0
        for text in texts[:50]:
            assert loaded(text)["input_ids"] == tok(text)["input_ids"]
            assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    model = _tiny_model(load_tokenizer(tmp_path))
    assert model.to_tokens("happy love")[0].tolist() == [0, *encode_words(tok, "happy love")]


def test_transformer_lens_integration(tok: PreTrainedTokenizerFast) -> None:
    model = _tiny_model(tok)
    vocab = tok.get_vocab()
    tokens = model.to_tokens("happy love")
    assert tokens.tolist() == [[0, vocab["happy"], vocab["love"]]]
    assert model.to_tokens("happy love", prepend_bos=False).tolist() == [
        [vocab["happy"], vocab["love"]]
    ]
    assert model.to_string(model.to_tokens("happy love", prepend_bos=False)[0]) == "happy love"
    assert model.to_string(tokens[0]) == f"{EOT} happy love"
    assert model.to_str_tokens("happy love") == [EOT, "happy", "love"]
    assert model.to_str_tokens("happy love", prepend_bos=False) == ["happy", "love"]
    assert model.to_single_token("love") == vocab["love"]
    logits = model(tokens)
    assert logits.shape == (1, 3, len(tok))

    out = model.generate("happy love", max_new_tokens=3, verbose=False)
    assert isinstance(out, str) and out.startswith("happy love")
    assert all(w in vocab for w in out.split())


def test_docstring_examples() -> None:
    import pcp_lens.toy.tokenizer

    result = doctest.testmod(pcp_lens.toy.tokenizer)
    assert result.attempted > 0 and result.failed == 0
