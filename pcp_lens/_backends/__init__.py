"""The two TransformerLens lines pcp_lens runs on, one small module each.

:mod:`pcp_lens._tl` imports exactly one of them, by the installed TransformerLens major version:
:mod:`~pcp_lens._backends.hooked` (``HookedTransformer``, TransformerLens 2.x/3.x) or
:mod:`~pcp_lens._backends.bridge` (``TransformerBridge``, TransformerLens 4.x). Both define the
same functions; nothing outside ``_tl`` imports them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_tokenizer(tokenizer: Any) -> Iterator[Any]:
    """``tokenizer``, loadable from a folder by its ``name_or_path`` while the block runs.

    TransformerLens (both lines) re-loads a tokenizer by its ``name_or_path`` with
    ``add_bos_token=True`` (from the hub for a name like ``"gpt2"``); one built in memory has no
    such path. It is then saved to a temporary folder and re-loaded from there, so nothing is
    downloaded.
    """
    import tempfile

    from transformers import AutoTokenizer

    path = tokenizer.init_kwargs.get("name_or_path")
    if path and os.path.isdir(path):
        yield tokenizer
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        yield AutoTokenizer.from_pretrained(tmp, local_files_only=True)
