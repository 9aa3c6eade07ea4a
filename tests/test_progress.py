"""progress=False keeps every long-running function silent; progress=True shows a bar."""

from __future__ import annotations

import pytest
import torch

from pcp_lens import (
    GroupMetric,
    TokenGroups,
    TrainConfig,
    ablation_means,
    ablation_sweep,
    causal_patching,
    collect_stats,
    fit_pcp,
    group_lens,
    train,
    tune,
)
from pcp_lens.testing import tiny_model

GROUPS = TokenGroups({"neg": range(10)}, d_vocab=50)
NEG = GroupMetric(GROUPS, "neg", k=5, positions=(-1,))


def calls(progress: bool) -> dict:
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 50, (2, 8, 3), generator=g)
    pcp = fit_pcp(model, a, "mlp0", 1, progress=False)
    return {
        "collect_stats": lambda: collect_stats(model, a, "mlp0", progress=progress),
        "ablation_means": lambda: ablation_means(model, a, "mlp0", progress=progress),
        "ablation_sweep": lambda: ablation_sweep(model, a, NEG, method="zero",
                                                 progress=progress),
        "group_lens": lambda: group_lens(model, a, NEG, progress=progress),
        "causal_patching": lambda: causal_patching(model, a, b, NEG, progress=progress),
        "fit_pcp": lambda: fit_pcp(model, a, "mlp0", 1, progress=progress),
        "tune": lambda: tune(model, pcp, {"a": a}, NEG, n_trials=2, progress=progress),
        "train": lambda: train(tiny_model(), torch.randint(0, 50, (16, 4), generator=g),
                               config=TrainConfig(epochs=1, batch_size=8, progress=progress)),
    }


NAMES = list(calls(False))


@pytest.mark.parametrize("name", NAMES)
def test_progress_false_prints_nothing(name, capfd):
    calls(False)[name]()
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"{name} printed with progress=False: {(out + err)[:200]!r}"


@pytest.mark.parametrize("name", ["ablation_sweep", "causal_patching", "tune"])
def test_progress_true_shows_a_bar(name, capfd):
    calls(True)[name]()
    assert capfd.readouterr().err  # the bar is drawn on stderr
