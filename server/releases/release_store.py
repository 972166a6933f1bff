"""The release store: every release under `root/<version>/` and the signed `index.json` that lists them.

The index (shared/release_index.py) holds each release's withdrawn flag and reason and the head of its
catalogue deltas, with a serial and an expiry; every change re-signs it with the next serial, and
`refresh_index` re-signs it unchanged before it expires. A release is built in a staging folder
(server/releases/release_builder.py writes its files) and renamed into place, so a crash leaves no half
release; `latest()` is the newest release not withdrawn, so withdrawing one makes devices fall back to the
previous, and withdrawing it again is refused (AlreadyWithdrawnError: its first reason stays). Changes to
the index take an exclusive lock file, so a release, a withdrawal, a delta and the service's own refresh
never lose each other's change.

The index is never used unverified where a key is at hand: a store opened with a public key (the service's)
checks the index's signature on every read (SignatureError: edited, or another key's), and every write
checks the index it extends with its signing key's public key, so an edited index is never re-signed. An
index that is not a JSON object with a list of releases is a StoreError (the store's own fault). Staging
folders that a writer killed mid-write left behind are removed when the store is opened, when no writer
holds the lock (`remove_staging_leftovers`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.releases.release_builder import ReleaseSource, write_release_files
from server.releases.release_trending import TRENDING_COUNTS
from shared.data.schema import Catalogue
from shared.errors import ConfigError, FedhomeError
from shared.model import TwoTower
from shared.release_index import INDEX_LIFETIME_S, sign_index, utc_seconds, verify_signature
from shared.release_manifest import MANIFEST_NAME, file_digest, read_manifest, sign_manifest
from shared.signing import Ed25519PrivateKey, Ed25519PublicKey

INDEX = "index.json"
INDEX_LOCK = ".index.lock"
STAGING_PREFIX = ".staging-"  # the folders writers build releases (and deltas) in, renamed when complete
Releases = list[dict[str, Any]]

logger = logging.getLogger(__name__)


class StoreError(FedhomeError):
    """The store's own files are unreadable or malformed: the service's fault, never the caller's."""


class AlreadyWithdrawnError(FedhomeError):
    """A withdrawal of a release that is withdrawn already: nothing changes (its first reason stays)."""


class ReleaseStore:
    """Releases under `root/<version>/`, newest last, with a signed index of what is withdrawn. With
    `public_key`, every read of the index verifies it with that key."""

    def __init__(
        self,
        root: Path,
        *,
        index_lifetime_s: float = INDEX_LIFETIME_S,
        public_key: Ed25519PublicKey | None = None,
    ) -> None:
        if index_lifetime_s <= 0:
            raise ConfigError(f"index_lifetime_s must be > 0, got {index_lifetime_s}")
        self.root, self.index_lifetime_s, self.public_key = Path(root), index_lifetime_s, public_key
        remove_staging_leftovers([self.root], lock=self.root / INDEX_LOCK)

    def folder(self, version: int) -> Path:
        return self.root / f"{version:06d}"

    def index(self, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
        """The index (shared/release_index.py), its signature verified with `public_key`, else with the
        store's own key when it has one (an expired index is still this store's index: serving it lets
        devices say why they refuse it). SignatureError when it does not verify, StoreError when it is not
        a JSON object with a list of releases."""
        path = self.root / INDEX
        try:
            index = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {"releases": []}
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise StoreError(f"the release store's {INDEX} is not readable JSON") from exc
        if not isinstance(index, dict):
            raise StoreError(f"the release store's {INDEX} is not a release index (a JSON object)")
        key = public_key if public_key is not None else self.public_key
        if key is not None:
            verify_signature(index, key)  # SignatureError: another key, or altered
        check_releases(index.get("releases"))
        return index

    def versions(self) -> list[int]:
        return [r["version"] for r in self.index()["releases"]]

    def latest(self) -> int | None:
        """The newest version that is not withdrawn (None when there is none)."""
        return latest_of(self.index())

    def publish(
        self, model: TwoTower, catalogue: Catalogue, source: ReleaseSource, key: Ed25519PrivateKey
    ) -> int:
        """Build, sign and add a release; returns its version."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._index_lock():  # the version number is taken and used under the lock
            index = self.index(key.public_key())
            version = max((r["version"] for r in index["releases"]), default=0) + 1
            staging = self.root / f"{STAGING_PREFIX}{version:06d}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                fields = write_release_files(model, catalogue, staging)  # {"derived": ...} or {}
                if source.trending_file is not None:
                    shutil.copyfile(source.trending_file, staging / TRENDING_COUNTS)
                files = {p.name: file_digest(p) for p in sorted(staging.iterdir())}
                manifest = sign_manifest(
                    {
                        "version": version,
                        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "run_id": source.run_id,
                        "model": {"sha256": source.model_sha256, "round": source.model_round},
                        "encoder": source.encoder,
                        "privacy": source.privacy,
                        "files": files,
                        **fields,
                    },
                    key,
                )
                (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
                staging.rename(self.folder(version))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            releases = [*index["releases"], {"version": version, "withdrawn": False, "reason": ""}]
            self._write_index(index, releases, key)
        return version

    def withdraw(self, version: int, *, reason: str, key: Ed25519PrivateKey) -> None:
        """Mark a release withdrawn (it stays on disk for the record; `latest` skips it).
        AlreadyWithdrawnError, with the index unchanged, when it is withdrawn already."""
        if not reason.strip():
            raise ConfigError("say why a release is withdrawn (--reason)")

        def mark(entry: dict[str, Any]) -> None:
            if entry["withdrawn"]:
                raise AlreadyWithdrawnError(f"release {version} is withdrawn already: {entry['reason']}")
            entry.update(withdrawn=True, reason=reason.strip())

        self._update_release(version, mark, key)

    def set_delta_head(
        self, version: int, sequence: int, manifest_sha256: str, key: Ed25519PrivateKey
    ) -> None:
        """Name delta `sequence` (its signed manifest's sha256) as release `version`'s newest catalogue
        delta in the index, re-signed with the next serial (server/catalogue/delta_publisher.py calls it
        last)."""

        def point(entry: dict[str, Any]) -> None:
            entry["delta"] = {"sequence": sequence, "manifest_sha256": manifest_sha256}

        self._update_release(version, point, key)

    def refresh_index(self, key: Ed25519PrivateKey) -> dict[str, Any]:
        """Re-sign the index as it is, with the next serial and a new expiry (devices refuse expired ones)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._index_lock():
            index = self.index(key.public_key())
            self._write_index(index, index["releases"], key)
        return self.index()

    def index_needs_refresh(self, now_s: float | None = None) -> bool:
        """True when the index exists and has less than half its lifetime left (or no expiry at all)."""
        index = self.index()
        if not index["releases"] and "signature" not in index:
            return False
        if "expires_utc" not in index:
            return True
        now_s = time.time() if now_s is None else now_s
        return utc_seconds(str(index["expires_utc"])) - now_s < self.index_lifetime_s / 2

    def manifest(self, version: int) -> dict[str, Any]:
        return read_manifest(self.folder(version))

    def _update_release(
        self, version: int, change: Callable[[dict[str, Any]], None], key: Ed25519PrivateKey
    ) -> None:
        if not self.root.is_dir():
            raise ConfigError(f"no release store at {self.root}")
        with self._index_lock():
            index = self.index(key.public_key())  # never re-sign an index this key did not sign
            releases = index["releases"]
            matches = [r for r in releases if r["version"] == version]
            if not matches:
                have = [r["version"] for r in releases]
                raise ConfigError(f"no release {version} in {self.root} (have {have})")
            change(matches[0])
            self._write_index(index, releases, key)

    def _write_index(self, previous: dict[str, Any], releases: Releases, key: Ed25519PrivateKey) -> None:
        """Sign and write the index of `releases` with the serial after `previous`'s (the index read under
        the lock), expiring one lifetime from now."""
        serial = int(previous.get("serial", 0)) + 1
        index = sign_index(releases, key, serial=serial, expires_s=time.time() + self.index_lifetime_s)
        temporary = self.root / f".{INDEX}.tmp"
        temporary.write_text(json.dumps(index, indent=2))
        os.replace(temporary, self.root / INDEX)

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        with (self.root / INDEX_LOCK).open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def latest_of(index: dict[str, Any]) -> int | None:
    """The newest version `index` lists that is not withdrawn (None when there is none)."""
    live = [r["version"] for r in index["releases"] if not r["withdrawn"]]
    return max(live) if live else None


def check_releases(releases: object) -> None:
    """StoreError unless `releases` is an index's list of releases: objects with an integer "version",
    a boolean "withdrawn" and a string "reason"."""
    if not isinstance(releases, list) or not all(
        isinstance(r, dict)
        and type(r.get("version")) is int
        and isinstance(r.get("withdrawn"), bool)
        and isinstance(r.get("reason"), str)
        for r in releases
    ):
        raise StoreError(f"the release store's {INDEX} does not list releases (version, withdrawn, reason)")


def remove_staging_leftovers(folders: Iterable[Path], *, lock: Path) -> list[Path]:
    """Remove the staging folders (named STAGING_PREFIX...) directly in `folders` that writers killed
    mid-write left behind, when no writer holds `lock` (the writers' lock file: a writer holds it for as
    long as its staging folder lives); returns what was removed. Nothing is removed while a writer holds
    the lock, or when the lock file cannot be opened (a read-only store)."""
    if not lock.parent.is_dir():
        return []
    try:
        handle = lock.open("a")
    except OSError:
        return []
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a writer is at work: its staging folder may be live
        try:
            leftovers = sorted(
                path
                for folder in folders
                if folder.is_dir()
                for path in folder.iterdir()
                if path.name.startswith(STAGING_PREFIX) and path.is_dir()
            )
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    if leftovers:
        logger.warning("removed %d staging folders of interrupted writes: %s", len(leftovers), leftovers)
    return leftovers
