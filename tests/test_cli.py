"""The ``pcp-lens`` command line."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcp_lens.cli import main


def test_demo_prints_the_ablation_table(capsys):
    assert main(["demo", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Tab. I" in out and "L3" in out and "val_loss" in out


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "gpt2"])
    assert "invalid choice" in capsys.readouterr().err


# -- every expected error: one line on stderr, exit 2, nothing written --------------------------


def _run(argv, capsys):
    """``(exit status, stderr)`` of ``pcp-lens argv``; argparse's own errors exit too."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _refused(argv, capsys, match):
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert match in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["reproduce", "toy", "--trials", "0"], "--trials: must be an int >= 1, got '0'"),
        (["reproduce", "language", "--threads", "0"], "--threads: must be an int >= 1"),
        (["reproduce", "toy", "--workers", "x"], "--workers: must be an int >= 1, got 'x'"),
        (["reproduce", "toy", "--seeds", "-1"], "--seeds: must be an int >= 0"),
        (["demo", "--seed", "-3"], "--seed: must be an int >= 0, got '-3'"),
        (["reproduce", "gpt2"], "invalid choice: 'gpt2'"),
        (["reproduce", "toy", "--trigger"], "--trigger: expected one argument"),
        (["reproduce", "toy", "--dtype", "float16"], "--dtype belongs to `pcp-lens reproduce "),
    ],
)
def test_bad_values_are_one_line(argv, capsys, match):
    _refused(argv, capsys, match)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["reproduce", "language", "--trigger", "love"], "--trigger belongs to `pcp-lens "
         "reproduce toy`"),
        (["reproduce", "language", "--seeds", "0", "1"], "--seeds belongs"),
        (["reproduce", "language", "--schedule", "paper"], "--schedule belongs"),
        (["reproduce", "toy", "--threads", "2"], "--threads belongs to `pcp-lens reproduce "
         "language`"),
        (["reproduce", "toy", "--scan-verify", "restore"], "--scan-verify belongs to `pcp-lens "
         "reproduce language`"),
        (["reproduce", "toy", "--model", "gpt2", "--device", "cpu"], "--model and --device belong"),
        (["reproduce", "toy", "--seed", "1", "--seeds", "2", "3"], "--seed or --seeds"),
    ],
)
def test_flags_of_the_other_study_are_refused_not_ignored(argv, capsys, match):
    _refused(argv, capsys, match)


def test_unusable_out_folders_are_refused_before_anything_is_written(tmp_path, capsys):
    _refused(["reproduce", "toy", "--out", ""], capsys, "--out must be a folder path, got ''")
    (tmp_path / "file").write_text("mine")
    _refused(["reproduce", "toy", "--out", str(tmp_path / "file")], capsys, "is not a folder")
    _refused(
        ["reproduce", "language", "--out", str(tmp_path / "file" / "sub")],
        capsys,
        "is not a writable folder",
    )
    assert (tmp_path / "file").read_text() == "mine"
    _refused(["reproduce", "toy", "--seeds", "0", "0", "--out", str(tmp_path / "o")], capsys,
             "--seeds must be distinct, got 0 0")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_a_read_only_out_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _refused(["reproduce", "toy", "--out", str(ro / "x")], capsys, "is not a writable folder")


def test_language_settings_are_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["reproduce", "language", "--out", str(out), "--no-progress"]
    _refused([*base, "--device", "cdua"], capsys, "device='cdua' is not a torch device")
    if not torch.cuda.is_available():
        _refused([*base, "--device", "cuda"], capsys, "no CUDA GPU is available here")
    (tmp_path / "empty.txt").write_text("\n\n")
    _refused([*base, "--corpus", str(tmp_path / "empty.txt")], capsys, "holds no paragraph")
    _refused([*base, "--corpus", str(tmp_path / "none.txt")], capsys, "or a text file")
    err = _refused([*base, "--model", str(tmp_path / "no-model")], capsys, "is not a folder")
    assert len(err) < 300  # not TransformerLens's list of every model name
    err = _refused([*base, "--model", "gpt3-mediun"], capsys, "model='gpt3-mediun' is neither")
    assert len(err) < 300
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _refused([*base, "--model", str(tmp_path / "bert")], capsys, "holds a 'bert' model")
    # recorded in results.json but never applied: refused for the stand-in
    _refused([*base, "--dtype", "float16"], capsys, "the stand-in trains in float32")
    assert not out.exists()


def test_a_missing_deb_is_one_line(tmp_path, capsys):
    _refused(["data", "austen", "--deb", str(tmp_path / "nope.deb")], capsys, "is not a file")
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    _refused(["data", "austen", "--deb", str(tmp_path / "bad.deb")], capsys, "not a Debian")


def test_an_error_inside_the_run_removes_the_folders_it_created(tmp_path, capsys, monkeypatch):
    from pcp_lens.reproduce import language

    def fails(out, cfg):
        (out / "models").mkdir(parents=True)
        raise FileNotFoundError("the Austen corpus is not cached at X.\nGet it once")

    monkeypatch.setattr(language, "run_language_study", fails)
    out = tmp_path / "new"
    _refused(["reproduce", "language", "--out", str(out)], capsys, "not cached at X. Get it once")
    assert not out.exists()


# -- randomised: every argv is a one-line refusal naming a flag, or runs with the flags applied --

#: flag -> (config field, how the value reads back); None: a flag that takes no value
_VALUED = {
    "--seed": "seed",
    "--trials": "n_trials",
    "--trigger": "trigger",
    "--schedule": "schedule",
    "--workers": "workers",
    "--switch-prob": "switch_prob",
    "--dropout": "dropout",
    "--model": "model",
    "--corpus": "corpus",
    "--recipe": "recipe",
    "--device": "device",
    "--dtype": "dtype",
    "--threads": None,
    "--scan-verify": "scan_verify",
    "--out": None,
    "--seeds": None,
    "--sentiments": "sentiments",
}
_SWITCHES = ["--quick", "--no-progress", "--head-bias", "--no-scaled-init", "--list-triggers",
             "--no-located"]
_VALUES = ["0", "1", "3", "-1", "x", "", "0.5", "1.5", "nan", "cpu", "cdua", "cuda", "float16",
           "float32", "gpt2", "standin", "love", "paper", "fast", "austen-sample", "2", "restore",
           "ablation"]


def _fake_runs(monkeypatch, calls):
    from pcp_lens.reproduce import language, toy

    def run_toy(out, cfg, seeds=None):
        calls.append((out, cfg, seeds))
        return {"findings": {}, "seeds": {}}

    def run_language(out, cfg):
        calls.append((out, cfg, None))
        return {"findings": {}, "located_findings": {}}

    monkeypatch.setattr(toy, "run_toy_study", run_toy)
    monkeypatch.setattr(language, "run_language_study", run_language)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    study=st.sampled_from(["toy", "language"]),
    valued=st.dictionaries(st.sampled_from(sorted(_VALUED)), st.sampled_from(_VALUES), max_size=4),
    switches=st.lists(st.sampled_from(_SWITCHES), max_size=2, unique=True),
)
def test_random_argv_clear_error_or_flags_applied(
    study, valued, switches, tmp_path, capsys, monkeypatch
):
    calls: list = []
    _fake_runs(monkeypatch, calls)
    valued = dict(valued)
    valued.setdefault("--out", str(tmp_path / "out"))
    argv = ["reproduce", study, *switches]
    for flag, v in valued.items():
        argv += [flag, v]
    threads = torch.get_num_threads()
    try:
        code, err = _run(argv, capsys)
        if "--threads" in valued and code == 0:
            assert torch.get_num_threads() == int(valued["--threads"])
    finally:
        torch.set_num_threads(threads)  # the rest of the suite runs on its own setting
    if code == 2:
        assert err.count("\n") == 1, err
        stems = [f.lstrip("-") for f in [*valued, *switches]]
        stems += [s.replace("-", "_") for s in stems] + ["n_trials", "seeds", "study", "invalid"]
        assert any(s in err for s in stems), f"{argv}: {err!r} names no flag given"
        assert not calls
        return
    assert code == 0, (argv, err)
    if "--list-triggers" in switches:
        return
    ((out, cfg, seeds),) = calls
    assert str(out) == valued["--out"]
    if "--seeds" in valued:
        assert seeds == [int(valued["--seeds"])] == [cfg.seed]
    for flag, v in valued.items():
        field = _VALUED[flag]
        if field == "seed":
            assert cfg.seed == int(v)
        elif field in ("n_trials", "workers"):
            assert getattr(cfg, field) == int(v)
        elif field in ("switch_prob", "dropout"):
            assert getattr(cfg, field) == float(v)
        elif field is not None and field != "sentiments":
            assert getattr(cfg, field) == v, (flag, v, cfg)
    assert cfg.quick == ("--quick" in switches)
    assert cfg.progress == ("--no-progress" not in switches)
    if study == "toy":
        assert cfg.located == ("--no-located" not in switches)
