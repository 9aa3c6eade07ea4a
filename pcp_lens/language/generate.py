"""Batched, seeded sampling with a KV cache on a ``HookedTransformer``, with hooks active.

Our own decoding loop, not TransformerLens's ``generate`` (whose KV cache misplaces learned
positions in 3.9, see docs/concepts.md): the prompt is run once and each new token is run alone
behind the cached keys and values, at its true position. Prompts in one batch have equal token
length (:func:`sample_texts` groups prompts by length), so there is no padding to get wrong.

**Hooks under a cache.** ``hooks`` stay attached for the whole generation. In the first forward
pass they see the prompt's positions ``[batch, prompt_len, ...]``; in every later pass only the new
token, ``[batch, 1, ...]`` at absolute position ``prompt_len + i``. A hook that treats every
position alike (mean ablation at all positions, PCP, steering, reading activations) therefore
computes exactly what it computes on full forward passes: earlier positions' activations do not
change when tokens are appended (causal attention), and their effect reaches later tokens through
the cached keys and values. (The final LayerNorm and the unembedding run on the last position only,
in both modes: their hooks see one position per pass.) A *position-specific* hook (e.g. mean
ablation at position 8) indexes the tensor it is given, which during decoding holds one position:
pass such hooks as ``prompt_hooks``, which are attached only while the prompt is processed. For
positions inside the prompt this is exactly what full forward passes with the hook attached at
every step compute (``use_cache=False`` does that, and the tests compare the two token for token).

**Settings (METHODS §4.5).** The paper's ASR decodes 35 tokens in total (prompt included) with
top-k 50 sampling at temperature 1, 11 samples per prompt: :data:`PAPER_SAMPLING`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from pcp_lens import _tl
from pcp_lens._tl import HookedTransformer
from pcp_lens.inputs import check_token_dtype
from pcp_lens.language._checks import check_int, check_strings, is_int, with_overrides

__all__ = ["PAPER_SAMPLING", "SamplingConfig", "generate", "sample_texts", "tokenize_prompts"]

Hooks = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample continuations (defaults: the paper's ASR settings, METHODS §4.5).

    Attributes:
        n_samples: Continuations per prompt.
        max_length: Total tokens per sequence, prompt included (the paper's ``max_length=35``);
            set ``None`` to use ``max_new_tokens`` instead.
        max_new_tokens: New tokens per prompt (only when ``max_length`` is ``None``).
        do_sample: Sample (``True``) or decode greedily.
        top_k: Keep the ``top_k`` likeliest tokens before sampling (``None``: all).
        temperature: Divide logits by this before sampling.
        seed: Seed of the sampling generator.
        batch_size: Sequences per forward pass (prompts × samples are split into such chunks).
        stop_at_eos: Cut each continuation at its first end-of-text token (HF ``generate`` stops
            a row there and pads it with the same id).

    Examples:
        >>> SamplingConfig().n_samples, SamplingConfig().top_k
        (11, 50)
        >>> SamplingConfig(top_k=0)
        Traceback (most recent call last):
        ...
        ValueError: SamplingConfig.top_k must be None or an int >= 1, got 0
    """

    n_samples: int = 11
    max_length: int | None = 35
    max_new_tokens: int | None = None
    do_sample: bool = True
    top_k: int | None = 50
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 64
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        for name in ("n_samples", "batch_size"):
            check_int(getattr(self, name), f"SamplingConfig.{name}")
        for name in ("max_length", "max_new_tokens"):
            check_int(getattr(self, name), f"SamplingConfig.{name}", none=True)
        if (self.max_length is None) == (self.max_new_tokens is None):
            raise ValueError(
                "SamplingConfig needs exactly one of max_length (total tokens) and "
                f"max_new_tokens, got max_length={self.max_length!r}, "
                f"max_new_tokens={self.max_new_tokens!r}"
            )
        check_sampling(self.do_sample, self.top_k, self.temperature, "SamplingConfig.")
        check_int(self.seed, "SamplingConfig.seed", 0)
        if not isinstance(self.stop_at_eos, bool):
            raise ValueError(
                f"SamplingConfig.stop_at_eos must be True or False, got {self.stop_at_eos!r}"
            )

    def new_tokens(self, prompt_len: int) -> int:
        """Number of tokens to generate after a prompt of ``prompt_len`` tokens."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        assert self.max_length is not None
        return self.max_length - prompt_len


def check_sampling(do_sample: Any, top_k: Any, temperature: Any, prefix: str = "") -> None:
    """Refuse sampling settings that would fail inside torch or sample the wrong distribution.

    A negative temperature inverts the distribution (the least likely token becomes the
    likeliest) and 0 divides by zero; greedy decoding is ``do_sample=False``, not a temperature.

    Examples:
        >>> check_sampling(True, 50, -1.0)
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number > 0 (greedy decoding is ...), got -1.0
    """
    if not isinstance(do_sample, bool):
        raise ValueError(f"{prefix}do_sample must be True or False, got {do_sample!r}")
    check_int(top_k, f"{prefix}top_k", none=True)
    t = temperature
    if isinstance(t, bool) or not isinstance(t, int | float) or not (t > 0 and math.isfinite(t)):
        raise ValueError(
            f"{prefix}temperature must be a finite number > 0 (greedy decoding is "
            f"do_sample=False), got {t!r}"
        )


#: METHODS §4.5: 11 samples, 35 tokens in total, top-k 50, temperature 1.
PAPER_SAMPLING = SamplingConfig()


def _next_token(
    logits: Float[Tensor, "batch d_vocab"],
    do_sample: bool,
    top_k: int | None,
    temperature: float,
    gen: torch.Generator | None,
) -> Int[Tensor, " batch"]:
    if not do_sample:
        return logits.argmax(-1)
    x = logits.float() / temperature
    if top_k is not None and top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, -math.inf)
    return torch.multinomial(x.softmax(-1), 1, generator=gen)[:, 0]


@torch.no_grad()
def generate(
    model: HookedTransformer,
    prompts: Int[Tensor, "batch prompt_len"],
    max_new_tokens: int,
    *,
    hooks: Hooks = (),
    prompt_hooks: Hooks = (),
    do_sample: bool = False,
    top_k: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Int[Tensor, "batch new"]:
    """Generate ``max_new_tokens`` tokens after equal-length prompts; return only the new tokens.

    Args:
        model: the model (never modified; hooks are removed afterwards, also after an error).
        prompts: ``[batch, prompt_len]`` token ids, no padding.
        max_new_tokens: tokens to generate per row.
        hooks: forward hooks active during the whole generation (see the module docstring).
        prompt_hooks: forward hooks active only while the prompt is processed (position-specific
            edits at prompt positions); with ``use_cache=False`` they are active in every pass.
        do_sample: sample (``True``) or take the argmax (greedy).
        top_k: sample among the ``top_k`` likeliest tokens (``None``: all).
        temperature: logits are divided by this before sampling.
        generator: a ``torch.Generator`` on the model's device, for seeded sampling.
        use_cache: run each new token alone behind a KV cache (``False``: a full forward pass
            of the whole sequence per token, the reference the cache is tested against).

    Returns:
        ``[batch, max_new_tokens]`` generated ids.

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model(n_layers=2)
        >>> x = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(0))
        >>> fast = generate(m, x, 6)
        >>> slow = generate(m, x, 6, use_cache=False)
        >>> fast.shape, torch.equal(fast, slow)
        (torch.Size([3, 6]), True)
    """
    if not isinstance(prompts, Tensor):
        raise ValueError(
            f"prompts must be a tensor of token ids [batch, prompt_len], got "
            f"{type(prompts).__name__} (sample_texts takes strings or lists of ids)"
        )
    check_token_dtype(prompts, "prompts")
    if prompts.dim() != 2 or min(prompts.shape) < 1:
        raise ValueError(
            f"prompts must be integer token ids of shape [batch >= 1, prompt_len >= 1], got "
            f"{prompts.dtype} {tuple(prompts.shape)}"
        )
    check_int(max_new_tokens, "max_new_tokens")
    check_sampling(do_sample, top_k, temperature)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r:.40}")
    hooks = _tl.check_hooks(model, hooks, "hooks")
    prompt_hooks = _tl.check_hooks(model, prompt_hooks, "prompt_hooks")
    total = prompts.shape[1] + max_new_tokens
    if total > model.cfg.n_ctx:
        raise ValueError(
            f"prompt_len + max_new_tokens = {prompts.shape[1]} + {max_new_tokens} = {total} "
            f"exceeds the model's n_ctx={model.cfg.n_ctx}"
        )
    if prompts.numel() and (int(prompts.min()) < 0 or int(prompts.max()) >= model.cfg.d_vocab):
        raise ValueError(f"prompts contain token ids outside 0..{model.cfg.d_vocab - 1}")
    device = model.cfg.device
    seq = prompts.to(device).long()
    out: list[Tensor] = []
    final = _tl.FinalLogits(model)
    with _tl.attached(model, hooks):
        if use_cache:
            cache = _tl.new_kv_cache(model, seq.shape[0])
            with _tl.attached(model, prompt_hooks, "prompt_hooks"):
                logits = _tl.last_logits(model, seq, final, cache)
            for i in range(max_new_tokens):
                tok = _next_token(logits, do_sample, top_k, temperature, generator)
                out.append(tok)
                if i + 1 < max_new_tokens:
                    logits = _tl.last_logits(model, tok[:, None], final, cache)
        else:
            with _tl.attached(model, prompt_hooks, "prompt_hooks"):
                for _ in range(max_new_tokens):
                    logits = _tl.last_logits(model, seq, final)
                    tok = _next_token(logits, do_sample, top_k, temperature, generator)
                    out.append(tok)
                    seq = torch.cat([seq, tok[:, None]], dim=1)
    return torch.stack(out, dim=1)


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str], prepend_bos: bool = False, *, name: str = "prompts"
) -> list[list[int]]:
    """Token ids of each prompt, without special tokens (GPT-2's tokenizer adds none).

    ``prepend_bos=True`` puts the tokenizer's ``bos_token_id`` first (TransformerLens's default
    for GPT-2 models; the paper's HF pipeline did not).

    Examples:
        >>> from pcp_lens.toy import build_tokenizer
        >>> tokenize_prompts(build_tokenizer(["a", "b"]), ["a b", "b"])
        [[1, 2], [2]]
    """
    texts = check_strings(prompts, name, empty=True)
    if not callable(tokenizer):
        raise ValueError(
            f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}"
        )
    if prepend_bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError("prepend_bos=True but the tokenizer has no bos_token_id")
    out = []
    for i, p in enumerate(texts):
        try:
            ids = list(cast(Any, tokenizer(p, add_special_tokens=False))["input_ids"])
        except Exception as e:  # tokenizers raise their own types for text they cannot encode
            raise ValueError(f"{name}[{i}] = {p!r:.60} cannot be tokenized: {e}") from None
        if prepend_bos:
            ids = [tokenizer.bos_token_id, *ids]
        if not ids:
            raise ValueError(f"{name}[{i}] tokenizes to no tokens: {p!r}")
        out.append(ids)
    return out


def _eos_id(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "eos_token_id", None)


def sample_texts(
    model: HookedTransformer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    config: SamplingConfig = PAPER_SAMPLING,
    *,
    hooks: Hooks = (),
    prompt_hooks: Hooks = (),
    tokenizer: Any | None = None,
    prepend_bos: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> pd.DataFrame:
    """Sample ``config.n_samples`` continuations of every prompt, in length-grouped batches.

    Prompts with equal token length are generated together (``prompts × samples`` rows, split
    into chunks of ``config.batch_size``), so no padding is needed. Continuations are decoded
    from their *tokens* (the paper sliced the decoded text by the prompt's character count,
    which can cut characters when decoding cleans up spaces, METHODS §4.5). With the same seed
    and settings (``batch_size`` included) the samples are the same.

    Args:
        model: the model (never modified).
        prompts: strings (tokenized without special tokens) or lists of token ids.
        config: sampling settings; ``**overrides`` replace fields, e.g. ``n_samples=3``.
        hooks: hooks active during the whole generation.
        prompt_hooks: position-specific hooks, active only while the prompt is processed.
        tokenizer: default ``model.tokenizer``; needed for string prompts and decoding.
        prepend_bos: put the tokenizer's BOS before every string prompt.
        progress: show a tqdm bar.

    Returns:
        One row per (prompt, sample): ``prompt_id``, ``sample``, ``n_prompt_tokens``,
        ``tokens`` (the continuation's ids, cut at the first EOS if ``stop_at_eos``) and
        ``text`` (decoded, ``""`` without a tokenizer).

    Examples:
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model()
        >>> df = sample_texts(m, [[1, 2, 3], [4, 5], [6, 7, 8]], n_samples=2, max_length=6,
        ...                   progress=False)
        >>> df.groupby("prompt_id").size().tolist(), df.tokens.map(len).tolist()
        ([2, 2, 2], [3, 3, 4, 4, 3, 3])
    """
    cfg = with_overrides(config, SamplingConfig, overrides, "sample_texts")
    tok = tokenizer if tokenizer is not None else model.tokenizer
    if isinstance(prompts, str):
        raise ValueError("prompts must be a sequence of prompts, got one string")
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    if all(isinstance(p, str) for p in prompts):
        if tok is None:
            raise ValueError("string prompts need a tokenizer: pass tokenizer= or attach one")
        ids = tokenize_prompts(tok, prompts, prepend_bos)  # type: ignore[arg-type]
    else:
        ids = []
        for i, p in enumerate(prompts):
            row = p.tolist() if isinstance(p, Tensor) else p
            if (
                isinstance(row, str)
                or not isinstance(row, Sequence)
                or len(row) == 0
                or not all(is_int(t) for t in row)
            ):
                raise ValueError(
                    f"prompts[{i}] must be a non-empty list of token ids (ints; not mixed with "
                    f"strings), got {p!r:.40}"
                )
            ids.append([int(t) for t in row])
    for i, p in enumerate(ids):
        if cfg.new_tokens(len(p)) < 1:
            raise ValueError(
                f"prompts[{i}] has {len(p)} tokens, not fewer than max_length={cfg.max_length}; "
                "nothing would be generated (filter prompts by length first)"
            )
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(ids):
        groups.setdefault(len(p), []).append(i)
    device = model.cfg.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = _eos_id(tok) if cfg.stop_at_eos and tok is not None else None
    rows: list[dict[str, Any]] = []
    n_rows = len(ids) * cfg.n_samples
    bar = tqdm(total=n_rows, desc="sample", disable=not progress, leave=False)
    for length in sorted(groups):
        members = groups[length]
        flat = [(i, s) for i in members for s in range(cfg.n_samples)]
        for start in range(0, len(flat), cfg.batch_size):
            chunk = flat[start : start + cfg.batch_size]
            x = torch.tensor([ids[i] for i, _ in chunk], dtype=torch.long, device=device)
            new = generate(
                model,
                x,
                cfg.new_tokens(length),
                hooks=hooks,
                prompt_hooks=prompt_hooks,
                do_sample=cfg.do_sample,
                top_k=cfg.top_k,
                temperature=cfg.temperature,
                generator=gen,
            ).tolist()
            for (i, s), cont in zip(chunk, new, strict=True):
                if eos is not None and eos in cont:
                    cont = cont[: cont.index(eos)]
                text = (
                    tok.decode(cont, clean_up_tokenization_spaces=False) if tok is not None else ""
                )
                rows.append(
                    {
                        "prompt_id": i,
                        "sample": s,
                        "n_prompt_tokens": length,
                        "tokens": cont,
                        "text": text,
                    }
                )
            bar.update(len(chunk))
    bar.close()
    df = pd.DataFrame(rows, columns=["prompt_id", "sample", "n_prompt_tokens", "tokens", "text"])
    return df.sort_values(["prompt_id", "sample"], kind="stable").reset_index(drop=True)
