"""The quick toy reproduction runs end to end through the CLI and its numbers are its own.

This is CI's smoke test of ``pcp-lens reproduce toy --quick``: it trains the quick 2- and
3-sentiment models, writes the report, and the tables it wrote are recomputed here from the saved
checkpoints and replacements with the library's functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pcp_lens.cli import main
from pcp_lens.groups import GroupMetric
from pcp_lens.inputs import as_tokens
from pcp_lens.pcp import PCPReplacement
from pcp_lens.reproduce.report import write_report
from pcp_lens.reproduce.toy import findings
from pcp_lens.toy.data import eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import toy_data
from pcp_lens.training import load_checkpoint
from pcp_lens.tuning import score_inputs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    assert main(["reproduce", "toy", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_outputs_written(run: Path):
    r = json.loads((run / "results.json").read_text())
    assert set(r["findings"]) == {f"F{i}" for i in range(1, 8)}
    for f in r["findings"].values():
        assert f["holds"] in (True, False, None) and f["detail"]
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
    data = toy_data(3, quick=True, seed=0)
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
