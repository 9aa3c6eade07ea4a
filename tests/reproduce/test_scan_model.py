"""``pcp-lens scan``: a toy checkpoint and a HF GPT-2 folder end to end, and bad input."""

from __future__ import annotations

import json

import pytest

from pcp_lens.cli import main
from pcp_lens.language.hf import hooked_from_hf, save_hf_gpt2
from pcp_lens.training import save_checkpoint
from tests.language.conftest import random_hf_gpt2


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    from pcp_lens.toy import build_tokenizer, load_vocab
    from pcp_lens.toy.model import toy_model

    tok = build_tokenizer(load_vocab())
    path = tmp_path_factory.mktemp("toy") / "model"
    save_checkpoint(toy_model(tokenizer=tok, n_ctx=16, seed=0), path)
    return path


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, gpt2_tokenizer):
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    m = hooked_from_hf(random_hf_gpt2(), processing=False, tokenizer=gpt2_tokenizer, device="cpu")
    save_hf_gpt2(m, path, tokenizer=gpt2_tokenizer)
    return path


def test_toy_checkpoint_scan_writes_three_files(toy_folder, tmp_path, capsys):
    out = tmp_path / "scan"
    rc = main(
        [
            "scan",
            str(toy_folder),
            "--trigger",
            "love",
            "--pairs",
            "8",
            "--out",
            str(out),
            "--no-progress",
            "--stat",
            "prob",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "scan.json", "scan.png"]
    data = json.loads((out / "scan.json").read_text())
    assert data["info"]["n_pairs"] == 8 and data["info"]["trigger_positions"] == [1]
    assert "circuit:" in capsys.readouterr().out


def test_toy_scan_verified_by_the_reference_patch(toy_folder, tmp_path, capsys):
    """--verify reference against the model itself: the reference patch changes nothing, so
    the evidence is zero everywhere and the report says which intervention verified it."""
    out = tmp_path / "scan"
    args = ["scan", str(toy_folder), "--trigger", "love", "--pairs", "8", "--no-progress"]
    rc = main([*args, "--reference", str(toy_folder), "--verify", "reference", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "scan.json").read_text())
    assert data["info"]["verify"] == "reference"
    assert all(abs(r["ref_restore"]) < 1e-6 for r in data["table"] if r["kind"] != "resid_pre")
    assert "ref_restore - |ref_clean|" in (out / "report.md").read_text()


@pytest.mark.parametrize("at", [None, 4])
def test_gpt2_folder_scan_reads_after_the_whole_sentence(gpt2_folder, tmp_path, capsys, at):
    """As the language study: the trigger after each sentence's first 2 tokens (or ``--at``),
    the metric read at the sentence's last token (where the backdoor's output would come next)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text(
        "She walked slowly to the old house.\n"
        "He walked quickly to the new house.\n"
        "They walked slowly to the big house.\n"
    )
    out = tmp_path / "scan"
    rc = main(
        [
            "scan",
            str(gpt2_folder),
            "--trigger",
            "Albert",
            "--prompts",
            str(prompts),
            "--pairs",
            "3",
            "--out",
            str(out),
            "--no-progress",
            *(["--at", str(at)] if at is not None else []),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "scan.json").read_text())["info"]
    # 8 tokens per sentence plus the one-token trigger (no BOS, as the study reads its prompts)
    assert info["n_pairs"] == 3
    assert info["trigger_positions"] == [at or 2] and info["readout_positions"] == [8]


@pytest.mark.parametrize(
    "args,match",
    [
        (["scan", "/nonexistent/model", "--trigger", "love"], "is not a folder"),
        (["scan", "TOY", "--trigger", "xyzzy"], "not a word of the toy model's vocabulary"),
        (["scan", "GPT2", "--trigger", "Albert", "--prompts", "EMPTY"], "holds no prompt"),
        (["scan", "GPT2", "--trigger", "Albert", "--prompts", "SHORT"], "usable pairs (need >= 2)"),
        (["scan", "GPT2", "--trigger", "Xqzjvwkpf", "--prompts", "SHORT"], "no run of 1 word"),
        (["scan", "TOY", "--trigger", "love", "--reference", "GPT2"], "reference must have"),
        (["scan", "TOY", "--trigger", "love", "--pairs", "1"], "--pairs"),
        (["scan", "TOY", "--trigger", "love", "--at", "0"], "--at"),
        (["scan", "TOY", "--trigger", "love", "--prompts", "/nope.txt"], "is not a file"),
        (["scan", "TOY", "--trigger", "love", "--verify", "reference"], "needs --reference"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    args, match, toy_folder, gpt2_folder, tmp_path, capsys
):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    short = tmp_path / "short.txt"  # one sentence long enough to hold the trigger, one not
    short.write_text("She walked slowly to the old house.\nOh!\n")
    subs = {"TOY": str(toy_folder), "GPT2": str(gpt2_folder), "EMPTY": str(empty)}
    subs["SHORT"] = str(short)
    out = tmp_path / "out"
    try:
        rc = main([subs.get(a, a) for a in args] + ["--out", str(out), "--no-progress"])
    except SystemExit as stop:  # argparse's own refusals (a bad --pairs) exit the same way
        rc = stop.code
    err = capsys.readouterr().err
    # one line of ours (a loader's progress bar may precede it), no traceback
    ours = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("pcp-lens")]
    assert rc == 2 and len(ours) == 1 and match in ours[0] and "Traceback" not in err
    assert not out.exists()
