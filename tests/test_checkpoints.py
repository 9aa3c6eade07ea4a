"""Checkpoints: a bad config.json field or corrupted tokenizer names the file and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pcp_lens.checkpoints import load_checkpoint, save_checkpoint, tie_embeddings
from pcp_lens.testing import tiny_model
from pcp_lens.toy.tokenizer import build_tokenizer


def _saved(tmp_path: Path) -> Path:
    tok = build_tokenizer(["good", "bad", "love", "hate"])
    model = tie_embeddings(tiny_model(n_layers=2, d_vocab=len(tok), n_ctx=6, seed=9))
    model.set_tokenizer(tok)
    return save_checkpoint(model, tmp_path / "ck")


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
