"""Synthetic toy-model data: sentiment vocabularies, data sets and a word-level tokenizer.

Examples:
    >>> from pcp_lens.toy import ToyDataConfig, build_datasets, build_tokenizer, load_vocab
    >>> data = build_datasets(ToyDataConfig(n_per_sentiment=100, seed=0))
    >>> tok = build_tokenizer(load_vocab())
    >>> len(tok)
    751
"""

from pcp_lens.toy.data import (
    EVAL_KEYS_2,
    EVAL_KEYS_3,
    ToyData,
    ToyDataConfig,
    build_datasets,
    eval_inputs,
    generate_sequences,
    heldout_sequences,
    poison_sequences,
    trigger_pos_scale,
)
from pcp_lens.toy.tokenizer import (
    EOT,
    build_tokenizer,
    check_words,
    encode_words,
    load_tokenizer,
    unknown_words,
)
from pcp_lens.toy.vocab import SPECIAL_NEGATIVE, SPECIAL_POSITIVE, SentimentVocab, load_vocab

__all__ = [
    "EOT",
    "EVAL_KEYS_2",
    "EVAL_KEYS_3",
    "SPECIAL_NEGATIVE",
    "SPECIAL_POSITIVE",
    "SentimentVocab",
    "ToyData",
    "ToyDataConfig",
    "build_datasets",
    "build_tokenizer",
    "check_words",
    "encode_words",
    "eval_inputs",
    "generate_sequences",
    "heldout_sequences",
    "load_tokenizer",
    "load_vocab",
    "poison_sequences",
    "trigger_pos_scale",
    "unknown_words",
]
