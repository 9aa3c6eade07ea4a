"""The boundary contract of ``pcp_lens.language``: a clear error naming the argument, or a correct
result, over randomised arguments; never a hook left behind or a weight changed."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcp_lens.language._checks import (
    check_device,
    check_dtype,
    check_fraction,
    check_indices,
    check_int,
    check_probabilities,
    check_strings,
)
from pcp_lens.language.asr import text_loss
from pcp_lens.language.corpus import paragraphs, poison
from pcp_lens.language.generate import SamplingConfig, generate
from pcp_lens.testing import tiny_model
from pcp_lens.toy import build_tokenizer
from tests.conftest import Hygiene

TOK = build_tokenizer(["a", "b", "c", "d"])
M = tiny_model(n_layers=2, d_model=16, d_vocab=len(TOK), n_ctx=24, seed=1, dtype=torch.float64)
PROMPTS = torch.randint(0, len(TOK), (3, 5), generator=torch.Generator().manual_seed(0))
SNAP = Hygiene.snapshot(M)
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: values a user might pass anywhere: numbers of every kind, strings, containers, None
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 30),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["", "2", "cpu", [1], (2,)]),
)


def _named(err: ValueError, names: tuple[str, ...]) -> None:
    assert any(n in str(err) for n in names), f"{err} names none of {names}"
    assert "\n" not in str(err).strip()


def _identity(x, hook):
    return x


HOOKS = st.sampled_from(
    [
        [],
        [("blocks.0.hook_mlp_out", _identity)],
        [("blocks.5.hook_mlp_out", _identity)],  # no such layer
        [("blocks.0.hook_mlp_out", 3)],  # not callable
        "blocks.0.hook_mlp_out",
    ]
)


@FEW
@given(
    max_new=ANY | st.integers(1, 25),
    do_sample=ANY | st.booleans(),
    top_k=ANY | st.integers(1, 6),
    temperature=ANY | st.floats(0.05, 3.0),
    hooks=HOOKS,
)
def test_generate_clear_error_or_correct_tokens(max_new, do_sample, top_k, temperature, hooks):
    names = ("max_new_tokens", "do_sample", "top_k", "temperature", "hooks")
    try:
        out = generate(
            M,
            PROMPTS,
            max_new,
            do_sample=do_sample,
            top_k=top_k,
            temperature=temperature,
            hooks=hooks,
            generator=torch.Generator().manual_seed(0),
        )
    except ValueError as e:
        _named(e, names)
    else:
        assert out.shape == (3, max_new)
        full = torch.cat([PROMPTS, out], dim=1)
        with torch.no_grad():
            logits = M(full)[:, PROMPTS.shape[1] - 1 : -1]  # the logits each token was drawn from
        chosen = logits.gather(-1, out[..., None])
        rank = (logits > chosen).sum(-1)  # 0 = the argmax (float64: no ties)
        if not do_sample:
            assert bool((rank == 0).all())
        elif top_k is not None:
            assert bool((rank < top_k).all())
    Hygiene.check(M, SNAP)


TEXTS = ["a b c d a b", "b c", "d d a c b a b c"]


@FEW
@given(max_length=ANY | st.integers(2, 10), batch_size=ANY | st.integers(1, 4))
def test_text_loss_clear_error_or_the_loss_of_the_truncated_texts(max_length, batch_size):
    try:
        got = text_loss(M, TEXTS, tokenizer=TOK, max_length=max_length, batch_size=batch_size)
    except ValueError as e:
        _named(e, ("max_length", "batch_size"))
    else:
        limit = M.cfg.n_ctx if max_length is None else max_length
        cut = [" ".join(t.split()[:limit]) for t in TEXTS]  # one token per word
        assert got == pytest.approx(text_loss(M, cut, tokenizer=TOK, batch_size=1), abs=1e-12)
    Hygiene.check(M, SNAP)


DOC = " ".join(f"Sentence number {i} is here." for i in range(40))


@FEW
@given(n=st.integers(1, 8), rate=ANY | st.floats(-0.5, 1.5), seed=ANY | st.integers(0, 9))
def test_poison_clear_error_or_exactly_the_rounded_share(n, rate, seed):
    ds = paragraphs([DOC], n_sentences=5).select(range(n))
    try:
        out = poison(ds, ["You idiot."], rate, seed=seed)
    except ValueError as e:
        _named(e, ("rate", "seed"))
    else:
        k = sum(out["poisoned"])
        assert k == round(rate * n)
        assert (k > 0) == (rate > 0)  # a positive rate poisons at least one paragraph


@FEW
@given(
    field=st.sampled_from(
        ["n_samples", "max_length", "top_k", "temperature", "seed", "batch_size", "do_sample"]
    ),
    value=ANY,
)
def test_sampling_config_clear_error_or_the_value(field, value):
    try:
        cfg = SamplingConfig(**{field: value})
    except ValueError as e:
        _named(e, (f"SamplingConfig.{field}", "exactly one of max_length"))
    else:
        assert getattr(cfg, field) == value


# -- the helpers themselves --------------------------------------------------------------------


def test_check_int_and_fraction():
    assert check_int(3, "n") == 3 and check_int(None, "n", none=True) is None
    for bad in (True, 0, 2.0, "3"):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            check_int(bad, "n")
    with pytest.raises(ValueError, match=r"n must be an int in 2\.\.5, got 6"):
        check_int(6, "n", 2, high=5)
    assert check_fraction(0, "rate") == 0.0
    for bad in (math.nan, -0.1, 1.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\]"):
            check_fraction(bad, "rate")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        check_fraction(0.0, "fraction", low_open=True)


def test_check_strings_indices_and_probabilities():
    assert check_strings(("a", "b"), "texts") == ["a", "b"]
    assert check_strings(iter(["a"]), "texts") == ["a"]
    with pytest.raises(ValueError, match="got one string"):
        check_strings("ab", "texts")
    with pytest.raises(ValueError, match="texts is empty"):
        check_strings([], "texts")
    with pytest.raises(ValueError, match="got dict"):
        check_strings({"a": 1}, "texts")
    assert check_indices((0, 2), "skip", 3) == {0, 2}
    with pytest.raises(ValueError, match=r"skip must hold indices in 0\.\.2, got \[True\]"):
        check_indices([True], "skip", 3)
    p = check_probabilities(torch.tensor([0.0, 1.0], dtype=torch.float32), 2, "c")
    assert p.dtype == torch.float64 and p.tolist() == [0.0, 1.0]


def test_check_device_and_dtype():
    assert check_device(None) is None and check_device(torch.device("cpu")).type == "cpu"
    for bad in ("cdua", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match=f"device='{bad}' is not a torch device"):
            check_device(bad)
    with pytest.raises(ValueError, match=r"device must be a string or torch\.device, got int"):
        check_device(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    assert check_dtype("bfloat16") is torch.bfloat16 and check_dtype(torch.float64) is torch.float64
    for bad in ("float", torch.int32, 16):
        with pytest.raises(ValueError, match="dtype="):
            check_dtype(bad)
