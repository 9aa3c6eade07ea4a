"""pcp_lens: find, remove, insert and edit backdoor mechanisms in TransformerLens models.

The public API, re-exported; each technique lives in the module named after it.
"""

from pcp_lens._io import package_version
from pcp_lens.ablation import (
    ablation_hooks,
    ablation_means,
    ablation_sweep,
    ablation_table,
    mean_ablation,
    mean_reference_code,
    resample_ablation,
    zero_ablation,
)
from pcp_lens.attribution import attribution_patching
from pcp_lens.groups import (
    GroupMetric,
    PositionMetric,
    TokenGroups,
    group_metrics,
    group_scores,
    mean_logit,
    prob_mass,
    topk_share,
)
from pcp_lens.inputs import TokenBatch, as_tokens
from pcp_lens.lens import group_lens, lens_logits, lens_table
from pcp_lens.loading import load_model
from pcp_lens.patching import causal_patching, patching_grid
from pcp_lens.pcp import (
    PCAFit,
    PCPReplacement,
    SitePCP,
    factors_from_scales,
    fit_pca,
    fit_pcp,
    least_squares_scales,
    reference_code_directions,
    scales_from_factors,
)
from pcp_lens.scan import BackdoorScan, scan_backdoor
from pcp_lens.sites import Site, all_sites, as_sites
from pcp_lens.stats import ActivationStats, RunningMoments, collect_stats
from pcp_lens.training import (
    Checkpoint,
    TrainConfig,
    TrainResult,
    evaluate_loss,
    freeze_parameter_names,
    load_checkpoint,
    save_checkpoint,
    tie_embeddings,
    tokenize_texts,
    train,
)
from pcp_lens.tuning import TuneResult, score_inputs, sweep, tune, validation_loss

__version__ = package_version()

__all__ = [
    "ActivationStats",
    "BackdoorScan",
    "Checkpoint",
    "GroupMetric",
    "PCAFit",
    "PCPReplacement",
    "PositionMetric",
    "RunningMoments",
    "Site",
    "SitePCP",
    "TokenBatch",
    "TokenGroups",
    "TrainConfig",
    "TrainResult",
    "TuneResult",
    "__version__",
    "ablation_hooks",
    "ablation_means",
    "ablation_sweep",
    "ablation_table",
    "all_sites",
    "as_sites",
    "as_tokens",
    "attribution_patching",
    "causal_patching",
    "collect_stats",
    "evaluate_loss",
    "factors_from_scales",
    "fit_pca",
    "fit_pcp",
    "freeze_parameter_names",
    "group_lens",
    "group_metrics",
    "group_scores",
    "least_squares_scales",
    "lens_logits",
    "lens_table",
    "load_checkpoint",
    "load_model",
    "mean_ablation",
    "mean_logit",
    "mean_reference_code",
    "patching_grid",
    "prob_mass",
    "reference_code_directions",
    "resample_ablation",
    "save_checkpoint",
    "scales_from_factors",
    "scan_backdoor",
    "score_inputs",
    "sweep",
    "tie_embeddings",
    "tokenize_texts",
    "topk_share",
    "train",
    "tune",
    "validation_loss",
    "zero_ablation",
]
