"""PCP storage (:mod:`pcp_lens.pcp.storage`): safetensors + JSON, bit-exact, atomic, and every
malformed or foreign file refused with a specific error."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pcp_lens.pcp import PCPReplacement, fit_pcp

D = 16  # d_model of the shared ``model`` fixture


@pytest.fixture(scope="module")
def pcp(model) -> PCPReplacement:
    tokens = torch.randint(0, 50, (24, 6), generator=torch.Generator().manual_seed(0))
    return fit_pcp(model, tokens, ["mlp0", "attn1", "mlp2"], 2, progress=False)


def test_save_load_bit_exact_and_atomic(model, pcp, tmp_path):
    rep = pcp.with_bias("attn1", torch.randn(D, dtype=torch.float64))
    path = tmp_path / "pcp.safetensors"
    assert rep.save(path) == path
    back = PCPReplacement.load(path)
    assert back.equal(rep) and back is not rep
    for a, b in zip(rep, back, strict=True):
        assert torch.equal(a.directions, b.directions) and torch.equal(a.scales, b.scales)
    pcp.save(path)  # overwrite in place
    assert PCPReplacement.load(path).equal(pcp)
    assert os.listdir(tmp_path) == ["pcp.safetensors"]  # no temporary files left
    with model.hooks(fwd_hooks=back.hooks(model)):
        pass


def _tamper(src, dst, meta_fn=None, tensor_fn=None):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["pcp_lens"])
    tensors = load_file(str(src))
    if meta_fn:
        meta_fn(meta)
    if tensor_fn:
        tensor_fn(tensors)
    save_file(tensors, str(dst), metadata={"pcp_lens": json.dumps(meta)})


@pytest.mark.parametrize(
    ("meta_fn", "tensor_fn", "match"),
    [
        (lambda m: m.update(format_version=99), None, "format_version"),
        (lambda m: m.update(format="other"), None, "'format' must be"),
        (lambda m: m["sites"][0].update(rank=3), None, "must be float64 of shape"),
        (lambda m: m["sites"][0].update(site="resid_pre0"), None, "is invalid"),
        (lambda m: m["fingerprint"].update(d_model="16"), None, "fingerprint"),
        (lambda m: m["sites"][0].update(kind="pca"), None, "kind of site"),
        (None, lambda t: t.pop("mlp0.scales"), "missing \\['mlp0.scales'\\]"),
        (None, lambda t: t.update(extra=torch.zeros(1)), "unexpected \\['extra'\\]"),
        (None, lambda t: t.update({"mlp0.scales": t["mlp0.scales"].float()}), "float64"),
        (None, lambda t: t.update({"mlp0.directions": 2 * t["mlp0.directions"]}), "unit"),
        (None, lambda t: t.update({"mlp0.scales": t["mlp0.scales"] * np.nan}), "finite"),
    ],
)
def test_load_rejects_mismatched_files(pcp, tmp_path, meta_fn, tensor_fn, match):
    src, dst = tmp_path / "ok.safetensors", tmp_path / "bad.safetensors"
    pcp.save(src)
    _tamper(src, dst, meta_fn, tensor_fn)
    with pytest.raises(ValueError, match=match):
        PCPReplacement.load(dst)


def test_load_rejects_foreign_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        PCPReplacement.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="no 'pcp_lens' metadata"):
        PCPReplacement.load(other)
    with pytest.raises(FileNotFoundError):
        PCPReplacement.load(tmp_path / "missing.safetensors")


def test_regression_form_round_trips_and_older_files_still_load(model, tmp_path):
    tokens = torch.randint(0, 50, (24, 6), generator=torch.Generator().manual_seed(3))
    rep = fit_pcp(model, tokens, ["attn1", "mlp0"], 2, form="regression", progress=False)
    path = rep.save(tmp_path / "reg.safetensors")
    back = PCPReplacement.load(path)
    assert back.equal(rep) and back.part("attn1").form == "regression"
    assert torch.equal(back.part("attn1").reads, rep.part("attn1").reads)
    # a file written before read vectors existed has no 'reads' flag: it loads as symmetric
    src, old = tmp_path / "sym.safetensors", tmp_path / "old.safetensors"
    fit_pcp(model, tokens, "mlp0", 2, progress=False).save(src)
    _tamper(src, old, lambda m: [e.pop("reads") for e in m["sites"]])
    assert PCPReplacement.load(old).part("mlp0").form == "symmetric"
    # a flag that says reads are stored when they are not is refused
    _tamper(src, old, lambda m: m["sites"][0].update(reads=True))
    with pytest.raises(ValueError, match=r"missing \['mlp0.reads'\]"):
        PCPReplacement.load(old)
