"""The study functions reproduce, on a fixed seed, the numbers recorded before a restructuring.

(Under TransformerLens 4 the fixture is ``equivalence_bridge.safetensors``, recorded later; see
``FIXTURE``.)

``tests/data/equivalence.safetensors`` was written by ``python -m tests.test_equivalence`` (this
file's :func:`record`) with the code as it was before the metric contract moved into
:mod:`pcp_lens.scoring`. Only numbers are stored, in row order, so renamed table columns do not
matter; a changed number, row order or row count does. Re-record only for an intended change of
results.

One key was corrected after recording, because the restructuring fixed a bug the fixture exposed:
``patching.group.value``. The old patching code kept the target run's logits in the metric's
declared position order (``(-1, 2)``) but spliced patched logits in as if sorted (``[2, 4]``), so a
patch after position 2 scored the wrong position; the corrected values equal the naive one-forward
patching oracle (``tests/test_patching.py::test_metric_with_unsorted_positions``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pcp_lens import _tl
from pcp_lens.ablation import ablation_means, ablation_sweep
from pcp_lens.groups import GroupMetric, PositionMetric, TokenGroups, group_metrics
from pcp_lens.lens import group_lens, lens_logits
from pcp_lens.patching import causal_patching
from pcp_lens.pcp import fit_pcp
from pcp_lens.stats import collect_stats
from pcp_lens.testing import tiny_model
from pcp_lens.tuning import score_inputs, sweep, tune, validation_loss

# TransformerLens 4's bridge draws another random model from the same seed (a Hugging Face GPT-2
# without b_U), so it has its own fixture: recorded 2026-12-03 under TL 4.3 by this file's record(),
# it pins the bridge's numbers against later changes; that the two backends agree on the same
# weights is tests/test_cross_backend.py's job
FIXTURE = Path(__file__).parent / "data" / (
    "equivalence.safetensors" if _tl.BACKEND == "hooked" else "equivalence_bridge.safetensors"
)


def _toks(n: int, p: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 50, (n, p), generator=torch.Generator().manual_seed(seed))


def _f64(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def study_outputs() -> dict[str, torch.Tensor]:
    """Every study function's numbers on a tiny seeded model, keyed by what produced them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _outputs()
    finally:
        torch.set_num_threads(threads)


def _outputs() -> dict[str, torch.Tensor]:
    model = tiny_model(n_layers=3, seed=0)
    groups = TokenGroups({"neg": range(0, 15), "pos": range(15, 30)}, d_vocab=50)
    sets = {"pp": _toks(10, 3, 1), "pt": _toks(10, 3, 2), "nn": _toks(8, 4, 3)}
    out: dict[str, torch.Tensor] = {}

    # statistics and ablation
    st = collect_stats(model, _toks(12, 5, 5), ["mlp0", "attn1"], positions=[1, -1], progress=False)
    out["stats.mlp0.mean"], out["stats.mlp0.cov"] = st["mlp0"].mean, st["mlp0"].cov  # type: ignore[assignment]
    means = ablation_means(
        model,
        sets,
        ["attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2", "attn1.h1"],
        positions=[1],
        progress=False,
    )
    metrics = {
        **group_metrics(groups, k=5, positions=(-1,)),
        "prob0": GroupMetric(groups, "neg", "prob", positions=(0, -1)),
        "plain": lambda lg: lg[:, -1, 3].mean(),
        "per_prompt": lambda lg: lg[:, :, 7].mean(-1),
    }
    for method in ("mean", "zero", "resample"):
        df = ablation_sweep(
            model,
            sets,
            metrics,
            sites=["attn0", "mlp0", "mlp1", "attn1.h1", "mlp2"],
            combos={"m01": ["mlp0", "mlp1"]},
            method=method,
            means=means,
            positions=[1] if method == "mean" else None,
            seed=3,
            batch_size=4,
            progress=False,
        )
        out[f"ablation.{method}.value"] = _f64(df["value"])
        out[f"ablation.{method}.n"] = _f64(df["n"])

    # lens
    lens_in = _toks(9, 4, 6)
    for ln in ("isolated", "cached", "none"):
        df = group_lens(
            model, lens_in, groups, positions=[0, -1], ln=ln, batch_size=4, progress=False
        )
        out[f"lens.{ln}.value"] = _f64(df["value"])
    df = group_lens(
        model,
        lens_in,
        {"g": GroupMetric(groups, "pos", positions=(1, 2)), "plain": lambda lg: lg[:, :, 2].mean()},
        sites=["embed", "attn0.h2", "mlp1", "resid_post2"],
        batch_size=5,
        progress=False,
    )
    out["lens.declared.value"] = _f64(df["value"])
    logits = lens_logits(model, lens_in, ["mlp0", "attn1.h2"], [0, -1])
    out["lens_logits.mlp0"], out["lens_logits.full"] = logits["mlp0"], logits["full"]

    # patching
    clean, corrupted = _toks(4, 5, 7), _toks(4, 5, 8)
    for name, metric in {
        "group": GroupMetric(groups, "neg", k=5, positions=(-1, 2)),
        "position": PositionMetric(lambda lg: lg[:, -1, 4].mean(), positions=(-1,)),
        "plain": lambda lg: lg[:, -1, 0].mean(),
    }.items():
        df = causal_patching(
            model,
            clean,
            corrupted,
            metric,
            sites=["attn0", "mlp0", "resid_pre1", "attn1.h3", "resid_mid2", "mlp2"],
            direction="both",
            max_batch_tokens=37,
            progress=False,
        )
        out[f"patching.{name}.value"] = _f64(df["value"])
        out[f"patching.{name}.baseline"] = _f64(df["baseline"])
    df = causal_patching(
        model,
        clean,
        corrupted,
        GroupMetric(groups, "pos", k=5),
        sites=["mlp1"],
        positions="all",
        progress=False,
    )
    out["patching.all.value"] = _f64(df["value"])

    # PCP: fit, score, tune, sweep
    rows = [r for t in sets.values() for r in t]
    pcp = fit_pcp(model, rows, ["mlp0", "attn2"], {"mlp0": 2, "attn2": 1}, progress=False)
    for s in ("mlp0", "attn2"):
        out[f"pcp.{s}.directions"] = pcp.part(s).directions
        out[f"pcp.{s}.scales"] = pcp.part(s).scales
    neg = GroupMetric(groups, "neg", k=5)
    both = {"neg": neg, "pos": GroupMetric(groups, "pos", "prob", positions=(0, -1))}
    out["score_inputs.single"] = _f64(score_inputs(model, sets, neg, pcp).values())
    out["score_inputs.named"] = _f64(score_inputs(model, sets, both, pcp).values())
    res = tune(model, pcp, sets, neg, target={"pt": 0.0}, n_trials=6, progress=False)
    for s in ("mlp0", "attn2"):
        out[f"tune.{s}.scales"] = res.replacement.part(s).scales
    out["tune.scores"] = _f64(res.scores.values())
    out["tune.losses"] = _f64(t.value for t in res.study.trials)
    df = sweep(
        model,
        res.replacement,
        {"mlp0": [0.5, 1.0], ("attn2", 0): [-1.0]},
        sets,
        both,
        val_tokens=_toks(4, 6, 9),
    )
    out["sweep.value"] = _f64(df["value"])
    out["validation_loss"] = _f64([validation_loss(model, _toks(4, 6, 9), pcp)])
    return {k: v.detach().contiguous() for k, v in out.items()}


def record() -> None:
    """Write the fixture (run once, before a restructuring)."""
    FIXTURE.parent.mkdir(exist_ok=True)
    save_file(study_outputs(), str(FIXTURE))


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return study_outputs()


def test_the_same_outputs_are_produced(outputs) -> None:
    assert sorted(outputs) == sorted(load_file(str(FIXTURE)))


@pytest.mark.parametrize("key", sorted(load_file(str(FIXTURE))) if FIXTURE.exists() else [])
def test_study_output_unchanged(outputs, key) -> None:
    want = load_file(str(FIXTURE))[key]
    # The refactoring moved code, not arithmetic: equal up to float32 rounding. Which rounding
    # depends on the CPU kernels torch picks (AVX-512, AVX2, SSE4.2 differ): on one machine the
    # largest difference from the fixture was 1.6e-6 (ATEN_CPU_CAPABILITY=default), every value
    # is O(1) or below, and a changed formula moves numbers by 1e-3 or more, so 1e-5 separates them.
    torch.testing.assert_close(outputs[key], want, rtol=1e-5, atol=1e-5, equal_nan=True)


if __name__ == "__main__":
    record()
