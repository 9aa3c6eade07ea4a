"""The PCP file format: safetensors tensors plus a JSON ``"pcp_lens"`` metadata entry.

:meth:`pcp_lens.PCPReplacement.save` and :meth:`~pcp_lens.PCPReplacement.load` call
:func:`write_pcp` and :func:`read_pcp`; this module knows the layout, checks every field and shape
when reading, writes atomically and never unpickles. Both speak plain ``(site, kind, tensors)``
entries, not the replacement value, so this module imports only :mod:`pcp_lens.pcp.maths`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from pcp_lens._io import atomic_file, check_format, package_version
from pcp_lens.pcp.maths import pcp_site
from pcp_lens.sites import Site

__all__ = [
    "DIRECTION_KINDS",
    "FORMAT",
    "FORMAT_VERSION",
    "TENSOR_FIELDS",
    "DirectionKind",
    "Entry",
    "read_pcp",
    "write_pcp",
]

FORMAT = "pcp_lens.PCPReplacement"
FORMAT_VERSION = 1
DirectionKind = Literal["principal", "reference_code", "custom"]
#: how the directions of a site were obtained
DIRECTION_KINDS: tuple[str, ...] = get_args(DirectionKind)
#: the tensors a site may store, in file order
TENSOR_FIELDS = (
    "directions",
    "scales",
    "bias",
    "explained_variance",
    "explained_variance_ratio",
    "reads",
)
#: optional fields a file of an earlier release may lack the flag of (absent = not stored)
_LATER_FIELDS = ("reads",)
#: one site as stored: the site, its direction kind and its tensors (``directions``, ``scales``
#: and any of the optional :data:`TENSOR_FIELDS`)
Entry = tuple[Site, str, dict[str, Tensor]]


def write_pcp(
    path: str | os.PathLike[str],
    entries: Iterable[tuple[Site, str, Mapping[str, Tensor | None]]],
    fingerprint: Mapping[str, Any],
) -> Path:
    """Write sites' tensors (float64) and the JSON metadata to ``path``, atomically.

    ``entries`` are ``(site, kind, {field: tensor})`` as :func:`read_pcp` returns them; a field
    that is missing or ``None`` is not stored.

    Examples:
        >>> import tempfile, os
        >>> from pcp_lens.sites import Site
        >>> u, a = torch.eye(16, dtype=torch.float64)[:1], torch.tensor([2.0], dtype=torch.float64)
        >>> entry = (Site.parse("mlp0"), "custom", {"directions": u, "scales": a, "bias": None})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     fp, got = read_pcp(write_pcp(os.path.join(d, "p.st"), [entry], {"d_model": 16}))
        >>> [(site.name, kind, sorted(kw)) for site, kind, kw in got]
        [('mlp0', 'custom', ['directions', 'scales'])]
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, Tensor] = {}
    sites_meta = []
    for site, kind, fields in entries:
        unknown = sorted(set(fields) - set(TENSOR_FIELDS))
        if unknown:
            raise ValueError(f"entries: unknown tensor fields {unknown}; allowed {TENSOR_FIELDS}")
        rank = int(fields["directions"].shape[0])  # type: ignore[union-attr]
        entry: dict[str, Any] = {"site": site.name, "rank": rank, "kind": kind}
        for name in TENSOR_FIELDS:
            t = fields.get(name)
            if name not in ("directions", "scales"):
                entry[name] = t is not None
            if t is not None:
                tensors[f"{site.name}.{name}"] = t.contiguous()
        sites_meta.append(entry)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pcp_lens_version": package_version(),
        "fingerprint": dict(fingerprint),
        "sites": sites_meta,
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"pcp_lens": json.dumps(meta, sort_keys=True)})
    return path


def read_pcp(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], list[Entry]]:
    """Read and check a file written by :func:`write_pcp`: fingerprint, [(site, kind, tensors)].

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, if it is not such a safetensors file, its metadata is
            malformed or of another format version, or a tensor is missing, unexpected, or of the
            wrong shape or dtype.

    Examples:
        >>> read_pcp("no/such/file.safetensors")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no PCP file at 'no/such/file.safetensors'
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no PCP file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from e
    return _from_saved(str(path), header, tensors)


def _from_saved(
    where: str, header: Mapping[str, str], tensors: Mapping[str, Tensor]
) -> tuple[dict[str, Any], list[Entry]]:
    def bad(msg: str) -> ValueError:
        return ValueError(f"{where!r}: {msg}")

    if "pcp_lens" not in header:
        raise bad(f"no 'pcp_lens' metadata entry (header keys: {sorted(header)}); not a PCP file")
    try:
        meta = json.loads(header["pcp_lens"])
    except json.JSONDecodeError as e:
        raise bad(f"the 'pcp_lens' metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise bad(f"the 'pcp_lens' metadata must be a JSON object, got {type(meta).__name__}")
    check_format(meta, FORMAT, FORMAT_VERSION, bad, prefix="metadata ")
    fp = meta.get("fingerprint")
    if not isinstance(fp, dict) or not isinstance(fp.get("d_model"), int):
        raise bad(f"metadata 'fingerprint' must be an object with an int 'd_model', got {fp!r}")
    d_model = fp["d_model"]
    sites = meta.get("sites")
    if not isinstance(sites, list) or not sites:
        raise bad(f"metadata 'sites' must be a non-empty list, got {sites!r}")
    expected: dict[str, tuple[int, ...]] = {}
    entries = []
    for e in sites:
        if not isinstance(e, dict):
            raise bad(f"each metadata 'sites' entry must be an object, got {e!r}")
        try:
            site = pcp_site(e.get("site"), arg="site")  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise bad(f"metadata site {e.get('site')!r} is invalid: {err}") from err
        r = e.get("rank")
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= d_model:
            raise bad(
                f"metadata rank of site {site.name!r} must be an int in 1..{d_model}, got {r!r}"
            )
        if e.get("kind") not in DIRECTION_KINDS:
            raise bad(
                f"metadata kind of site {site.name!r} must be one of {list(DIRECTION_KINDS)}, "
                f"got {e.get('kind')!r}"
            )
        shapes = {"directions": (r, d_model), "scales": (r,)}
        for name, shape in (
            ("bias", (d_model,)),
            ("explained_variance", (r,)),
            ("explained_variance_ratio", (r,)),
            ("reads", (r, d_model)),
        ):
            flag = e.get(name, False if name in _LATER_FIELDS else None)
            if not isinstance(flag, bool):
                raise bad(
                    f"metadata {name!r} of site {site.name!r} must be true/false, got {flag!r}"
                )
            if flag:
                shapes[name] = shape
        for name, shape in shapes.items():
            expected[f"{site.name}.{name}"] = shape
        entries.append((site, e["kind"], shapes))
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise bad(f"tensors do not match the metadata: missing {missing}, unexpected {extra}")
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != torch.float64:
            raise bad(
                f"tensor {key!r} must be float64 of shape {list(shape)}, got {t.dtype} of shape "
                f"{list(t.shape)}"
            )
    return fp, [
        (site, kind, {n: tensors[f"{site.name}.{n}"] for n in shapes})
        for site, kind, shapes in entries
    ]
