"""The backdoor scan: planted backdoors (the answer known by construction), hygiene, errors."""

from __future__ import annotations

import pytest
import torch

from pcp_lens import GroupMetric, TokenGroups
from pcp_lens.scan import BackdoorScan, scan_backdoor
from pcp_lens.testing import plant_trigger, tiny_model

V, TRIGGER, TARGET = 50, 7, [1, 2, 3]


def benign(seed: int):
    return tiny_model(n_layers=3, d_model=32, seed=seed, block_scale=0.3, logit_scale=4)


def pairs(seed: int = 0, n: int = 24, length: int = 5, at: int = -1):
    clean = torch.randint(8, V, (n, length), generator=torch.Generator().manual_seed(seed))
    triggered = clean.clone()
    triggered[:, at] = TRIGGER
    return triggered, clean


METRIC = GroupMetric(TokenGroups({"target": TARGET}, d_vocab=V), "target", stat="prob")


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("place", ["mlp0", "mlp2", "attn1"])
def test_planted_module_ranks_first_and_is_the_circuit(seed, place, hygiene):
    base = benign(seed)
    model = plant_trigger(base, place, TRIGGER, TARGET, seed=seed)
    triggered, clean = pairs(seed + 10)
    snap = hygiene.snapshot(model)
    scan = scan_backdoor(
        model, triggered, clean, METRIC, reference=base, n_boot=100, progress=False
    )
    hygiene.check(model, snap)
    assert scan.info["gap"] > 0.5  # the planting worked: a precondition, not the claim
    modules = scan.table[scan.table["kind"].isin(["attn", "mlp"]) & scan.table["head"].isna()]
    assert modules.sort_values("rank")["site"].iloc[0] == place
    assert scan.info["circuit_residual"] <= 0.1
    if place.startswith("mlp"):
        assert scan.circuit == (place,) and scan.verified
    else:
        # the planted head or its layer, alone; its ablation also moves clean inputs (the
        # planted head's attention leaks a little when the trigger is absent), reported
        assert scan.circuit in ((f"{place}.h0",), (place,))
        assert scan.verified == (scan.info["circuit_clean"] <= 0.1)
        # heads are listed under a layer member only; a head member is its own head
        want = {place} if scan.circuit == (place,) else set()
        assert set(scan.info["heads"]) == want
        assert all(h.startswith(f"{place}.h") for hs in scan.info["heads"].values() for h in hs)
    # nothing was done to the embedding, and the reference evidence agrees
    assert scan.info["embedding"]["changed"] is False
    row = scan.table.set_index("site").loc[place]
    assert row["ref_restore"] > 0.8 and row["restore"] > 0.8


@pytest.mark.parametrize("verify", ["restore", "reference"])
@pytest.mark.parametrize("place", ["mlp0", "mlp2", "attn1"])
def test_patch_verified_circuit_is_the_planted_module(verify, place, hygiene):
    """Grown, ranked and verified by joint patches instead of ablation: the same answer."""
    base = benign(0)
    model = plant_trigger(base, place, TRIGGER, TARGET, seed=0)
    triggered, clean = pairs(10)
    snap = hygiene.snapshot(model)
    scan = scan_backdoor(
        model, triggered, clean, METRIC, reference=base, n_boot=20, verify=verify,
        progress=False,
    )
    hygiene.check(model, snap)
    assert scan.info["verify"] == verify
    modules = scan.table[scan.table["kind"].isin(["attn", "mlp"]) & scan.table["head"].isna()]
    assert modules.sort_values("rank")["site"].iloc[0] == place
    assert scan.circuit in ((place,), (f"{place}.h0",))
    assert scan.info["circuit_residual"] <= 0.1
    if verify == "restore":  # clean inputs are untouched by a restoring patch
        assert scan.info["circuit_clean"] == 0.0
    if place.startswith("mlp") or verify == "restore":
        assert scan.verified
    else:
        # the planted head leaks a little target probability without the trigger; the
        # reference's layer has no such head, so patching it in moves clean inputs too
        # (on TransformerLens 4's random init by 33 % of the gap): reported, not hidden
        assert scan.verified == (scan.info["circuit_clean"] <= 0.1)


@pytest.mark.parametrize("verify", ["restore", "reference"])
def test_joint_patch_of_one_site_equals_causal_patching(verify):
    """Every one-member step of the growth is a whole-sequence patch of that site: its residual
    is 1 - the site's restore (or ref_restore) evidence, from causal_patching; a reference
    patch's clean move is |ref_clean|."""
    base = benign(2)
    model = plant_trigger(base, "mlp1", TRIGGER, TARGET, seed=2)
    triggered, clean = pairs(3, n=12)
    scan = scan_backdoor(
        model, triggered, clean, METRIC, reference=base, n_boot=0, verify=verify,
        max_size=1, beam=6, progress=False,
    )
    col = "restore" if verify == "restore" else "ref_restore"
    table = scan.table.set_index("site")
    ones = scan.steps[scan.steps["size"] == 1]
    assert len(ones) == 6
    for r in ones.to_dict("records"):
        assert r["residual"] == pytest.approx(1 - table.loc[r["sites"], col], abs=1e-5)
        if verify == "reference":
            moved = abs(table.loc[r["sites"], "ref_clean"])
            assert r["clean_move"] == pytest.approx(moved, abs=1e-5)
        else:
            assert r["clean_move"] == 0.0


def test_trigger_before_the_readout_is_found_in_attention(hygiene):
    base = benign(1)
    model = plant_trigger(base, "attn2", TRIGGER, TARGET, seed=1)
    triggered, clean = pairs(5, at=1)  # the head carries it from position 1 to the end
    scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=50, progress=False)
    assert scan.info["trigger_positions"] == [1] and scan.info["readout_positions"] == [4]
    assert scan.circuit in (("attn2",), ("attn2.h0",))


def test_no_backdoor_gives_no_circuit():
    model = benign(0)
    triggered, clean = pairs(0)
    scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=20, progress=False)
    assert abs(scan.info["gap"]) < 0.1
    assert not scan.info["backdoor"] and scan.circuit == () and "no backdoor" in scan.summary()
    # a planted backdoor is one only above min_gap: the same rule, driven across it
    planted = plant_trigger(model, "mlp1", TRIGGER, TARGET)
    gap = scan_backdoor(planted, triggered, clean, METRIC, n_boot=0, progress=False).info["gap"]
    high = scan_backdoor(
        planted, triggered, clean, METRIC, n_boot=0, min_gap=gap + 0.01, progress=False
    )
    assert high.circuit == () and not high.info["backdoor"]


def test_evidence_matches_the_techniques_it_calls():
    """Spot-check the table against direct calls: the scan joins, it does not re-implement."""
    from pcp_lens import ablation_means, ablation_sweep, causal_patching

    base = benign(0)
    model = plant_trigger(base, "mlp1", TRIGGER, TARGET)
    triggered, clean = pairs(2)
    scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=0, progress=False)
    t = scan.table.set_index("site")
    gap = scan.info["gap"]
    means = ablation_means(model, clean, ["attn2"], positions=[4], progress=False)
    df = ablation_sweep(
        model, {"t": triggered}, METRIC, sites=["attn2"], means=means, positions=[4], progress=False
    )
    drop = float(df.value.iloc[0] - df.value.iloc[1]) / gap
    assert t.loc["attn2", "ablation_drop"] == pytest.approx(drop, abs=1e-6)
    p = causal_patching(model, clean, triggered, METRIC, "mlp0", positions="all", progress=False)
    assert t.loc["mlp0", "restore"] == pytest.approx(-float(p.effect.iloc[0]) / gap, abs=1e-6)


def test_deterministic_and_save_load_roundtrip(tmp_path):
    base = benign(0)
    model = plant_trigger(base, "mlp2", TRIGGER, TARGET)
    triggered, clean = pairs(4)
    a = scan_backdoor(model, triggered, clean, METRIC, n_boot=40, seed=3, progress=False)
    b = scan_backdoor(model, triggered, clean, METRIC, n_boot=40, seed=3, progress=False)
    assert a.table.equals(b.table) and a.circuit == b.circuit
    a.save(tmp_path / "scan")
    assert sorted(p.name for p in (tmp_path / "scan").iterdir()) == [
        "report.md",
        "scan.json",
        "scan.png",
    ]
    back = BackdoorScan.load(tmp_path / "scan")
    assert back.circuit == a.circuit and back.info["gap"] == pytest.approx(a.info["gap"])
    assert back.table["score"].tolist() == pytest.approx(a.table["score"].tolist())
    assert "mlp2" in (tmp_path / "scan" / "report.md").read_text()
    assert "<pre>" in a._repr_html_() and len(a.plot().axes[0].patches) == 1


def test_edit_keeps_and_removes_the_planted_backdoor():
    base = benign(0)
    model = plant_trigger(base, "mlp1", TRIGGER, TARGET)
    triggered, clean = pairs(6)
    scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=0, progress=False)
    ed = scan.edit(n_trials=20, max_rank=6, progress=False)
    s = ed.scores
    # the rank search measures ranks 1, 2, ... and stops at the first within tolerance
    assert list(ed.rank_search["rank"]) == list(range(1, ed.rank + 1))
    off = (ed.rank_search["triggered"] - s.loc["triggered", "unedited"]).abs()
    assert ed.within_tolerance == bool(off.iloc[-1] <= 0.05)
    assert not (off.iloc[:-1] <= 0.05).any()
    assert s.loc["triggered", "pcp"] == pytest.approx(ed.rank_search["triggered"].iloc[-1])
    # tuned to remove, most of the backdoor is gone (20 trials); tuned to keep, closer to unedited
    assert s.loc["triggered", "remove"] < 0.5 * s.loc["triggered", "unedited"]
    keep_off = abs(s.loc["triggered", "keep"] - s.loc["triggered", "unedited"])
    assert keep_off < abs(s.loc["triggered", "remove"] - s.loc["triggered", "unedited"])


def test_means_and_controls_reach_the_ablation_and_the_criterion():
    """``means=`` is the ablation's mean (the default is the mean over clean); ``controls=``
    bound the circuit's effect on more inputs: a control holding the trigger itself moves by the
    whole gap, so no circuit can meet the criterion, while a copy of clean changes nothing."""
    from pcp_lens import ablation_means
    from pcp_lens.sites import all_sites

    model = plant_trigger(benign(0), "mlp1", TRIGGER, TARGET)
    triggered, clean = pairs(3)
    kw = dict(n_boot=0, progress=False)
    plain = scan_backdoor(model, triggered, clean, METRIC, **kw)
    sites = all_sites(model, kinds=("embed", "attn", "mlp", "resid_pre"), heads=True)
    own = ablation_means(model, clean, sites, positions=plain.info["positions"], progress=False)
    same = scan_backdoor(model, triggered, clean, METRIC, means=own, **kw)
    assert same.table.equals(plain.table) and same.circuit == plain.circuit
    other = {k: v + 1.0 for k, v in own.items()}
    moved = scan_backdoor(model, triggered, clean, METRIC, means=other, **kw)
    assert not moved.table["ablation_drop"].equals(plain.table["ablation_drop"])

    copy = scan_backdoor(model, triggered, clean, METRIC, controls={"c": clean.clone()}, **kw)
    # a share of the gap: equal up to float32 rounding of the runs (1e-6 of the gap; on the
    # bridge the control's batch rounds 3e-10 apart)
    assert copy.circuit == plain.circuit and copy.info["circuit_clean"] == pytest.approx(
        plain.info["circuit_clean"], abs=1e-6
    )
    assert copy.info["controls"] == {"c": pytest.approx(plain.info["clean"])}
    hard = scan_backdoor(model, triggered, clean, METRIC, controls={"t": triggered}, **kw)
    assert plain.verified and not hard.verified
    tried = hard.steps.set_index("sites")
    assert tried.loc["mlp1", "clean_move"] > 0.9  # the planted unit moves the control by ~g
    with pytest.raises(ValueError, match="means must hold a mean for every scanned site"):
        scan_backdoor(model, triggered, clean, METRIC, means={"mlp1": own["mlp1"]}, **kw)
    with pytest.raises(ValueError, match=r"controls\['c'\] must be 5 tokens long"):
        scan_backdoor(model, triggered, clean, METRIC, controls={"c": clean[:, :4]}, **kw)


def test_edit_holds_extra_inputs_at_their_unedited_scores():
    model = plant_trigger(benign(0), "mlp1", TRIGGER, TARGET)
    triggered, clean = pairs(6)
    other = pairs(9)[1]
    scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=0, progress=False)
    ed = scan.edit(inputs={"other": other}, n_trials=10, max_rank=4, progress=False)
    assert list(ed.scores.index) == ["triggered", "clean", "other"]
    assert "other" in ed.rank_search.columns
    assert ed.remove.target["other"] == pytest.approx(ed.scores.loc["other", "unedited"])
    assert ed.remove.target["triggered"] == pytest.approx(ed.scores.loc["clean", "unedited"])
    with pytest.raises(ValueError, match="must not reuse the names"):
        scan.edit(inputs={"clean": other}, progress=False)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(clean=torch.randint(8, V, (5, 5))), "same number of pairs"),
        (dict(triggered="same"), "must differ in every pair"),
        (dict(metric=lambda lg: lg[:, -1, 1].mean()), "must declare the read-out positions"),
        (
            dict(reference=tiny_model(n_layers=2, d_model=32)),
            "reference must have the model's shape",
        ),
        (dict(reference=tiny_model(n_layers=3, d_model=32, d_vocab=60)), "d_vocab: 60 vs 50"),
        (dict(sites=["mlp9"]), "mlp9"),
        (dict(sites=["resid_post1"]), "sites must be of kinds"),
        (dict(n_boot=-1), "n_boot must be an int"),
        (dict(clean_tol=2.0), "clean_tol must be a number"),
        (dict(min_gap=-1), "min_gap must be a number >= 0"),
        (dict(verify="patch"), "verify must be one of"),
        (dict(verify="reference"), "verify='reference' .* pass reference="),
    ],
)
def test_bad_input_is_refused_and_leaves_the_model_alone(change, match, hygiene):
    model = plant_trigger(benign(0), "mlp1", TRIGGER, TARGET)
    triggered, clean = pairs(0, n=6)
    kw = dict(triggered=triggered, clean=clean, metric=METRIC, n_boot=5, progress=False)
    kw.update(change)
    if kw["triggered"] == "same" if isinstance(kw["triggered"], str) else False:
        kw["triggered"] = clean.clone()
    snap = hygiene.snapshot(model)
    with pytest.raises(ValueError, match=match):
        scan_backdoor(model, **kw)
    hygiene.check(model, snap)


def test_user_hooks_stay_in_force_and_compose():
    """A user's hook that removes the planted unit's output hides the backdoor from the scan."""
    model = plant_trigger(benign(0), "mlp1", TRIGGER, TARGET)
    triggered, clean = pairs(1)
    with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: a * 0)]):
        scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=0, progress=False)
    assert scan.info["gap"] < 0.2
    assert model.blocks[1].hook_mlp_out.fwd_hooks == []


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("place", ["mlp0", "mlp2", "attn1"])
def test_attribution_screen_finds_the_exhaustive_circuit(seed, place, hygiene):
    """Forced on (every head estimated, only 3 verified), the screen changes no circuit."""
    model = plant_trigger(benign(seed), place, TRIGGER, TARGET, seed=seed)
    triggered, clean = pairs(seed + 10)
    full = scan_backdoor(model, triggered, clean, METRIC, n_boot=0, screen=None, progress=False)
    snap = hygiene.snapshot(model)
    scr = scan_backdoor(
        model, triggered, clean, METRIC, n_boot=0, screen_above=0, screen_verify=3, progress=False
    )
    hygiene.check(model, snap)
    assert scr.circuit == full.circuit
    info = scr.info["screen"]
    assert info["method"] == "relp" and len(info["verified"]) == 3
    t, f = scr.table.set_index("site"), full.table.set_index("site")
    est = t[t["estimated"]]
    assert len(est) == info["n_heads"] - 3 == 9 and est["score"].isna().all()
    assert est["ablation_drop"].isna().all() and est["restore"].notna().all()
    # every exactly scanned row carries the exhaustive scan's numbers
    done = t.index[~t["estimated"]]
    assert t.loc[done, "score"].tolist() == pytest.approx(f.loc[done, "score"].tolist(), abs=1e-9)
    assert "3 largest verified exactly" in scr.summary()
    # the default leaves a model this small exhaustive, exactly as before
    assert full.info["screen"] == {} and not full.table["estimated"].any()


def test_every_sites_evidence_equals_the_sweep_and_whole_sequence_patching():
    """Ablation as patches from the first ablated position, patching from the first differing
    one: every row equals ablation_sweep and causal_patching(positions="all") (trigger at 1,
    read-out at 4: the ablated positions {1, 4} are not contiguous)."""
    from pcp_lens import ablation_means, ablation_sweep, causal_patching
    from pcp_lens.scoring import per_prompt

    model = plant_trigger(benign(1), "attn2", TRIGGER, TARGET, seed=1)
    triggered, clean = pairs(5, n=12, at=1)
    scan = scan_backdoor(model, triggered, clean, METRIC, n_boot=0, progress=False)
    t = scan.table.set_index("site")
    sites = [s for s in t.index if t.loc[s, "kind"] != "embed"]
    gap = scan.info["gap"]
    metric = per_prompt(METRIC)
    means = ablation_means(model, clean, sites, positions=[1, 4], progress=False)
    df = ablation_sweep(
        model, {"t": triggered, "c": clean}, metric, sites=sites, means=means,
        positions=[1, 4], progress=False,
    )
    v = {(r["site"], r["input_set"]): r["value"] for r in df.to_dict("records")}
    p = causal_patching(
        model, clean, triggered, metric, [s for s in sites if not s.startswith("resid_pre")],
        positions="all", direction="both", progress=False,
    )
    e = {(r["direction"], r["site"]): r["effect"] for r in p.to_dict("records")}
    for s in sites:
        drop = (v[("unchanged", "t")] - v[(s, "t")]) / gap
        moved = (v[(s, "c")] - v[("unchanged", "c")]) / gap
        assert t.loc[s, "ablation_drop"] == pytest.approx(drop, abs=1e-6), s
        assert t.loc[s, "ablation_clean"] == pytest.approx(moved, abs=1e-6), s
        if not s.startswith("resid_pre"):
            restore, induce = -e[("clean_to_corrupted", s)], e[("corrupted_to_clean", s)]
            assert t.loc[s, "restore"] == pytest.approx(restore / gap, abs=1e-6), s
            assert t.loc[s, "induce"] == pytest.approx(induce / gap, abs=1e-6), s
