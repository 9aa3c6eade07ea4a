"""Copy the figures of the executed tutorial notebooks into the docs (docs/img/plots/NAME.png).

A code cell tagged ``figure:NAME`` gives its last PNG output. Run by ``make notebooks`` after the
notebooks are executed; ``tests/test_notebooks.py`` checks that the copies match. It first gives
each cell an id derived from its source and drops per-cell execution timestamps, so that
re-executing a notebook changes only outputs that really changed.

    python scripts/notebook_figures.py [--check]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img" / "plots"


def figures(notebook: Path) -> dict[str, bytes]:
    """``{name: png bytes}`` of the cells of ``notebook`` tagged ``figure:NAME``."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    out: dict[str, bytes] = {}
    for cell in nb["cells"]:
        names = [t.split(":", 1)[1] for t in cell.get("metadata", {}).get("tags", [])
                 if t.startswith("figure:")]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if "image/png" in o.get("data", {})]
        for name in names:
            if not pngs:
                raise ValueError(f"{notebook.name}: cell tagged figure:{name} has no PNG output")
            out[name] = base64.b64decode(pngs[-1])
    return out


def normalise(notebook: Path) -> bool:
    """Give every cell an id derived from its source and drop execution timestamps."""
    import hashlib

    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    seen: dict[str, int] = {}
    changed = False
    for cell in nb.cells:
        base = hashlib.sha1(cell.source.encode()).hexdigest()[:8]
        seen[base] = seen.get(base, 0) + 1
        cid = base if seen[base] == 1 else f"{base}-{seen[base]}"
        if cell.get("id") != cid:
            cell["id"] = cid
            changed = True
        if "execution" in cell.get("metadata", {}):
            del cell["metadata"]["execution"]
            changed = True
    if changed:
        nbformat.write(nb, notebook)
    return changed


def all_figures() -> dict[str, bytes]:
    """The tagged figures of every notebook under examples/."""
    found: dict[str, bytes] = {}
    for nb in sorted((ROOT / "examples").glob("*.ipynb")):
        found.update(figures(nb))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies")
    args = parser.parse_args()
    if not args.check:
        for nb in sorted((ROOT / "examples").glob("*.ipynb")):
            normalise(nb)
    stale = []
    for name, png in all_figures().items():
        path = OUT / f"{name}.png"
        if not path.exists() or path.read_bytes() != png:
            stale.append(path.name)
            if not args.check:
                OUT.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png)
    print(("stale: " if args.check else "written: ") + (", ".join(stale) or "none"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
