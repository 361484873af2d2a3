"""The common results file `results/<model>/<lang>/summary.json` (shared/design.md).

Every write is atomic (temporary file in the same folder, then rename), so a crash
never leaves a half-written file and nothing is overwritten in place.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

RESULTS_ROOT = Path(os.environ.get("MLSAFE_RESULTS", "results"))


def model_slug(model: str) -> str:
    """Filesystem-safe name of a model: 'organism', 'gemma-270m', or the hub id / folder name."""
    name = model.rstrip("/").split("/")[-1] if os.path.isdir(model) else model
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-") or "model"


def results_dir(model: str, lang_key: str, root: Path | None = None) -> Path:
    return Path(root or RESULTS_ROOT) / model_slug(model) / lang_key


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` atomically (temp file + os.replace), with the permissions an
    ordinary new file gets under the current umask (mkstemp's own are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def update_summary(path: Path, **blocks: Any) -> dict:
    """Merge top-level blocks into summary.json (creating it), atomically; returns the result."""
    path = Path(path)
    current = read_json(path) if path.exists() else {}
    current.update(blocks)
    write_json(path, current)
    return current
