"""The one atomic file writer: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` through a temporary file in the same folder, fsync'd, then renamed.

    The file has `mode` from its creation (a secret is never readable by others, even for a moment).
    Raises OSError (e.g. ENOSPC) with the old file untouched and no temporary file left.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
