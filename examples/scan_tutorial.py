"""Scan a model for a backdoor: plant one where the answer is known, then let the scan find it.

Run: python examples/scan_tutorial.py
"""

import torch

from pcp_lens import GroupMetric, TokenGroups, scan_backdoor
from pcp_lens.testing import plant_trigger, tiny_model

# A benign model and a copy with a hand-written backdoor in layer 1's MLP: one neuron reads the
# trigger (token 7) and writes the target group (tokens 1-3).
benign = tiny_model(n_layers=3, d_model=32, block_scale=0.3, logit_scale=4)
suspect = plant_trigger(benign, "mlp1", trigger=7, target=[1, 2, 3])

# Pairs that differ only where the trigger was inserted; the metric reads the next token.
clean = torch.randint(8, 50, (32, 5), generator=torch.Generator().manual_seed(0))
triggered = clean.clone()
triggered[:, -1] = 7
target = GroupMetric(TokenGroups({"target": [1, 2, 3]}, d_vocab=50), "target", stat="prob")

# One call: evidence per site, bootstrap intervals, a ranking, a verified circuit.
scan = scan_backdoor(suspect, triggered, clean, target, reference=benign, progress=False)
print(scan.summary())
print(scan.table.sort_values("rank")[["site", "score", "restore", "induce", "ref_restore"]].head())

# The circuit as a PCP replacement, tuned to keep the backdoor and tuned to remove it.
edit = scan.edit(n_trials=20, max_rank=4, progress=False)
print(f"PCP rank {edit.rank} (within 0.05 of unedited: {edit.within_tolerance})")
print(edit.scores.round(3))

scan.save("scan_out")  # scan.json, scan.png, report.md
print("wrote scan_out/")
