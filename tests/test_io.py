"""Atomic writes (:mod:`pcp_lens._io`): what they write gets the user's umask permissions, and
temporary files of a killed writer are removed on the next start, those of a live one kept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pcp_lens._io import atomic_dir, atomic_file, remove_stale_temps, write_text_atomic
from pcp_lens.checkpoints import save_checkpoint
from pcp_lens.pcp import PCPReplacement, SitePCP


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_and_folders_get_the_umask_modes(tmp_path, umask):
    # the reference: what plain open() and mkdir() give under this umask
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    file_mode, dir_mode = _mode(tmp_path / "plain.txt"), _mode(tmp_path / "plain")
    assert (file_mode, dir_mode) == (0o666 & ~umask, 0o777 & ~umask)

    assert _mode(write_text_atomic(tmp_path / "results.json", "{}")) == file_mode
    with atomic_file(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"1")
    assert _mode(tmp_path / "a.bin") == file_mode
    with atomic_dir(tmp_path / "ck") as tmp:
        (tmp / "w.txt").write_text("w")
    assert _mode(tmp_path / "ck") == dir_mode
    assert _mode(tmp_path / "ck" / "w.txt") == file_mode


def test_saved_pcp_and_checkpoint_get_the_umask_modes(tmp_path, model, umask):
    pcp = PCPReplacement.from_parts(model, [SitePCP("mlp0", torch.eye(16)[:1], [2.0])])
    assert _mode(pcp.save(tmp_path / "pcp.safetensors")) == 0o666 & ~umask
    ck = save_checkpoint(model, tmp_path / "ck", tokenizer=None)
    assert _mode(ck) == 0o777 & ~umask
    files = [p for p in ck.rglob("*") if p.is_file()]
    assert files and {_mode(p) for p in files} == {0o666 & ~umask}


def test_a_replaced_file_takes_the_umask_mode_too(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "r.json", "1")
        os.chmod(path, 0o600)
        assert _mode(write_text_atomic(path, "2")) == 0o644
    finally:
        os.umask(old)


def _dead_pid() -> int:
    p = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(p.stdout)


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / "sub").mkdir()
    stale = [
        tmp_path / f".results.json.{dead}.k2j_x.tmp",
        tmp_path / "sub" / f".pcp.safetensors.{dead}.abc.tmp",
    ]
    for p in stale:
        p.write_text("partial")
    stale_dir = tmp_path / f".ck.{dead}.q1w2.tmp"
    (stale_dir / "tokenizer").mkdir(parents=True)
    (stale_dir / "model.safetensors").write_text("partial")
    kept = [
        tmp_path / f".report.md.{live}.zz9.tmp",  # a writer of this process, still writing
        tmp_path / ".hidden.tmp",  # not one of ours
        tmp_path / "results.json",
        tmp_path / "sub" / "a.12.tmp.txt",
    ]
    for p in kept:
        p.write_text("keep")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([*stale, stale_dir])
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
    assert remove_stale_temps(tmp_path) == []
    assert remove_stale_temps(tmp_path / "missing") == []


def test_a_folder_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    dead = _dead_pid()
    # killed between "move the old checkpoint aside" and "rename the new one into place"
    aside = tmp_path / f".ck.{dead}.a1.old"
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "w.txt").write_text("old checkpoint")
    (tmp_path / f".ck.{dead}.b2.tmp").mkdir()
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert (tmp_path / "ck" / "w.txt").read_text() == "old checkpoint"
    # killed after the new one took its place: the moved-aside copy is only removed
    aside.mkdir()
    (aside / "x").mkdir()
    (aside / "x" / "w.txt").write_text("older")
    remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert (tmp_path / "ck" / "w.txt").read_text() == "old checkpoint"


def test_a_killed_writer_leaves_a_temp_the_next_start_removes(tmp_path):
    code = (
        "import os, sys\n"
        "from pcp_lens._io import atomic_file\n"
        "with atomic_file(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.json")], check=False)
    assert p.returncode == -9
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".out.json.")
    assert remove_stale_temps(tmp_path) == left
    assert list(tmp_path.iterdir()) == []
