"""Turning strings and token tensors into checked batches."""

from __future__ import annotations

import re

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.inputs import TokenBatch, as_tokens, check_same_shape
from pcp_lens.testing import tiny_model


def test_strings_are_tokenized_with_bos(text_model):
    tb = as_tokens(text_model, ["the cat sat", "the dog ran"])
    assert tb.tokens.tolist() == [[0, 1, 2, 3], [0, 1, 10, 11]]
    assert tb.tokens.dtype == torch.long
    assert bool(tb.mask.all())
    assert not tb.ragged
    one = as_tokens(text_model, "the cat")
    assert one.tokens.tolist() == [[0, 1, 2]]
    assert as_tokens(text_model, "the cat", prepend_bos=False).tokens.tolist() == [[1, 2]]


@pytest.mark.parametrize("bad", [None, 3, 2.5, {1, 2}])
def test_inputs_of_no_allowed_type_are_named(model, bad):
    with pytest.raises(
        ValueError,
        match=re.escape(
            "inputs must be a token tensor [batch, pos], a string or a list of strings or of 1-d "
            f"token tensors, got {type(bad).__name__}"
        ),
    ):
        as_tokens(model, bad)


def test_strings_the_tokenizer_cannot_encode_are_named():
    from pcp_lens.toy.tokenizer import build_tokenizer

    tok = build_tokenizer(["good", "bad"])
    m = tiny_model(d_vocab=len(tok))
    _tl.attach_tokenizer(m, tok)
    with pytest.raises(
        ValueError, match=re.escape("inputs[1] = 'bad zebra' cannot be tokenized by the model's")
    ):
        as_tokens(m, ["good bad", "bad zebra"])


def test_strings_and_tensors_give_the_same_batch(text_model):
    from_text = as_tokens(text_model, ["good dog", "bad cat"])
    from_tensor = as_tokens(text_model, torch.tensor([[0, 6, 10], [0, 8, 2]]))
    from_rows = as_tokens(text_model, [torch.tensor([0, 6, 10]), torch.tensor([0, 8, 2])])
    for tb in (from_tensor, from_rows):
        assert torch.equal(tb.tokens, from_text.tokens)
        assert torch.equal(tb.mask, from_text.mask)


def test_tensor_inputs(model):
    t = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int32)
    tb = as_tokens(model, t)
    assert tb.tokens.dtype == torch.long
    assert tb.tokens.tolist() == t.tolist()
    assert tb.mask.shape == (2, 3) and bool(tb.mask.all())
    assert as_tokens(model, torch.tensor([7, 8])).tokens.tolist() == [[7, 8]]  # 1-d = one row
    # the caller's tensor is never modified or aliased (also when no dtype cast is needed)
    tb.tokens[0, 0] = 49
    assert t[0, 0] == 1
    t64 = torch.tensor([[1, 2, 3]])
    tb64 = as_tokens(model, t64, allow_ragged=True)
    assert not tb64.ragged and tb64.mask.dtype == torch.bool
    tb64.tokens[0, 0] = 49
    assert t64[0, 0] == 1


def test_ragged_is_refused_by_default_with_a_clear_message(text_model, model):
    with pytest.raises(ValueError) as e:
        as_tokens(text_model, ["the cat", "the cat sat on the mat"], name="prompts")
    msg = str(e.value)
    assert msg.startswith("prompts have unequal lengths [3, 7] (in tokens)")
    assert "pass sequences of equal length" in msg
    with pytest.raises(ValueError, match=re.escape("inputs have unequal lengths [1, 2, 3]")):
        as_tokens(model, [torch.tensor([1, 2, 3]), torch.tensor([1]), torch.tensor([4, 5])])


def test_ragged_allowed_right_pads_and_masks(model, text_model):
    rows = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    tb = as_tokens(model, rows, allow_ragged=True)
    assert tb.ragged
    assert tb.tokens.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert tb.mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert tb.mask.sum(1).tolist() == [3, 1, 2]
    tt = as_tokens(text_model, ["the cat sat on", "dog"], allow_ragged=True)
    assert tt.tokens.tolist() == [[0, 1, 2, 3, 4], [0, 10, 0, 0, 0]]
    assert tt.mask.sum(1).tolist() == [5, 2]


def test_token_ids_out_of_range(model):
    with pytest.raises(
        ValueError,
        match=re.escape(
            "inputs contain token ids out of range: [50, 77]; allowed 0..49 (d_vocab=50)"
        ),
    ):
        as_tokens(model, torch.tensor([[1, 50], [77, 50]]))
    with pytest.raises(ValueError, match=re.escape("token ids out of range: [-1]")):
        as_tokens(model, torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match=re.escape("clean contain token ids out of range: [60]")):
        as_tokens(
            model, [torch.tensor([1, 2]), torch.tensor([60])], allow_ragged=True, name="clean"
        )
    assert as_tokens(model, torch.tensor([[0, 49]])).tokens.tolist() == [[0, 49]]


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[0.5]], dtype=torch.float16),
        torch.zeros(1, 2, 3, dtype=torch.long),
        torch.tensor([[True, False]]),  # not token ids 1 and 0
        [torch.tensor([True, False])],
    ],
)
def test_float_bool_or_wrong_rank_tensor(model, bad):
    with pytest.raises(
        ValueError,
        match=r"inputs(\[0\])? must be an integer tensor (of token ids )?\[batch, pos\], got ",
    ):
        as_tokens(model, bad)


def test_other_bad_inputs(model, text_model):
    with pytest.raises(ValueError, match="inputs is empty"):
        as_tokens(model, [])
    with pytest.raises(ValueError, match="inputs is empty"):
        as_tokens(model, torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs contains an empty sequence"):
        as_tokens(model, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs contains an empty sequence"):
        as_tokens(model, [torch.tensor([1]), torch.tensor([], dtype=torch.long)], allow_ragged=True)
    with pytest.raises(ValueError, match="must be strings or token tensors, not a mix"):
        as_tokens(text_model, ["the cat", torch.tensor([1, 2])])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="are strings but the model has no tokenizer; pass tokens"):
        as_tokens(model, ["the cat"])


@pytest.mark.skipif(_tl.BACKEND == "bridge", reason="TransformerLens 4 cannot boot on meta")
def test_device_follows_the_model():
    meta = tiny_model(n_layers=1, device="meta")
    tb = as_tokens(meta, torch.tensor([[1, 2, 3]]))
    assert tb.tokens.device.type == "meta"
    assert tb.mask.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_follows_the_model_cuda():  # pragma: no cover - GPU machines only
    m = tiny_model(n_layers=1, device="cuda")
    tb = as_tokens(m, torch.tensor([[1, 2, 3]]))
    assert tb.tokens.is_cuda and tb.mask.is_cuda


def test_batches_split_rows_in_order(model):
    tb = as_tokens(model, [torch.arange(i + 1) for i in range(7)], allow_ragged=True)
    parts = list(tb.batches(3))
    assert [p.tokens.shape[0] for p in parts] == [3, 3, 1]
    assert torch.equal(torch.cat([p.tokens for p in parts]), tb.tokens)
    assert torch.equal(torch.cat([p.mask for p in parts]), tb.mask)
    assert [p.tokens.shape[0] for p in tb.batches(100)] == [7]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be an int >= 1, got {bad}"):
            list(tb.batches(bad))


def test_check_same_shape():
    a = TokenBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    b = TokenBatch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    check_same_shape(a, a, ("clean", "corrupted"))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "clean and corrupted must have the same shape [batch, pos], got (2, 3) and (2, 4)"
        ),
    ):
        check_same_shape(a, b, ("clean", "corrupted"))
