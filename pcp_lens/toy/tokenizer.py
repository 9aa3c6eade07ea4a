"""Word-level tokenizer for the toy models, usable as a TransformerLens tokenizer.

The paper retrained a GPT-2 BPE tokenizer on the toy data until every word became one token
(METHODS §1.2), which gives two ids per word (``love`` and ``Ġlove``). Here each word has exactly
one id, so a word means the same token at every position. Text is split on whitespace only
(``WhitespaceSplit``, not ``Whitespace``), so ``can't`` stays one word, exactly as
:func:`check_words` sees it.

Ids: ``<|endoftext|>`` is 0 (bos, eos and pad), then the vocabulary words in sorted order. There
is **no** unknown-word token: the underlying ``tokenizers`` model names ``[UNK]`` as its unknown
token but the vocabulary does not contain it, so encoding an unknown word through the Hugging Face
or TransformerLens API fails with ``Exception: WordLevel error: Missing [UNK] token from the
vocabulary``. Use :func:`check_words` or :func:`encode_words` to get a ``ValueError`` that names
the unknown words instead.

The tokenizer prepends ``<|endoftext|>`` when ``add_special_tokens=True`` (the default), like
TransformerLens' ``prepend_bos=True``; pass ``add_special_tokens=False`` to get the words only.

Examples:
    >>> from pcp_lens.toy.vocab import load_vocab
    >>> tok = build_tokenizer(load_vocab())
    >>> tok.decode(tok("happy love")["input_ids"], skip_special_tokens=True)
    'happy love'
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pcp_lens.toy.vocab import SentimentVocab

__all__ = [
    "EOT",
    "build_tokenizer",
    "check_words",
    "encode_words",
    "load_tokenizer",
    "unknown_words",
]

#: The single special token: bos, eos and pad (as in the paper's GPT-2-derived tokenizer).
EOT = "<|endoftext|>"
#: ``name_or_path`` of a freshly built tokenizer (not a hub id; nothing is ever downloaded).
TOKENIZER_NAME = "pcp_lens-toy-wordlevel"
# Named by the WordLevel model only because it requires a name; deliberately absent from the vocab.
_UNK_NAME = "[UNK]"


def build_tokenizer(
    vocab: SentimentVocab | Iterable[str], model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer for a vocabulary.

    Args:
        vocab: A :class:`~pcp_lens.toy.vocab.SentimentVocab` or any iterable of words (whitespace
            free, not ``<|endoftext|>``). Duplicates are ignored; ids follow sorted order.
        model_max_length: Recorded on the tokenizer (paper: 1024).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``len(tok) == 1 + number of distinct words``. It saves
        and loads with ``save_pretrained``/``PreTrainedTokenizerFast.from_pretrained(path)``.

    Examples:
        >>> tok = build_tokenizer(["love", "happy"])
        >>> tok.get_vocab() == {"<|endoftext|>": 0, "happy": 1, "love": 2}
        True
        >>> tok("happy love")["input_ids"]
        [0, 1, 2]
    """
    words = vocab.words if isinstance(vocab, SentimentVocab) else tuple(vocab)
    bad = [w for w in words if not isinstance(w, str) or w == EOT or w.split() != [w]]
    if bad:
        raise ValueError(
            f"tokenizer words must be non-empty, whitespace-free and not {EOT}: {bad[:10]}"
        )
    ids = {EOT: 0} | {w: i for i, w in enumerate(sorted(set(words)), start=1)}
    if not len(ids) > 1:
        raise ValueError("vocab must contain at least one word")

    core = Tokenizer(models.WordLevel(vocab=ids, unk_token=_UNK_NAME))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Explicit, so that bos-prepending does not depend on the transformers version.
    core.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        # TransformerLens re-downloads any tokenizer that does not declare add_bos_token=True.
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        # TransformerLens reads init_kwargs["name_or_path"] and fails without one.
        name_or_path=TOKENIZER_NAME,
    )


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` from a local directory, offline.

    Prefer this over a bare ``from_pretrained``: ``transformers`` 5 does not save the
    ``add_bos_token`` flag, and without it TransformerLens reloads the tokenizer from its path.

    Examples:
        >>> import tempfile
        >>> tok = build_tokenizer(["happy", "love"])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = tok.save_pretrained(d)
        ...     load_tokenizer(d)("love")["input_ids"]
        [0, 2]
    """
    return PreTrainedTokenizerFast.from_pretrained(
        os.fspath(path), add_bos_token=True, local_files_only=True
    )


def _split(text: str | Iterable[str]) -> list[str]:
    return text.split() if isinstance(text, str) else [w for t in text for w in t.split()]


def unknown_words(tokenizer: PreTrainedTokenizerFast, text: str | Iterable[str]) -> list[str]:
    """Return the distinct whitespace-separated words of ``text`` not in the vocabulary, in order.

    ``<|endoftext|>`` counts as known.

    Examples:
        >>> tok = build_tokenizer(["love"])
        >>> unknown_words(tok, "love lvoe loev lvoe")
        ['lvoe', 'loev']
    """
    known = tokenizer.get_vocab()
    return list(dict.fromkeys(w for w in _split(text) if w not in known))


def check_words(tokenizer: PreTrainedTokenizerFast, text: str | Iterable[str]) -> None:
    """Raise ``ValueError`` naming every word of ``text`` that the tokenizer does not know.

    Examples:
        >>> check_words(build_tokenizer(["love"]), "love hate")
        Traceback (most recent call last):
        ...
        ValueError: 1 word(s) not in the toy vocabulary: ['hate']
    """
    missing = unknown_words(tokenizer, text)
    if missing:
        raise ValueError(f"{len(missing)} word(s) not in the toy vocabulary: {missing[:20]}")


def encode_words(
    tokenizer: PreTrainedTokenizerFast, text: str, *, prepend_bos: bool = False
) -> list[int]:
    """Encode a whitespace-separated string to ids, refusing unknown words.

    Args:
        tokenizer: A tokenizer from :func:`build_tokenizer`.
        text: Words separated by whitespace.
        prepend_bos: Start with the ``<|endoftext|>`` id 0.

    Raises:
        ValueError: Names the unknown words.

    Examples:
        >>> tok = build_tokenizer(["happy", "love"])
        >>> encode_words(tok, "love happy", prepend_bos=True)
        [0, 2, 1]
    """
    check_words(tokenizer, text)
    return list(tokenizer(text, add_special_tokens=prepend_bos)["input_ids"])
