"""Output files are written whole or not at all: a temporary name in the same folder,
then a rename, so an interrupted or failed write never leaves a half-written file
(nor truncates the one it replaces)."""

from __future__ import annotations

import io
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str):
    """Write `data` (str as UTF-8) to `path` through `.<name>.tmp` and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    tmp.replace(path)


def save_figure(fig, path: str | Path, dpi: int):
    """A matplotlib figure as a PNG file, written by `atomic_write`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write(path, buffer.getvalue())
