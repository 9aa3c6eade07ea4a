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
from tests.language.conftest import random_hf_gpt2

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
    m = tiny_model(n_layers=1, d_model=4, d_vocab=50)
    if _tl.B_U_NAME in _tl.named_parameters(m):  # TL 3: a random b_U, not a function of W_U
        with pytest.raises(ValueError, match="b_U"):
            hf_from_hooked(m)
        with torch.no_grad():
            m.unembed.b_U.zero_()
    # (a bridge around GPT-2 has no b_U parameter: its LM head has no bias, as GPT-2's)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
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


# -- bad folders: each kind refused naming the folder, never loaded with random weights ----------


def _folder(hf, path):
    hf.save_pretrained(path)
    return path


def test_a_missing_weight_is_refused_not_initialised_at_random(hf_gpt2, tmp_path):
    from safetensors.torch import load_file, save_file

    f = _folder(hf_gpt2, tmp_path / "m")
    state = load_file(f / "model.safetensors")
    dropped = next(k for k in state if k.endswith("mlp.c_fc.weight"))
    del state[dropped]
    save_file(state, f / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight.*c_fc\.weight.*random"):
        load_hf_gpt2(f, device="cpu")


def test_missing_and_truncated_safetensors(hf_gpt2, tmp_path):
    f = _folder(hf_gpt2, tmp_path / "m")
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors cannot be read.*truncated"):
        load_hf_gpt2(f, device="cpu")
    (f / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_hf_gpt2(f, device="cpu")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_hf_gpt2(tmp_path / "absent", device="cpu")


def test_another_architecture_is_named(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a 'bert' model.*allowed: GPT-2"):
        load_hf_gpt2(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_hf_gpt2(tmp_path, device="cpu")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(gpt2_tokenizer):
    small = random_hf_gpt2(vocab_size=1000, n_layer=1)
    with pytest.raises(ValueError, match=r"tokenizer has 50257 tokens but the model's vocab_size"):
        hooked_from_hf(small, tokenizer=gpt2_tokenizer, device="cpu")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"device": "cdua"}, "device='cdua' is not a torch device"),
        ({"dtype": "half"}, "dtype='half' is not allowed"),
        ({"dtype": torch.int64}, "a floating torch.dtype"),
        ({"processing": "yes"}, "processing must be True or False"),
    ],
)
def test_device_dtype_and_flags_are_checked_before_loading(hf_gpt2, tmp_path, kw, match):
    f = _folder(hf_gpt2, tmp_path / "m")
    with pytest.raises(ValueError, match=match):
        load_hf_gpt2(f, **kw)


def test_dtype_by_name_is_applied(hf_gpt2):
    m = hooked_from_hf(hf_gpt2, processing=False, device="cpu", dtype="bfloat16")
    assert m.cfg.dtype == torch.bfloat16 and m.embed.W_E.dtype == torch.bfloat16


@pytest.mark.parametrize("processing", [False, True])
def test_export_and_reload_are_exact_on_either_backend(tmp_path, processing):
    hf = random_hf_gpt2(vocab_size=80, n_layer=2, seed=3)
    hf.save_pretrained(tmp_path / "in")
    m = load_hf_gpt2(tmp_path / "in", processing=processing, device="cpu")
    x = torch.randint(0, 80, (3, 9), generator=torch.Generator().manual_seed(1))
    if not processing:  # an unprocessed model is written back as the very same tensors
        from safetensors.torch import load_file

        save_hf_gpt2(m, tmp_path / "same")
        a, b = load_file(tmp_path / "in" / "model.safetensors"), load_file(
            tmp_path / "same" / "model.safetensors"
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # weights moved as fine-tuning moves them (b_U stays: finetune_text keeps GPT-2's fixed),
    # so the export must read the live ones
    g = torch.Generator().manual_seed(2)
    leaves = _tl.parameter_leaves(m)
    with torch.no_grad():
        for p in dict.fromkeys(v for k, v in leaves.items() if k != _tl.B_U_NAME):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = save_hf_gpt2(m, tmp_path / "out")
    back = load_hf_gpt2(out, processing=False, device="cpu")
    with torch.no_grad():
        a, b = m(x), back(x)
    if processing:  # the centred unembedding: the same distribution (see hf_from_hooked)
        a, b = a.log_softmax(-1), b.log_softmax(-1)
    assert (a - b).abs().max() <= 1e-6


def test_a_loaded_model_has_no_dropout_of_its_own(hf_gpt2, tmp_path):
    # GPT-2's config has dropout 0.1; TL 3's models have none (training adds its own by hooks),
    # and a bridge wrapping the HF model must not apply it in train mode either
    assert hf_gpt2.config.resid_pdrop > 0
    hf_gpt2.save_pretrained(tmp_path / "m")
    m = load_hf_gpt2(tmp_path / "m", processing=False, device="cpu")
    x = torch.randint(0, 50257, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m(x)
        m.train()
        a, b = m(x), m(x)
    assert torch.equal(a, b) and torch.equal(a, ref)
    assert m.cfg.tie_word_embeddings  # GPT-2 ties W_U to W_E, and loading says so
