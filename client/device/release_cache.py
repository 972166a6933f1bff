"""The device's release cache: install a release only after it verifies, swap atomically, keep the previous.

Layout under `root`: `releases/<version>/` (verified releases), `state.json` ({"current", "previous"}),
written by atomic rename, `index_state.json` ({"serial"} of the newest release index accepted), and
`incoming/` (a download in progress). An install fetches the manifest into `incoming/` (at most
MAX_MANIFEST_BYTES) and checks it before fetching anything else: its signature against the PINNED public
key, every listed name and size, and its version: the one the caller expects (`expected_version`: `sync`
passes the version the verified index names, so a mirror cannot serve another there), not one the verified
index withdraws (`withdrawn`), not older than the one in use (a replay). Then each listed file is fetched,
reading no more than the size the signed manifest lists (a longer one is refused, naming it, before more
than that reaches the disk), every sha256 is verified, the folder is moved into `releases/` and
`state.json` switched. A crash or an interrupted download at any point leaves the current release in use; a
leftover `incoming/` is discarded on the next install. A release that does not verify is refused and the
cache is unchanged.

A release whose signed manifest marks files as derived (shared/derived_items.py; a scheme this code knows)
is installed without them: its other files are fetched and verified, then the derived files a device keeps
(the item bias and the coarse codes; its item vectors it reads from the text, never from a file) are
computed from them in `incoming/` and recorded (their sha256 on this device), and the copy is checked from
then on against that record (`verify_copy`): so a new model of the same catalogue costs a device only the
files that changed (client/device/sync.py reuses the others), and a derived file altered on the device is a
repair like any other (derived again). Releases without a "derived" block install exactly as before.

An install of the version in use checks the copy on the device again (`intact()`): an intact copy is kept
(nothing changes); one that no longer verifies (a flipped byte, a missing file or folder) is a repair: the
verified download replaces it (`replace_folder`) and `state.json` stays as it is. `withdraw_current()` falls
back to the previous release. A corrupt `state.json` is refused (DataError naming it), never guessed at:
nothing is installed, switched or pruned until a person or the app removes it (the next install then starts
afresh).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

from shared.derived_items import check_record, derive_files, derived_names, device_derived_names, write_record
from shared.errors import DataError, SignatureError
from shared.release_manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    RELEASE_KIND,
    listed_sizes,
    read_manifest,
    verify_files,
    verify_manifest,
)
from shared.signing import Ed25519PublicKey

INDEX_STATE = "index_state.json"  # {"serial"}: the newest release index this device accepted
_CHUNK = 1 << 20

# (file name, destination path, max_bytes) -> None: writes one file of the release being installed, reading
# no more than max_bytes + 1 bytes of it (copy_bounded: DataError naming the file when there are more)
Fetch = Callable[[str, Path, int], None]


def copy_bounded(source: IO[bytes], destination: Path, *, max_bytes: int, name: str) -> None:
    """Copy `source` into the file `destination`, reading at most max_bytes + 1 bytes: DataError naming
    `name` when there are more than `max_bytes` (no more than `max_bytes` are ever written)."""
    left = max_bytes
    with destination.open("wb") as out:
        while chunk := source.read(min(_CHUNK, left + 1)):
            if len(chunk) > left:
                raise DataError(f"{name} is longer than the {max_bytes} bytes expected; refused")
            out.write(chunk)
            left -= len(chunk)


def reuse_file(source: Path, destination: Path, *, max_bytes: int, name: str) -> None:
    """Put the file `source` (of a release the device holds) at `destination`: a hard link where the file
    system allows one (release files are never changed in place: an install writes new ones), a bounded copy
    otherwise; DataError naming `name` when it is longer than `max_bytes`. Linked, the releases a device
    keeps share their unchanged catalogue files instead of holding one copy each."""
    if source.stat().st_size > max_bytes:
        raise DataError(f"{name} is longer than the {max_bytes} bytes expected; refused")
    try:
        os.link(source, destination)
    except OSError:  # another file system, or one without hard links
        with source.open("rb") as handle:
            copy_bounded(handle, destination, max_bytes=max_bytes, name=name)


def fetch_manifest(
    fetch: Fetch, folder: Path, public_key: Ed25519PublicKey, *, kind: str = RELEASE_KIND
) -> dict[str, Any]:
    """Fetch a manifest (at most MAX_MANIFEST_BYTES) into an emptied `folder`; returns it once its listed
    names and sizes are well formed and it is signed by the pinned `public_key` as a manifest of `kind`, so
    that the sizes the files are fetched with are the signed ones. Nothing else is fetched yet."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    _fetch_file(fetch, MANIFEST_NAME, folder, MAX_MANIFEST_BYTES)
    manifest = read_manifest(folder)
    listed_sizes(manifest)  # each name is checked before it becomes a path or a URL
    verify_manifest(manifest, public_key, kind=kind)
    return manifest


def fetch_files(fetch: Fetch, folder: Path, manifest: dict[str, Any], *, skip: Collection[str] = ()) -> None:
    """Fetch every file the (signed) `manifest` lists into `folder` but those in `skip` (the files a device
    derives), each stopped at its listed size (the sha256s are not verified yet: the caller verifies before
    using anything)."""
    for name, size in listed_sizes(manifest).items():
        if name not in skip:
            _fetch_file(fetch, name, folder, size)


def verify_copy(folder: Path, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The manifest of a device's copy of a release after checking it: the signature against the pinned
    key, every file the device downloads against its sha256 in the manifest, every file it derived against
    the record it wrote when it derived them (shared/derived_items.py). SignatureError/DataError otherwise."""
    manifest = read_manifest(folder)
    verify_manifest(manifest, public_key)
    derived = derived_names(manifest)
    verify_files(folder, manifest, [name for name in manifest["files"] if name not in derived])
    check_record(folder, manifest)
    return manifest


def derive_copy(folder: Path, manifest: dict[str, Any]) -> None:
    """Compute the derived files a device keeps (device_derived_names: the item bias and the coarse codes;
    never the vector files) into `folder` from its verified inputs, and record them."""
    names = device_derived_names(manifest)
    if names:
        derive_files(folder, names)
        write_record(folder, manifest)


def download(
    fetch: Fetch, folder: Path, public_key: Ed25519PublicKey, *, kind: str = RELEASE_KIND
) -> dict[str, Any]:
    """fetch_manifest, then fetch_files: a release (or catalogue delta, `kind`) in `folder`; returns its
    manifest (files not verified yet)."""
    manifest = fetch_manifest(fetch, folder, public_key, kind=kind)
    fetch_files(fetch, folder, manifest)
    return manifest


def _fetch_file(fetch: Fetch, name: str, folder: Path, max_bytes: int) -> None:
    destination = folder / name
    fetch(name, destination, max_bytes)
    if destination.is_file() and destination.stat().st_size > max_bytes:  # a fetch that did not stop
        raise DataError(f"{name} is longer than the {max_bytes} bytes expected; refused")


def replace_folder(source: Path, target: Path) -> None:
    """Move the folder `source` to `target`, replacing any folder there: the old one is renamed aside first
    and removed after, so `target` is never half written; a crash between the two renames leaves it missing,
    which the next install (or sync) repairs."""
    aside = target.with_name(f"{target.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


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
    """A Fetch that copies from a local release folder (the HTTP fetcher is client/device/sync.py's)."""

    def fetch(name: str, destination: Path, max_bytes: int) -> None:
        try:
            with (Path(folder) / name).open("rb") as source:
                copy_bounded(source, destination, max_bytes=max_bytes, name=name)
        except OSError as exc:  # no such file, a folder, unreadable
            raise DataError(f"cannot read {name} ({type(exc).__name__})", path=str(folder)) from exc

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

    def install(
        self,
        fetch: Fetch,
        *,
        expected_version: int | None = None,
        withdrawn: Collection[int] = (),
        allow_older: bool = False,
    ) -> int:
        """Download (via `fetch`), verify and switch to a release; returns its version. Raises
        SignatureError/DataError (cache unchanged) when it does not verify, is not `expected_version` (when
        given), is one of the `withdrawn` versions, or is older than the one in use unless `allow_older`
        (an old, validly signed release must not be replayed); the version is checked on the signed
        manifest, before any other file is fetched. The version in use again: kept when its copy verifies,
        replaced by the verified download when it does not (a repair; see `intact`). A corrupt state.json
        is a DataError before anything is fetched: the releases on disk are neither replaced nor pruned
        (which ones to keep is what the file says)."""
        current = self.state()["current"]
        try:
            manifest = fetch_manifest(fetch, self.incoming, self.public_key)
            version = manifest.get("version")
            if type(version) is not int or version < 1:
                raise DataError(f"release version {version!r} is not an int >= 1")
            _check_version(version, current, expected_version, withdrawn, allow_older=allow_older)
            derived = derived_names(manifest)
            fetch_files(fetch, self.incoming, manifest, skip=derived)
            verify_files(self.incoming, manifest, [n for n in manifest["files"] if n not in derived])
            if version == current and self.intact():
                shutil.rmtree(self.incoming, ignore_errors=True)
                return version
            derive_copy(self.incoming, manifest)  # only from inputs that verified
        except Exception:
            shutil.rmtree(self.incoming, ignore_errors=True)
            raise
        replace_folder(self.incoming, self._folder(version))
        if version != current:  # a repair switches nothing
            self._write_state({"current": version, "previous": current})
        self._prune()
        return version

    def intact(self) -> bool:
        """Whether the copy of the release in use still verifies (True when none is installed): False means
        installing its version again repairs it. A corrupt state.json is a DataError, not False."""
        if self.state()["current"] is None:
            return True
        try:
            self.verify_current()
        except (SignatureError, DataError):
            return False
        return True

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
        return verify_copy(folder, self.public_key)

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


def _check_version(
    version: int,
    current: int | None,
    expected: int | None,
    withdrawn: Collection[int],
    *,
    allow_older: bool,
) -> None:
    """DataError unless release `version` (from a signed manifest) may be installed over `current`."""
    if expected is not None and version != expected:
        raise DataError(f"release {version} was served where release {expected} was expected; refused")
    if version in withdrawn:
        raise DataError(f"release {version} is withdrawn; refused")
    if current is not None and version < current and not allow_older:
        raise DataError(f"release {version} is older than the one in use ({current}); refused")
