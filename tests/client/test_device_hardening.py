"""Issue 17, the device side under hostile mirrors and corruption: a withdrawn release served in place of the
latest live one is refused, a release altered on the device is repaired by sync and install, downloads stop
at the sizes the signed manifest lists, and broken history files, event stores and data folders are clear
errors (exit 2), never tracebacks or silently empty stores.

The mirror tests serve over a real HTTP server on loopback (http.server in a thread), so they are
`integration`; the rest are `unit`."""

from __future__ import annotations

import http.server
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from release_toy import random_model, source

import shared.release_manifest as release_manifest
from client.device import device_cli as client_cli
from client.device.event_store import EventStore
from client.device.release_cache import ReleaseCache, copy_from
from client.device.sync import sync
from server.releases.release_store import ReleaseStore
from shared.derived_items import derived_names, device_derived_names
from shared.errors import DataError
from shared.release_index import sign_index
from shared.release_manifest import MANIFEST_NAME, sign_manifest
from shared.signing import generate_private_key, save_public_key

KEY = generate_private_key()
NOW = 1_750_000_000
JUNK_BYTES = 32 << 20  # what a hostile mirror streams after (or instead of) a file: far beyond any limit


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ReleaseStore:
    """Releases 1 and 2 of one model, signed by KEY."""
    model, catalogue = random_model()
    releases = ReleaseStore(tmp_path_factory.mktemp("hardening") / "store")
    releases.publish(model, catalogue, source("a"), KEY)
    releases.publish(model, catalogue, source("b"), KEY)
    return releases


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "pinned.pem"
    save_public_key(KEY.public_key(), path)
    return path


def listed_files(folder: Path) -> list[str]:
    """Every file a device holds of a release: those its manifest lists (but the derived ones a device does
    not keep), and the manifest."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    unkept = derived_names(manifest) - set(device_derived_names(manifest))
    return [*(name for name in manifest["files"] if name not in unkept), MANIFEST_NAME]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


def write_history(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def a_history(store: ReleaseStore, path: Path) -> Path:
    """A history file of three events on release items."""
    items = json.loads((store.folder(1) / "items.json").read_text())  # one record per item
    events = ["view", "cart", "view"]
    return write_history(
        path, [{"item_id": items[i]["id"], "event": e, "timestamp": NOW} for i, e in enumerate(events)]
    )


# --- a mirror on loopback --------------------------------------------------------------------------------

Body = bytes | Iterable[bytes]


class Mirror:
    """A release service on loopback: `routes` maps a URL path to its body (bytes, or chunks streamed
    until the client hangs up); any other path is a 404. `sent` counts the bytes the client took of each
    path and `done` is set when a streamed (not bytes) answer ends: the client read it all or hung up."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[], Body]] = {}
        self.sent: dict[str, int] = {}
        self.done = threading.Event()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = mirror.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                body = route()
                self.send_response(200)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                mirror.sent[self.path] = 0
                try:
                    for chunk in [body] if isinstance(body, bytes) else body:
                        self.wfile.write(chunk)
                        mirror.sent[self.path] += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the device stopped reading: what these tests want
                finally:
                    if not isinstance(body, bytes):
                        mirror.done.set()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve_index(self, releases: list[dict[str, object]]) -> None:
        index = sign_index(releases, KEY, serial=1, expires_s=time.time() + 3_600)
        self.routes["/v1/releases"] = lambda: json.dumps(index).encode()

    def serve_release(self, version: int, folder: Path) -> None:
        """Serve the files of the release folder `folder` as release `version`'s."""
        for path in folder.iterdir():
            self.routes[f"/v1/releases/{version}/files/{path.name}"] = path.read_bytes

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    served = Mirror()
    yield served
    served.close()


def entry(version: int, *, withdrawn: bool = False, **extra: object) -> dict[str, object]:
    return {"version": version, "withdrawn": withdrawn, "reason": "regression" if withdrawn else "", **extra}


def oversized(head: bytes, on_disk: Path, seen: list[int]) -> Iterator[bytes]:
    """`head`, then junk up to JUNK_BYTES, in 1 MiB chunks; before each chunk the size of `on_disk` (the
    file the device writes) is noted in `seen`, so a test sees what reached the disk while it streamed."""
    data = head + b" " * (JUNK_BYTES - len(head))
    for start in range(0, len(data), 1 << 20):
        seen.append(on_disk.stat().st_size if on_disk.exists() else 0)
        yield data[start : start + (1 << 20)]
    seen.append(on_disk.stat().st_size if on_disk.exists() else 0)


# --- 1. a withdrawn release through a hostile mirror ---------------------------------------------------


def test_install_refuses_a_release_other_than_the_one_expected(store: ReleaseStore, tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    with pytest.raises(DataError, match="release 2"):
        cache.install(copy_from(store.folder(2)), expected_version=1)
    assert cache.state() == {"current": None, "previous": None} and not cache.incoming.exists()
    assert cache.install(copy_from(store.folder(1)), expected_version=1) == 1


def test_install_refuses_a_withdrawn_release(store: ReleaseStore, tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    with pytest.raises(DataError, match="withdrawn"):
        cache.install(copy_from(store.folder(2)), withdrawn={2})
    assert cache.state() == {"current": 1, "previous": None} and not cache.incoming.exists()
    assert [p.name for p in (cache.root / "releases").iterdir()] == ["000001"]


def test_fedhome_client_install_version_refuses_another_release(
    store: ReleaseStore, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--cache", str(tmp_path / "cache"), "--public-key", str(key_file)]
    assert client_cli.main(["install", "--from", str(store.folder(2)), "--version", "1", *common]) == 2
    assert "release 2" in capsys.readouterr().err
    assert ReleaseCache(tmp_path / "cache", KEY.public_key()).state()["current"] is None
    assert client_cli.main(["install", "--from", str(store.folder(2)), "--version", "2", *common]) == 0
    assert json.loads(capsys.readouterr().out) == {"installed": 2}


@pytest.mark.integration
def test_sync_refuses_a_withdrawn_release_a_mirror_serves_as_the_latest_live_one(
    store: ReleaseStore, mirror: Mirror, tmp_path: Path
) -> None:
    mirror.serve_index([entry(1), entry(2, withdrawn=True)])
    mirror.serve_release(1, store.folder(2))  # release 2's files, validly signed, where release 1's belong
    fresh = ReleaseCache(tmp_path / "fresh", KEY.public_key())
    for _ in range(2):  # and again on the next sync: never installed
        with pytest.raises(DataError, match="release 2"):
            sync(fresh, mirror.url)
        assert fresh.state() == {"current": None, "previous": None} and not fresh.incoming.exists()
    # a device on release 1 whose copy was altered: the repair is refused too, release 1 stays in use
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    device.install(copy_from(store.folder(1)))
    flip_byte(device.root / "releases" / "000001" / "user_tower.onnx")
    with pytest.raises(DataError, match="release 2"):
        sync(device, mirror.url)
    assert device.state() == {"current": 1, "previous": None} and not device.incoming.exists()
    assert [p.name for p in (device.root / "releases").iterdir()] == ["000001"]


# --- 2. a release altered on the device is repaired ------------------------------------------------------


def test_install_repairs_an_altered_copy_of_the_release_in_use(
    store: ReleaseStore, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--cache", str(tmp_path / "cache"), "--public-key", str(key_file)]
    home = ["homepage", "--history", str(a_history(store, tmp_path / "h.jsonl")), "--now", str(NOW), *common]
    install = ["install", "--from", str(store.folder(1)), *common]
    assert client_cli.main(install) == 0
    installed = tmp_path / "cache" / "releases" / "000001"
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    repaired = []
    for name in listed_files(store.folder(1)):
        flip_byte(installed / name)
        assert client_cli.main(home) == 2  # refused while altered
        capsys.readouterr()
        assert client_cli.main(install) == 0
        if json.loads(capsys.readouterr().out) == {"installed": 1, "repaired": True}:
            repaired.append(name)
        assert cache.verify_current()["version"] == 1 and cache.state() == {"current": 1, "previous": None}
        assert client_cli.main(home) == 0 and not cache.incoming.exists()
    assert repaired == listed_files(store.folder(1))
    capsys.readouterr()
    assert client_cli.main(install) == 0  # intact: nothing to repair, nothing changed
    assert json.loads(capsys.readouterr().out) == {"installed": 1}


@pytest.mark.parametrize("damage", ["a file missing", "the folder missing"])
def test_install_repairs_a_release_in_use_with_files_missing(
    store: ReleaseStore, tmp_path: Path, damage: str
) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    cache.install(copy_from(store.folder(2)))
    installed = cache.root / "releases" / "000002"
    if damage == "a file missing":
        (installed / "items.json").unlink()
    else:
        shutil.rmtree(installed)
    assert cache.install(copy_from(store.folder(2))) == 2
    assert cache.verify_current()["version"] == 2
    assert cache.state() == {"current": 2, "previous": 1}  # a repair switches nothing


@pytest.mark.integration
def test_sync_repairs_an_altered_copy_of_the_release_in_use(
    store: ReleaseStore, mirror: Mirror, tmp_path: Path
) -> None:
    mirror.serve_index([entry(1)])
    mirror.serve_release(1, store.folder(1))
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    assert sync(cache, mirror.url).installed == 1
    assert not sync(cache, mirror.url).repaired  # intact: nothing fetched
    installed = cache.root / "releases" / "000001"
    repaired = []
    for name in listed_files(store.folder(1)):
        flip_byte(installed / name)
        result = sync(cache, mirror.url)
        if result.repaired and cache.verify_current()["version"] == 1:
            repaired.append(name)
        assert cache.state() == {"current": 1, "previous": None} and not cache.incoming.exists()
    assert repaired == listed_files(store.folder(1))
    (installed / "items.json").unlink()
    assert sync(cache, mirror.url).repaired and cache.verify_current()["version"] == 1
    shutil.rmtree(installed)
    assert sync(cache, mirror.url).repaired and cache.verify_current()["version"] == 1


# --- 3. downloads stop at the sizes the signed manifest lists ---------------------------------------------


@pytest.mark.integration
def test_a_release_file_longer_than_its_manifest_says_is_never_written_past_its_size(
    store: ReleaseStore, mirror: Mirror, tmp_path: Path
) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    name = "user_tower.onnx"
    size = json.loads((store.folder(1) / MANIFEST_NAME).read_text())["files"][name]["bytes"]
    seen: list[int] = []
    mirror.serve_index([entry(1)])
    mirror.serve_release(1, store.folder(1))
    path = f"/v1/releases/1/files/{name}"
    real = (store.folder(1) / name).read_bytes()
    mirror.routes[path] = lambda: oversized(real, cache.incoming / name, seen)
    with pytest.raises(DataError, match=name):
        sync(cache, mirror.url)
    assert mirror.done.wait(10)
    assert max(seen) <= size  # never more on disk than the manifest lists
    assert mirror.sent[path] < JUNK_BYTES  # the device hung up instead of reading it all
    assert cache.state() == {"current": None, "previous": None} and not cache.incoming.exists()


@pytest.mark.integration
def test_a_manifest_larger_than_the_limit_is_never_written_past_it(
    store: ReleaseStore, mirror: Mirror, tmp_path: Path
) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    limit = release_manifest.MAX_MANIFEST_BYTES
    assert limit <= 1 << 20
    seen: list[int] = []
    mirror.serve_index([entry(1), entry(2)])
    path = f"/v1/releases/2/files/{MANIFEST_NAME}"
    mirror.routes[path] = lambda: oversized(b'{"files": {', cache.incoming / MANIFEST_NAME, seen)
    with pytest.raises(DataError, match=MANIFEST_NAME):
        sync(cache, mirror.url)
    assert mirror.done.wait(10)
    assert max(seen) <= limit and mirror.sent[path] < JUNK_BYTES
    assert cache.state() == {"current": 1, "previous": None} and not cache.incoming.exists()


@pytest.mark.integration
def test_catalogue_delta_downloads_stop_at_the_listed_sizes_too(
    store: ReleaseStore, mirror: Mirror, tmp_path: Path
) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    incoming = cache.root / "deltas" / "incoming"
    # a validly signed delta manifest that lists a 10-byte items.json, and a mirror that streams 32 MiB of it
    manifest = sign_manifest(
        {"kind": "catalogue-delta", "release": 1, "sequence": 1, "files": {"items.json": {
            "sha256": "0" * 64, "bytes": 10}}},
        KEY,
    )  # fmt: skip
    mirror.serve_index([entry(1, delta={"sequence": 1, "manifest_sha256": "ab" * 32})])
    files = "/v1/releases/1/deltas/1/files"
    seen: list[int] = []
    mirror.routes[f"{files}/{MANIFEST_NAME}"] = lambda: json.dumps(manifest).encode()
    mirror.routes[f"{files}/items.json"] = lambda: oversized(b"[]", incoming / "items.json", seen)
    with pytest.raises(DataError, match=r"items\.json"):
        sync(cache, mirror.url)
    assert mirror.done.wait(10)
    assert max(seen) <= 10 and mirror.sent[f"{files}/items.json"] < JUNK_BYTES
    assert not incoming.exists() and not (cache.root / "deltas" / "000001").exists()
    seen.clear()
    mirror.done.clear()
    mirror.routes[f"{files}/{MANIFEST_NAME}"] = lambda: oversized(b"{", incoming / MANIFEST_NAME, seen)
    with pytest.raises(DataError, match=MANIFEST_NAME):
        sync(cache, mirror.url)
    assert mirror.done.wait(10)
    assert max(seen) <= release_manifest.MAX_MANIFEST_BYTES and not incoming.exists()


def test_a_local_release_file_longer_than_listed_is_refused_naming_it(
    store: ReleaseStore, tmp_path: Path
) -> None:
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    padded = shutil.copytree(store.folder(2), tmp_path / "padded")
    with (padded / "items.json").open("ab") as handle:
        handle.write(b" " * 4096)
    with pytest.raises(DataError, match=r"items\.json"):
        cache.install(copy_from(padded))
    assert cache.state() == {"current": 1, "previous": None} and not cache.incoming.exists()


# --- 4. device-side errors -------------------------------------------------------------------------------


@pytest.fixture
def installed(store: ReleaseStore, key_file: Path, tmp_path: Path) -> list[str]:
    """The cache and key arguments of a device with release 1 installed."""
    common = ["--cache", str(tmp_path / "cache"), "--public-key", str(key_file)]
    assert client_cli.main(["install", "--from", str(store.folder(1)), *common]) == 0
    return common


@pytest.mark.parametrize("command", ["recommend", "homepage"])
@pytest.mark.parametrize("problem", ["missing", "not UTF-8", "a folder", "an unknown event"])
def test_a_bad_history_file_is_a_clear_error(
    store: ReleaseStore,
    installed: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    problem: str,
) -> None:
    history = a_history(store, tmp_path / "history.jsonl")
    if problem == "missing":
        history.unlink()
    elif problem == "not UTF-8":
        history.write_bytes(history.read_bytes() + b'{"item_id": "\xff\xfe", "event": "view"}\n')
    elif problem == "a folder":
        history.unlink()
        history.mkdir()
    else:
        rows = [json.loads(line) for line in history.read_text().splitlines()]
        write_history(history, [*rows, {**rows[0], "event": "like"}])
    capsys.readouterr()
    assert client_cli.main([command, "--history", str(history), "--now", str(NOW), *installed]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("fedhome-client: error:") and "history.jsonl" in error and "Traceback" not in error
    )
    if problem == "an unknown event":
        assert "history.jsonl:4:" in error and "like" in error


def test_read_history_and_the_event_store_accept_the_same_events(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.sqlite")
    for event in ("view", "cart", "purchase", "favourite", "like", "View", ""):
        path = write_history(tmp_path / "h.jsonl", [{"item_id": "a", "event": event, "timestamp": NOW}])
        try:
            store.add("a", event, NOW)
            stored = True
        except DataError:
            stored = False
        try:
            client_cli.read_history(path)
            read = True
        except DataError:
            read = False
        assert read == stored, event
    assert store.count() == 4


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _zero_length(path: Path) -> None:
    os.truncate(path, 0)


def _random_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = random.Random(0).randbytes(100)
    path.write_bytes(bytes(data))


def _random_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = random.Random(1).randbytes(4096)
    path.write_bytes(bytes(data))


def _text(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 20)


@pytest.fixture(scope="module")
def full_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An event store holding 1,000 events (built once: each add is a transaction)."""
    path = tmp_path_factory.mktemp("events") / "events.sqlite"
    store = EventStore(path)
    store.db.execute("PRAGMA synchronous = OFF")  # test data: no fsync per add
    for i in range(1_000):
        store.add(f"secret-item-{i:04d}", "view", NOW + i)
    assert store.count() == 1_000
    store.close()
    return path


@pytest.mark.parametrize("corrupt", [_truncate, _zero_length, _random_header, _random_middle, _text])
def test_a_corrupt_event_store_is_a_data_error_naming_it(
    full_store: Path, tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    path = Path(shutil.copyfile(full_store, tmp_path / "events.sqlite"))
    corrupt(path)
    with pytest.raises(DataError, match=r"events\.sqlite") as refused:
        opened = EventStore(path)  # refused on open (quick_check), or at the latest on first use
        opened.recent(1_000)
        opened.add("x", "view", NOW + 5_000)
    assert "secret-item" not in str(refused.value)  # no user data in the message


def test_an_event_store_that_is_not_there_yet_is_a_new_empty_store(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "new.sqlite")
    assert store.count() == 0
    store.add("a", "view", NOW)
    store.close()
    assert EventStore(tmp_path / "new.sqlite").count() == 1


def test_fedhome_client_receipts_on_a_missing_data_folder_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-device"
    assert client_cli.main(["receipts", "--data", str(missing)]) == 2
    assert "no-such-device" in capsys.readouterr().err and not missing.exists()
    (tmp_path / "a-file").write_text("x")
    assert client_cli.main(["receipts", "--data", str(tmp_path / "a-file")]) == 2
