"""Public-domain prose for the offline stand-in study: Jane Austen's six novels, cached.

Nothing here downloads at import time. The full corpus comes from the Debian package
``r-cran-janeaustenr`` (MIT; the texts are public domain, from Project Gutenberg): its R
lazy-load data (``Rdata.rdb``/``.rdx``) is read with the ``rdata`` package (PyPI), so neither R
nor ``dpkg`` is needed. :func:`fetch_austen` does it once and caches the novels as JSON:

* ``pcp-lens data austen`` (or ``make data``) runs ``apt-get download r-cran-janeaustenr`` in a
  temporary folder and reads the ``.deb`` (``--deb FILE`` reads one you already have);
* the cache is ``$PCP_LENS_DATA/austen.json``, default ``~/.cache/pcp_lens/austen.json``.

:func:`load_corpus` returns paragraphs: ``"austen"`` (the cache; a clear error saying how to get
it when missing) or ``"austen-sample"``: the first chapters of *Pride and Prejudice* (about 60 kB),
shipped with the package so that CI's quick run needs no network at all.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcp_lens._io import write_text_atomic

__all__ = [
    "CORPORA",
    "NOVELS",
    "austen_paragraphs",
    "cache_dir",
    "fetch_austen",
    "load_corpus",
    "read_austen_deb",
]

#: The novels' variable names in ``janeaustenr``.
NOVELS = (
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
)
#: Corpus names :func:`load_corpus` accepts.
CORPORA = ("austen", "austen-sample")
_SAMPLE = Path(__file__).parent / "data" / "austen_sample.txt"
_HEADING = re.compile(r"^(chapter|volume|book|part)\b[\s\w.]*$", re.IGNORECASE)


def cache_dir() -> Path:
    """Where fetched corpora live: ``$PCP_LENS_DATA`` or ``~/.cache/pcp_lens``.

    Examples:
        >>> cache_dir().name in ("pcp_lens", os.environ.get("PCP_LENS_DATA", "pcp_lens"))
        True
    """
    env = os.environ.get("PCP_LENS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "pcp_lens"


def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a ``.deb`` is one)."""
    if data[:8] != b"!<arch>\n":
        raise ValueError("not a Debian package (.deb files are ar archives starting '!<arch>')")
    out, off = {}, 8
    while off + 60 <= len(data):
        head = data[off : off + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        out[name] = data[off + 60 : off + 60 + size]
        off += 60 + size + size % 2
    return out


def read_austen_deb(deb: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The six novels (one list of lines each) from ``r-cran-janeaustenr``'s ``.deb`` file.

    Needs the ``rdata`` package (``pip install rdata``). Each object in ``Rdata.rdb`` is a
    4-byte length followed by zlib data, located by the (compressed) index ``Rdata.rdx``.
    """
    members = _ar_members(Path(deb).read_bytes())
    name = next((k for k in members if k.startswith("data.tar")), None)
    if name is None:
        raise ValueError(f"{deb} has no data.tar member; members: {sorted(members)}")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(members[name])) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isfile() else None
            if f is not None and m.name.endswith(("/data/Rdata.rdb", "/data/Rdata.rdx")):
                files[m.name.rsplit("/", 1)[1]] = f.read()
    if set(files) != {"Rdata.rdb", "Rdata.rdx"}:
        raise ValueError(f"{deb} does not hold janeaustenr's data/Rdata.rdb and Rdata.rdx")
    # the file is checked first: a wrong file is named even where rdata is missing
    try:
        import rdata  # pyright: ignore[reportMissingImports]  (optional: the corpus extra)
    except ImportError:
        raise ImportError(
            "reading the Austen corpus needs the 'rdata' package: pip install rdata "
            "(or pip install 'pcp_lens[corpus]')"
        ) from None

    def parse(raw: bytes) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS"
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    rdx = files["Rdata.rdx"]
    index = parse(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]))
    rdb = files["Rdata.rdb"]
    out = {}
    for var, (off, n) in index["variables"].items():
        blob = rdb[int(off) : int(off) + int(n)]
        out[str(var)] = [str(x) for x in parse(zlib.decompress(blob[4:]))]
    missing = set(NOVELS) - set(out)
    if missing:
        raise ValueError(f"{deb} lacks the novels {sorted(missing)}")
    return {k: out[k] for k in NOVELS}


def fetch_austen(
    deb: str | os.PathLike[str] | None = None, *, cache: str | os.PathLike[str] | None = None
) -> Path:
    """Read the Austen novels (downloading the ``.deb`` with ``apt-get download`` unless
    ``deb`` is given) and cache them as ``austen.json``; return the cache file's path."""
    target = Path(cache) if cache is not None else cache_dir() / "austen.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if deb is None:
            if shutil.which("apt-get") is None:
                raise RuntimeError(
                    "apt-get is not available: download r-cran-janeaustenr_*.deb from any Debian "
                    "mirror and pass it with `pcp-lens data austen --deb FILE`"
                )
            run = subprocess.run(
                ["apt-get", "download", "r-cran-janeaustenr"],
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            debs = sorted(Path(tmp).glob("r-cran-janeaustenr_*.deb"))
            if run.returncode != 0 or not debs:
                raise RuntimeError(
                    "`apt-get download r-cran-janeaustenr` failed (run `apt-get update` first, "
                    f"or pass a downloaded .deb with --deb):\n{run.stderr.strip()}"
                )
            deb = debs[0]
        novels = read_austen_deb(deb)
    write_text_atomic(target, json.dumps(novels))
    return target


def austen_paragraphs(novels: Mapping[str, list[str]], min_words: int = 20) -> dict[str, list[str]]:
    """Paragraphs of each novel: lines joined, split at blank lines, headings dropped.

    Examples:
        >>> austen_paragraphs({"x": ["CHAPTER 1", "", "It is a truth", "universally known.", ""]},
        ...                   min_words=2)
        {'x': ['It is a truth universally known.']}
    """
    out: dict[str, list[str]] = {}
    for name, lines in novels.items():
        paras, cur = [], []
        for line in [*lines, ""]:
            if line.strip():
                cur.append(line.strip())
                continue
            text = " ".join(cur)
            cur = []
            if text and not _HEADING.match(text) and len(text.split()) >= min_words:
                paras.append(text)
        out[name] = paras
    return out


def load_corpus(name: str = "austen", min_words: int = 20) -> list[str]:
    """Paragraphs of a corpus: ``"austen"`` (fetched and cached) or ``"austen-sample"`` (shipped).

    Raises:
        FileNotFoundError: the Austen cache is missing; the message says how to get it.

    Examples:
        >>> paras = load_corpus("austen-sample")
        >>> len(paras) > 100, paras[0][:35]
        (True, 'It is a truth universally acknowled')
    """
    if name == "austen-sample":
        lines = _SAMPLE.read_text().splitlines()
        return austen_paragraphs({"sample": lines}, min_words)["sample"]
    if name != "austen":
        raise ValueError(f"corpus must be one of {CORPORA}, got {name!r}")
    path = cache_dir() / "austen.json"
    if not path.exists():
        raise FileNotFoundError(
            f"the Austen corpus is not cached at {path}. Get it once (needs apt-get and "
            "`pip install rdata`): `pcp-lens data austen` or `make data` "
            "(set PCP_LENS_DATA to cache elsewhere); or use the shipped sample: "
            "--corpus austen-sample"
        )
    paras = austen_paragraphs(json.loads(path.read_text()), min_words)
    return [p for name in NOVELS for p in paras[name]]
