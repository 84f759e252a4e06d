"""Data-set output folders: reuse a complete one, refuse one that holds something else, record meta.json last.

A folder is complete when its meta.json names the same data set and arguments and every file it lists still has
its recorded SHA-256. While files are written, meta.json is absent and a marker (.incomplete.json) names the data
set being written; an error removes what was written, and a run killed outright leaves the marker, so the next
run with the same arguments starts over and one with other arguments is refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from enf.errors import EnfError
from enf.io import read_json, sha256_file, write_json
from enf.version import code_version

META = "meta.json"
MARKER = ".incomplete.json"


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def check_output(out_dir: Path, dataset: str, args: dict[str, Any], data_files: Iterable[str], force: bool,
                 log: Callable[[str], None]) -> bool:
    """True if `out_dir` already holds this exact, intact data set; refuse a folder holding a different one.

    `force` overwrites whatever is there. A folder with the right data set and arguments but a damaged or
    missing file is regenerated (and says so).
    """
    meta_path = out_dir / META
    if out_dir.exists() and not out_dir.is_dir():
        raise EnfError(f"{out_dir}: exists and is not a directory")
    if force or not out_dir.exists():
        return False
    if not meta_path.exists() and (out_dir / MARKER).exists():
        marker = read_json(out_dir / MARKER)
        marker = marker if isinstance(marker, dict) else {}
        if (marker.get("dataset"), marker.get("args")) == (dataset, _normalise(args)):
            log(f"{out_dir}: an earlier run with the same arguments was interrupted; starting over")
            return False
        raise EnfError(f"{out_dir}: holds an interrupted run of a different data set ({marker.get('dataset')!r} "
                       f"with arguments {marker.get('args')}); choose another --out or pass --force")
    if not meta_path.exists():
        present = [name for name in data_files if (out_dir / name).exists()]
        if present:
            raise EnfError(f"{out_dir}: holds {', '.join(present)} but no {META}, so it is not known which data "
                           "set they are; choose another --out or pass --force to overwrite")
        return False
    try:
        meta = read_json(meta_path)
    except EnfError as err:
        raise EnfError(f"{err}; pass --force to overwrite the folder") from None
    if not isinstance(meta, dict):
        raise EnfError(f"{meta_path}: not a data-set description; pass --force to overwrite the folder")
    theirs = (meta.get("dataset"), meta.get("args"))
    if theirs != (dataset, _normalise(args)):
        raise EnfError(f"{out_dir}: holds a different data set ({theirs[0]!r} with arguments {theirs[1]}), "
                       f"not {dataset!r} with {_normalise(args)}; choose another --out or pass --force")
    files = meta.get("files", {})
    for name, info in files.items():
        path = out_dir / name
        if not path.is_file() or sha256_file(path) != info.get("sha256"):
            log(f"{path}: missing or damaged (checksum differs from {META}); regenerating the data set")
            return False
    if set(data_files) - set(files):
        log(f"{meta_path}: lists no checksum for some data files; regenerating the data set")
        return False
    log(f"{out_dir}: already holds {dataset} with the same arguments and intact files; reusing it")
    return True


@contextlib.contextmanager
def writing(out_dir: Path, dataset: str, args: dict[str, Any], files: Iterable[str]) -> Iterator[None]:
    """Around the writing of `files`: drop meta.json and leave a marker first; on any error remove what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META).unlink(missing_ok=True)
    write_json(out_dir / MARKER, {"dataset": dataset, "args": _normalise(args)})
    try:
        yield
    except BaseException:
        for name in files:
            (out_dir / name).unlink(missing_ok=True)
        (out_dir / META).unlink(missing_ok=True)
        (out_dir / MARKER).unlink(missing_ok=True)
        raise


def finish_output(out_dir: Path, dataset: str, args: dict[str, Any], files: Iterable[str],
                  extra: dict[str, Any]) -> Path:
    """Write meta.json (data set, arguments, code version, each file's SHA-256 and size, `extra`) last."""
    record = {
        "dataset": dataset,
        "args": _normalise(args),
        "code_version": code_version(),
        "files": {name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
                  for name in files},
        **extra,
    }
    write_json(out_dir / META, record)
    (out_dir / MARKER).unlink(missing_ok=True)
    return out_dir / META
