"""Keeping a device's release cache in step with the model service over HTTP (standard library only).

`sync(cache, base_url)` reads the service's signed release index (refused when it is not signed by the pinned
key, older than one the device accepted before, or expired: shared/release_index.py), falls back when the
release in use was withdrawn, and installs the latest release when it is newer; when it is not, and the copy
of the release in use no longer verifies (a flipped byte, a missing file or folder), it downloads that version
again and installs it in place (`SyncResult.repaired`). Files are fetched with If-None-Match set to the sha256
of the same file in the release in use, so unchanged files (a 304) are taken from it (hard-linked, or copied
where links are not possible) instead of downloaded.
Files the signed manifest marks derived (shared/derived_items.py) are not fetched at all: the device computes
them from the others (`SyncResult.derived`), so a new model of the same catalogue costs the model's files
only. Everything fetched still goes through ReleaseCache.install, which verifies before switching and is told
the version the verified index names and the versions it withdraws: a mirror that serves another release (say
a withdrawn one, validly signed) at that address is refused, every time. Each download stops at the size the
signed manifest lists (the manifest itself at MAX_MANIFEST_BYTES). Then the catalogue delta that the index
names as the head of the release in use is applied when it is newer (client/device/deltas.py).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.device.deltas import sync_deltas
from client.device.release_cache import Fetch, ReleaseCache, copy_bounded, reuse_file
from shared.derived_items import derived_names
from shared.errors import DataError
from shared.release_index import verify_index
from shared.release_manifest import file_digest, read_manifest

TIMEOUT_S = 30


@dataclass
class SyncResult:
    current: int | None
    installed: int | None = None
    fell_back: bool = False
    downloaded: list[str] = field(default_factory=list)  # files fetched from the service (HTTP 200)
    reused: list[str] = field(default_factory=list)  # files the service said are unchanged (304): linked
    derived: list[str] = field(default_factory=list)  # files computed on the device, never fetched
    downloaded_bytes: int = 0  # bytes of the `downloaded` files (the index and delta fetches not counted)
    delta: int | None = None  # the catalogue delta applied by this sync (client/device/deltas.py)
    repaired: bool = False  # the release in use did not verify and was downloaded again (same version)


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, ValueError) as exc:
        raise DataError(f"{url}: {exc}") from exc


def http_fetch(base_url: str, version: int, reuse: Path | None, result: SyncResult) -> Fetch:
    """A Fetch for release `version`, reusing files of the folder `reuse` that the server says are equal;
    it reads at most max_bytes + 1 bytes of each file (DataError naming it when there are more)."""

    def fetch(name: str, destination: Path, max_bytes: int) -> None:
        url = f"{base_url}/v1/releases/{version}/files/{name}"
        local = reuse / name if reuse is not None else None
        headers = {}
        if local is not None and local.is_file():
            headers["If-None-Match"] = f'"{file_digest(local)["sha256"]}"'
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                copy_bounded(response, destination, max_bytes=max_bytes, name=name)
            result.downloaded.append(name)
            result.downloaded_bytes += destination.stat().st_size
        except urllib.error.HTTPError as exc:
            if exc.code == 304 and local is not None:
                reuse_file(local, destination, max_bytes=max_bytes, name=name)
                result.reused.append(name)
                return
            raise DataError(f"{url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:  # no connection, a timeout, a reset mid-file
            raise DataError(f"{url}: {exc}") from exc

    return fetch


def derived_in_use(cache: ReleaseCache) -> list[str]:
    """The files of the release in use that the device derived rather than downloaded."""
    folder = cache.current()
    return [] if folder is None else sorted(derived_names(read_manifest(folder)))


def sync(cache: ReleaseCache, base_url: str, *, now_s: float | None = None) -> SyncResult:
    """Bring the cache to the service's latest release, or repair the release in use (see the module
    docstring); `now_s`: the time the index's expiry is checked against (default: now). Raises
    SignatureError/DataError, with the release in use unchanged, when what the service sends does not
    verify."""
    base_url = base_url.rstrip("/")
    index = get_json(f"{base_url}/v1/releases")
    if not isinstance(index, dict):
        raise DataError(f"{base_url}/v1/releases: not a release index")
    now_s = time.time() if now_s is None else now_s
    signed = verify_index(index, cache.public_key, now_s=now_s, min_serial=cache.index_serial())
    cache.accept_index_serial(int(signed["serial"]))
    withdrawn = {int(r["version"]) for r in signed["releases"] if r["withdrawn"]}
    live = [int(r["version"]) for r in signed["releases"] if not r["withdrawn"]]
    result = SyncResult(current=cache.state()["current"])
    if result.current in withdrawn:
        result.current = cache.withdraw_current()
        result.fell_back = True
    latest = max(live, default=None)
    if latest is not None and (result.current is None or latest > result.current):
        fetch = http_fetch(base_url, latest, cache.current(), result)
        result.installed = cache.install(fetch, expected_version=latest, withdrawn=withdrawn)
        result.current = result.installed
        result.derived = derived_in_use(cache)
    elif result.current is not None and not cache.intact():  # the copy on the device was altered
        fetch = http_fetch(base_url, result.current, cache.current(), result)
        cache.install(fetch, expected_version=result.current, withdrawn=withdrawn)
        result.repaired = True
        result.derived = derived_in_use(cache)
    if result.current is not None:
        result.delta = sync_deltas(cache, base_url, signed)
    return result
