"""The code version recorded with every artifact: the git commit (plus '-dirty') or a hash of the package."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

import enf

PACKAGE_DIR = Path(enf.__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 (12 hex digits) over every .py file of the package: changes exactly when the code changes."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """'enf <version> git <commit>[-dirty] src <hash>'; the git part is omitted outside a checkout."""
    parts = [f"enf {enf.__version__}"]
    try:
        root = PACKAGE_DIR.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "enf"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        parts.append(f"git {commit}{'-dirty' if dirty else ''}")
    except (OSError, subprocess.SubprocessError):
        pass
    parts.append(f"src {source_hash()}")
    return " ".join(parts)
