"""The backend layer: which TransformerLens line runs, and the bridge's traps (docs/tl4.md)."""

from __future__ import annotations

import gc
import importlib
import weakref

import pytest
import torch

from pcp_lens import _tl, load_model
from pcp_lens.testing import tiny_model

bridge_only = pytest.mark.skipif(_tl.BACKEND != "bridge", reason="TransformerLens 4 only")


def test_backend_is_the_installed_line():
    major = int(importlib.metadata.version("transformer-lens").split(".")[0])
    assert ("bridge" if major >= 4 else "hooked") == _tl.BACKEND
    assert _tl.is_model(tiny_model(n_layers=1))
    assert not _tl.is_model(torch.nn.Linear(2, 2))


def test_load_model_refuses_the_other_backend_and_bad_values(tmp_path):
    other = {"hooked": "bridge", "bridge": "hooked"}[_tl.BACKEND]
    with pytest.raises(ValueError, match=f"backend='{other}' needs another TransformerLens"):
        load_model(tmp_path, backend=other)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'hooked', 'bridge'\)"):
        load_model(tmp_path, backend="tl5")
    with pytest.raises(ValueError, match=r"has no config\.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="processing must be True or False, got 'yes'"):
        load_model(tmp_path, processing="yes")  # type: ignore[arg-type]


def _closure_modules(model: torch.nn.Module) -> list[object]:
    """The modules the model's forward hooks close over (weak proxies resolved; dead: None)."""
    found: list[object] = []
    for mod in model.modules():
        for hook in (*mod._forward_pre_hooks.values(), *mod._forward_hooks.values()):
            for cell in getattr(hook, "__closure__", None) or ():
                v = cell.cell_contents
                if isinstance(v, weakref.ProxyTypes):
                    try:
                        v = v.__repr__.__self__
                    except ReferenceError:
                        v = None
                if v is None or isinstance(v, torch.nn.Module):
                    found.append(v)
    return found


def test_copy_model_is_independent_of_the_original():
    m = tiny_model(n_layers=2)
    x = torch.randint(0, 50, (2, 5))
    m(x).sum().backward()  # a forward with gradients leaves tensors that deepcopy refuses
    m.zero_grad()
    want = m(x).detach()
    c = _tl.copy_model(m)
    own = {id(mod) for mod in c.modules()}
    # every internal hook of the copy works on the copy (a deepcopy of a bridge: the original)
    assert all(v is not None and id(v) in own for v in _closure_modules(c))
    assert {id(hp) for hp in _tl.hook_points(c)}.isdisjoint(id(hp) for hp in _tl.hook_points(m))
    with torch.no_grad():
        _tl.mlp_weights(c, 0)["W_in"].mul_(2)
        assert torch.equal(m(x), want) and not torch.equal(c(x), want)
        _tl.mlp_weights(c, 0)["W_in"].div_(2)
    del m
    gc.collect()
    with torch.no_grad():
        assert torch.equal(c(x), want)  # runs without the original (its weak references)


@bridge_only
def test_hook_names_are_tl3_names_and_aliases_count_once():
    m = tiny_model(n_layers=2)
    for name in ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"):
        assert m.hook_dict[name].name == name
    with m.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda t, hook: None)]):
        assert _tl.attached_hook_count(m) == 1  # shared with blocks.0.mlp.hook_out
    assert _tl.attached_hook_count(m) == 0


@bridge_only
def test_stop_at_layer_is_the_residual_and_fires_no_later_hook():
    m = tiny_model(n_layers=2)
    x = torch.randint(0, 50, (2, 5))
    fired: list[str] = []
    hooks = [("blocks.1.hook_resid_pre", lambda t, hook: fired.append("pre1"))]
    _, cache = _tl.run_with_cache(m, x, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    one = _tl.run_with_hooks(m, x, hooks, stop_at_layer=1)
    assert fired == [] and torch.equal(one, cache["blocks.0.hook_resid_post"])
    assert torch.equal(_tl.final_residual(m, x), cache["blocks.1.hook_resid_post"])


@bridge_only
def test_broken_transformers_refuses_cached_generation(monkeypatch):
    from pcp_lens._backends import bridge

    m = tiny_model(n_layers=1)
    monkeypatch.setattr(bridge, "KV_CACHE_PROBLEM", "transformers 5.24.0 with ...")
    with pytest.raises(RuntimeError, match=r"KV-cached generation refused: transformers 5\.24\.0"):
        _tl.new_kv_cache(m, 1)
    k = torch.zeros(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"cached keys/values: transformers 5\.24\.0"):
        _tl.run_blocks(m, torch.zeros(1, 1, 16), 0, 1, [(k, k)])


@bridge_only
def test_installed_transformers_is_judged_right():
    """The import-time verdict matches what the cache does: cached == full forward."""
    from pcp_lens._backends import bridge

    m = tiny_model(n_layers=2)
    x = torch.randint(0, 50, (2, 6))
    if bridge.KV_CACHE_PROBLEM is not None:
        pytest.skip(bridge.KV_CACHE_PROBLEM)
    fl = _tl.FinalLogits(m)
    with torch.no_grad():
        full = m(x)
        cache = _tl.new_kv_cache(m, 2)
        _tl.last_logits(m, x[:, :4], fl, cache)
        step = _tl.last_logits(m, x[:, 4:5], fl, cache)
    assert (step - full[:, 4]).abs().max() < 1e-5


@bridge_only
def test_word_tokenizer_without_a_attaches():
    from pcp_lens.toy import build_tokenizer

    tok = build_tokenizer(["happy", "sad"])  # no "a", no unk token: the bridge's probe fails
    with pytest.raises(Exception):  # noqa: B017 - the tokenizers library's own error
        tok.encode("a")
    m = tiny_model(n_layers=1)
    _tl.attach_tokenizer(m, tok)
    ids = tok.encode("happy")
    assert m.tokenizer is not None
    assert m.cfg.tokenizer_prepends_bos == (len(ids) > 1 and ids[0] == tok.bos_token_id)
    want = tok.encode("happy sad", add_special_tokens=False)
    assert m.to_tokens("happy sad", prepend_bos=False).tolist() == [want]


def _tied_gpt2(seed: int = 0) -> _tl.Model:
    """A random Hugging Face GPT-2 (its config's dropout 0.1, LM head tied to wte), loaded raw."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pcp_lens.language.hf import hooked_from_hf

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=60, n_positions=16))
    assert hf.config.resid_pdrop > 0 and hf.lm_head.weight is hf.transformer.wte.weight
    return hooked_from_hf(hf.eval(), processing=False, device="cpu")


def _trained(model: _tl.Model, global_seed: int) -> dict[str, torch.Tensor]:
    from pcp_lens.training import TrainConfig, train

    x = torch.randint(0, 60, (32, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(global_seed)  # what ran before, e.g. a pretraining a rerun loads from disk
    cfg = TrainConfig(lr=1e-2, batch_size=8, epochs=1, dropout=0.0, max_grad_norm=1.0,
                      progress=False)
    train(model, x, x[:8], cfg)
    return {k: v.detach().clone() for k, v in _tl.named_parameters(model).items()}


def test_training_a_loaded_gpt2_does_not_draw_on_the_global_rng():
    # The language --quick run on the bridge gave other tables when it reused its cached
    # pretraining: the wrapped model's own dropout (GPT-2's 0.1) drew its masks from torch's
    # global generator, which the skipped pretraining no longer advanced (docs/tl4.md)
    a, b = _trained(_tied_gpt2(), 1), _trained(_tied_gpt2(), 2)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_a_checkpoint_reloads_a_tied_gpt2_with_the_same_parameters(tmp_path):
    from pcp_lens.checkpoints import load_checkpoint, save_checkpoint, shares_embeddings

    fresh = _tied_gpt2()
    save_checkpoint(fresh, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck").model
    # the bridge's GPT-2 has one matrix for W_E and W_U; a reload with two counted 1920 more
    assert shares_embeddings(loaded) == shares_embeddings(fresh) == (_tl.BACKEND == "bridge")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in fresh.parameters())
    a, b = _trained(fresh, 0), _trained(loaded, 0)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


@bridge_only
def test_shared_embeddings_is_refused_where_it_cannot_be_built():
    cfg = tiny_model(n_layers=1).cfg
    with pytest.raises(ValueError, match="shared_embeddings must be True or False, got 1"):
        _tl.new_model(cfg, shared_embeddings=1)
    rotary = _tl.HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=8, n_heads=2,
                                         d_vocab=20, act_fn="gelu",
                                         positional_embedding_type="rotary")
    with pytest.raises(ValueError, match="needs a GPT-2-shaped config"):
        _tl.new_model(rotary, shared_embeddings=True)


def test_a_checkpoint_refuses_a_bad_or_unbuildable_shared_embeddings_field(tmp_path):
    import json

    from pcp_lens.checkpoints import load_checkpoint, save_checkpoint

    save_checkpoint(tiny_model(n_layers=1), tmp_path / "ck")
    cfg_file = tmp_path / "ck" / "config.json"
    meta = json.loads(cfg_file.read_text())
    assert "shared_embeddings" not in meta  # only written where W_U is W_E's own parameter
    cfg_file.write_text(json.dumps({**meta, "shared_embeddings": "yes"}))
    with pytest.raises(ValueError, match="'shared_embeddings' must be true or false, got 'yes'"):
        load_checkpoint(tmp_path / "ck")
    if _tl.BACKEND == "hooked":  # a bridge's tied GPT-2 cannot be a HookedTransformer
        cfg_file.write_text(json.dumps({**meta, "shared_embeddings": True}))
        with pytest.raises(ValueError, match=r"HookedTransformer always has its own unembed\.W_U"):
            load_checkpoint(tmp_path / "ck")
