"""TransformerLens 3 (``HookedTransformer``) and 4 (``TransformerBridge``) give the same tables.

The two cannot be installed together, so this test runs ``tests/cross_backend.py`` under the
other environment's Python (``$PCP_LENS_OTHER_PYTHON``, else ``.venv`` or ``.venv-tl4`` beside the
repository, whichever is not this one) on the same saved weights, and compares every number.
Without the other environment it skips, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pcp_lens import _tl

sys.path.insert(0, str(Path(__file__).parent))
import cross_backend

ROOT = Path(__file__).resolve().parents[1]
OTHER = {"hooked": ".venv-tl4", "bridge": ".venv"}[_tl.BACKEND]


def _other_python() -> str | None:
    env = os.environ.get("PCP_LENS_OTHER_PYTHON")
    if env:
        return env
    p = ROOT / OTHER / "bin" / "python"
    return str(p) if p.exists() else None


def _close(a: Any, b: Any, where: str, tol: float = 1e-5) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]", tol)
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            assert a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))
        else:
            assert abs(a - b) <= tol, f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@pytest.mark.parametrize("processing", [False, True], ids=["raw", "processed"])
def test_tables_agree_between_backends(tmp_path, processing):
    other = _other_python()
    if other is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the other TransformerLens environment ({OTHER}/)")
        pytest.skip(f"no {OTHER}/ environment (make setup-tl4 / make setup)")
    cross_backend.save_gpt2(str(tmp_path / "gpt2"))
    here = cross_backend.tables(str(tmp_path / "gpt2"), processing)
    args = [other, str(Path(cross_backend.__file__)), str(tmp_path / "gpt2"), str(tmp_path / "o")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + (["--processing"] if processing else []), check=True, env=env)
    there = json.loads((tmp_path / "o").read_text())
    assert {here.pop("backend"), there.pop("backend")} == {"hooked", "bridge"}
    assert len(here["patching"]) > 0 and len(here["ablation"]) > 0 and len(here["lens"]) > 0
    _close(here, there, "tables")
    # the heads' attribution estimates are not all 0 (they were on the bridge once)
    heads = [r["estimate"] for r in here["attribution"]["atp"] if r["head"] is not None]
    assert len(heads) == 2 * 4 * 10 and max(abs(e) for e in heads) > 1e-3
    # the PCP edit and the generation are not trivial: they change something
    gen = here["generation"]
    assert len(gen["cached_with_pcp"]) == 3
    if not processing:  # the planted backdoor is there and the scan finds it, on both backends
        assert here["scan"]["gap"] > 0.2 and here["scan"]["circuit"] == ["mlp0"]
