"""Markdown plumbing shared by the benchmarks: (re)write one generated section of a file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_section"]


def replace_section(
    path: str | os.PathLike[str], section: str, begin: str, end: str, header: str
) -> None:
    """Replace the text of ``path`` between the marker lines ``begin`` and ``end`` (both
    included in ``section``) by ``section``, or append ``section``; a missing file starts
    with ``header``. Hand-written text outside the markers is kept."""
    p = Path(path)
    text = p.read_text() if p.exists() else header
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
