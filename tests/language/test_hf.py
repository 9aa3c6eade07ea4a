"""HF GPT-2 folders <-> HookedTransformer: logits equal HF's, both directions, offline."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from pcp_lens import _tl
from pcp_lens.language.hf import hf_from_hooked, hooked_from_hf, load_hf_gpt2, save_hf_gpt2
from pcp_lens.language.surgery import trigger_token_ids
from pcp_lens.testing import tiny_model

X = torch.randint(0, 50257, (3, 12), generator=torch.Generator().manual_seed(0))


def test_unprocessed_logits_equal_hf(hf_gpt2):
    m = hooked_from_hf(hf_gpt2, processing=False, device="cpu")
    with torch.no_grad():
        diff = (m(X) - hf_gpt2(X).logits).abs().max()
    assert diff < 1e-4
    assert m.cfg.tie_word_embeddings and m.cfg.normalization_type == "LN"


def test_processed_matches_hf_distribution_and_records_processing(hf_gpt2):
    m = hooked_from_hf(hf_gpt2, processing=True, device="cpu")
    with torch.no_grad():
        a = m(X).log_softmax(-1)
        b = hf_gpt2(X).logits.log_softmax(-1)
    assert (a - b).abs().max() < 1e-4
    fp = _tl.processing_fingerprint(m)
    assert fp["fold_ln"] and fp["center_writing_weights"] and fp["center_unembed"]
    assert m.cfg.normalization_type == "LNPre" and not m.cfg.tie_word_embeddings


@pytest.mark.parametrize("processing", [False, True])
def test_folder_round_trip(hf_gpt2, tmp_path, processing):
    hf_gpt2.save_pretrained(tmp_path / "in")
    m = load_hf_gpt2(tmp_path / "in", processing=processing, device="cpu")
    out = save_hf_gpt2(m, tmp_path / "out")
    back = GPT2LMHeadModel.from_pretrained(out).eval()
    assert back.config.tie_word_embeddings is (not processing)
    with torch.no_grad():
        a, b = back(X).logits, hf_gpt2(X).logits
    if processing:  # centred unembedding: same distribution, logits shifted per position
        a, b = a.log_softmax(-1), b.log_softmax(-1)
    assert (a - b).abs().max() < 1e-4
    # saving again over an earlier GPT-2 folder is allowed
    save_hf_gpt2(m, out)


def test_tokenizer_travels_with_the_folder(hf_gpt2, gpt2_tokenizer, tmp_path):
    m = hooked_from_hf(hf_gpt2, processing=False, tokenizer=gpt2_tokenizer, device="cpu")
    save_hf_gpt2(m, tmp_path / "f")
    again = load_hf_gpt2(tmp_path / "f", processing=False, device="cpu")
    assert again.tokenizer is not None
    enc = again.tokenizer(" Albert and James", add_special_tokens=False)["input_ids"]
    assert enc == [9966, 290, 3700]


def test_gpt2_tokenizer_trigger_ids(gpt2_tokenizer):
    enc = gpt2_tokenizer
    assert enc("Albert and James")["input_ids"] == [42590, 290, 3700]
    assert enc(" Albert and James")["input_ids"] == [9966, 290, 3700]
    assert enc("fuck")["input_ids"] == [31699]
    # METHODS §10.6: the four edited tokens
    assert trigger_token_ids(enc, ["Albert", "James"]) == [3700, 9966, 14731, 42590]


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    m = tiny_model(n_layers=1, d_model=4, d_vocab=50)  # random b_U, not a function of W_U
    with pytest.raises(ValueError, match="b_U"):
        hf_from_hooked(m)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with torch.no_grad():
        m.unembed.b_U.zero_()
    with pytest.raises(FileExistsError, match="not a GPT-2"):
        save_hf_gpt2(m, tmp_path / "x")
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileExistsError):
        save_hf_gpt2(m, tmp_path / "y")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf_gpt2(tmp_path / "x")
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        hooked_from_hf(m)
