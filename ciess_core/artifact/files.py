"""Reading and writing the artifact's files: .npy arrays, JSON id lists, sha256 (no pickles)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ciess_core.artifact.manifest import MANIFEST_NAME, FileEntry
from ciess_core.errors import ArtifactError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(root: Path, relative: str) -> FileEntry:
    """The manifest entry (path, sha256, bytes) of a file already written under ``root``."""
    path = root / relative
    return FileEntry(path=relative, sha256=sha256_file(path), bytes=path.stat().st_size)


def write_array(root: Path, relative: str, array: npt.NDArray[np.generic]) -> FileEntry:
    """Save ``array`` as ``root/relative`` (.npy, never pickled) and return its entry."""
    if array.dtype.hasobject:
        raise ArtifactError(f"{relative}: refusing to write an object array (it would pickle)")
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return file_entry(root, relative)


def write_ids(root: Path, relative: str, external_ids: npt.ArrayLike) -> FileEntry:
    """Save external ids as a JSON list of strings (position = internal id)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [str(value) for value in np.asarray(external_ids).tolist()]
    path.write_text(json.dumps(ids, ensure_ascii=False) + "\n", encoding="utf-8")
    return file_entry(root, relative)


def inside(root: Path, relative: str) -> Path:
    """``root/relative``, refused unless it lies inside ``root`` once links are followed.

    Raises:
        ArtifactError: the path resolves outside ``root`` (a ``..``, an absolute path or a
            symbolic link that points out of the artifact folder); names the manifest's field
            and value.
    """
    path = root / relative
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ArtifactError(
            f"{MANIFEST_NAME}: files entry 'path' {relative!r} resolves to {resolved}, outside "
            "the artifact folder"
        )
    return path


def check_file(root: Path, entry: FileEntry) -> Path:
    """Check that ``entry``'s file lies inside ``root`` (links followed) and exists with the
    recorded byte size and sha256; return its path.

    Raises:
        ArtifactError: the file lies outside ``root``, is missing or unreadable, has another
            size (truncated or padded) or another hash.
    """
    path = inside(root, entry.path)
    if not path.is_file():
        raise ArtifactError(f"{entry.path}: missing file (listed in the manifest)")
    try:
        size = path.stat().st_size
        digest = sha256_file(path) if size == entry.bytes else ""
    except OSError as error:
        raise ArtifactError(f"{entry.path}: cannot be read ({error.strerror})") from None
    if size != entry.bytes:
        raise ArtifactError(
            f"{entry.path}: file has {size} bytes, the manifest records {entry.bytes} "
            "(truncated or overwritten)"
        )
    if digest != entry.sha256:
        raise ArtifactError(
            f"{entry.path}: sha256 mismatch (file {digest[:12]}…, manifest {entry.sha256[:12]}…)"
        )
    return path


def read_array(path: Path, relative: str) -> npt.NDArray[np.generic]:
    """Load a .npy file without pickles; ArtifactError names the file when it cannot be read."""
    try:
        array: npt.NDArray[np.generic] = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ArtifactError(f"{relative}: not a readable .npy array ({error})") from None
    return array


def read_ids(path: Path, relative: str) -> npt.NDArray[np.str_]:
    """Load a JSON list of distinct string ids as a numpy unicode array."""
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ArtifactError(f"{relative}: not a JSON list of ids ({error})") from None
    except OSError as error:
        raise ArtifactError(f"{relative}: cannot be read ({error.strerror})") from None
    if not isinstance(ids, list) or not all(isinstance(value, str) for value in ids):
        raise ArtifactError(f"{relative}: expected a JSON list of strings")
    array = np.asarray(ids, dtype=np.str_)
    if np.unique(array).size != array.size:
        raise ArtifactError(f"{relative}: ids are not unique")
    return array
