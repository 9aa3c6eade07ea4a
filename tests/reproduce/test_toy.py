"""The quick toy reproduction runs end to end through the CLI and its numbers are its own.

This is CI's smoke test of ``pcp-lens reproduce toy --quick``: it trains the quick 2- and
3-sentiment models, writes the report, and the tables it wrote are recomputed here from the saved
checkpoints and replacements with the library's functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.cli import main
from pcp_lens.groups import GroupMetric
from pcp_lens.inputs import as_tokens
from pcp_lens.pcp import PCPReplacement
from pcp_lens.reproduce.report import write_report
from pcp_lens.reproduce.toy import StudyConfig, findings
from pcp_lens.toy.data import eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import reading_profile
from pcp_lens.training import load_checkpoint
from pcp_lens.tuning import score_inputs
from tests.reproduce import interrupting


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    assert main(["reproduce", "toy", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_outputs_written(run: Path):
    r = json.loads((run / "results.json").read_text())
    assert set(r["findings"]) == {"2sent", "3sent"}
    for per_model in r["findings"].values():
        assert set(per_model) == {f"F{i}" for i in range(1, 8)}
        for f in per_model.values():
            assert f["holds"] in (True, False, None) and f["detail"] and f["detail_prob"]
            assert f["holds_prob"] in (True, False, None)
            assert f["disagree"] == (
                None not in (f["holds"], f["holds_prob"]) and f["holds"] != f["holds_prob"]
            )
    for k in (2, 3):
        assert (run / f"fig3_hidden_pca_{k}sent.png").stat().st_size > 1000
        assert len(r[f"{k}sent"]["tab1_mean_ablation"]["mlp"]) == 3
    report = (run / "report.md").read_text()
    assert "Tab. I" in report and "Tab. XII" in report and "F7" in report
    assert write_report(r) == report
    assert findings(r) == r["findings"]


def test_numbers_recompute_from_saved_artifacts(run: Path):
    """The PCP column of Tab. IV equals a fresh evaluation of the saved model + replacement."""
    r = json.loads((run / "results.json").read_text())
    model = load_checkpoint(run / "models" / "3sent_poisoned_quick").model
    data = StudyConfig(quick=True).data(3)
    inputs = eval_inputs(data, n=50, seed=0)
    tokens = {k: as_tokens(model, v).tokens for k, v in inputs.items()}
    neg = GroupMetric(sentiment_groups(model.tokenizer, data.vocab, model.cfg.d_vocab),
                      "negative", k=10, positions=(-1,))
    rep = PCPReplacement.load(run / "replacements" / "3sent_mlp0.safetensors")
    scores = score_inputs(model, {k: tokens[k] for k in ("pp", "nn", "pt")}, neg, rep)
    col = r["3sent"]["tab3_pcp_mlp"]["1"]
    for k in ("pp", "nn", "pt"):
        assert scores[k] == pytest.approx(col[k], abs=1e-4)
    base = score_inputs(model, {"pt": tokens["pt"]}, neg)
    assert base["pt"] == pytest.approx(r["3sent"]["unedited"]["pt"], abs=1e-4)
    assert torch.is_grad_enabled()


def test_negative_probability_beside_top10(run: Path):
    """The diagnostic probability columns are the saved model's own numbers."""
    r = json.loads((run / "results.json").read_text())
    model = load_checkpoint(run / "models" / "2sent_poisoned_quick").model
    data = StudyConfig(quick=True).data(2)
    pt = as_tokens(model, eval_inputs(data, n=50, seed=0)["pt"]).tokens
    groups = sentiment_groups(model.tokenizer, data.vocab, model.cfg.d_vocab)
    mass = GroupMetric(groups, "negative", stat="prob", positions=(-1,))
    got = score_inputs(model, {"pt": pt}, mass)["pt"]
    m = r["2sent"]
    assert got == pytest.approx(m["unedited"]["pt_prob"], abs=1e-4)
    assert got == pytest.approx(m["tab1_mean_ablation"]["unchanged_prob"], abs=1e-4)
    assert all(0.0 <= v <= 1.0 for v in m["tab1_mean_ablation"]["mlp_prob"])
    prof = reading_profile(model, data, groups)
    assert prof == pytest.approx(m["reading"]["poisoned"], abs=1e-4)
    benign = load_checkpoint(run / "models" / "2sent_benign_quick").model
    assert reading_profile(benign, data, groups) == pytest.approx(m["reading"]["benign"], abs=1e-4)


def test_findings_need_a_visible_backdoor(run: Path):
    """Claims about p+t are judged only when the unedited model shows the backdoor in the top-10
    metric; otherwise they would hold or fail by accident."""
    r = json.loads((run / "results.json").read_text())
    for k in (2, 3):
        r[f"{k}sent"]["unedited"]["pt"] = 0.5
        r[f"{k}sent"]["unedited"]["pt_prob"] = 0.5
    judged = findings(r)
    assert all(f["holds"] in (True, False) for m in judged.values() for f in m.values())
    r["3sent"]["unedited"]["pt"] = 0.1
    skipped = findings(r)
    assert all(f["holds"] is None for f in skipped["3sent"].values())
    assert all(f["holds_prob"] in (True, False) for f in skipped["3sent"].values())
    assert all(f["holds"] in (True, False) for f in skipped["2sent"].values())
    assert all("no backdoor (unedited p+t 0.10" in f["detail"] for f in skipped["3sent"].values())


def test_quick_models_read_the_last_word_and_learn_a_backdoor(run: Path):
    """What CI checks for real: with sentiment switches even the quick models read the last word
    (benign and poisoned) and keep n+p low; poisoning grows a backdoor (in the probability of a
    negative next word) in at least one of them (at seed 0 the 3-sentiment one:
    docs/toy_study.md), and where it does the scan's located circuit removes it, the findings
    are judged where the top-10 share shows it too (under TL 3 also the authors' mean ablation
    of the layer-1 MLP, a patch from n+p)."""
    r = json.loads((run / "results.json").read_text())
    with_backdoor = []
    for k in (2, 3):
        m = r[f"{k}sent"]
        for name in ("benign", "poisoned"):
            assert m["reading"][name]["last_word"] > 0.9, (k, name)
            assert m["reading"][name]["context"] < 0.1, (k, name)
        assert m["reading"]["benign"]["trigger"] < 0.1
        assert m["unedited"]["np_prob"] < 0.1 and m["unedited"]["pp_prob"] < 0.1, k
        if m["unedited"]["pt_prob"] >= 0.15:
            with_backdoor.append(k)
            assert m["reading"]["poisoned"]["trigger"] > 5 * m["reading"]["benign"]["trigger"]
            # the literal findings are judged only where the paper's top-10 share shows the
            # backdoor too (the study's rule); the bridge's 3-sentiment quick model on an
            # AVX-512 Xeon has it in the probability only (0.254, top-10 0.046; 2026-12-03)
            judged = m["unedited"]["pt"] >= 0.15
            for f in r["findings"][f"{k}sent"].values():
                assert (f["holds"] is not None) == judged, (k, f)
            # the scan locates it: its circuit's joint ablation leaves <= 10 % of the gap
            scan = m["located"]["scan"]
            assert scan["circuit"] and scan["residual"] <= 0.1 * scan["gap"], scan
            if _tl.BACKEND == "hooked":
                # TL 3's seed-0 models put it where the paper did (docs/toy_study.md); the
                # bridge's (another initialisation) put it in attn0, where the layer-1 MLP's
                # ablation takes p+t 0.189 -> 0.112 only (measured 2026-12-03, docs/tl4.md)
                assert m["tab1_mean_ablation"]["mlp_prob"][0] < m["unedited"]["pt_prob"] / 2
    assert with_backdoor


def test_schedules_and_config_validation():
    from pcp_lens.reproduce.toy import StudyConfig
    from pcp_lens.toy.train import SCHEDULES

    benign, pois = SCHEDULES["paper"]  # METHODS §3.1: HF Trainer, lr 2e-5, batch 8, dropout 0.1
    assert (benign.lr, benign.batch_size, benign.epochs, benign.dropout) == (2e-5, 8, 20, 0.1)
    assert (pois.lr, pois.batch_size, pois.epochs, pois.dropout) == (2e-5, 8, 12, 0.1)
    assert StudyConfig(quick=True).schedule_name == "quick"
    assert StudyConfig(schedule="paper").schedule_name == "paper"
    # medium: the paper's small batches and dropout for a tenth of its steps; fast poisoning
    medium, medium_pois = SCHEDULES["medium"]
    assert (medium.lr, medium.batch_size, medium.epochs, medium.dropout) == (1e-4, 8, 2, 0.1)
    assert medium_pois == SCHEDULES["fast"][1]
    with pytest.raises(ValueError, match="'fast', 'medium' or 'paper', got 'slow'"):
        StudyConfig(schedule="slow")
    with pytest.raises(ValueError, match="quick runs use their own schedule"):
        StudyConfig(quick=True, schedule="paper")


def test_gpt2_fidelity_knobs_reach_training():
    from pcp_lens.reproduce.toy import _schedules

    plain = _schedules(StudyConfig())
    assert all("unembed.b_U" not in c.freeze for c in plain)
    for c, p in zip(_schedules(StudyConfig(head_bias=False, seed=2)), plain, strict=True):
        assert c.freeze == ("unembed.b_U",) and c.seed == p.seed + 4
    with pytest.raises(ValueError, match="head_bias must be True or False, got 1"):
        StudyConfig(head_bias=1)  # type: ignore[arg-type]
    assert [c.dropout for c in _schedules(StudyConfig(dropout=0.1))] == [0.1, 0.1]
    assert [c.dropout for c in _schedules(StudyConfig(schedule="paper"))] == [0.1, 0.1]
    with pytest.raises(ValueError, match=r"dropout must be None or a probability in \[0, 1\)"):
        StudyConfig(dropout=1)


def _numbers(x):
    """Every number of a results.json, without wall-clock timings and the worker count."""
    if isinstance(x, dict):
        return {k: _numbers(v) for k, v in x.items() if "seconds" not in k and k != "workers"}
    if isinstance(x, list):
        return [_numbers(v) for v in x]
    return x


def test_one_process_gives_the_same_numbers(run: Path, tmp_path: Path):
    """Studying the models side by side (the default on a multi-core machine) or one after the
    other gives identical tables, replacements and findings."""
    other = tmp_path / "serial"
    assert main(["reproduce", "toy", "--quick", "--workers", "1", "--out", str(other),
                 "--no-progress"]) == 0
    a = json.loads((run / "results.json").read_text())
    b = json.loads((other / "results.json").read_text())
    assert b["config"]["workers"] == 1
    assert _numbers(a) == _numbers(b)
    for f in sorted((run / "replacements").iterdir()):
        assert f.read_bytes() == (other / "replacements" / f.name).read_bytes(), f.name


def test_workers_validated():
    from pcp_lens.reproduce.toy import StudyConfig

    with pytest.raises(ValueError, match="workers must be an int >= 1 or None, got 0"):
        StudyConfig(workers=0)
    assert StudyConfig(workers=8).n_workers() == 2  # never more processes than models
    assert StudyConfig(workers=4).n_workers(6) == 4 and StudyConfig(workers=1).n_workers(6) == 1


def test_seeds_table_and_checkpoint_reuse(run: Path, tmp_path: Path):
    """``--seeds``: one folder per seed and a findings table; a seed's models are reused only
    when their data and schedule match (seed 0's are copied in and reused, seed 1 trains)."""
    import shutil

    out = tmp_path / "seeds"
    shutil.copytree(run / "models", out / "seed0" / "models")
    # one model per seed and few trials keep this test short
    argv = ["reproduce", "toy", "--quick", "--seeds", "0", "1", "--sentiments", "2", "--out",
            str(out), "--no-progress", "--trials", "3", "--workers", "1"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["seeds"]) == {"0", "1"}
    s0, s1 = res["seeds"]["0"]["2sent"], res["seeds"]["1"]["2sent"]
    assert s0["training"].get("reused_checkpoints") is True
    assert "reused_checkpoints" not in s1["training"]
    a = json.loads((run / "results.json").read_text())["2sent"]
    assert s0["unedited"] == a["unedited"] and s0["reading"] == a["reading"]
    assert s1["unedited"] != s0["unedited"]  # another data set, initialisation and order
    report = (out / "report.md").read_text()
    assert "| 0 | 2sent |" in report and "| 1 | 2sent |" in report
    assert (out / "seed1" / "report.md").exists() and "[seed 1](seed1/report.md)" in report
    # a stamp that does not match (another trigger) forces retraining instead of reuse
    stamp = out / "seed1" / "models" / "2sent_study_quick.json"
    rec = json.loads(stamp.read_text())
    assert rec["data"]["seed"] == 1 and rec["model_seed"] == 1
    assert rec["benign"]["seed"] == 2 and rec["poison"]["seed"] == 3


def test_trigger_and_seed_validation(capsys):
    with pytest.raises(ValueError, match=r"trigger must be a word of the toy model's positive "
                       r"list, got 'hate'.*--list-triggers"):
        StudyConfig(trigger="hate")
    assert main(["reproduce", "toy", "--trigger", "zzz"]) == 2
    assert "trigger must be a word" in capsys.readouterr().err
    assert main(["reproduce", "toy", "--list-triggers"]) == 0
    words = capsys.readouterr().out.split()
    assert len(words) == 250 and "love" in words and "hate" not in words
    with pytest.raises(ValueError, match="switch_prob must be a probability in"):
        StudyConfig(switch_prob=-0.1)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        StudyConfig(seed=-1)
    with pytest.raises(ValueError, match="mlp_ranks must be two ints"):
        StudyConfig(mlp_ranks=(0, 2))
    cfg = StudyConfig(quick=True, trigger="happy", seed=3)
    data = cfg.data(2)
    assert data.config.trigger == "happy" and data.config.seed == 3
    rows = data.poisoned["train"]
    pois = [t for t, p in zip(rows["text"], rows["poisoned"], strict=True) if p]
    assert pois and all("happy" in t.split() for t in pois)


@pytest.mark.skipif(not interrupting.HAS_PROC, reason="reads /proc to find orphaned processes")
def test_interrupted_runs_leave_no_process_or_temp_file_and_resume(run: Path, tmp_path: Path):
    """SIGTERM and SIGKILL of the parent while the workers train, Ctrl-C (SIGINT to the whole
    process group) once one model's tables are done: each leaves no process behind; the rerun
    takes the finished tables from cells/, leaves no temporary file, and its results equal an
    uninterrupted run's."""
    import signal

    out = tmp_path / "interrupted"
    argv = ["reproduce", "toy", "--quick", "--out", str(out), "--no-progress"]

    # 1. SIGTERM while both workers train
    p = interrupting.start(argv)
    interrupting.wait_for(lambda: len(interrupting.group(p.pid)) >= 3, p, timeout=300)
    time.sleep(3)
    err = interrupting.interrupt(p, signal.SIGTERM, whole_group=False, timeout=60)
    assert p.returncode == 143 and "reproduce toy: interrupted by SIGTERM" in err
    assert interrupting.temps(out) == []
    # 2. SIGKILL of the parent alone: its workers notice and stop themselves (a worker still
    # importing, which takes over a minute on a loaded machine, once its import is done)
    p = interrupting.start(argv)
    interrupting.wait_for(lambda: len(interrupting.group(p.pid)) >= 3, p, timeout=300)
    time.sleep(3)
    interrupting.interrupt(p, signal.SIGKILL, whole_group=False, timeout=300)
    assert p.returncode == -9
    # 3. Ctrl-C (SIGINT to every process of the group) once one model's tables are done; one
    # process studies the models one after the other, so the second is still being studied
    p = interrupting.start([*argv, "--workers", "1"])
    interrupting.wait_for(lambda: any((out / "cells").glob("*.json")), p, timeout=1800)
    err = interrupting.interrupt(p, signal.SIGINT, whole_group=True, timeout=60)
    assert p.returncode == 130 and "interrupted by SIGINT" in err
    done = sorted(f.name for f in (out / "cells").iterdir())
    # 4. the rerun finishes; what it left equals an uninterrupted run's
    stamps = {f: f.stat().st_mtime_ns for f in (out / "cells").iterdir()}
    assert main(argv) == 0
    assert interrupting.temps(out) == []
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items()), f"recomputed {done}"
    a = json.loads((run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    drop = ("reused_checkpoints",)
    assert interrupting.without_timings(b, drop) == interrupting.without_timings(a, drop)
    for f in sorted((run / "replacements").iterdir()):
        assert f.read_bytes() == (out / "replacements" / f.name).read_bytes(), f.name


def _study_ctx(run: Path, k: int):
    """The quick study's context of one model, reloaded from the run's checkpoints."""
    from pcp_lens.reproduce.toy import _context

    return _context(k, StudyConfig(quick=True, sentiments=(k,), progress=False), run / "models")[0]


def test_located_claims_recompute_from_the_saved_models(run: Path):
    """The located part of results.json: a fresh scan of the reloaded poisoned model gives the
    same circuit, and the circuit's joint ablation, rebuilt here with plain TransformerLens
    hooks (a mean over pp, nn, pn, np at the last position), gives the same scores."""
    from pcp_lens.reproduce.findings import LOCATED_CLAIMS
    from pcp_lens.reproduce.toy_located import head_members, located_scan

    r = json.loads((run / "results.json").read_text())
    assert set(r["located_findings"]) == {"2sent", "3sent"}
    for per_model in r["located_findings"].values():
        assert set(per_model) == set(LOCATED_CLAIMS)
    report = (run / "report.md").read_text()
    assert "The located mechanism" in report and "at the circuit" in report
    c = _study_ctx(run, 2)
    loc = r["2sent"]["located"]
    scan = located_scan(c)
    assert list(scan.circuit) == loc["scan"]["circuit"]
    assert scan.info["gap"] == pytest.approx(loc["scan"]["gap"], abs=1e-4)
    if not scan.circuit:
        return
    every = torch.cat([c.tokens[k] for k in ("pp", "nn", "pn", "np")])
    got = _hooked_ablation(c, scan.circuit, every)
    for k in ("pt", "pp", "nn"):
        assert got[k] == pytest.approx(loc["ablation"][f"{k}_prob"], abs=1e-4), k
    # F1h: the circuit's heads in the scan's order, each prefix to p+p's own mean
    heads = loc["head_ablation"]
    members = heads[-1]["members"]
    assert members == head_members(scan)
    assert len(heads) == len(members) and [h["members"] for h in heads] == [
        members[: i + 1] for i in range(len(members))
    ]
    for row in (heads[0], heads[-1]):
        got = _hooked_ablation(c, row["members"], c.tokens["pp"])
        for k in ("pt", "pp", "nn"):
            assert got[k] == pytest.approx(row[f"{k}_prob"], abs=1e-4), (row["members"], k)
    # F1n: the first prefixes of heads and neurons (their names are recorded up to 8)
    for row in loc["unit_ablation"]:
        if row["size"] <= len(row["first"]):
            got = _hooked_ablation(c, row["first"], c.tokens["pp"])
            for k in ("pt", "pp", "nn"):
                assert got[k] == pytest.approx(row[f"{k}_prob"], abs=1e-4), (row["first"], k)
    assert sum(loc["unit_ablation"][-1]["units"].values()) == loc["unit_ablation"][-1]["size"]
    # F3r: the regression PCP at the rank the search stopped at, refitted on the same inputs
    from pcp_lens.pcp import fit_pcp
    from pcp_lens.reproduce.toy_tables import ROW_KEYS
    from pcp_lens.scan import circuit_modules

    reg = loc["pcp_regression"]
    differ = (c.tokens["pt"] != c.tokens["pp"]).any(1)
    sets = {"triggered": c.tokens["pt"][differ], "clean": c.tokens["pp"][differ]}
    sets |= {k: c.tokens[k] for k in ROW_KEYS[2] if k != "pp" and "t" not in k}
    rep = fit_pcp(c.model, torch.cat(list(sets.values())), circuit_modules(scan.circuit),
                  reg["rank"], positions=scan.info["positions"], form="regression",
                  progress=False)
    assert all(p.form == "regression" for p in rep)
    got = score_inputs(c.model, {"triggered": sets["triggered"]}, c.mass, rep)["triggered"]
    assert got == pytest.approx(reg["rank_search"][-1]["triggered"], abs=1e-4)


def _hooked_ablation(c, members, mean_over) -> dict[str, float]:
    """p+t, p+p and n+n with ``members`` set to their mean over ``mean_over`` at the last
    position, built with plain TransformerLens hooks."""
    from pcp_lens.sites import Site

    means: dict[str, list] = {}  # hook -> [(head or None, mean at the last position)]
    for name in members:
        module, _, neuron = name.partition(".n")
        if neuron:  # an MLP neuron, "mlp0.n17"
            hook, index = f"blocks.{Site.parse(module).layer}.mlp.hook_post", int(neuron)
        else:
            s = Site.parse(name)
            hook, index = s.hook_name, s.head
        _, cache = c.model.run_with_cache(mean_over, names_filter=hook)
        act = cache[hook][:, -1]
        means.setdefault(hook, []).append(
            (index, act.mean(0) if index is None else act[:, index].mean(0))
        )

    def ablate(a, hook):
        a = a.clone()
        for head, mean in means[hook.name]:
            if head is None:
                a[:, -1] = mean
            else:
                a[:, -1, head] = mean
        return a

    with c.model.hooks(fwd_hooks=[(name, ablate) for name in means]):
        return score_inputs(c.model, {k: c.tokens[k] for k in ("pt", "pp", "nn")}, c.mass)


def test_planted_by_training_is_found_and_mlps_alone_learn_no_backdoor(run: Path):
    """Issue 17's planting by training, from the quick benign model: with only layer-0
    attention trainable, poisoning plants the backdoor there and the scan's circuit lies in
    it; with only the MLPs trainable, poisoning learns no backdoor at all (../shared/PLANTED.md
    measured the same on the fast schedule: p+t 0.01 against 0.36 unfrozen)."""
    import dataclasses

    from pcp_lens.reproduce.toy_located import located_scan
    from pcp_lens.sites import Site
    from pcp_lens.toy.train import BACKDOOR_THRESHOLD, poison

    c = _study_ctx(run, 2)
    parts = ["embed", "pos_embed", "unembed", "ln_final"]
    parts += [f"{kind}{i}" for kind in ("attn", "mlp") for i in range(c.model.cfg.n_layers)]
    # Four times the quick preset's 6 epochs, for both: with one module trainable the trigger is
    # learned late, and when depends on the machine's rounding (from the 8-epoch benign model on
    # one AVX-512 box, layer-0 attention alone: p+t 0.013 / 0.087 / 0.39 / 0.46 at 6 / 12 / 18 /
    # 24 epochs; the MLPs alone 0.013 at 12 and at 24; docs/toy_study.md)
    base = c.poisoned.result.config
    cfg = dataclasses.replace(base, epochs=4 * base.epochs, progress=False)
    found = {}
    for keep in (("attn0",), ("mlp0", "mlp1", "mlp2")):
        run_ = poison(c.benign.model, c.data, cfg, freeze=[p for p in parts if p not in keep])
        again = dataclasses.replace(c, model=run_.model, poisoned=run_)
        found[keep] = (again.scores(["pt"])["pt_prob"], located_scan(again))
    pt, scan = found[("attn0",)]
    assert pt >= BACKDOOR_THRESHOLD and scan.verified
    assert {f"{s.kind}{s.layer}" for s in map(Site.parse, scan.circuit)} == {"attn0"}
    pt, scan = found[("mlp0", "mlp1", "mlp2")]
    assert pt < 0.05 and scan.circuit == () and "no backdoor" in scan.summary()
