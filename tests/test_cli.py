"""The ``pcp-lens`` command line."""

from __future__ import annotations

import pytest

from pcp_lens.cli import main


def test_demo_prints_the_ablation_table(capsys):
    assert main(["demo", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Tab. I" in out and "L3" in out and "val_loss" in out


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "gpt2"])
    assert "invalid choice" in capsys.readouterr().err
