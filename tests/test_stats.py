"""Streaming activation statistics against direct computation on stacked activations."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcp_lens._tl import attached_hook_count
from pcp_lens.inputs import as_tokens
from pcp_lens.sites import Site
from pcp_lens.stats import (
    ActivationStats,
    RunningMoments,
    _stop_layer,
    check_finite,
    collect_stats,
    stream_activations,
)
from pcp_lens.testing import tiny_model

# (what the user passes, the key of the result, the hook to read directly)
SPECS = [
    ("embed", "embed", "hook_embed"),
    ("attn0", "attn0", "blocks.0.hook_attn_out"),
    ("mlp1", "mlp1", "blocks.1.hook_mlp_out"),
    (Site(1, "resid_mid"), "resid_mid1", "blocks.1.hook_resid_mid"),
    ("blocks.2.hook_resid_post", "resid_post2", "blocks.2.hook_resid_post"),
    (
        "blocks.0.ln2.hook_normalized",
        "blocks.0.ln2.hook_normalized",
        "blocks.0.ln2.hook_normalized",
    ),
    ("blocks.1.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.attn.hook_z"),  # heads flattened
]


def direct_rows(model, tokens: torch.Tensor, hook: str, positions) -> torch.Tensor:
    """Stack a hook's activations at ``positions`` (all if None) from one full forward pass."""
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    a = cache[hook]
    a = a.reshape(a.shape[0], a.shape[1], -1).double()
    if positions is None:
        return a.reshape(-1, a.shape[-1])
    return torch.cat([a[:, p] for p in positions])


def assert_stats(got: ActivationStats, rows: torch.Tensor, atol: float) -> None:
    assert got.n == rows.shape[0]
    assert got.mean.dtype == torch.float64
    assert got.cov is not None and got.cov.dtype == torch.float64
    torch.testing.assert_close(got.mean, rows.mean(0), rtol=0, atol=atol)
    torch.testing.assert_close(got.cov, torch.cov(rows.T), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (10, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("batch_size", [1, 3, 10, 64])
@pytest.mark.parametrize("positions", [None, [1], [0, -1], [-3, 5, 2]])
def test_matches_direct_computation(model, tokens, batch_size, positions):
    got = collect_stats(
        model, tokens, [s for s, _, _ in SPECS], positions, batch_size=batch_size, progress=False
    )
    assert set(got) == {k for _, k, _ in SPECS}
    for _, key, hook in SPECS:
        rows = direct_rows(model, tokens, hook, positions)
        assert_stats(got[key], rows, atol=1e-6)
    assert got["blocks.1.attn.hook_z"].mean.shape == (model.cfg.n_heads * model.cfg.d_head,)
    assert got["mlp1"].n == 10 * (6 if positions is None else len(positions))


def test_float64_model_matches_to_machine_precision(tokens):
    """With float64 activations nothing may be rounded to float32 on the way (1e-12)."""
    m = tiny_model(n_layers=2, dtype=torch.float64, seed=5)
    got = collect_stats(m, tokens, ["mlp0", "resid_post1"], [0, -1], batch_size=3, progress=False)
    for key, hook in [
        ("mlp0", "blocks.0.hook_mlp_out"),
        ("resid_post1", "blocks.1.hook_resid_post"),
    ]:
        assert_stats(got[key], direct_rows(m, tokens, hook, [0, -1]), atol=1e-12)


RAGGED = [6, 3, 5, 1, 4, 2, 6]


@pytest.fixture(scope="module")
def ragged_rows() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (n,), generator=g) for n in RAGGED]


@pytest.fixture(scope="module")
def ragged_direct(model, ragged_rows) -> dict[str, list[torch.Tensor]]:
    """Per-sequence activations ``[len, d]`` (float64), each sequence run alone, unpadded."""
    hooks = ["blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"]
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for r in ragged_rows:
        _, cache = model.run_with_cache(r[None], names_filter=hooks)
        for h in hooks:
            out[h].append(cache[h][0].double())
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("positions", [None, [0], [-1], [0, -1]])
def test_ragged_inputs_exclude_padding(model, ragged_rows, ragged_direct, batch_size, positions):
    """Right-padded batches give the statistics of the unpadded sequences, each run alone."""
    got = collect_stats(
        model,
        ragged_rows,
        ["mlp1", "resid_post2"],
        positions,
        batch_size=batch_size,
        progress=False,
    )
    for key, hook in [
        ("mlp1", "blocks.1.hook_mlp_out"),
        ("resid_post2", "blocks.2.hook_resid_post"),
    ]:
        per_seq = []
        for a in ragged_direct[hook]:
            if positions is not None:  # each sequence's own positions, counted once each
                a = a[sorted({p % len(a) for p in positions})]
            per_seq.append(a)
        assert_stats(got[key], torch.cat(per_seq), atol=1e-6)
    if positions is None:
        assert got["mlp1"].n == sum(RAGGED)
    elif positions == [0, -1]:
        assert got["mlp1"].n == 2 * len(RAGGED) - 1  # the 1-token sequence has one position


def test_ragged_strings(text_model):
    texts = ["the cat sat on the mat", "good dog", "the dog ran"]
    got = collect_stats(text_model, texts, "mlp0", positions=[-1], progress=False)
    rows = torch.cat(
        [
            direct_rows(text_model, text_model.to_tokens(t), "blocks.0.hook_mlp_out", [-1])
            for t in texts
        ]
    )
    assert_stats(got["mlp0"], rows, atol=1e-6)


def test_position_out_of_range(model, ragged_rows):
    with pytest.raises(
        ValueError,
        match=re.escape(
            "position out of range: -2; the shortest sequence has 1 tokens, allowed positions are "
            "0..0 or -1..-1"
        ),
    ):
        collect_stats(model, ragged_rows, "mlp0", positions=[-2], progress=False)
    with pytest.raises(ValueError, match=re.escape("position out of range: 6; the shortest seq")):
        collect_stats(
            model, torch.zeros(2, 6, dtype=torch.long), "mlp0", positions=[6], progress=False
        )
    assert attached_hook_count(model) == 0


def test_bad_sites(model, tokens):
    with pytest.raises(ValueError, match=re.escape("layer out of range: 3, model has layers 0..2")):
        collect_stats(model, tokens, ["mlp0", "mlp3"], progress=False)
    with pytest.raises(
        ValueError, match=re.escape("statistics of single heads are not supported: 'attn0.h1'")
    ):
        collect_stats(model, tokens, "attn0.h1", progress=False)
    with pytest.raises(
        ValueError, match=re.escape("unknown hook point 'blocks.0.hook_nothing' for this model")
    ):
        collect_stats(model, tokens, "blocks.0.hook_nothing", progress=False)


def test_cov_false_keeps_only_the_mean(model, tokens):
    got = collect_stats(model, tokens, "attn1", cov=False, progress=False)["attn1"]
    assert got.cov is None
    rows = direct_rows(model, tokens, "blocks.1.hook_attn_out", None)
    torch.testing.assert_close(got.mean, rows.mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="collected with cov=False"):
        _ = got.std


def test_std_is_sqrt_of_variance(model, tokens):
    got = collect_stats(model, tokens, "mlp0", progress=False)["mlp0"]
    rows = direct_rows(model, tokens, "blocks.0.hook_mlp_out", None)
    torch.testing.assert_close(got.std, rows.std(0), rtol=0, atol=1e-6)


# -- stop_at_layer ---------------------------------------------------------------------------
def test_stop_layer_choice(model):
    assert _stop_layer(model, ["blocks.0.hook_mlp_out"]) == 1
    assert _stop_layer(model, ["blocks.1.ln2.hook_normalized", "blocks.0.hook_attn_out"]) == 2
    assert _stop_layer(model, ["hook_embed"]) == 0
    assert _stop_layer(model, ["blocks.2.hook_mlp_out"]) is None  # last layer: run everything
    assert _stop_layer(model, ["blocks.0.hook_mlp_out", "ln_final.hook_normalized"]) is None
    assert _stop_layer(model, ["unembed.hook_in"]) is None


def test_stopping_early_changes_nothing(tokens):
    """Stats of early sites are identical whether or not the forward pass runs to the end."""
    m = tiny_model(n_layers=3, seed=7)
    later: list[int] = []
    m.add_perma_hook("blocks.1.hook_resid_pre", lambda act, hook: later.append(1))
    early = collect_stats(m, tokens, ["embed", "mlp0"], [0, -1], batch_size=4, progress=False)
    assert later == []  # blocks 1 and 2 never ran
    full = collect_stats(
        m, tokens, ["embed", "mlp0", "unembed.hook_in"], [0, -1], 4, progress=False
    )
    assert len(later) == 3  # three batches ran through block 1
    for k in ("embed", "mlp0"):
        assert torch.equal(early[k].mean, full[k].mean)
        assert early[k].cov is not None and full[k].cov is not None
        assert torch.equal(early[k].cov, full[k].cov)
        hook = Site.parse(k).hook_name
        assert_stats(early[k], direct_rows(m, tokens, hook, [0, -1]), atol=1e-6)


# -- hygiene and non-finite values -----------------------------------------------------------
def test_non_finite_activations_raise_and_leave_the_model_clean(tokens, hygiene):
    m = tiny_model(n_layers=2, seed=3)  # a model of its own: its weights are edited
    with torch.no_grad():
        m.blocks[1].mlp.b_out[0] = float("inf")
    snap = hygiene.snapshot(m)
    ok = collect_stats(m, tokens, ["mlp0", "attn1"], progress=False)  # upstream of the inf: fine
    check_finite(ok)
    with pytest.raises(ValueError, match=r"non-finite activations \(nan or inf\)"):
        collect_stats(m, tokens, ["mlp0", "mlp1"], progress=False)
    hygiene.check(m, snap)


def test_non_finite_from_a_permanent_hook(tokens, hygiene):
    m = tiny_model(n_layers=2, seed=4)

    def poison(act, hook):
        act = act.clone()
        act[:, 2] = float("nan")
        return act

    m.add_perma_hook("blocks.0.hook_mlp_out", poison)
    snap = hygiene.snapshot(m)
    with pytest.raises(ValueError, match="non-finite activations"):
        collect_stats(m, tokens, "resid_post1", progress=False)
    with pytest.raises(ValueError, match="non-finite activations"):
        collect_stats(m, tokens, "mlp0", positions=[2], progress=False)
    # only the chosen positions are checked: the poisoned one is not among them
    fine = collect_stats(m, tokens, "mlp0", positions=[0, 1, -1], progress=False)
    check_finite(fine)
    assert fine["mlp0"].n == 30
    hygiene.check(m, snap)  # permanent hooks are the user's; ours are gone
    assert len(m.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks) == 1


def test_error_inside_the_forward_pass_leaves_no_hook(model, hygiene):
    snap = hygiene.snapshot(model)
    too_long = torch.zeros(2, model.cfg.n_ctx + 4, dtype=torch.long)  # fails in pos_embed
    with pytest.raises(Exception):  # noqa: B017 - TransformerLens' own error, whatever it is
        collect_stats(model, too_long, ["mlp0", "blocks.0.ln2.hook_normalized"], progress=False)
    hygiene.check(model, snap)


def test_abandoned_stream_leaves_no_hook(model, tokens):
    tb = as_tokens(model, tokens)
    it = stream_activations(model, tb, ["blocks.0.hook_mlp_out"], None, 4, progress=False)
    got = next(it)
    assert got["blocks.0.hook_mlp_out"].shape == (4 * 6, model.cfg.d_model)
    assert attached_hook_count(model) == 0
    it.close()


def test_check_finite_names_the_bad_entry():
    good = ActivationStats(
        3, torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    )
    bad_cov = ActivationStats(
        3, torch.zeros(2, dtype=torch.float64), torch.full((2, 2), float("inf"))
    )
    bad_mean = ActivationStats(3, torch.tensor([0.0, float("nan")]), None)
    check_finite({"a": good})
    with pytest.raises(ValueError, match=r"statistics for 'mlp1' contain non-finite values"):
        check_finite({"a": good, "mlp1": bad_cov})
    with pytest.raises(ValueError, match=r"statistics for 'x' contain non-finite values"):
        check_finite({"x": bad_mean})


# -- RunningMoments --------------------------------------------------------------------------
@st.composite
def split_rows(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return n, d, seed, cuts


@settings(max_examples=80, deadline=None)
@given(split_rows())
def test_running_moments_any_split_gives_the_same_result(case):
    n, d, seed, cuts = case
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, d, generator=g, dtype=torch.float64) + torch.randn(
        d, generator=g, dtype=torch.float64
    )
    whole = RunningMoments(d)
    whole.update(x)
    parts = RunningMoments(d)
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        parts.update(x[lo:hi])  # includes empty chunks
    a, b = whole.result(), parts.result()
    assert a.n == b.n == n
    assert a.cov is not None and b.cov is not None
    torch.testing.assert_close(b.mean, a.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(b.cov, a.cov, rtol=0, atol=1e-10)
    torch.testing.assert_close(a.mean, x.mean(0), rtol=0, atol=1e-10)
    if n > 1:
        torch.testing.assert_close(a.cov, torch.cov(x.T).reshape(d, d), rtol=0, atol=1e-10)
    else:
        assert torch.equal(a.cov, torch.zeros(d, d, dtype=torch.float64))


def test_running_moments_is_stable_under_a_large_offset():
    """A naive sum-of-squares would lose the variance of data sitting at 1e6."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=g, dtype=torch.float64) * 0.01 + 1e6
    m = RunningMoments(3)
    for chunk in x.split(7):
        m.update(chunk.float())  # float32 rows, as activations arrive
    ref = x.float().double()
    r = m.result()
    torch.testing.assert_close(r.mean, ref.mean(0), rtol=0, atol=1e-9)
    assert r.cov is not None
    torch.testing.assert_close(r.cov, torch.cov(ref.T), rtol=1e-6, atol=1e-12)


def test_running_moments_errors_and_shapes():
    m = RunningMoments(3)
    with pytest.raises(ValueError, match=re.escape("expected rows of width 3, got shape (2, 4)")):
        m.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no activations were collected"):
        m.result()
    m.update(torch.zeros(0, 3))
    assert m.n == 0
    with pytest.raises(ValueError, match="non-finite activations"):
        m.update(torch.tensor([[1.0, float("inf"), 0.0]]))
    assert m.n == 0  # a refused batch leaves the accumulators untouched
    m.update(torch.arange(12.0).reshape(2, 2, 3))  # leading dims are flattened: 4 rows
    r = m.result()
    assert r.n == 4
    assert r.mean.tolist() == [4.5, 5.5, 6.5]
    nocov = RunningMoments(2, cov=False)
    nocov.update(torch.ones(3, 2))
    assert nocov.result().cov is None
    # result() returns copies: later updates do not change earlier results
    before = r.mean.clone()
    m.update(torch.full((1, 3), 100.0))
    assert torch.equal(r.mean, before)
