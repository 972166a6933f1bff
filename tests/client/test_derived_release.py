"""Issue 18, deliverable 5: a new model of the same catalogue costs a device its model files only. The
release's per-item arrays are derived on the device from catalogue-only inputs it already holds
(shared/derived_items.py), over a real service on loopback: what sync downloads, that the device's derived
arrays and rankings are the server's, that a tampered input is refused, that a corrupted derived file is
derived again, that the builder checks the numpy derivation against the torch model, and that releases without
a "derived" block (older releases, models with an item-id residual, schemes a device does not know) install as
before."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ledger_toy import KEY, write_run
from release_toy import CONFIG, source

from client.device.item_index import Precision
from client.device.ranker import DeviceRanker, Event
from client.device.release_cache import Fetch, ReleaseCache, copy_from
from client.device.sync import sync
from server.releases.release_builder import check_derivation, check_released_rows
from server.releases.release_store import ReleaseStore
from shared.config import ModelConfig, ServiceConfig, ServiceSecrets, SyntheticShopConfig
from shared.data.schema import Catalogue
from shared.data.synthetic.shop import generate_shop
from shared.derived_items import (
    ATTRIBUTES,
    DERIVED_FILES,
    DEVICE_DERIVED,
    ITEM_BIAS,
    ITEMS_F32,
    PRIOR,
    RECORD,
    TEXT_INT8,
    TEXT_SCALES,
    ItemTowerWeights,
    attribute_columns,
    derive_files,
    derived_names,
    save_catalogue_inputs,
)
from shared.errors import DataError, SignatureError
from shared.item_codes import CODE_SCALES_FILE, CODES_FILE, PROJECTION_FILE
from shared.model import ItemFeatures, TwoTower
from shared.release_manifest import MANIFEST_NAME, sign_manifest, verify_release
from shared.signing import save_public_key
from simulation.local_service import running

pytestmark = pytest.mark.integration

NOW = 1_750_000_000
MODEL_FILES = {
    MANIFEST_NAME,
    "user_tower.onnx",
    "scoring.json",
    "item_tower_down.npy",
    "item_tower_up.npy",
    "item_tower_attributes.npy",
    "item_tower_bias.npy",
    PROJECTION_FILE,
}  # what a new model of the same catalogue (and run) costs a device: none of them grows with N
CATALOGUE_FILES = {TEXT_INT8, TEXT_SCALES, ATTRIBUTES, "items.json", PRIOR}


def shop(n_items: int) -> tuple[Catalogue, np.ndarray, np.ndarray]:
    """A synthetic catalogue of `n_items`, unit text vectors (24-d) and a popularity prior: one run's."""
    catalogue = generate_shop(SyntheticShopConfig(n_users=30, n_items=n_items, n_categories=5)).catalogue
    rng = np.random.default_rng(0)
    text = rng.normal(size=(n_items, 24)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return catalogue, text, np.log1p(rng.poisson(3.0, size=n_items)).astype(np.float32)


def model_of(
    catalogue: Catalogue, text: np.ndarray, prior: np.ndarray, seed: int, config: ModelConfig = CONFIG
) -> TwoTower:
    """A model far from its start (every weight moved), so that the item tower's correction matters."""
    torch.manual_seed(seed)
    model = TwoTower(ItemFeatures.from_catalogue(catalogue, text).with_popularity(prior), config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@dataclass
class Served:
    url: str
    store: ReleaseStore
    models: list[TwoTower]  # of releases 1 and 2


def serve_two_models(tmp: Path, n_items: int) -> Iterator[Served]:
    """Releases 1 and 2 of one catalogue and one run's prior, from two models, served on loopback."""
    catalogue, text, prior = shop(n_items)
    store = ReleaseStore(tmp / "store")
    models = [model_of(catalogue, text, prior, seed) for seed in (0, 1)]
    for seed, model in enumerate(models):
        store.publish(model, catalogue, source(str(seed)), KEY)
    save_public_key(KEY.public_key(), tmp / "public.pem")
    config = ServiceConfig(
        release_store=store.root, run_dir=write_run(tmp / "run", rounds=3), public_key=tmp / "public.pem"
    )
    with running(config, ServiceSecrets(admin_token="")) as url:
        yield Served(url, store, models)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_two_models(tmp_path_factory.mktemp("derived-300"), 300)


@pytest.fixture(scope="module")
def served_large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve_two_models(tmp_path_factory.mktemp("derived-3000"), 3_000)


def on_release_1(served: Served, root: Path) -> ReleaseCache:
    """A device that installed release 1 from the service (release 2 withheld from its index)."""
    cache = ReleaseCache(root, KEY.public_key())
    cache.install(copy_from(served.store.folder(1)))
    return cache


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def history(ranker: DeviceRanker) -> list[Event]:
    ids = [item["id"] for item in ranker.items]
    return [Event(ids[11 * i + 2], "view", NOW - 3_600 * (5 - i)) for i in range(5)]


def test_a_new_model_of_the_same_catalogue_downloads_only_the_model_files(
    served: Served, served_large: Served, tmp_path: Path
) -> None:
    costs = {}
    for name, service in (("300", served), ("3000", served_large)):
        first = ReleaseCache(tmp_path / f"first-{name}", KEY.public_key())
        install = sync(first, service.url)  # a first install: every file but the derived ones
        listed = json.loads((service.store.folder(2) / MANIFEST_NAME).read_text())["files"]
        assert install.installed == 2 and set(install.derived) == set(DERIVED_FILES)
        assert set(install.downloaded) == {*listed, MANIFEST_NAME} - set(DERIVED_FILES)
        cache = on_release_1(service, tmp_path / f"device-{name}")
        result = sync(cache, service.url)
        assert result.installed == 2 and cache.state() == {"current": 2, "previous": 1}
        assert set(result.downloaded) == MODEL_FILES  # the model's files, nothing per item
        assert set(result.reused) == CATALOGUE_FILES  # unchanged: 304, taken from release 1
        assert set(result.derived) == set(DERIVED_FILES)  # never fetched
        folder, previous = cache.current(), cache.root / "releases" / "000001"
        assert folder is not None and (folder / RECORD).is_file()
        for shared_file in CATALOGUE_FILES:  # one copy on the device for both releases: hard links
            assert (folder / shared_file).stat().st_ino == (previous / shared_file).stat().st_ino
        kept = {p.name for p in folder.iterdir()} & set(DERIVED_FILES)
        assert kept == set(DEVICE_DERIVED)  # no vector file: rows are read from the text
        assert result.downloaded_bytes == sum((folder / n).stat().st_size for n in result.downloaded)
        assert result.downloaded_bytes < 2**20
        costs[name] = result.downloaded_bytes
        manifest_bytes = (service.store.folder(2) / MANIFEST_NAME).stat().st_size
        assert install.downloaded_bytes == manifest_bytes + sum(
            listed[n]["bytes"] for n in listed if n not in DERIVED_FILES
        )
    # ten times the items, the same bytes for a new model (the manifest's sizes differ in a few digits)
    assert abs(costs["3000"] - costs["300"]) < 200


def test_the_devices_derived_arrays_and_rankings_are_the_servers(served: Served, tmp_path: Path) -> None:
    cache = on_release_1(served, tmp_path / "device")
    sync(cache, served.url)
    mine, server = cache.current(), served.store.folder(2)
    assert mine is not None and not (mine / ITEMS_F32).exists()
    for name in (ITEM_BIAS, CODE_SCALES_FILE):
        np.testing.assert_allclose(np.load(mine / name), np.load(server / name), rtol=1e-6, atol=1e-6)
    # a rounding boundary may differ by one step across machines
    assert np.abs(np.load(mine / CODES_FILE).astype(int) - np.load(server / CODES_FILE)).max() <= 1
    store = DeviceRanker(mine).item_index.store  # the device's vectors, read from its text
    rows = np.arange(store.n_rows)
    np.testing.assert_allclose(store.rows(rows), np.load(server / ITEMS_F32), rtol=1e-5, atol=1e-5)
    query = np.random.default_rng(1).normal(size=store.dim).astype(np.float32)
    np.testing.assert_allclose(store.dots(rows, query), np.load(server / ITEMS_F32) @ query, atol=1e-4)
    precisions: tuple[Precision, ...] = ("float32", "int8")
    for precision in precisions:
        on_device = DeviceRanker(mine, precision=precision)
        from_server = DeviceRanker(server, precision=precision)
        events = history(on_device)
        assert on_device.recommend(events, NOW, k=20) == from_server.recommend(events, NOW, k=20)


def test_released_vectors_rank_like_the_torch_model(served: Served) -> None:
    """The release's vectors come from int8 text: close to the model's own (the quantisation's bound, which
    the builder checks), and they keep its top 50."""
    model, folder = served.models[1], served.store.folder(2)
    with torch.no_grad():
        vectors, bias = (t.numpy() for t in model.items())
        temperature = float(model.temperature())
    released, released_bias = np.load(folder / ITEMS_F32), np.load(folder / ITEM_BIAS)
    assert np.abs(released - vectors).max() < 0.05 and np.abs(released_bias - bias).max() < 0.05
    users = np.random.default_rng(0).normal(size=(200, vectors.shape[1])).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    exact = np.argsort(-(temperature * users @ vectors.T + bias), axis=1)[:, :50]
    mine = np.argsort(-(temperature * users @ released.T + released_bias), axis=1)[:, :50]
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(exact, mine, strict=True)])
    assert recall >= 0.95


def test_the_builder_refuses_a_derivation_that_is_not_the_models(served: Served) -> None:
    model, folder = served.models[1], served.store.folder(2)
    with torch.no_grad():
        vectors, bias = (t.numpy().astype(np.float32) for t in model.items())
    check_derivation(model, vectors, bias)  # the formula is the model's, to float32 rounding
    check_released_rows(model, folder, vectors, bias)
    moved = vectors.copy()
    moved[7, 3] += 1e-3  # one entry off: not float rounding
    with pytest.raises(DataError, match="vectors"):
        check_derivation(model, moved, bias)
    with pytest.raises(DataError, match="bias"):
        check_derivation(model, vectors, bias + 1e-3)
    moved[7, 3] += 0.5  # beyond what int8 text can explain
    with pytest.raises(DataError, match="vectors"):
        check_released_rows(model, folder, moved, bias)


def test_a_tampered_input_is_refused_and_a_tampered_server_copy_of_a_derived_file_never_used(
    served: Served, tmp_path: Path
) -> None:
    cache = on_release_1(served, tmp_path / "device")
    for victim in (TEXT_INT8, ATTRIBUTES, "item_tower_up.npy", PRIOR):
        bad = tmp_path / f"bad-{victim}"
        shutil.copytree(served.store.folder(2), bad)
        flip_byte(bad / victim)
        with pytest.raises(SignatureError, match=victim):
            cache.install(copy_from(bad))
        assert cache.state()["current"] == 1 and not cache.incoming.exists()
    bad = tmp_path / "bad-derived"
    shutil.copytree(served.store.folder(2), bad)
    flip_byte(bad / ITEMS_F32)  # the browser would refuse it; a device never fetches it
    assert cache.install(copy_from(bad)) == 2
    assert not (cache.root / "releases" / "000002" / ITEMS_F32).exists() and cache.intact()


@pytest.mark.parametrize("damage", [CODES_FILE, ITEM_BIAS, RECORD, "missing"])
def test_a_corrupted_derived_file_is_derived_again_by_the_next_sync(
    served: Served, tmp_path: Path, damage: str
) -> None:
    cache = on_release_1(served, tmp_path / "device")
    sync(cache, served.url)
    folder = cache.current()
    assert folder is not None and cache.intact()
    expected = {name: np.load(folder / name) for name in DEVICE_DERIVED}
    if damage == "missing":
        (folder / CODE_SCALES_FILE).unlink()
    else:
        flip_byte(folder / damage)
    assert not cache.intact()
    with pytest.raises(SignatureError):
        cache.verify_current()
    result = sync(cache, served.url)
    assert result.repaired and result.downloaded == [MANIFEST_NAME]  # the inputs were intact: 304s
    assert set(result.derived) == set(DERIVED_FILES) and cache.intact()
    for name, array in expected.items():
        np.testing.assert_array_equal(np.load(folder / name), array)
    assert cache.install(copy_from(served.store.folder(2))) == 2  # intact now: nothing to repair


def test_a_release_without_a_derived_block_installs_and_ranks_as_before(tmp_path: Path) -> None:
    """A model with an item-id residual ships its per-item arrays (the old format); a manifest re-signed
    without "derived", or with a scheme this device does not know, is downloaded whole and checked file by
    file as before."""
    catalogue, text, prior = shop(300)
    store = ReleaseStore(tmp_path / "store")
    residual = dataclasses.replace(CONFIG, item_id_residual=True)
    store.publish(model_of(catalogue, text, prior, 0, residual), catalogue, source("old"), KEY)
    manifest = json.loads((store.folder(1) / MANIFEST_NAME).read_text())
    assert "derived" not in manifest and TEXT_INT8 not in manifest["files"]
    cache = ReleaseCache(tmp_path / "device", KEY.public_key())
    assert cache.install(copy_from(store.folder(1))) == 1
    folder = cache.current()
    assert folder is not None and not (folder / RECORD).exists()
    for name in manifest["files"]:
        assert (folder / name).read_bytes() == (store.folder(1) / name).read_bytes()
    events = history(DeviceRanker(folder))
    assert DeviceRanker(folder).recommend(events, NOW) == DeviceRanker(store.folder(1)).recommend(events, NOW)
    flip_byte(folder / ITEMS_F32)  # downloaded, so checked against the manifest
    assert not cache.intact()
    store.publish(model_of(catalogue, text, prior, 1), catalogue, source("new"), KEY)  # the derived format
    for block in (None, {"scheme": "item-tower-linear/99", "files": {}}):
        fields = {k: v for k, v in read_manifest_of(store, 2).items() if k not in ("derived", "signature")}
        unknown = tmp_path / f"release-{block is None}"
        shutil.copytree(store.folder(2), unknown)
        signed = sign_manifest({**fields, **({} if block is None else {"derived": block})}, KEY)
        (unknown / MANIFEST_NAME).write_text(json.dumps(signed))
        assert derived_names(signed) == frozenset()
        device = ReleaseCache(tmp_path / f"device-{block is None}", KEY.public_key())
        seen: list[str] = []
        device.install(counting(copy_from(unknown), seen))
        assert set(seen) == {*signed["files"], MANIFEST_NAME}  # every file, derived ones included
        assert not (device.root / "releases" / "000002" / RECORD).exists()
        verify_release(device.root / "releases" / "000002", KEY.public_key())


def counting(fetch: Fetch, seen: list[str]) -> Fetch:
    """`fetch`, noting in `seen` the name of each file it is asked for."""

    def counted(name: str, destination: Path, max_bytes: int) -> None:
        seen.append(name)
        fetch(name, destination, max_bytes)

    return counted


def read_manifest_of(store: ReleaseStore, version: int) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((store.folder(version) / MANIFEST_NAME).read_text())
    return manifest


def test_a_malformed_derived_block_is_refused_before_anything_else_is_fetched(
    served: Served, tmp_path: Path
) -> None:
    fields = {k: v for k, v in read_manifest_of(served.store, 2).items() if k != "signature"}
    files = dict(fields["files"])  # type: ignore[call-overload]
    del files[TEXT_SCALES]  # an input the derivation needs is not in the release
    for changed in ({"files": files}, {"derived": {"scheme": "item-tower-linear/1", "files": []}}):
        bad = tmp_path / f"bad-{len(changed)}-{next(iter(changed))}"
        shutil.copytree(served.store.folder(2), bad)
        (bad / MANIFEST_NAME).write_text(json.dumps(sign_manifest({**fields, **changed}, KEY)))
        cache = on_release_1(served, tmp_path / f"device-{next(iter(changed))}")
        seen: list[str] = []
        with pytest.raises(DataError, match="derived"):
            cache.install(counting(copy_from(bad), seen))
        assert seen == [MANIFEST_NAME] and cache.state()["current"] == 1


def test_derive_files_streams_the_same_arrays_and_bytes_as_one_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    n, dim, rank, width = 1_000, 24, 8, 17
    text = rng.normal(size=(n, dim)).astype(np.float32)
    multi_hot = np.zeros((n, width), dtype=np.float32)
    multi_hot[np.arange(n), rng.integers(0, 7, n)] = 1.0
    multi_hot[np.arange(n), 7 + rng.integers(0, 9, n)] = 1.0
    multi_hot[:, 16] = rng.integers(0, 2, n)
    weights = ItemTowerWeights(
        down=rng.normal(size=(rank, dim)).astype(np.float32),
        up=rng.normal(size=(dim, rank)).astype(np.float32),
        attributes=rng.normal(size=(rank, width)).astype(np.float32),
        bias=rng.normal(size=dim + 2).astype(np.float32),
    )
    prior = rng.random(n).astype(np.float32)
    columns = attribute_columns(multi_hot)
    assert columns.shape == (n, 3) and ((columns >= 0).sum(axis=1) == multi_hot.sum(axis=1)).all()
    save_catalogue_inputs(tmp_path, text, columns)
    weights.save(tmp_path)
    np.save(tmp_path / PRIOR, prior)
    np.save(tmp_path / PROJECTION_FILE, np.linalg.qr(rng.normal(size=(dim, 16)))[0].astype(np.float32))
    derive_files(tmp_path, chunk_rows=97)  # chunks that do not divide n
    dequantised = np.load(tmp_path / TEXT_INT8).astype(np.float32) * np.load(tmp_path / TEXT_SCALES)[:, None]
    hidden = dequantised @ weights.down.T + multi_hot @ weights.attributes.T  # the multi-hot, as torch has it
    expected = dequantised + hidden @ weights.up.T
    expected_bias = dequantised @ weights.bias[:-2] + weights.bias[-2] + weights.bias[-1] * prior
    np.testing.assert_allclose(np.load(tmp_path / ITEMS_F32), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / ITEM_BIAS), expected_bias, rtol=1e-5, atol=1e-5)
    for name in DERIVED_FILES:  # streamed files are the bytes np.save writes
        assert (tmp_path / name).read_bytes() == npy_bytes(np.load(tmp_path / name))
    codes = np.load(tmp_path / CODES_FILE)
    assert codes.shape == (16, n) and np.abs(codes).max() == 127


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
