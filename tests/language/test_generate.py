"""KV-cached generation equals full forward passes, with and without hooks."""

from __future__ import annotations

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.ablation import mean_ablation
from pcp_lens.language.generate import SamplingConfig, generate, sample_texts
from pcp_lens.testing import tiny_model


@pytest.fixture(scope="module")
def m64():
    # float64 so that near-ties in the argmax cannot make the two paths differ by rounding
    m = tiny_model(n_layers=3, d_model=32, d_vocab=60, n_ctx=40, seed=3, dtype=torch.float64)
    assert m.cfg.positional_embedding_type == "standard"  # learned positions
    return m


PROMPTS = torch.randint(0, 60, (4, 7), generator=torch.Generator().manual_seed(1))


def _mean(m, site="mlp1"):
    return 0.5 * torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(2)).double()


def test_greedy_cached_equals_full_forwards(m64):
    fast = generate(m64, PROMPTS, 20)
    slow = generate(m64, PROMPTS, 20, use_cache=False)
    assert torch.equal(fast, slow)
    # and both equal greedy decoding written out with plain forward passes
    seq = PROMPTS.clone()
    for _ in range(20):
        seq = torch.cat([seq, m64(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq[:, 7:], fast)


def test_greedy_cached_equals_full_forwards_with_hooks(m64):
    hooks = mean_ablation("mlp1", _mean(m64), model=m64)  # all positions
    at_pos = mean_ablation("attn0", _mean(m64), positions=[3], model=m64)
    fast = generate(m64, PROMPTS, 20, hooks=hooks, prompt_hooks=at_pos)
    slow = generate(m64, PROMPTS, 20, hooks=hooks, prompt_hooks=at_pos, use_cache=False)
    assert torch.equal(fast, slow)
    assert not torch.equal(fast, generate(m64, PROMPTS, 20))  # the hooks do change the text
    assert _tl.attached_hook_count(m64) == 0


def test_hooks_see_the_same_activations_with_and_without_cache(m64):
    seen: list[torch.Tensor] = []

    def grab(x, hook):
        seen.append(x.detach().clone())

    name = "blocks.2.hook_mlp_out"
    new = generate(m64, PROMPTS, 9, hooks=[(name, grab)])
    cached = torch.cat(seen, dim=1)  # prompt pass, then one position per new token
    assert cached.shape[1] == 7 + 8  # the last token is sampled, never run
    full = torch.cat([PROMPTS, new], dim=1)[:, :-1]
    _, cache = _tl.run_with_cache(m64, full, [name])
    assert torch.allclose(cached, cache[name], atol=1e-10, rtol=0)


def test_sampling_is_seeded_and_top_k_1_is_greedy(m64):
    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return generate(m64, PROMPTS, 12, do_sample=True, generator=g, **kw)

    assert torch.equal(run(0, top_k=50), run(0, top_k=50))
    assert not torch.equal(run(0, top_k=50), run(1, top_k=50))
    assert torch.equal(run(5, top_k=1), generate(m64, PROMPTS, 12))
    # same draws, same logits: the cached and uncached samplers agree token for token
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = generate(m64, PROMPTS, 12, do_sample=True, top_k=10, generator=g1)
    b = generate(m64, PROMPTS, 12, do_sample=True, top_k=10, generator=g2, use_cache=False)
    assert torch.equal(a, b)


def test_sample_texts_groups_lengths_and_counts_tokens(m64):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9]]
    df = sample_texts(m64, prompts, SamplingConfig(n_samples=3, max_length=10), progress=False)
    assert len(df) == 12
    assert df.prompt_id.tolist() == [i for i in range(4) for _ in range(3)]
    assert df.tokens.map(len).tolist() == [n for p in prompts for n in [10 - len(p)] * 3]
    again = sample_texts(m64, prompts, SamplingConfig(n_samples=3, max_length=10), progress=False)
    assert df.tokens.tolist() == again.tokens.tolist()
    # greedy samples of one prompt are the greedy continuation
    greedy = sample_texts(m64, [[1, 2, 3]], n_samples=2, max_length=10, do_sample=False,
                          progress=False)
    expect = generate(m64, torch.tensor([[1, 2, 3]]), 7)[0].tolist()
    assert greedy.tokens.tolist() == [expect, expect]


def test_errors_leave_no_hooks(m64, hygiene):
    snap = hygiene.snapshot(m64)
    with pytest.raises(ValueError, match="n_ctx"):
        generate(m64, PROMPTS, 40)

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(m64, PROMPTS, 3, hooks=[("blocks.0.hook_mlp_out", boom)])
    # a position-specific hook passed as a whole-generation hook fails loudly, not silently
    with pytest.raises(ValueError, match="position out of range"):
        generate(m64, PROMPTS, 3, hooks=mean_ablation("mlp0", _mean(m64), positions=[5]))
    with pytest.raises(ValueError, match="max_length"):
        sample_texts(m64, [[1] * 10], n_samples=1, max_length=10, progress=False)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=0)
    with pytest.raises(ValueError, match="exactly one"):
        SamplingConfig(max_length=None)
    hygiene.check(m64, snap)


# -- settings that would sample the wrong distribution, and hooks on absent hook points ----------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"temperature": 0}, "greedy decoding is do_sample=False"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k must be None or an int >= 1, got 0"),
        ({"top_k": 2.5}, "top_k"),
        ({"do_sample": "yes"}, "do_sample must be True or False"),
    ],
)
def test_sampling_settings_are_refused_where_torch_would_accept_them(m64, hygiene, kw, match):
    snap = hygiene.snapshot(m64)
    settings = {"do_sample": True, **kw}
    with pytest.raises(ValueError, match=match):
        generate(m64, PROMPTS, 3, **settings)
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**settings)
    hygiene.check(m64, snap)


def test_a_cold_temperature_is_greedy(m64):
    # the distribution divided by a small positive temperature concentrates on the argmax
    g = torch.Generator().manual_seed(0)
    cold = generate(m64, PROMPTS, 5, do_sample=True, temperature=1e-4, generator=g)
    assert torch.equal(cold, generate(m64, PROMPTS, 5))


@pytest.mark.parametrize("arg", ["hooks", "prompt_hooks"])
def test_a_hook_on_an_absent_hook_point_is_named(m64, hygiene, arg):
    snap = hygiene.snapshot(m64)
    bad = {arg: [("blocks.0.hook_mlp_out", lambda x, hook: x), ("blocks.7.mlp_out", print)]}
    with pytest.raises(ValueError, match=rf"{arg}\[1\] names 'blocks.7.mlp_out', not a hook"):
        generate(m64, PROMPTS, 3, **bad)
    with pytest.raises(ValueError, match=rf"{arg}\[1\] names"):
        sample_texts(m64, [[1, 2]], n_samples=1, max_length=5, progress=False, **bad)
    with pytest.raises(ValueError, match=rf"{arg}\[0\] = .* not callable"):
        generate(m64, PROMPTS, 3, **{arg: [("blocks.0.hook_mlp_out", 3)]})
    with pytest.raises(ValueError, match="one pair"):
        generate(m64, PROMPTS, 3, **{arg: ("blocks.0.hook_mlp_out", print)})
    with pytest.raises(ValueError, match=r"name filter .* matches no hook point"):
        generate(m64, PROMPTS, 3, **{arg: [(lambda n: n.endswith("hook_mlp"), print)]})
    # a name filter, as model.hooks takes it: an identity hook everywhere changes nothing
    ident = [(lambda n: n.endswith("mlp_out"), lambda x, hook: x)]
    assert torch.equal(generate(m64, PROMPTS, 3, **{arg: ident}), generate(m64, PROMPTS, 3))
    hygiene.check(m64, snap)


def test_prompts_and_unknown_settings_are_named(m64):
    with pytest.raises(ValueError, match="prompts must be a tensor of token ids"):
        generate(m64, [[1, 2]], 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer tensor"):
        generate(m64, PROMPTS.bool(), 3)
    with pytest.raises(ValueError, match=r"batch >= 1"):
        generate(m64, PROMPTS[:0], 3)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['n_sample'\]"):
        sample_texts(m64, [[1, 2]], n_sample=2, progress=False)
    with pytest.raises(ValueError, match="config must be a SamplingConfig"):
        sample_texts(m64, [[1, 2]], {"n_samples": 2}, progress=False)  # type: ignore[arg-type]
