"""pcp_lens: find, remove, insert and edit backdoor mechanisms in TransformerLens models."""

from pcp_lens.groups import (
    GroupMetric,
    TokenGroups,
    group_metrics,
    group_scores,
    mean_logit,
    prob_mass,
    topk_share,
)
from pcp_lens.inputs import TokenBatch, as_tokens
from pcp_lens.sites import Site, all_sites, as_sites
from pcp_lens.stats import ActivationStats, RunningMoments, collect_stats

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "GroupMetric",
    "RunningMoments",
    "Site",
    "TokenBatch",
    "TokenGroups",
    "__version__",
    "all_sites",
    "as_sites",
    "as_tokens",
    "collect_stats",
    "group_metrics",
    "group_scores",
    "mean_logit",
    "prob_mass",
    "topk_share",
]
