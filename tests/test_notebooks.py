"""The Jupyter tutorials under examples/: in sync with their text form, committed with outputs,
and executed here in a fresh kernel (a cell that raises fails the test).

Rebuild a notebook's outputs after editing its text form with ``make notebooks``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# seconds each may take here (2 shared cores); the quick tour is meant to be quick
# (generous: the test guards against a notebook that grows slow, not against a busy machine)
BUDGET = {"quick_tour": 120, "toy_study_analysis": 300, "scan_walkthrough": 450}
# figures each must show (the scan walkthrough has three maps; the others a figure per technique)
MIN_IMAGES = {"scan_walkthrough": 3}


def code(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def test_the_tutorial_notebooks_exist():
    assert {p.stem for p in NOTEBOOKS} >= {"quick_tour", "toy_study_analysis"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_text_form(path: Path):
    text = path.with_suffix(".py")
    assert text.exists(), f"{path.name} has no jupytext text form {text.name}"
    nb = nbformat.read(path, as_version=4)
    paired = jupytext.read(text)
    assert code(nb) == code(paired), f"run `make notebooks`: {path.name} differs from {text.name}"
    assert [c.source.strip() for c in nb.cells if c.cell_type == "markdown"] == [
        c.source.strip() for c in paired.cells if c.cell_type == "markdown"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_its_outputs(path: Path):
    """The docs render the committed outputs: every code cell ran, in order, without error."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= MIN_IMAGES.get(path.stem, 5)


def test_docs_figures_are_the_notebooks_figures():
    """docs/img/plots/*.png are copies of the tagged notebook figures (`make notebooks`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "notebook_figures", EXAMPLES.parent / "scripts" / "notebook_figures.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    found = mod.all_figures()
    assert {"ablation", "lens", "patching", "tuning_history", "factor_sweep", "hidden_pca"} <= set(
        found
    )
    for name, png in found.items():
        path = mod.OUT / f"{name}.png"
        assert path.exists() and path.read_bytes() == png, f"stale {path.name}: make notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits the environment
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - t0
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= MIN_IMAGES.get(path.stem, 5)
    assert seconds < BUDGET.get(path.stem, 300), f"{path.name} took {seconds:.0f} s"
