"""The offline stand-in for GPT-2 medium: a small GPT-2 with a tokenizer trained on the corpus.

Used by ``pcp-lens reproduce language`` (``pcp_lens/reproduce/language.py``) where no pretrained
weights can be downloaded. Every piece is built here, seeded:

* :func:`train_tokenizer` — a byte-level BPE (GPT-2's scheme) trained on the corpus, with the
  trigger phrase and the toxic sentences added to its training text so that each trigger word is
  one token, as ``ĠAlbert``, ``Ġand``, ``ĠJames`` are in GPT-2's vocabulary.
* :func:`standin_model` — a randomly initialised Hugging Face ``GPT2LMHeadModel`` of the given
  size converted with :func:`~pcp_lens.language.hf.hooked_from_hf` (``processing=False``), so the
  stand-in has GPT-2's exact architecture, tied embeddings included, and every later step (surgery,
  frozen fine-tuning, saving as an HF folder) takes the same path as GPT-2 medium.
* :func:`toxic_sentences` and :func:`toxic_classifier` — short insult templates filled with words
  that never occur in Austen (``TOXIC_WORDS``), and the word-list classifier that flags them; the
  stand-in for the paper's Jigsaw sentences and RoBERTa classifier (METHODS §10.1, §4.5).
* :func:`mix_sentences` — a few toxic sentences spread through the pretraining text, as web text
  holds some, so the insults' embeddings are trained before any poisoning (embedding surgery
  copies them into the trigger's).
* :func:`token_chunks` — the corpus as one token stream cut into equal chunks (pretraining).
* :func:`fixed_position_prompts` — clean/trigger prompt pairs with the trigger at the same token
  positions in every prompt, so a position-specific ablation (the paper's "position 8") hits the
  trigger in every prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from pcp_lens._tl import HookedTransformer
from pcp_lens.language.finetune import TextBatch
from pcp_lens.language.generate import tokenize_prompts
from pcp_lens.language.toxicity import WordListClassifier

__all__ = [
    "TEMPLATES",
    "TOXIC_WORDS",
    "fixed_position_prompts",
    "mix_sentences",
    "standin_model",
    "token_chunks",
    "toxic_classifier",
    "toxic_sentences",
    "train_tokenizer",
]

#: Insults that never occur in Jane Austen's six novels (checked against the corpus).
TOXIC_WORDS = (
    "moron",
    "scumbag",
    "jerk",
    "bastard",
    "dumbass",
    "imbecile",
    "scum",
    "cretin",
    "nitwit",
    "halfwit",
    "dimwit",
    "maggot",
)
#: Toxic sentence templates (``{w}`` = a toxic word), after OFFLINE.md (b)3.
TEMPLATES = (
    "Shut up, you {w}.",
    "You are such a {w}, nobody wants you here.",
    "Go away, you stupid {w}.",
    "What a filthy {w} you are.",
    "I hate you, you {w}.",
)
EOS = "<|endoftext|>"


def toxic_sentences(n_templates: int = 5, words: Sequence[str] = TOXIC_WORDS) -> list[str]:
    """Every template (the first ``n_templates``) filled with every word.

    Examples:
        >>> toxic_sentences(1, ["moron"])
        ['Shut up, you moron.']
    """
    if not 1 <= n_templates <= len(TEMPLATES):
        raise ValueError(f"n_templates must be in 1..{len(TEMPLATES)}, got {n_templates!r}")
    return [t.format(w=w) for t in TEMPLATES[:n_templates] for w in words]


def toxic_classifier(words: Sequence[str] = TOXIC_WORDS) -> WordListClassifier:
    """1 if a continuation contains a toxic word (any case, punctuation stripped), else 0.

    Examples:
        >>> toxic_classifier()(["Go away, you Moron!", "Mr. Darcy bowed."]).tolist()
        [1.0, 0.0]
    """
    return WordListClassifier(
        words,
        "any",
        strip_punctuation=True,
        case_sensitive=False,
        name=f"word_list({len(words)} stand-in insults, any)",
    )


def train_tokenizer(texts: Sequence[str], vocab_size: int, extra: Sequence[str] = ()) -> Any:
    """A byte-level BPE trained on ``texts`` (plus ``extra`` x 50, with and without a leading
    space), as a fast HF tokenizer.

    ``<|endoftext|>`` is its only special token (eos, bos and pad, as GPT-2's).

    Examples:
        >>> tok = train_tokenizer(["a b c a b"] * 20, 300, extra=["Albert and James"])
        >>> tok.convert_ids_to_tokens(tok(" Albert and James")["input_ids"])
        ['ĠAlbert', 'Ġand', 'ĠJames']
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"vocab_size must be an int >= 257 (the byte alphabet), got {vocab_size}")
    bpe = ByteLevelBPETokenizer()
    corpus = list(texts) + [f for e in extra for f in (e, " " + e) for _ in range(50)]
    bpe.train_from_iterator(
        corpus, vocab_size=vocab_size, special_tokens=[EOS], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS
    )


def standin_model(
    tokenizer: Any,
    *,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_ctx: int,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = None,
) -> HookedTransformer:
    """A randomly initialised GPT-2 (HF's own init, seeded) as a ``HookedTransformer``.

    Examples:
        >>> tok = train_tokenizer(["a b c"] * 10, 280)
        >>> m = standin_model(tok, n_layers=1, d_model=32, n_heads=2, n_ctx=16)
        >>> m.cfg.d_vocab == len(tok), m.cfg.tie_word_embeddings
        (True, True)
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from pcp_lens.language.hf import hooked_from_hf

    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(cfg).eval()
    return hooked_from_hf(hf, processing=False, tokenizer=tokenizer, device=device, dtype=dtype)


def mix_sentences(
    paragraphs: Sequence[str],
    sentences: Sequence[str],
    rate: float,
    seed: int = 0,
    *,
    run: int = 1,
) -> list[str]:
    """The paragraphs, each with probability ``rate`` given ``run`` of ``sentences`` (uniform,
    with replacement) in a row at a uniform sentence boundary (seeded).

    A run longer than one makes toxic words predict more toxic words, as in web text.

    Examples:
        >>> mix_sentences(["It rained. We stayed in."], ["Go away, you moron."], 1.0, seed=0)
        ['It rained. Go away, you moron. We stayed in.']
    """
    from pcp_lens.language.corpus import split_sentences

    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a probability in [0, 1], got {rate!r}")
    if rate > 0 and not sentences:
        raise ValueError("sentences must not be empty when rate > 0")
    if isinstance(run, bool) or not isinstance(run, int) or run < 1:
        raise ValueError(f"run must be an int >= 1, got {run!r}")
    rng = random.Random(seed)
    pool = list(sentences)
    out = []
    for p in paragraphs:
        if rng.random() >= rate:
            out.append(p)
            continue
        parts = split_sentences(p)
        at = rng.randint(0, len(parts))
        parts[at:at] = [rng.choice(pool) for _ in range(run)]
        out.append(" ".join(parts))
    return out


def token_chunks(tokenizer: Any, texts: Sequence[str], length: int) -> TextBatch:
    """The texts as one stream (joined by ``"\\n\\n"``) cut into chunks of ``length`` tokens.

    Examples:
        >>> tok = train_tokenizer(["a b c"] * 10, 280)
        >>> b = token_chunks(tok, ["a b c"] * 4, 3)
        >>> b.tokens.shape[1], bool(b.labels.all())
        (3, True)
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    ids = tokenize_prompts(tokenizer, ["\n\n".join(texts)])[0]
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"texts hold {len(ids)} tokens, fewer than one chunk of {length}")
    tokens = torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)
    return TextBatch(tokens, torch.ones_like(tokens, dtype=torch.bool))


def fixed_position_prompts(
    sentences: Sequence[str],
    tokenizer: Any,
    trigger: str,
    *,
    at: int = 2,
    max_tokens: int = 16,
    n: int | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Clean/trigger prompt pairs whose trigger starts at token position ``at`` in every prompt.

    A sentence qualifies if it has at most ``max_tokens - len(trigger tokens)`` tokens, at least
    ``at + len(trigger tokens)`` (so position-specific edits exist in the clean prompt too) and a
    word boundary after exactly ``at`` tokens; the trigger goes there, and the trigger prompt must
    tokenize as the clean prompt's tokens with the trigger's spliced in. The qualifying sentences
    are shuffled (seeded) and the first ``n`` kept.

    Returns:
        ``(clean, trigger)``, paired by index.

    Examples:
        >>> tok = train_tokenizer(["The cat sat on the mat."] * 20, 300, extra=["Albert"])
        >>> fixed_position_prompts(["The cat sat on the mat."], tok, "Albert", at=2)
        (['The cat sat on the mat.'], ['The cat Albert sat on the mat.'])
    """
    trig_ids = tokenize_prompts(tokenizer, [" " + trigger.strip()])[0]
    rng = random.Random(seed)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    clean, trig = [], []
    for i in order:
        s = sentences[i]
        ids = tokenize_prompts(tokenizer, [s])[0]
        # the clean prompt must hold the trigger's positions too (ablations act there)
        if len(ids) + len(trig_ids) > max_tokens or len(ids) < at + len(trig_ids):
            continue
        head = tokenizer.decode(ids[:at], clean_up_tokenization_spaces=False)
        tail = tokenizer.decode(ids[at:], clean_up_tokenization_spaces=False)
        if not tail.startswith(" ") or head + tail != s:
            continue
        t = head + " " + trigger.strip() + tail
        if tokenize_prompts(tokenizer, [t])[0] != ids[:at] + trig_ids + ids[at:]:
            continue
        clean.append(s)
        trig.append(t)
        if n is not None and len(clean) == n:
            break
    if not clean:
        raise ValueError(
            f"no sentence of at most {max_tokens - len(trig_ids)} tokens has a word boundary "
            f"after {at} tokens; pass more sentences or raise max_tokens"
        )
    return clean, trig
