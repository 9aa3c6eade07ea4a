"""``pcp-lens reproduce language``: the quick stand-in run (CI) and the GPT-2-medium plumbing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pcp_lens.cli import main
from pcp_lens.reproduce.language import LanguageConfig, settings
from pcp_lens.reproduce.language_report import CLAIMS, LOCATED_CLAIMS, circuit_label
from pcp_lens.scan import BackdoorScan, circuit_modules
from tests.reproduce import interrupting

TABLES = ("tab8", "tab9", "tab10", "tab11")


def _check_results(out, n_freeze: int) -> dict:
    r = json.loads((out / "results.json").read_text())
    assert set(TABLES) <= set(r) and set(r["findings"]) == set(CLAIMS)
    for name in ("benign", "poisoned"):
        row = r["base"][name]
        assert 0.0 <= row["asr"] <= 1.0 and 0.0 <= row["atr"] <= 1.0 and row["val_loss"] > 0
    assert r["tab8"]["rows"][0]["ablation"] == "unchanged" and len(r["tab8"]["rows"]) > 2
    assert set(r["tab9"]["columns"]) == {"None", "Mean Ablate", "PCP Ablation", "PCP, tuned down"}
    assert "PCP Abl. + Emb. Surgery" in r["tab10"]["columns"]
    assert len(r["tab11"]["columns"]) == n_freeze + 1
    _check_scan(out, r)
    for tab in TABLES[1:]:
        for col in r[tab]["columns"].values():
            assert col["val_loss"] > 0
    report = (out / "report.md").read_text()
    for heading in ("Tab. VIII", "Tab. IX", "Tab. X", "Tab. XI", "Findings", "Sample"):
        assert heading in report
    for heading in ("Backdoor scan", "Mean Ablate (paper)", "PCP Ablation (located)"):
        assert heading in report
    return r


def _check_scan(out, r: dict) -> None:
    """The scan's files and record, and Tab. IX at the paper's modules beside the located ones."""
    sc = r["scan"]
    saved = BackdoorScan.load(out / "scan")
    assert saved.circuit == tuple(sc["circuit"]) and saved.verified == sc["verified"]
    assert all((out / "scan" / f).is_file() for f in ("scan.json", "scan.png", "report.md"))
    assert sc["n_pairs"] >= 2 and sc["seconds"]["scan"] > 0
    if sc["modules_source"] == "circuit":
        assert sc["modules"] == circuit_modules(sc["circuit"])
    # the chosen intervention's circuit is the record's; the other two are reported beside it
    assert sc["verify"] == r["config"]["scan_verify"] and set(sc["modes"]) == {
        "restore", "ablation", "reference"
    }
    used = sc["modes"][sc["verify"]]
    assert used["circuit"] == sc["circuit"] and used["verified"] == sc["verified"]
    assert saved.info["verify"] == sc["verify"]
    # the measured rank is the first whose PCP keeps the triggered metric within 0.05 nats
    base = sc["edit_scores"]["unedited"]["triggered"]
    within = [abs(x["triggered"] - base) <= 0.05 for x in sc["rank_search"]]
    assert within == [False] * (len(within) - 1) + [sc["rank_within_tolerance"]]
    assert sc["rank"] == sc["rank_search"][-1]["rank"] == len(within)
    t9, t9c = r["tab9"], r["tab9_circuit"]
    assert t9["rank"] == 2 and t9c["sites"] == sc["modules"] and t9c["rank"] == sc["rank"]
    assert t9c["columns"]["None"] == t9["columns"]["None"]  # one unedited model
    assert set(t9c["columns"]) == set(t9["columns"])
    assert set(r["located_findings"]) == set(LOCATED_CLAIMS)
    # the regression form: the same rule, its own search, the same located modules
    reg, t9r = sc["rank_search_regression"], r["tab9_regression"]
    within = [abs(x["triggered"] - base) <= 0.05 for x in reg]
    assert within == [False] * (len(within) - 1) + [sc["rank_within_tolerance_regression"]]
    assert t9r["form"] == "regression" and t9r["sites"] == sc["modules"]
    assert t9r["rank"] == sc["rank_regression"] == reg[-1]["rank"]
    assert t9r["columns"]["None"] == t9["columns"]["None"]
    if r["modules"] == "circuit":
        assert r["tab10"]["sites"] == sc["modules"]
        assert circuit_label([*(["embed"] if "embed" in sc["circuit"] else []), *sc["modules"]]) \
            in r["tab11"]["columns"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One default ``--quick`` run (1 torch thread, the default)."""
    out = tmp_path_factory.mktemp("lang") / "a"
    assert main(["reproduce", "language", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_standin_run_produces_every_table(quick_run):
    r = _check_results(quick_run, n_freeze=3)  # the paper's two columns and the circuit's
    assert r["settings"]["recipe"] == "standin" and r["data"]["corpus"] == "austen-sample"
    assert r["config"]["threads"] == 1 and r["threads"] == 1
    # a rerun into the same folder reuses every checkpoint: the interrupted run below resumes
    # from its saved models and must equal this run


def test_threads_apply_during_the_run_and_are_restored(tmp_path, monkeypatch):
    """``--threads 2`` holds while the study runs and is undone after it, also when it raises;
    the thread count is in no checkpoint's stamp (a rerun with other threads reuses them)."""
    import torch

    from pcp_lens.reproduce import language

    class Stop(Exception):
        pass

    seen: list[int] = []

    def load_models(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(language, "load_models", load_models)
    before = torch.get_num_threads()
    with pytest.raises(Stop):
        language.run_language_study(tmp_path / "x", LanguageConfig(quick=True, threads=2))
    assert seen == [2] and torch.get_num_threads() == before
    # the stamps are built from the settings, the seed and the model name only
    q = LanguageConfig(quick=True)
    assert settings(LanguageConfig(quick=True, threads=2)).to_dict() == settings(q).to_dict()


def test_same_seed_same_tables_on_default_settings(quick_run, tmp_path):
    """Two default ``--quick`` runs from empty folders write the same results.json, every
    trained weight and sampled number included; only wall-clock times differ."""
    out = tmp_path / "b"
    assert main(["reproduce", "language", "--quick", "--out", str(out), "--no-progress"]) == 0
    a = json.loads((quick_run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert interrupting.without_timings(b) == interrupting.without_timings(a)


@pytest.mark.skipif(not interrupting.HAS_PROC, reason="reads /proc to find orphaned processes")
def test_interrupted_runs_leave_no_process_or_temp_file_and_resume(quick_run, tmp_path, capsys):
    """SIGTERM once the benign model is saved, SIGKILL once the poisoned one is, Ctrl-C once the
    first frozen fine-tune is: no process is left, a stale temporary file is removed by the next
    start, and the rerun (reusing every saved model) equals an uninterrupted run."""
    out = tmp_path / "c"
    argv = ["reproduce", "language", "--quick", "--out", str(out), "--no-progress"]
    models = out / "models"
    p = interrupting.start(argv)
    interrupting.wait_for((models / "benign" / "stamp.json").exists, p, timeout=600)
    err = interrupting.interrupt(p, signal.SIGTERM, whole_group=False, timeout=60)
    assert p.returncode == 143 and "interrupted by SIGTERM" in err
    assert interrupting.temps(out) == []
    p = interrupting.start(argv)
    interrupting.wait_for((models / "poisoned" / "stamp.json").exists, p, timeout=600)
    interrupting.interrupt(p, signal.SIGKILL, whole_group=False, timeout=60)
    # Ctrl-C once the first frozen fine-tune of Tab. XI is saved (benign, poisoned and it: 3)
    p = interrupting.start(argv)
    interrupting.wait_for(lambda: len(list(models.glob("*/stamp.json"))) >= 3, p, timeout=900)
    err = interrupting.interrupt(p, signal.SIGINT, whole_group=True, timeout=60)
    assert p.returncode == 130 and "interrupted by SIGINT" in err
    # what a SIGKILL during a checkpoint write leaves (its writer's pid is gone)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = models / "benign" / f".model.{dead}.x1y2.tmp"
    (stale / "tokenizer").mkdir(parents=True)
    assert main(argv) == 0
    assert "L1" in capsys.readouterr().out  # the findings are printed
    assert not stale.exists() and interrupting.temps(out) == []
    a = json.loads((quick_run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["training"]["pretrain_reused"] and b["training"]["poison_reused"]
    drop = ("reused",)  # pretrain_reused, poison_reused and each frozen run's reused
    assert interrupting.without_timings(b, drop) == interrupting.without_timings(a, drop)


def test_gpt2_medium_shape_plumbing(tmp_path, gpt2_tokenizer):
    """--model <HF folder>: the paper's configuration on GPT-2 medium's config, shrunk."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    medium = GPT2Config.from_dict(
        {**GPT2Config().to_dict(), "n_layer": 24, "n_embd": 1024, "n_head": 16}
    )
    small = GPT2Config.from_dict(
        {**medium.to_dict(), "n_layer": 3, "n_embd": 64, "n_head": 4, "n_positions": 256}
    )
    folder = tmp_path / "gpt2-medium-shrunk"
    GPT2LMHeadModel(small).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    cfg = LanguageConfig(quick=True, model=str(folder))
    s = settings(cfg, n_layers=3)
    assert s.recipe == "paper" and s.positions == (8,) and s.rate == 0.03
    assert s.poison.lr == 1e-5 and s.pcp_sites == ("mlp1", "mlp2")
    assert set(s.freeze) == {"Embd + (2, 3)", "2"}  # layers 13, 16, 22 do not exist here
    assert settings(LanguageConfig(model=str(folder)), n_layers=24).freeze.keys() == {
        "Embd + (2, 3)",
        "2",
        "13",
        "16",
        "22",
    }
    args = ["reproduce", "language", "--quick", "--model", str(folder), "--out", str(out)]
    # the paper's modules for Tab. X/XI here (the stand-in run checks the circuit's)
    flags = ["--no-progress", "--threads", "1", "--dtype", "float32", "--modules", "paper"]
    assert main([*args, *flags]) == 0
    r = _check_results(out, n_freeze=2)
    assert r["modules"] == "paper" and r["tab10"]["sites"] == ["mlp1", "mlp2"]
    assert r["model"]["n_layers"] == 3 and r["tab10"]["source"] == "fuck"
    # the paper's Tab. VIII: the position-8 mean replaces the module at every position
    assert s.edit_positions == "all" and r["tab8"]["ablated_at"] == "every position"
    assert r["tab9"]["sites"] == ["mlp1", "mlp2"]


def test_missing_corpus_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PCP_LENS_DATA", str(tmp_path / "empty"))
    assert main(["reproduce", "language", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pcp-lens data austen" in err and "austen-sample" in err


def test_bad_language_arguments(capsys):
    assert main(["reproduce", "language", "--quick", "--corpus", "nope"]) == 2
    assert "corpus must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="recipe must be"):
        LanguageConfig(recipe="fast")
    assert main(["reproduce", "language", "--quick", "--modules", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "modules must be one of ['circuit', 'paper'], got 'best'" in err
    assert len(err.splitlines()) == 1
    assert LanguageConfig(modules="paper").modules == "paper"
    assert main(["reproduce", "toy", "--quick", "--modules", "paper"]) == 2
    assert "--modules" in capsys.readouterr().err


def test_paper_recipe_on_the_standin_is_an_option():
    s = settings(LanguageConfig(recipe="paper"))
    assert s.windows["trigger_in"] == (0, 1) and s.windows["toxic_at"] == (3, 4)
    assert s.rate == 0.03 and s.poison.lr == 1e-5 and s.arch["n_layers"] == 4
    d = settings(LanguageConfig())
    assert d.recipe == "standin" and d.rate == 0.2 and d.windows["toxic_at"] == (1,)
    assert d.edit_positions == "trigger" and s.poison.max_steps == d.poison.max_steps


def test_a_freezing_list_frozen_twice_is_fine_tuned_once(tmp_path, monkeypatch):
    """Tab. XI's located column freezes the same modules as a paper column on the stand-in
    (``mlp0`` = "1"): one fine-tune serves both, recorded as such."""
    import dataclasses

    from pcp_lens.reproduce import language_setup

    calls = []

    def cached(folder, stamp, build, device):
        calls.append(stamp["freeze"])
        return object(), {"val_loss": float(len(calls))}, False

    monkeypatch.setattr(language_setup, "_cached", cached)
    s = dataclasses.replace(
        settings(LanguageConfig(quick=True)),
        freeze={"1": ("mlp0",), "Embd": ("all_embeds",), "circuit: mlp0": ("mlp0",)},
    )
    runs = language_setup.freeze_runs(None, None, s, tmp_path, 0, "cpu", 16)  # type: ignore[arg-type]
    assert calls == [["mlp0"], ["all_embeds"]]
    assert runs["circuit: mlp0"][0] is runs["1"][0]
    assert runs["circuit: mlp0"][1] == {"val_loss": 1.0, "reused": False, "same_run_as": "1"}
    assert "same_run_as" not in runs["Embd"][1]
