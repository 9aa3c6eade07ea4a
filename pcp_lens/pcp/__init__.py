"""PCP ablation: replace a module by a symmetric low-rank map built from its principal components.

The paper's Equation 1 (recovered in ``METHODS.md`` §8.4) replaces the module at a site by

    M = Σ_l α_l û_l û_lᵀ        (d_model × d_model, symmetric, rank ≤ r)

applied position-wise to the tensor the module *receives* (its LayerNorm output, affine included),
and written where the module's output goes (``hook_mlp_out`` / ``hook_attn_out``). The directions
û_l are principal components of the module's *output* over an input set; the signed scales α_l are
the only free parameters. The paper writes α_l = s_l·f_l² (tuned factor f, sign/multiplier s); see
:func:`scales_from_factors` and :func:`factors_from_scales`.

Workflow:

* :func:`fit_pca` — principal components of each site's output (streaming covariance, or
  scikit-learn for small sets), with explained variance.
* :func:`fit_pcp` — directions (``"principal"``, the paper's; or ``"reference_code"``, the authors'
  inverse-transform variant of ``METHODS.md`` §8.3) and scales (least squares by default) →
  an immutable :class:`PCPReplacement`; ``form="regression"`` (ours, not the paper's) fits
  each component's own read vector instead, M = Σ_l b_l û_lᵀ.
* :meth:`PCPReplacement.hooks` — TransformerLens hooks for ``model.hooks``, ``run_with_hooks``,
  ``run_with_cache`` and ``generate``.
* :meth:`PCPReplacement.scale`, :meth:`PCPReplacement.flip` — edits that return new values.
* :meth:`PCPReplacement.save` / :meth:`PCPReplacement.load` — safetensors + JSON metadata.
* :func:`least_squares_scales` — the closed-form α that best reproduce the modules' own outputs.

The package's modules import one way, each only from those before it:
:mod:`~pcp_lens.pcp.maths` (sites, α = s·f², the authors' directions) ←
:mod:`~pcp_lens.pcp.pca`, :mod:`~pcp_lens.pcp.hooks`, :mod:`~pcp_lens.pcp.storage` (the file
format) ← :mod:`~pcp_lens.pcp.part` (:class:`SitePCP`) ← :mod:`~pcp_lens.pcp.replacement`
(:class:`PCPReplacement`) ← :mod:`~pcp_lens.pcp.fit` (:func:`fit_pcp`,
:func:`least_squares_scales`). Every public name is importable from ``pcp_lens.pcp``.

Tuning with Optuna and factor sweeps live in :mod:`pcp_lens.tuning`.
"""

from pcp_lens._tl import HookFn as HookFn  # re-exported: its former home
from pcp_lens.pcp.fit import PCPForm, fit_pcp, least_squares_scales
from pcp_lens.pcp.hooks import FactoredMap, site_hooks
from pcp_lens.pcp.maths import (
    as_f64,
    check_finite_values,
    factors_from_scales,
    pcp_site,
    pcp_sites,
    reference_code_directions,
    scales_from_factors,
)
from pcp_lens.pcp.part import SitePCP
from pcp_lens.pcp.pca import PCAFit, PCAMethod, fit_pca
from pcp_lens.pcp.replacement import PCPReplacement
from pcp_lens.pcp.storage import (
    DIRECTION_KINDS,
    FORMAT,
    FORMAT_VERSION,
    TENSOR_FIELDS,
    DirectionKind,
    read_pcp,
    write_pcp,
)

__all__ = [
    "DIRECTION_KINDS",
    "FORMAT",
    "FORMAT_VERSION",
    "TENSOR_FIELDS",
    "DirectionKind",
    "FactoredMap",
    "HookFn",
    "PCAFit",
    "PCAMethod",
    "PCPForm",
    "PCPReplacement",
    "SitePCP",
    "as_f64",
    "check_finite_values",
    "factors_from_scales",
    "fit_pca",
    "fit_pcp",
    "least_squares_scales",
    "pcp_site",
    "pcp_sites",
    "read_pcp",
    "reference_code_directions",
    "scales_from_factors",
    "site_hooks",
    "write_pcp",
]
