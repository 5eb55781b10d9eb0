"""Checking weight files before they are trusted: whole safetensors, and weights that cover the model.

A safetensors file starts with an 8-byte header length and a JSON header giving every tensor's
byte range; a file cut short (a copy interrupted, a disk that filled) is shorter than the end of
its last range. Reading that header costs microseconds, so every file is checked before it loads:
a damaged file is refused with its name instead of failing somewhere inside a library, or, worse,
loading half of it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import BadInputError

# A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER = 100 * 1024 * 1024


def check_safetensors(path: str | Path, what: str = "weights file") -> None:
    """Raise ``BadInputError`` unless ``path`` is a complete safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _damaged(path, what, "it is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise _damaged(path, what, "its header is cut short or not a safetensors header")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:  # unreadable, or a header that is not JSON
        raise _damaged(path, what, f"it cannot be read as safetensors ({exc})") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise _damaged(path, what, f"it holds {size:,} bytes of the {need:,} its header describes (cut short)")


def check_folder(folder: str | Path, what: str = "model weights") -> None:
    """Check every safetensors file in ``folder``."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        check_safetensors(path, what)


def _damaged(path: Path, what: str, why: str) -> BadInputError:
    return BadInputError(
        f"The {what} {path} is damaged: {why}. Copy or download it again (for a run's adapter: export or "
        "train it again)."
    )


def check_coverage(model, missing_keys: list[str], source: str) -> None:
    """Refuse a model whose weight files leave some of its parameters at random initial values."""
    if not missing_keys:
        return
    shown = ", ".join(missing_keys[:5]) + (f" and {len(missing_keys) - 5} more" if len(missing_keys) > 5 else "")
    raise BadInputError(
        f"The weights of {source} do not cover the model: {shown} {'is' if len(missing_keys) == 1 else 'are'} "
        "missing, so training would start from random values there. Use the model's complete files."
    )
