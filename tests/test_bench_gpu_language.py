"""The GPU benchmark script runs end to end in its ``--smoke`` form (tiny model, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_gpu_language.py"


@pytest.mark.parametrize("tokenizer", ["auto", "fallback"])
def test_bench_gpu_language_smoke(tmp_path: Path, tokenizer: str):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--tokenizer", tokenizer, "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] and res["device"] == "cpu"
    gen = res["generation"]
    assert gen["tokens_per_s_ours"] > 0 and gen["tokens_per_s_tl"] > 0
    assert [r["amp"] for r in res["finetune"]] == [None, "bf16"]
    assert all(r["seconds_per_step"] > 0 for r in res["finetune"])
    assert res["asr"]["valid_prompts"] == res["asr"]["prompts"] == 3
    sweep = res["ablation_sweep"]
    assert sweep["sites"] == ["attn0", "mlp0"] and sweep["evaluations"] == 3
    if tokenizer == "fallback":
        assert res["tokenizer"].startswith("fallback")
    assert "(a) generation" in run.stdout and "(d) Tab. VIII" in run.stdout
