"""The device's release cache: install a release only after it verifies, swap atomically, keep the previous.

Layout under `root`: `releases/<version>/` (verified releases), `state.json` ({"current", "previous"}),
written by atomic rename, `index_state.json` ({"serial"} of the newest release index accepted), and
`incoming/` (a download in progress). An install copies the files into `incoming/`, verifies them there
against the PINNED public key (signature and every sha256), moves the folder into `releases/`, then switches
`state.json`. A crash or an interrupted download at any point leaves the current release in use; a leftover
`incoming/` is discarded on the next install. A release that does not verify is refused and the cache is
unchanged. `withdraw_current()` falls back to the previous release. A corrupt `state.json` is refused
(DataError naming it), never guessed at: nothing is installed, switched or pruned until a person or the app
removes it (the next install then starts afresh).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import DataError
from shared.release_manifest import MANIFEST_NAME, check_file_name, read_manifest, verify_release
from shared.signing import Ed25519PublicKey

INDEX_STATE = "index_state.json"  # {"serial"}: the newest release index this device accepted

# (file name, destination path) -> None: writes one file of the release being installed
Fetch = Callable[[str, Path], None]


def download(fetch: Fetch, folder: Path) -> None:
    """Fetch a manifest and every file it lists into an emptied `folder` (nothing verified yet: the caller
    verifies before using anything). Each listed name is checked before it becomes a path or a URL."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    fetch(MANIFEST_NAME, folder / MANIFEST_NAME)
    for name in read_manifest(folder)["files"]:
        check_file_name(name)
        fetch(name, folder / name)


def read_state(path: Path, kind: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The JSON object in the state file `path` (None when there is no file), which must have `keys`
    (the caller checks their values); DataError naming the file when it is not that."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_bytes())
    except ValueError as exc:  # not JSON (UnicodeDecodeError is a ValueError)
        raise DataError(f"not a {kind} state file ({type(exc).__name__})", path=str(path)) from exc
    if not isinstance(state, dict) or not all(key in state for key in keys):
        raise DataError(f"not a {kind} state file (an object with {', '.join(keys)})", path=str(path))
    return state


def copy_from(folder: Path) -> Fetch:
    """A Fetch that copies from a local release folder (the HTTP fetcher comes with the model service)."""

    def fetch(name: str, destination: Path) -> None:
        shutil.copyfile(Path(folder) / name, destination)

    return fetch


class ReleaseCache:
    def __init__(self, root: Path, public_key: Ed25519PublicKey) -> None:
        self.root, self.public_key = Path(root), public_key
        (self.root / "releases").mkdir(parents=True, exist_ok=True)

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    def state(self) -> dict[str, int | None]:
        """state.json's {"current", "previous"} release versions (None: none; both None when there is no
        file); DataError naming the file when it is not that (a corrupt file is refused, never guessed at)."""
        path = self.root / "state.json"
        state = read_state(path, "release cache", ("current", "previous"))
        if state is None:
            return {"current": None, "previous": None}
        versions = {key: state[key] for key in ("current", "previous")}
        if not all(v is None or (type(v) is int and v >= 1) for v in versions.values()):
            raise DataError('"current" and "previous" must be release versions or null', path=str(path))
        return versions

    def current(self) -> Path | None:
        version = self.state()["current"]
        return None if version is None else self._folder(version)

    def install(self, fetch: Fetch, *, allow_older: bool = False) -> int:
        """Download (via `fetch`), verify and switch to a release; returns its version. Raises
        SignatureError/DataError (cache unchanged) when it does not verify, and refuses a release older than
        the one in use unless `allow_older` (an old, validly signed release must not be replayed). A corrupt
        state.json is a DataError before anything is fetched: the releases on disk are neither replaced
        nor pruned (which ones to keep is what the file says)."""
        current = self.state()["current"]
        try:
            download(fetch, self.incoming)
            manifest = verify_release(self.incoming, self.public_key)
        except Exception:
            shutil.rmtree(self.incoming, ignore_errors=True)
            raise
        version = int(manifest["version"])
        if current is not None and version < current and not allow_older:
            shutil.rmtree(self.incoming, ignore_errors=True)
            raise DataError(f"release {version} is older than the one in use ({current}); refused")
        if version == current:
            shutil.rmtree(self.incoming, ignore_errors=True)
            return version
        target = self._folder(version)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(self.incoming, target)
        self._write_state({"current": version, "previous": current})
        self._prune()
        return version

    def index_serial(self) -> int:
        """The highest release-index serial this device accepted (0: none yet); a lower one is a replay."""
        path = self.root / INDEX_STATE
        state = read_state(path, "release index", ("serial",))
        if state is None:
            return 0
        if type(state["serial"]) is not int or state["serial"] < 1:
            raise DataError('"serial" must be an int >= 1', path=str(path))
        return int(state["serial"])

    def accept_index_serial(self, serial: int) -> None:
        """Remember a verified index's serial (never lowers the one remembered)."""
        if serial > self.index_serial():
            temporary = self.root / f"{INDEX_STATE}.tmp"
            temporary.write_text(json.dumps({"serial": serial}))
            os.replace(temporary, self.root / INDEX_STATE)

    def withdraw_current(self) -> int | None:
        """The current release was withdrawn: fall back to the previous one (returns it; None if none)."""
        state = self.state()
        previous = state["previous"]
        if previous is not None and not self._folder(previous).exists():
            previous = None
        self._write_state({"current": previous, "previous": None})
        return previous

    def verify_current(self) -> dict[str, Any]:
        """Re-verify the release in use (e.g. at app start): files on the device may have been altered."""
        folder = self.current()
        if folder is None:
            raise DataError("no release installed")
        return verify_release(folder, self.public_key)

    def _folder(self, version: int) -> Path:
        return self.root / "releases" / f"{int(version):06d}"

    def _write_state(self, state: dict[str, int | None]) -> None:
        temporary = self.root / "state.json.tmp"
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.root / "state.json")

    def _prune(self) -> None:
        """Keep only the current and previous releases on the device."""
        keep = {f"{int(v):06d}" for v in self.state().values() if v is not None}
        for folder in (self.root / "releases").iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)
