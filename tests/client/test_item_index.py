"""The two-stage item index: the integer kernel, recall against exact float32, items added or replaced
after load, releases with and without the coarse codes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from ledger_toy import KEY
from onnx import TensorProto, helper
from release_toy import random_model, source

from client.device.int8_kernel import COARSE_DOTS_ONNX, CoarseKernel, item_major_u8, quantize_user
from client.device.item_index import MAX_BLOCKS, ItemIndex
from client.device.top_n import MAX_RESCORE, MIN_RESCORE, auto_rescore, best, descending
from client.device.vector_store import TextVectorStore, VectorStore
from server.releases.release_store import ReleaseStore
from shared.derived_items import ItemTowerWeights, attribute_columns, item_rows
from shared.errors import DataError
from shared.item_codes import (
    CODE_BUDGET_BYTES,
    CODE_SCALES_FILE,
    CODES_FILE,
    MAX_CODE_DIM,
    MIN_CODE_DIM,
    PROJECTION_FILE,
    coarse_codes,
    code_dim_for,
    principal_projection,
    quantize_rows,
)
from shared.release_manifest import MANIFEST_NAME, sign_manifest, verify_release

T = 7.5


def coarse_model() -> onnx.ModelProto:
    """The coarse graph, as int8_kernel.COARSE_DOTS_ONNX was built (regenerate it from this)."""
    vi = helper.make_tensor_value_info
    node = helper.make_node("MatMulInteger", ["items_u8", "user_s8"], ["dots"])
    inputs = [vi("items_u8", TensorProto.UINT8, ["N", "P"]), vi("user_s8", TensorProto.INT8, ["P", 1])]
    graph = helper.make_graph([node], "coarse_dots", inputs, [vi("dots", TensorProto.INT32, ["N", 1])])
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="fedhome", ir_version=8)


def anisotropic(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Item vectors with a decaying spectrum, like text embeddings (random ones would be isotropic)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return ((rng.normal(size=(n, dim)) * 0.9 ** np.arange(dim)) @ basis.T).astype(np.float32)


def index_of(vectors: np.ndarray, bias: np.ndarray, **kwargs: Any) -> ItemIndex:
    return ItemIndex(VectorStore(vectors.copy()), bias, temperature=T, **kwargs)


def exact_top(vectors: np.ndarray, bias: np.ndarray, user: np.ndarray, k: int) -> np.ndarray:
    scores = T * (vectors.astype(np.float64) @ user) + bias
    return np.argsort(-scores, kind="stable")[:k]


def test_the_embedded_graph_is_the_one_onnx_helper_builds() -> None:
    embedded = onnx.load_from_string(COARSE_DOTS_ONNX)
    assert embedded.graph == coarse_model().graph and embedded.opset_import == coarse_model().opset_import


def test_integer_dots_are_exact_even_at_the_extremes() -> None:
    kernel, rng = CoarseKernel(), np.random.default_rng(1)
    codes = rng.integers(-127, 128, size=(64, 5000), dtype=np.int8)
    codes[:, 0], codes[:, 1] = 127, -127  # every product at its largest: int16 pair sums must not saturate
    items_u8 = item_major_u8(codes)
    assert items_u8.shape == (5000, 64) and items_u8.min() >= 1
    np.testing.assert_array_equal(items_u8.astype(np.int64) - 128, codes.T)
    for projected in (rng.normal(size=64), np.full(64, 1.0), np.full(64, -1.0)):
        user_s8, _ = quantize_user(projected)
        assert np.abs(user_s8).max() <= 63
        out = np.empty(5000, dtype=np.float32)
        got = kernel.dots(user_s8, 1.0, items_u8, np.ones(5000, dtype=np.float32), out=out)
        expected = user_s8[:, 0].astype(np.int64) @ codes.astype(np.int64)
        np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_item_codes_are_laid_out_a_chunk_at_a_time_like_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    codes = np.random.default_rng(4).integers(-127, 128, size=(16, 1000), dtype=np.int8)
    monkeypatch.setattr("client.device.int8_kernel.TRANSPOSE_CHUNK", 300)  # 4 chunks, the last short
    np.testing.assert_array_equal(item_major_u8(codes), (codes.T.astype(np.int16) + 128).astype(np.uint8))
    with pytest.raises(DataError):
        item_major_u8(codes.astype(np.int16))


@pytest.mark.integration
def test_fast_top_50_keeps_recall_against_exact_float32() -> None:
    vectors = anisotropic(20_000)
    bias = np.random.default_rng(2).normal(0, 0.1, size=20_000).astype(np.float32)
    index = index_of(vectors, bias, code_dim=16, rescore=256)
    users = anisotropic(100, seed=3)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    hits = 0
    for user in users:
        rows, scores = index.top_k(user, 50)
        hits += len(set(rows.tolist()) & set(exact_top(vectors, bias, user, 50).tolist()))
        np.testing.assert_allclose(scores, T * (vectors[rows] @ user) + bias[rows], rtol=1e-5, atol=1e-5)
        assert (np.diff(scores) <= 0).all()
    assert hits / (50 * len(users)) >= 0.97


def test_float32_precision_is_exact_and_scores_rescore_the_best_rows() -> None:
    vectors, bias = anisotropic(3_000), np.zeros(3_000, dtype=np.float32)
    user = vectors[7] / np.linalg.norm(vectors[7])
    exact = index_of(vectors, bias, precision="float32")
    np.testing.assert_allclose(exact.scores(user), T * (vectors @ user), rtol=1e-5, atol=1e-5)
    fast = index_of(vectors, bias, code_dim=8, rescore=100)
    scores = fast.scores(user)
    top = exact_top(vectors, bias, user, 20)
    np.testing.assert_allclose(scores[top], T * (vectors[top] @ user), rtol=1e-5, atol=1e-5)
    near = fast.similarities(vectors[7])
    assert int(np.argmax(near)) == int(np.argmax(vectors @ vectors[7]))  # dot products, not cosines


def test_top_k_within_rows_and_without_excluded_rows() -> None:
    vectors, bias = anisotropic(2_000), np.zeros(2_000, dtype=np.float32)
    index, user = index_of(vectors, bias, code_dim=16), vectors[0] / np.linalg.norm(vectors[0])
    subset = np.arange(1, 2_000, 3)
    rows, _ = index.top_k(user, 10, rows=subset, exclude=subset[:5])
    assert set(rows.tolist()) <= set(subset[5:].tolist()) and len(rows) == 10
    expected = [r for r in exact_top(vectors, bias, user, 2_000) if r in set(subset[5:].tolist())][:10]
    assert rows.tolist() == expected
    few, _ = index.top_k(user, 10, rows=np.array([4, 5]))
    assert sorted(few.tolist()) == [4, 5]


def test_extend_and_replace_rank_like_an_index_built_with_those_rows() -> None:
    vectors, rng = anisotropic(4_000), np.random.default_rng(4)
    bias = rng.normal(0, 0.1, size=4_000).astype(np.float32)
    index = index_of(vectors[:3_000], bias[:3_000], code_dim=16, rescore=128)
    first = 3_000
    for piece in np.array_split(np.arange(3_000, 4_000), MAX_BLOCKS + 3):  # more blocks than are kept
        rows = index.extend(vectors[piece], bias[piece])
        assert rows.tolist() == list(range(first, first + len(piece)))
        first += len(piece)
    changed = np.array([5, 3_500, 17])
    new_vectors, new_bias = anisotropic(3, seed=9) * 3, np.array([1.0, 2.0, 3.0], dtype=np.float32)
    index.replace(changed, new_vectors, new_bias)
    vectors[changed], bias[changed] = new_vectors, new_bias
    fresh = index_of(vectors, bias, projection=index.projection, rescore=128)
    for user in anisotropic(20, seed=5):
        got, expected = index.top_k(user, 30), fresh.top_k(user, 30)
        assert got[0].tolist() == expected[0].tolist()
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-5)
        np.testing.assert_allclose(index.scores(user), fresh.scores(user), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(index.vectors(changed), new_vectors.astype(np.float32))
    np.testing.assert_array_equal(index.bias[changed], new_bias)
    assert index.n_items == 4_000


def test_an_added_item_is_rankable_at_once() -> None:
    vectors, bias = anisotropic(1_000), np.zeros(1_000, dtype=np.float32)
    index = index_of(vectors, bias, code_dim=16)
    user = vectors[3] / np.linalg.norm(vectors[3])
    (row,) = index.extend((user * 10)[None], np.array([0.5]))
    assert index.top_k(user, 1)[0].tolist() == [row]


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.extend(np.ones((2, 5)), np.zeros(2)),  # wrong dimension
        lambda i: i.extend(np.ones((2, 64)), np.zeros(3)),  # one bias per vector
        lambda i: i.extend(np.full((1, 64), np.nan), np.zeros(1)),
        lambda i: i.replace(np.array([1, 1]), np.ones((2, 64)), np.zeros(2)),  # repeated row
        lambda i: i.replace(np.array([10_000]), np.ones((1, 64)), np.zeros(1)),  # no such row
        lambda i: i.top_k(np.ones(3), 5),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(call: Callable[[ItemIndex], object]) -> None:
    vectors, bias = anisotropic(500), np.zeros(500, dtype=np.float32)
    index = index_of(vectors, bias, code_dim=16)
    user = vectors[0] / np.linalg.norm(vectors[0])
    before = index.scores(user)
    with pytest.raises(DataError):
        call(index)
    assert index.n_items == 500
    np.testing.assert_array_equal(index.scores(user), before)


def test_release_carries_signed_codes_and_an_old_release_without_them_ranks_the_same(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "store")
    model, catalogue = random_model()
    store.publish(model, catalogue, source("codes"), KEY)
    folder = store.folder(1)
    files = store.manifest(1)["files"]
    assert {PROJECTION_FILE, CODES_FILE, CODE_SCALES_FILE} <= set(files)
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    for name in (PROJECTION_FILE, CODES_FILE, CODE_SCALES_FILE):
        (old / name).unlink()
    new_index, old_index = ItemIndex.from_release(folder), ItemIndex.from_release(old)
    np.testing.assert_array_equal(old_index.projection, np.load(folder / PROJECTION_FILE))
    vectors = np.load(folder / "item_vectors_f32.npy")
    np.testing.assert_allclose(principal_projection([vectors], 64), new_index.projection, atol=1e-6)
    user = vectors[11] / np.linalg.norm(vectors[11])
    assert old_index.top_k(user, 20)[0].tolist() == new_index.top_k(user, 20)[0].tolist()


@pytest.mark.parametrize("order", ["random", "ascending", "descending", "ties"])
def test_best_is_the_exact_top_n_whatever_the_order(order: str) -> None:
    scores = np.random.default_rng(6).normal(size=300_000).astype(np.float32)
    if order == "ascending":
        scores.sort()
    elif order == "descending":
        scores[::-1].sort()
    elif order == "ties":
        scores = np.round(scores, 1)
    scores[::7] = -np.inf  # excluded rows are never returned
    for n in (1, 512, 4_000):
        got = best(scores, n)
        assert len(got) == n and np.isfinite(scores[got]).all()
        assert np.sort(scores[got])[0] >= np.sort(scores)[::-1][n - 1]


def test_codes_that_do_not_fit_are_refused() -> None:
    vectors, bias = anisotropic(300), np.zeros(300, dtype=np.float32)
    good = index_of(vectors, bias, code_dim=8)
    codes, scales = coarse_codes(vectors, good.projection)[0], np.ones(300, dtype=np.float32)
    for bad in (
        {"projection": good.projection[:5]},  # fits another item dimension
        {"projection": good.projection, "codes": codes[:, :200], "code_scales": scales},
        {"projection": good.projection, "codes": codes.astype(np.int16), "code_scales": scales},
    ):
        with pytest.raises(DataError):
            index_of(vectors, bias, **bad)


@pytest.mark.parametrize("first", [0, 1, 10, 999, 5_000])
def test_descending_is_the_stable_argsort_order(first: int) -> None:
    scores = np.round(np.random.default_rng(7).normal(size=5_000), 1)  # many ties
    scores[::11] = -np.inf
    assert list(descending(scores, first)) == np.argsort(-scores, kind="stable").tolist()


def test_files_the_signed_manifest_does_not_list_are_never_used(tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "store")
    model, catalogue = random_model()
    store.publish(model, catalogue, source("unlisted"), KEY)
    folder, old = store.folder(1), tmp_path / "old"
    shutil.copytree(folder, old)
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    for name in (PROJECTION_FILE, CODES_FILE, CODE_SCALES_FILE):
        del manifest["files"][name]  # a release from before the codes, validly signed
    manifest.pop("signature")
    manifest.pop("derived")  # (and so from before derivation)
    (old / MANIFEST_NAME).write_text(json.dumps(sign_manifest(manifest, KEY)))
    verify_release(old, KEY.public_key())
    vectors = np.load(folder / "item_vectors_f32.npy")
    # files dropped into the folder beside it: verify_release does not look at them, so neither may ranking
    np.save(old / PROJECTION_FILE, np.zeros((vectors.shape[1], 64), np.float32))
    np.save(old / CODES_FILE, np.full((64, len(vectors)), 127, np.int8))
    np.save(old / CODE_SCALES_FILE, np.ones(len(vectors), np.float32))
    verify_release(old, KEY.public_key())  # still verifies
    got, expected = ItemIndex.from_release(old), ItemIndex.from_release(folder)
    np.testing.assert_array_equal(got.projection, expected.projection)
    user = vectors[11] / np.linalg.norm(vectors[11])
    assert got.top_k(user, 20)[0].tolist() == expected.top_k(user, 20)[0].tolist()


def test_code_dimension_follows_the_memory_budget_and_rescoring_the_dimension() -> None:
    assert code_dim_for(12_000, 384) == code_dim_for(100_000, 384) == MAX_CODE_DIM == 96
    assert code_dim_for(1_000_000, 384) == 64  # 61 MiB of codes
    assert code_dim_for(10, 32) == 32  # never more than the vectors have
    assert code_dim_for(50_000_000, 384) == MIN_CODE_DIM
    for n in (1, 1_000, 700_000, 1_000_000, 3_000_000):
        p = code_dim_for(n, 384)
        assert p % 16 == 0 and (p * n <= CODE_BUDGET_BYTES or p == MIN_CODE_DIM)
    with pytest.raises(DataError):
        code_dim_for(-1, 384)
    assert auto_rescore(100_000, 64) == 949 and auto_rescore(100_000, 96) == 422
    assert auto_rescore(1_000_000, 64) == MAX_RESCORE and auto_rescore(1_000, 96) == MIN_RESCORE
    assert auto_rescore(300_000, 96) < auto_rescore(300_000, 64)  # more directions, fewer candidates


def test_an_index_that_codes_its_items_itself_takes_the_budgets_dimension() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(2_000, 128)).astype(np.float32)
    index = ItemIndex(VectorStore(vectors), np.zeros(2_000, dtype=np.float32), temperature=1.0)
    assert index.projection.shape == (128, MAX_CODE_DIM)
    assert index.rescore == auto_rescore(2_000, MAX_CODE_DIM)


def test_vectors_read_from_the_text_are_the_derived_ones_and_their_dots_skip_the_vectors() -> None:
    """TextVectorStore (a device keeps no vector file): rows and folded dot products equal the vectors
    item_rows derives, for the text's rows, for replaced rows and for added ones."""
    rng = np.random.default_rng(4)
    n, dim, rank, width = 500, 24, 5, 9
    text = rng.normal(size=(n, dim)).astype(np.float32)
    text_int8, text_scales = quantize_rows(text)
    columns = attribute_columns((rng.random((n, width)) < 0.3).astype(np.float32))
    weights = ItemTowerWeights(
        down=rng.normal(size=(rank, dim)).astype(np.float32),
        up=rng.normal(size=(dim, rank)).astype(np.float32),
        attributes=rng.normal(size=(rank, width)).astype(np.float32),
        bias=rng.normal(size=dim + 2).astype(np.float32),
    )
    derived, _ = item_rows(text_int8.astype(np.float32) * text_scales[:, None], columns, weights, None)
    store = TextVectorStore(text_int8, text_scales, columns, weights)
    rows, query = rng.permutation(n)[:200], rng.normal(size=dim).astype(np.float32)
    np.testing.assert_allclose(store.rows(rows), derived[rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store.dots(rows, query), derived[rows] @ query, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.vstack([b for _, b in store.chunks()]), derived, rtol=1e-5, atol=1e-5)
    replaced, added = (
        rng.normal(size=(3, dim)).astype(np.float32),
        rng.normal(size=(2, dim)).astype(np.float32),
    )
    store.replace(np.array([5, 7, 9]), replaced)
    store.append(added)
    expected = np.vstack([derived, added])
    expected[[5, 7, 9]] = replaced
    every = np.arange(n + 2)
    np.testing.assert_allclose(store.dots(every, query), expected @ query, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(store.rows(every), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="attribute columns"):
        TextVectorStore(text_int8, text_scales, columns[:10], weights)
