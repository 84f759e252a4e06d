"""Atomic file writes (temp file, then rename), the commands' output checks, and validated loading of data files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from enf.errors import EnfError

#: A temporary file older than this is a killed writer's leftover, whoever wrote it.
STALE_TMP_SECONDS = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name records the writer (`.NAME.PID@HOST.XXXXXXXX.tmp`), so that the next write to the same
    target removes what a killed writer left: its own host's files whose process is gone, and any older than a day.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(path: Path, max_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the temporary files of `path` left by killed writers (see `atomic_path`); return them."""
    prefix = f".{path.name}."
    ours = re.compile(r"(?P<pid>[0-9]+)@(?P<host>.+)\.[A-Za-z0-9_]+\.tmp")
    legacy = re.compile(r"[A-Za-z0-9_]+\.tmp")  # mkstemp names of earlier versions: judged by age alone
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    now = time.time()
    for candidate in candidates:
        rest = candidate.name[len(prefix):]
        match = ours.fullmatch(rest)
        if match is None and legacy.fullmatch(rest) is None:
            continue
        try:
            age = now - candidate.lstat().st_mtime
        except OSError:
            continue
        dead = match is not None and match["host"] == _HOST and not pid_alive(int(match["pid"]))
        if (dead or age > max_age) and candidate.is_file():
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or a number no process has: keep the file until it is old
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


PathArg = str | os.PathLike[str]


def check_paths(inputs: Mapping[str, PathArg | Iterable[PathArg] | None],
                files: Mapping[str, PathArg | None] | None = None,
                dirs: Mapping[str, tuple[PathArg | None, Iterable[str]]] | None = None) -> None:
    """Refuse, before a command does any work, outputs that would overwrite an input or cannot be written.

    `inputs` and `files` map a label (the option, e.g. '--checkpoint') to a path; `dirs` maps a label to an output
    folder and the names the command writes inside it. An output is refused when it is an input (same resolved
    path, or the same file through a link), another output, a directory where a file is expected or vice versa, or
    in a place that cannot be created or written. Nothing is created here.
    """
    ins = [(label, Path(p)) for label, value in inputs.items() for p in _paths(value)]
    outs: list[tuple[str, Path]] = []
    for label, value in (files or {}).items():
        if value is not None:
            out = Path(value)
            _check_file_target(label, out)
            outs.append((label, out))
    for label, (folder, names) in (dirs or {}).items():
        if folder is None:
            continue
        folder = Path(folder)
        _check_dir_target(label, folder)
        outs.append((label, folder))
        for name in names:
            inner = folder / name
            for parent in [*reversed(inner.relative_to(folder).parents)][1:]:
                if os.path.lexists(folder / parent) and not (folder / parent).is_dir():
                    raise EnfError(f"{label} {folder}: {folder / parent} is not a directory")
            if inner.is_dir():
                raise EnfError(f"{label} {folder}: {inner} is a directory where a file will be written")
            outs.append((f"{label} (its {name})", inner))
    for i, (label, out) in enumerate(outs):
        for in_label, path in ins:
            if _same(out, path):
                raise EnfError(f"{label} {out} is {in_label} {path}; an output may not overwrite an input")
        for other_label, other in outs[:i]:
            if _same(out, other):
                raise EnfError(f"{label} {out} is also {other_label} {other}; give each output its own path")


def _paths(value: PathArg | Iterable[PathArg] | None) -> list[PathArg]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return [v for v in value if v is not None]


def _same(a: Path, b: Path) -> bool:
    """Same resolved path, or the same existing file under two names (hard or symbolic link)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_file_target(label: str, path: Path) -> None:
    if path.is_dir():
        raise EnfError(f"{label} {path}: is a directory; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise EnfError(f"{label} {path}: exists and is not writable")
    _check_creatable(label, path.parent, path)


def _check_dir_target(label: str, path: Path) -> None:
    if os.path.lexists(path) and not path.is_dir():
        raise EnfError(f"{label} {path}: exists and is not a directory")
    _check_creatable(label, path, path)


def _check_creatable(label: str, folder: Path, target: Path) -> None:
    """`folder` exists as a writable directory, or can be made inside the nearest existing one."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EnfError(f"{label} {target}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EnfError(f"{label} {target}: cannot write in {existing} (permission denied)")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EnfError(f"{path}: not valid JSON ({err})") from None


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """np.savez_compressed, atomically (np.savez appends '.npz' to names that lack it, so write a handle)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_npz(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load every array of an .npz file, refusing missing, truncated or incomplete files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise EnfError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise EnfError(f"{path}: not a readable .npz file (corrupt or truncated?): {err}") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise EnfError(f"{path}: missing array(s) {missing}; it holds {sorted(arrays)}")
    return arrays


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def as_number(value: Any) -> float | None:
    """A float for an int, a float, or a string such as '1e-3' (which YAML 1.1 reads as a string); None for
    anything else (bools, None, other strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
