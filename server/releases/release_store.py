"""The release store: every release under `root/<version>/` and the signed `index.json` that lists them.

The index (shared/release_index.py) holds each release's withdrawn flag and reason and the head of its
catalogue deltas, with a serial and an expiry; every change re-signs it with the next serial, and
`refresh_index` re-signs it unchanged before it expires. A release is built in a staging folder
(server/releases/release_builder.py writes its files) and renamed into place, so a crash leaves no half
release; `latest()` is the newest release not withdrawn, so withdrawing one makes devices fall back to the
previous. Changes to the index take an exclusive lock file, so a release, a withdrawal, a delta and the
service's own refresh never lose each other's change.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.releases.release_builder import ReleaseSource, write_release_files
from server.releases.release_trending import TRENDING_COUNTS
from shared.data.schema import Catalogue
from shared.errors import ConfigError, DataError
from shared.model import TwoTower
from shared.release_index import INDEX_LIFETIME_S, sign_index, utc_seconds, verify_signature
from shared.release_manifest import MANIFEST_NAME, file_digest, read_manifest, sign_manifest
from shared.signing import Ed25519PrivateKey, Ed25519PublicKey

INDEX = "index.json"
Releases = list[dict[str, Any]]


class ReleaseStore:
    """Releases under `root/<version>/`, newest last, with a signed index of what is withdrawn."""

    def __init__(self, root: Path, *, index_lifetime_s: float = INDEX_LIFETIME_S) -> None:
        if index_lifetime_s <= 0:
            raise ConfigError(f"index_lifetime_s must be > 0, got {index_lifetime_s}")
        self.root, self.index_lifetime_s = Path(root), index_lifetime_s

    def folder(self, version: int) -> Path:
        return self.root / f"{version:06d}"

    def index(self, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
        """The index (shared/release_index.py), its signature verified when a key is given (an expired
        index is still this store's index: serving it lets devices say why they refuse it)."""
        path = self.root / INDEX
        if not path.exists():
            return {"releases": []}
        try:
            index = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON") from exc
        if public_key is not None:
            verify_signature(index, public_key)  # SignatureError: another key, or altered
        return index

    def versions(self) -> list[int]:
        return [int(r["version"]) for r in self.index()["releases"]]

    def latest(self) -> int | None:
        """The newest version that is not withdrawn (None when there is none)."""
        live = [int(r["version"]) for r in self.index()["releases"] if not r["withdrawn"]]
        return max(live) if live else None

    def publish(
        self, model: TwoTower, catalogue: Catalogue, source: ReleaseSource, key: Ed25519PrivateKey
    ) -> int:
        """Build, sign and add a release; returns its version."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._index_lock():  # the version number is taken and used under the lock
            version = max(self.versions(), default=0) + 1
            staging = self.root / f".staging-{version:06d}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                write_release_files(model, catalogue, staging)
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
                    },
                    key,
                )
                (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
                staging.rename(self.folder(version))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            releases = [*self.index()["releases"], {"version": version, "withdrawn": False, "reason": ""}]
            self._write_index(releases, key)
        return version

    def withdraw(self, version: int, *, reason: str, key: Ed25519PrivateKey) -> None:
        """Mark a release withdrawn (it stays on disk for the record; `latest` skips it)."""
        if not reason.strip():
            raise ConfigError("say why a release is withdrawn (--reason)")

        def mark(entry: dict[str, Any]) -> None:
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
            self._write_index(self.index(key.public_key())["releases"], key)
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
            releases = self.index()["releases"]
            matches = [r for r in releases if r["version"] == version]
            if not matches:
                raise ConfigError(f"no release {version} in {self.root} (have {self.versions()})")
            change(matches[0])
            self._write_index(releases, key)

    def _write_index(self, releases: Releases, key: Ed25519PrivateKey) -> None:
        """Sign and write the index with the next serial, expiring one lifetime from now (under the lock)."""
        serial = int(self.index().get("serial", 0)) + 1
        index = sign_index(releases, key, serial=serial, expires_s=time.time() + self.index_lifetime_s)
        temporary = self.root / f".{INDEX}.tmp"
        temporary.write_text(json.dumps(index, indent=2))
        os.replace(temporary, self.root / INDEX)

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        with (self.root / ".index.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
