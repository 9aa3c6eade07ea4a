"""The paper's toy-model numbers (METHODS.md §11.1), shown beside ours in the report.

These are the published values, copied from the paper's tables; nothing here is an output of
pcp_lens. Layers are the paper's 1-based names.
"""

from __future__ import annotations

# Tab. I: p+t top-10 negativity with one module mean-ablated.
TAB1 = {
    2: {"attn": [0.00, 0.44, 0.08], "mlp": [0.00, 0.00, 0.00], "unchanged": 0.35},
    3: {"attn": [0.00, 0.63, 0.50], "mlp": [0.00, 0.00, 0.00], "unchanged": 0.23},
}

# Tab. II (3-sentiment, p+t inputs): module -> (p neg, p pos, t neg, t pos).
TAB2 = {
    "L1 att0": (0.36, 0.23, 0.54, 0.46),
    "L1 att1": (0.23, 0.50, 0.12, 0.50),
    "L1 att2": (0.10, 0.35, 0.50, 0.50),
    "L1 att3": (0.15, 0.49, 0.43, 0.57),
    "L1 mlp": (0.26, 0.74, 1.00, 0.00),
    "L2 mlp": (0.00, 1.00, 0.00, 1.00),
    "L3 att0": (0.00, 1.00, 0.02, 0.98),
    "L3 att1": (0.00, 1.00, 0.09, 0.91),
    "L3 att2": (0.00, 1.00, 0.40, 0.60),
    "L3 att3": (0.00, 1.00, 0.29, 0.71),
    "L3 mlp": (0.00, 1.00, 0.75, 0.25),
    "full model": (0.00, 1.00, 0.23, 0.77),
}

# Tab. III (2-sent, rank 1) / IV (3-sent, rank 2): PCP on MLPs; columns None, 1, 3, 1 & 3.
TAB3 = {
    "pp": [0.01, 0.00, 0.00, 0.00],
    "nn": [1.00, 1.00, 1.00, 1.00],
    "pn": [1.00, 1.00, 1.00, 1.00],
    "np": [0.04, 0.00, 0.04, 0.00],
    "pt": [0.35, 0.35, 0.35, 0.35],
    "val_loss": [5.46, 6.25, 5.46, 6.06],
}
TAB4 = {
    "pp": [0.01, 0.05, 0.01, 0.00],
    "nn": [1.00, 0.98, 1.00, 0.99],
    "ss": [0.00, 0.00, 0.00, 0.00],
    "pn": [1.00, 0.86, 1.00, 0.99],
    "np": [0.04, 0.07, 0.03, 0.08],
    "pt": [0.23, 0.23, 0.23, 0.24],
    "st": [0.38, 0.38, 0.37, 0.37],
    "val_loss": [5.50, 6.21, 5.50, 5.79],
}

# Tab. V (2-sent): layer-1 rank-1 PCP, relative factor 0.6, 0.75, 0.8, 1.0, 1.1.
TAB5_FACTORS = [0.6, 0.75, 0.8, 1.0, 1.1]
TAB5 = {
    "pp": [0.00, 0.00, 0.00, 0.00, 0.00],
    "nn": [1.00, 1.00, 1.00, 1.00, 1.00],
    "pn": [1.00, 1.00, 1.00, 1.00, 1.00],
    "np": [0.00, 0.00, 0.00, 0.00, 0.00],
    "pt": [0.00, 0.17, 0.20, 0.35, 0.42],
    "val_loss": [5.96, 6.11, 6.16, 6.25, 6.28],
}

# Tab. VI (3-sent): layer-1 rank-2 PCP; columns unedited, (1.0, 1.0), (-1.2, 0.5).
TAB6_SETTINGS = [(1.0, 1.0), (-1.2, 0.5)]
TAB6 = {
    "pp": [0.01, 0.05, 0.01],
    "nn": [1.00, 0.98, 0.08],
    "ss": [0.00, 0.00, 0.00],
    "pn": [1.00, 0.86, 0.02],
    "np": [0.04, 0.07, 0.02],
    "pt": [0.23, 0.23, 0.41],
    "st": [0.38, 0.38, 0.68],
    "val_loss": [5.50, 6.21, 5.83],
}

# Tab. VII (3-sent): layer-2 attention rank-4 PCP; unedited and two lost multiplier settings.
TAB7 = {"pt": [0.23, 0.30, 0.26], "st": [0.38, 0.40, 0.36], "val_loss": [5.50, 5.50, 5.52]}

# Tab. XII (3-sent): p+t with one module's output patched from p+p.
TAB12 = {
    "attn0": (0.00, -0.23),
    "mlp0": (0.03, -0.20),
    "attn1": (0.00, -0.23),
    "mlp1": (0.00, -0.23),
    "attn2": (0.00, -0.23),
    "mlp2": (0.01, -0.22),
}

# Tab. XIII (2-sent) / XIV (3-sent): rank-4 PCP on attention; columns None, 2, 2 & 3.
TAB13 = {
    "pp": [0.01, 0.00, 0.01],
    "nn": [1.00, 1.00, 1.00],
    "pn": [1.00, 1.00, 1.00],
    "np": [0.04, 0.04, 0.04],
    "pt": [0.35, 0.36, 0.40],
    "val_loss": [5.46, 5.62, 5.95],
}
TAB14 = {
    "pp": [0.01, 0.02, 0.01],
    "nn": [1.00, 1.00, 1.00],
    "ss": [0.00, 0.00, 0.00],
    "pn": [1.00, 1.00, 0.99],
    "np": [0.04, 0.04, 0.03],
    "pt": [0.23, 0.24, 0.30],
    "st": [0.38, 0.37, 0.36],
    "val_loss": [5.50, 5.51, 5.57],
}

# §IV-B: freezing MLPs during poisoning: ~60% lower top-k negativity (at ~50% longer training).
FREEZING_NEGATIVITY_DROP = 0.60
