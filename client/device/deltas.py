"""The device's catalogue deltas: the newest signed delta of the release in use, verified and kept atomically.

Layout under the release cache's root: `deltas/<release>/<sequence>/` (the applied delta of a release),
`deltas/state.json` ({"applied": {release: sequence}}, replaced by atomic rename) and `deltas/incoming/`
(a download in progress). An install downloads into `incoming/` as a release is downloaded
(client/device/release_cache.py: the manifest, at most MAX_MANIFEST_BYTES, is checked against the pinned key
before any other file is fetched, and each file is read no further than the size the signed manifest lists),
verifies it there (every file's sha256, that it was made for exactly the release in use, array shapes),
renames it into place (`replace_folder`), then switches `state.json`. Anything that does not verify is
refused and the delta in use, if any, stays; a delta older than (or as old as) the one applied is refused
too (a replay), except the applied one itself when its copy on the device no longer verifies (a repair, as
for the release in use: open_ranker refuses an altered copy, so without one the device could never rank
again). Deltas are cumulative (shared/catalogue_delta_format.py), so only the newest is fetched and kept.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from client.device.item_index import Precision
from client.device.ranker import DeviceRanker
from client.device.release_cache import (
    Fetch,
    ReleaseCache,
    copy_bounded,
    download,
    read_state,
    replace_folder,
)
from shared.catalogue_delta_format import DELTA_KIND, DeltaRows, manifest_sha256, verify_delta
from shared.errors import DataError, SignatureError
from shared.release_index import delta_head
from shared.release_manifest import read_manifest

TIMEOUT_S = 30


class DeltaCache:
    """The applied catalogue delta of each release kept in `cache` (one per release, the newest)."""

    def __init__(self, cache: ReleaseCache) -> None:
        self.cache = cache
        self.root = cache.root / "deltas"
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    def applied(self, release: int) -> int | None:
        """The sequence of the delta applied to `release` (None: none)."""
        return self._applied().get(str(release))

    def install(self, fetch: Fetch, *, listed_sha256: str | None = None) -> int:
        """Download (via `fetch`), verify and apply a delta of the release in use; returns its sequence.
        Raises SignatureError/DataError, with the delta in use unchanged, when it does not verify, is not
        newer than the one applied, or is not the manifest the signed index names (`listed_sha256`)."""
        release, base = self.release()
        try:
            download(fetch, self.incoming, self.cache.public_key, kind=DELTA_KIND)
            rows = verify_delta(self.incoming, self.cache.public_key, base)
            if listed_sha256 is not None and manifest_sha256(rows.manifest) != listed_sha256:
                raise SignatureError(
                    "the delta is not the one signed as the release's head (another manifest)"
                )
            sequence = rows.sequence
            applied = self.applied(release)
            repair = sequence == applied and not self.intact()  # the applied copy was altered on the device
            if applied is not None and sequence <= applied and not repair:
                raise DataError(f"delta {sequence} is not newer than the one applied ({applied}); refused")
        except Exception:
            shutil.rmtree(self.incoming, ignore_errors=True)
            raise
        target = self._folder(release, sequence)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_folder(self.incoming, target)
        self._set_applied(release, sequence)
        return sequence

    def rows(self) -> DeltaRows | None:
        """The applied delta of the release in use, verified again (files on a device may be altered);
        None when that release has none."""
        release, base = self.release()
        sequence = self.applied(release)
        if sequence is None:
            return None
        return verify_delta(self._folder(release, sequence), self.cache.public_key, base)

    def intact(self) -> bool:
        """Whether the applied delta of the release in use still verifies (True when there is none)."""
        try:
            self.rows()
        except (SignatureError, DataError):
            return False
        return True

    def release(self) -> tuple[int, dict[str, Any]]:
        folder = self.cache.current()
        if folder is None:
            raise DataError("no release installed")
        manifest = read_manifest(folder)
        return int(manifest["version"]), manifest

    def _applied(self) -> dict[str, int]:
        """state.json's {release: sequence} ({} when there is no file); DataError naming the file when it
        is not that (a corrupt file is refused, never guessed at)."""
        path = self.root / "state.json"
        state = read_state(path, "delta", ("applied",))
        if state is None:
            return {}
        applied = state["applied"]
        if not isinstance(applied, dict) or not all(
            isinstance(k, str) and k.isdigit() and type(v) is int and v >= 1 for k, v in applied.items()
        ):
            raise DataError('"applied" must map release versions to delta sequences', path=str(path))
        return applied

    def _folder(self, release: int, sequence: int) -> Path:
        return self.root / f"{int(release):06d}" / f"{int(sequence):06d}"

    def _set_applied(self, release: int, sequence: int) -> None:
        path = self.root / "state.json"
        kept = {v for v in self.cache.state().values() if v is not None}  # the releases still on the device
        applied = {k: v for k, v in self._applied().items() if int(k) in kept}
        applied[str(release)] = sequence
        temporary = self.root / "state.json.tmp"
        temporary.write_text(json.dumps({"applied": applied}))
        os.replace(temporary, path)
        self._prune(applied)

    def _prune(self, applied: dict[str, int]) -> None:
        keep = {self._folder(int(r), s) for r, s in applied.items()}
        for release in self.root.iterdir():
            if not release.is_dir() or release.name == "incoming":
                continue
            for folder in release.iterdir():
                if folder not in keep:
                    shutil.rmtree(folder, ignore_errors=True)


def open_ranker(cache: ReleaseCache, *, precision: Precision = "int8", threads: int = 1) -> DeviceRanker:
    """The ranker of the release in use with its applied catalogue delta (verified again) on top."""
    folder = cache.current()
    if folder is None:
        raise DataError("no release installed")
    ranker = DeviceRanker(folder, precision=precision, threads=threads)
    rows = DeltaCache(cache).rows()
    if rows is not None:
        ranker.apply_delta(rows)
    return ranker


def sync_deltas(cache: ReleaseCache, base_url: str, index: dict[str, Any]) -> int | None:
    """Apply the delta that the verified release index `index` names as the head of the release in use,
    when it is newer than the applied one; returns the sequence applied now (None: nothing new). The head
    comes from the index, not from the service's delta list: the index's serial and expiry
    (shared/release_index.py) are what stop a replayed or withheld delta. Raises SignatureError/DataError
    when the delta does not verify or is not the manifest the index names (nothing applied)."""
    deltas = DeltaCache(cache)
    release, _ = deltas.release()
    head = delta_head(index, release)
    if head is None:
        return None  # the index names no delta for this release
    latest, digest = head
    applied = deltas.applied(release)
    if applied is not None and (latest < applied or (latest == applied and deltas.intact())):
        return None  # nothing newer (an applied copy that no longer verifies is fetched again)
    fetch = _http_fetch(f"{base_url}/v1/releases/{release}/deltas/{latest}/files")
    return deltas.install(fetch, listed_sha256=digest)


def _http_fetch(base: str) -> Fetch:
    """A Fetch from `base`/<name> that reads at most max_bytes + 1 bytes (DataError naming the file when
    there are more)."""

    def fetch(name: str, destination: Path, max_bytes: int) -> None:
        url = f"{base}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                copy_bounded(response, destination, max_bytes=max_bytes, name=name)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"{url}: {exc}") from exc

    return fetch
