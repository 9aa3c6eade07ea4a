"""The corpus module: the shipped sample, paragraph splitting, the .deb reader's errors."""

from __future__ import annotations

import pytest

from pcp_lens.language import data


def test_sample_is_shipped_and_split_into_paragraphs():
    paras = data.load_corpus("austen-sample")
    assert len(paras) > 100 and all(len(p.split()) >= 20 for p in paras)
    assert not any(p.lower().startswith("chapter") for p in paras)


def test_unknown_corpus_and_missing_cache(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="corpus must be one of"):
        data.load_corpus("gutenberg")
    monkeypatch.setenv("PCP_LENS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pcp-lens data austen"):
        data.load_corpus("austen")


def test_not_a_deb(tmp_path):
    bad = tmp_path / "x.deb"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a Debian package"):
        data.read_austen_deb(bad)
