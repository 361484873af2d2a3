"""The common results file `results/<model>/<lang>/summary.json` (shared/design.md).

Every write is atomic (temporary file in the same folder, then rename), so a crash
never leaves a half-written file and nothing is overwritten in place.

A whole run (``mlsafe reproduce``) is staged: :func:`staged_run` locks the folder
(:func:`run_lock`, so a second concurrent run stops at once), the run writes every file
into a temporary sibling folder, and at the end the two folders are swapped atomically
(``renameat2(RENAME_EXCHANGE)``): a reader, or a crash at any point, sees the old
complete set or the new complete set, never a mix. The rerun rule: a run owns the files
matching :data:`RUN_FILES`; a rerun replaces all of them, keeps the other commands'
files (ablations.csv, baselines*.csv, cost.json, ...) unchanged, and refuses (UserError,
before any model is loaded, see :func:`check_rerun`) when it would drop an owned file
or a top-level summary block of the earlier run (e.g. ``over_seeds`` of a ``--seeds``
run, diagnostics.json of a run with extras, edit_seed1.safetensors) unless ``force``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterable, Iterator

from mlsafe.errors import UserError

RESULTS_ROOT = Path(os.environ.get("MLSAFE_RESULTS", "results"))


def model_slug(model: str) -> str:
    """Filesystem-safe name of a model: 'organism', 'gemma-270m', the hub id ('owner--name'), or
    for a local folder '<basename>-<first 8 hex of sha256 of its resolved path>' (two different
    folders both named e.g. qwen2 get different results folders)."""
    if os.path.isdir(model):
        resolved = str(Path(model).resolve())
        name = f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
    else:
        name = model
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


def publish_folder(tmp: str | Path, target: str | Path, marker: str = "config.json") -> None:
    """Move a fully written temporary folder to `target` in one rename (a cache entry appears
    whole or not at all). When another process published `target` first (it holds `marker`),
    keep theirs and delete `tmp`; any other failure removes `tmp` and raises."""
    tmp, target = Path(tmp), Path(target)
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / marker).exists():
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


# ----------------------------------------------------------------------------- staged runs
#: the files a reproduce run writes (glob patterns): a rerun replaces them all.
RUN_FILES = ("summary.json", "diagnostics.json", "lab_grid.json", "responses_*.csv", "edit*.safetensors")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _owned(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in RUN_FILES)


def lock_path(out_dir: Path) -> Path:
    """The lock file of a results folder: a hidden sibling (the folder itself is swapped)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.lock"


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive fcntl.flock on out_dir's lock file; UserError at once when another
    process holds it. The kernel drops the lock when the holder dies (even by SIGKILL)."""
    out_dir = Path(out_dir)
    check_writable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(out_dir), os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{out_dir} is being written by another mlsafe run (pid {holder}); "
                            "wait for it to finish or write elsewhere (MLSAFE_RESULTS)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race a waiting run)


def check_writable(out_dir: Path) -> None:
    """UserError unless out_dir is (or can be created as) a writable folder."""
    out_dir = Path(out_dir)
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"results path {out_dir} cannot be a folder: {probe} is a file; "
                        "set MLSAFE_RESULTS to a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"results folder {probe} is not writable; set MLSAFE_RESULTS to a writable folder")


def summary_blocks(folder: Path) -> set[str]:
    """The top-level keys of folder/summary.json (empty when it is missing or unreadable)."""
    path = Path(folder) / "summary.json"
    try:
        return set(read_json(path)) if path.is_file() else set()
    except (OSError, ValueError):
        return set()


def check_rerun(out_dir: Path, files: Iterable[str], blocks: Iterable[str], *, force: bool = False) -> None:
    """UserError when a run writing `files` and a summary with top-level `blocks` into out_dir
    would drop run files (RUN_FILES) or summary blocks the folder holds now (unless force)."""
    out_dir = Path(out_dir)
    if force or not out_dir.is_dir():
        return
    files, blocks = set(files), set(blocks)
    dropped = sorted(p.name for p in out_dir.iterdir()
                     if p.is_file() and _owned(p.name) and p.name not in files)
    dropped += [f"summary block {b!r}" for b in sorted(summary_blocks(out_dir) - blocks)] \
        if "summary.json" in files else []
    if dropped:
        raise UserError(f"rerunning into {out_dir} would drop {', '.join(dropped)} of the earlier run; "
                        "rerun with the same options (--seeds, extras) or pass --force to replace the folder")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    return sorted(out_dir.parent.glob(f".{out_dir.name}.{kind}-*"))


def _clean_stale(out_dir: Path) -> None:
    """Under the lock, every staging/old folder of out_dir is from a dead run: restore an old set
    that a crash left moved aside (non-Linux fallback of the swap) and delete the rest."""
    if not out_dir.exists():
        for old in _leftovers(out_dir, "old"):
            os.rename(old, out_dir)
            break
    for leftover in _leftovers(out_dir, "staging") + _leftovers(out_dir, "old"):
        shutil.rmtree(leftover, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_run(out_dir: Path, *, force: bool = False) -> Iterator[Path]:
    """``with staged_run(out_dir) as stage:`` write every file of a run into `stage`; on a clean
    exit the stage replaces out_dir in one atomic swap (module docstring), on an exception or a
    crash out_dir is left as it was. Holds :func:`run_lock` throughout and cleans temporary
    folders of dead runs first. Other commands' files in out_dir are carried into the new set;
    :func:`check_rerun` is applied to what the stage holds (UserError, nothing replaced)."""
    out_dir = Path(out_dir)
    with run_lock(out_dir):
        _clean_stale(out_dir)
        stage = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
        stage.mkdir()
        try:
            yield stage
            _commit(stage, out_dir, force)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, out_dir: Path, force: bool) -> None:
    check_rerun(out_dir, {p.name for p in stage.iterdir()}, summary_blocks(stage), force=force)
    if out_dir.is_dir():
        for p in out_dir.iterdir():  # other commands' files (not hidden temp files) are kept
            if p.is_file() and not p.name.startswith(".") and not _owned(p.name) \
                    and not (stage / p.name).exists():
                shutil.copy2(p, stage / p.name)
    _fsync_dir(stage)
    if not out_dir.exists():
        os.rename(stage, out_dir)
    elif _exchange(stage, out_dir):
        pass  # stage now holds the old set; the caller's finally removes it
    else:
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.rename(out_dir, old)  # a crash between these renames is undone by _clean_stale
        os.rename(stage, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out_dir.parent)
