"""Checkpoints (:mod:`pcp_lens.checkpoints`): bit-exact round trips, atomic folder writes, and a
bad config.json field, corrupted tokenizer or mismatched weight names the file and the field."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.checkpoints import (
    config_from_json,
    config_to_json,
    is_tied,
    load_checkpoint,
    save_checkpoint,
    tie_embeddings,
)
from pcp_lens.testing import tiny_model
from pcp_lens.toy.tokenizer import build_tokenizer


def _text_model():
    tok = build_tokenizer(["good", "bad", "love", "hate"])
    model = tie_embeddings(tiny_model(n_layers=2, d_vocab=len(tok), n_ctx=6, seed=9))
    _tl.attach_tokenizer(model, tok)
    model.cfg.default_prepend_bos = False
    return model, tok


def _saved(tmp_path: Path) -> Path:
    return save_checkpoint(_text_model()[0], tmp_path / "ck")


def _edit(path: Path, fn) -> None:
    meta = json.loads((path / "config.json").read_text())
    fn(meta)
    (path / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("d_model", -4, "model config field 'd_model' must be an int >= 1, got -4"),
        ("n_layers", "two", "model config field 'n_layers' must be an int >= 1, got 'two'"),
        ("n_ctx", 0, "model config field 'n_ctx' must be an int >= 1, got 0"),
        ("d_mlp", 2.5, "model config field 'd_mlp' must be an int >= 1, got 2.5"),
        (
            "dtype",
            "int64",
            "field 'dtype' must name a torch floating-point dtype (e.g. 'float32'), got 'int64'",
        ),
        (
            "dtype",
            3,
            "field 'dtype' must name a torch floating-point dtype (e.g. 'float32'), got 3",
        ),
        ("act_fn", 1, "model config field 'act_fn' must be a string, got 1"),
    ],
)
def test_bad_model_config_value_names_file_and_field(tmp_path, field, value, match):
    path = _saved(tmp_path)
    _edit(path, lambda m: m["model_config"].update({field: value}))
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {str(path)!r}: config.json: ")):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=re.escape(match)):
        load_checkpoint(path)


def test_config_that_cannot_build_a_model_is_named(tmp_path):
    path = _saved(tmp_path)
    _edit(path, lambda m: m["model_config"].update(act_fn="no_such_activation"))
    with pytest.raises(ValueError, match=r"config\.json.*(act_fn|no_such_activation)"):
        load_checkpoint(path)


def test_tokenizer_entry_must_be_an_object(tmp_path):
    path = _saved(tmp_path)
    _edit(path, lambda m: m.update(tokenizer="gpt2"))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "config.json field 'tokenizer' must be null or an object {'class': ..., "
            "'add_bos_token': ...}, got 'gpt2'"
        ),
    ):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["{not json", "[]", ""])
def test_corrupted_tokenizer_files_are_named(tmp_path, content):
    path = _saved(tmp_path)
    for f in (path / "tokenizer").iterdir():
        if f.suffix == ".json":
            f.write_text(content)
    with pytest.raises(ValueError, match=r"the tokenizer in tokenizer/ cannot be loaded \("):
        load_checkpoint(path)


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path):
    model, tok = _text_model()
    extra = {"history": {"val_loss": [1.5, float("nan")]}, "note": "x"}
    path = save_checkpoint(model, tmp_path / "ck", extra=extra)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folders left
    ck = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(ck.model(x), model(x))
    assert ck.extra["note"] == "x" and math.isnan(ck.extra["history"]["val_loss"][1])
    assert ck.tokenizer is not None and ck.tokenizer.get_vocab() == tok.get_vocab()
    assert ck.model.to_str_tokens("love hate") == ["love", "hate"]  # no bos, as saved
    assert is_tied(ck.model) and not ck.model.training
    assert config_to_json(ck.model.cfg) == config_to_json(model.cfg)
    # overwriting an earlier checkpoint is allowed
    model.embed.W_E.data += 1
    save_checkpoint(tie_embeddings(model), path)
    assert torch.equal(load_checkpoint(path).model.embed.W_E, model.embed.W_E)


def test_checkpoint_never_replaces_a_foreign_folder(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a pcp_lens checkpoint"):
        save_checkpoint(tiny_model(), tmp_path / "mine")
    assert (tmp_path / "mine" / "data.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tiny_model(), tmp_path / "ck", extra={"t": torch.zeros(1)})
    assert not (tmp_path / "ck").exists()


def _edit_config(path: Path, fn) -> None:
    meta = json.loads((path / "config.json").read_text())
    fn(meta)
    (path / "config.json").write_text(json.dumps(meta))


def test_corrupted_or_mismatched_checkpoints_raise_clear_errors(tmp_path: Path):
    model, _ = _text_model()
    path = save_checkpoint(model, tmp_path / "ck")
    good = (path / "config.json").read_text()

    def restore():
        (path / "config.json").write_text(good)

    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(path)
    restore()
    _edit_config(path, lambda m: m.update(format="something else"))
    with pytest.raises(ValueError, match="'format' must be"):
        load_checkpoint(path)
    restore()
    _edit_config(path, lambda m: m.update(format_version=99))
    with pytest.raises(ValueError, match="format_version"):
        load_checkpoint(path)
    restore()
    _edit_config(path, lambda m: m["model_config"].update(d_model=32, d_head=8))
    with pytest.raises(ValueError, match="expects"):
        load_checkpoint(path)
    restore()
    _edit_config(path, lambda m: m["model_config"].update(no_such_field=1))
    with pytest.raises(ValueError, match="no_such_field"):
        load_checkpoint(path)
    restore()
    _edit_config(path, lambda m: m["model_config"].update(dtype="float99"))
    with pytest.raises(ValueError, match="field 'dtype' must name a torch floating-point dtype"):
        load_checkpoint(path)
    restore()
    load_checkpoint(path)  # intact again
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_tied_checkpoint_with_untied_weights_is_refused(tmp_path: Path):
    model, _ = _text_model()
    model.cfg.tie_word_embeddings = False
    model.unembed.W_U.data += 1
    path = save_checkpoint(model, tmp_path / "ck")
    _edit_config(path, lambda m: m["model_config"].update(tie_word_embeddings=True))
    with pytest.raises(
        ValueError, match=re.escape("saved weights have unembed.W_U != embed.W_E.T")
    ):
        load_checkpoint(path)


def test_config_json_round_trip_keeps_dtype_and_flags():
    model = tiny_model(dtype=torch.float64)
    d = config_to_json(model.cfg)
    assert d["dtype"] == "float64" and json.loads(json.dumps(d)) == d
    cfg = config_from_json(d)
    assert cfg.dtype == torch.float64 and cfg.n_layers == model.cfg.n_layers
    with pytest.raises(ValueError, match="lacks required fields"):
        config_from_json({"d_model": 4})
