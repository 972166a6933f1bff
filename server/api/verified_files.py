"""The files the service serves, checked against their signed manifests (shared/release_manifest.py): every
release of the store when the service starts, a release or catalogue delta not seen before when it is first
asked for, and each file again when it is served if its stat (inode, size, modification and change times:
any write changes one) is not the one taken when it was verified; then its sha256 decides. A folder that
does not verify is refused from then on (SignatureError: a tampered file; CorruptStoreError: a missing or
unreadable one), its files that still match included, and logged once, until the service restarts.

Verification holds one lock: a release seen for the first time, or a file whose stat changed, is hashed while
other requests for served files wait (once per release, about a second per GB)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.catalogue.delta_publisher import CorruptStoreError
from shared.errors import DataError, FedhomeError, SignatureError
from shared.release_manifest import MANIFEST_NAME, RELEASE_KIND, file_digest, verify_release
from shared.signing import Ed25519PublicKey

logger = logging.getLogger(__name__)

Stat = tuple[int, int, int, int]  # st_ino, st_size, st_mtime_ns, st_ctime_ns


def file_stat(path: Path) -> Stat | None:
    """The stat a write to `path` changes (None when there is no such file)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass
class Verified:
    """A folder that verified: its signed manifest, and each file's stat taken before it was hashed."""

    manifest: dict[str, Any]
    stats: dict[str, Stat | None]


class VerifiedFiles:
    """The releases and deltas verified with `public_key`, and those refused (see the module docstring)."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key
        self._verified: dict[Path, Verified] = {}
        self._refused: dict[Path, FedhomeError] = {}
        self._lock = threading.Lock()

    def verify_releases(self, folders: dict[int, Path]) -> dict[int, str]:
        """Verify the releases `folders` ({version: folder}) now; {version: why} of those refused (each
        logged)."""
        refused = {}
        for version, folder in folders.items():
            try:
                self.manifest(folder)
            except (SignatureError, CorruptStoreError) as exc:
                refused[version] = str(exc)
        return refused

    def manifest(self, folder: Path, *, kind: str = RELEASE_KIND) -> dict[str, Any]:
        """The signed manifest of the release (or catalogue delta: `kind`) in `folder`, verified with every
        file it lists; SignatureError or CorruptStoreError when the folder is refused (now or before)."""
        with self._lock:
            return self._checked(Path(folder), kind).manifest

    def file(self, folder: Path, name: str, *, kind: str = RELEASE_KIND) -> Path:
        """The path of file `name` (listed in the manifest, or the manifest itself) of the verified folder;
        refused like `manifest`. A file whose stat changed since it was verified is hashed again: the same
        bytes are served on, other bytes refuse the whole folder."""
        folder = Path(folder)
        with self._lock:
            entry = self._checked(folder, kind)
            path = folder / name
            if name == MANIFEST_NAME:
                return path  # its stat was compared by _checked
            listed = entry.manifest["files"].get(name)
            if listed is None:  # the callers serve only listed files: one they rely on is not
                raise CorruptStoreError(f"{_label(folder, kind)} does not list {name} in its manifest")
            now = file_stat(path)
            if now != entry.stats.get(name):
                if now is None or file_digest(path) != {"sha256": listed["sha256"], "bytes": listed["bytes"]}:
                    reason = f"{name} does not match its sha256 in the signed manifest"
                    raise self._refuse(folder, kind, SignatureError(reason))
                entry.stats[name] = now
            return path

    def refused(self, folders: Iterable[Path]) -> list[Path]:
        """Those of `folders` that are refused."""
        return [folder for folder in folders if Path(folder) in self._refused]

    def _checked(self, folder: Path, kind: str) -> Verified:
        """The folder's verification (under the lock): the one made before while its manifest's stat is
        unchanged, else a new one."""
        if folder in self._refused:
            raise _again(self._refused[folder])
        entry = self._verified.get(folder)
        if entry is None or file_stat(folder / MANIFEST_NAME) != entry.stats.get(MANIFEST_NAME):
            entry = self._verify(folder, kind)
        return entry

    def _verify(self, folder: Path, kind: str) -> Verified:
        self._verified = {f: v for f, v in self._verified.items() if f.is_dir()}  # forget pruned deltas
        try:
            stats = {path.name: file_stat(path) for path in folder.iterdir()}  # before they are hashed
            manifest = verify_release(folder, self.public_key, kind=kind)
        except SignatureError as exc:
            raise self._refuse(folder, kind, exc) from exc
        except (DataError, OSError) as exc:  # a file missing or unreadable: the store's own fault
            raise self._refuse(folder, kind, CorruptStoreError(str(exc))) from exc
        self._verified[folder] = Verified(manifest, stats)
        return self._verified[folder]

    def _refuse(self, folder: Path, kind: str, error: FedhomeError) -> FedhomeError:
        """Refuse `folder` from now on for `error`; returns the error to raise (naming the folder)."""
        refusal = type(error)(f"{_label(folder, kind)} does not verify and is not served: {error}")
        self._refused[folder] = refusal
        self._verified.pop(folder, None)
        logger.error("%s", refusal)
        return _again(refusal)


def _label(folder: Path, kind: str) -> str:
    """ "release 3", or "delta 2 of release 3", for the folder of one (named by number: 000003)."""

    def number(path: Path) -> str:
        return str(int(path.name)) if path.name.isdigit() else path.name

    if kind == RELEASE_KIND:
        return f"release {number(folder)}"
    return f"delta {number(folder)} of release {number(folder.parent)}"


def _again(refusal: FedhomeError) -> FedhomeError:
    """A new error like `refusal` (an exception object raised in several requests at once would share its
    traceback)."""
    return type(refusal)(str(refusal))
