"""Small file helpers every layer may use: atomic writes and forgiving JSON reads (no studio imports)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    """A JSON file's value; raises ValueError (with the reason) for unreadable, non-UTF-8 or malformed content.

    A hostile file can nest arrays thousands deep, which makes Python's parser raise RecursionError:
    that is a bad file, not a crash, so it is reported the same way as any other malformed JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{Path(path).name} is not UTF-8 text") from error
    try:
        return json.loads(text)
    except RecursionError as error:
        raise ValueError(f"{Path(path).name} nests its JSON too deeply to read") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{Path(path).name} is not valid JSON ({error.msg} at line {error.lineno})") from error
