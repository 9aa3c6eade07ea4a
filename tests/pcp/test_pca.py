"""The fitting maths of PCP: bad shapes and positions get clear errors (the rest: test_pcp.py)."""

from __future__ import annotations

import re

import pytest
import torch

from pcp_lens.pcp import fit_pca, fit_pcp, least_squares_scales, reference_code_directions


@pytest.mark.parametrize(
    "mean,comps",
    [
        (torch.zeros(4), torch.eye(3)[:2]),  # widths 4 and 3
        (torch.zeros(2, 3), torch.eye(3)[:2]),  # a batch of means
        (torch.zeros(3), torch.zeros(3)),  # one direction without its rank axis
    ],
)
def test_reference_code_directions_refuses_mismatched_shapes(mean, comps):
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"mean must be [d_model] and components [r, d_model] of the same d_model, got mean of "
            f"shape {tuple(mean.shape)} and components of shape {tuple(comps.shape)}"
        ),
    ):
        reference_code_directions(mean, comps)


@pytest.mark.parametrize(
    "positions,shown", [([1.5], "got 1.5 in [1.5]"), ([1, 1], "got [1] more than once")]
)
def test_fitting_follows_the_one_position_rule(model, positions, shown):
    tokens = torch.randint(1, 50, (8, 4), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=re.escape(shown)):
        fit_pca(model, tokens, "mlp0", 2, positions=positions, progress=False)
    with pytest.raises(ValueError, match=re.escape(shown)):
        fit_pcp(model, tokens, "mlp0", 2, positions=positions, progress=False)
    pcp = fit_pcp(model, tokens, "mlp0", 2, positions=1, progress=False)  # a bare int
    with pytest.raises(ValueError, match=re.escape(shown)):
        least_squares_scales(model, pcp, tokens, positions=positions, progress=False)
