"""The content-addressed embedding cache and the versioned catalogue table, with a fake counting encoder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.embedding.catalogue_embedding import embed_catalogue, table_version, vector_cache_dir
from server.embedding.embedding_cache import EmbeddingCache, text_key
from server.embedding.encoder import ProgressFn, encode_sorted, length_sorted_batches
from shared.config import EncoderConfig
from shared.data.schema import Catalogue
from shared.errors import EncoderError

DIM = 8


def fake_vector(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


class CountingEncoder:
    """Deterministic vectors per text; remembers every text it was asked to encode."""

    def __init__(self, backend: str = "fake") -> None:
        self.encoder_id = "fake-model@0123"
        self.backend = backend
        self.dim = DIM
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str], *, on_batch: ProgressFn | None = None) -> np.ndarray:
        self.encoded.extend(texts)
        return np.stack([fake_vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def catalogue(titles: list[str], descriptions: list[str] | None = None) -> Catalogue:
    n = len(titles)
    return Catalogue(
        item_ids=[f"item{i}" for i in range(n)],
        titles=titles,
        categories=["Makeup > Lips"] * n,
        brands=["Acme"] * n,
        descriptions=descriptions or [""] * n,
        price=np.full(n, np.nan, np.float32),
        created_at=np.full(n, -1, np.int64),
        on_promotion=np.zeros(n, bool),
    )


TITLES = ["red lipstick", "blue mascara", "green nail polish", "face cream", "hair gel"]


@pytest.fixture
def config(tmp_path: Path) -> EncoderConfig:
    return EncoderConfig(cache_dir=tmp_path / "cache", with_description=False)


def expected(cat: Catalogue) -> np.ndarray:
    return np.stack([fake_vector(cat.text(i, with_description=False)) for i in range(cat.n_items)])


def test_only_new_or_changed_texts_are_encoded(config: EncoderConfig) -> None:
    first = CountingEncoder()
    before = catalogue(TITLES)
    table = embed_catalogue(before, config, encoder=first, progress=False)
    assert len(first.encoded) == 5
    np.testing.assert_array_equal(table.vectors, expected(before))

    second = CountingEncoder()
    after = catalogue([*TITLES[:2], "green nail polish, glossy", *TITLES[3:], "new perfume"])
    table = embed_catalogue(after, config, encoder=second, progress=False)
    assert sorted(second.encoded) == sorted([after.text(i, with_description=False) for i in (2, 5)])
    np.testing.assert_array_equal(table.vectors, expected(after))
    assert table.item_ids == after.item_ids and table.vectors.dtype == np.float32


def test_cache_survives_a_new_cache_object_and_skips_the_encoder(config: EncoderConfig) -> None:
    cat = catalogue(TITLES)
    embed_catalogue(cat, config, encoder=CountingEncoder(), progress=True)
    later = CountingEncoder()
    table = embed_catalogue(cat, config, encoder=later)  # opens a new EmbeddingCache on the same folder
    assert later.encoded == []
    np.testing.assert_array_equal(table.vectors, expected(cat))
    shards = list(vector_cache_dir(config).rglob("shard-*.npz"))
    assert len(shards) == 1  # one shard per write, not one file per text


def test_duplicate_texts_are_encoded_once(config: EncoderConfig) -> None:
    encoder = CountingEncoder()
    table = embed_catalogue(catalogue(["same", "same", "other"]), config, encoder=encoder)
    assert sorted(encoder.encoded) == ["other | Makeup > Lips | Acme", "same | Makeup > Lips | Acme"]
    np.testing.assert_array_equal(table.vectors[0], table.vectors[1])


def test_backends_do_not_share_vectors(config: EncoderConfig) -> None:
    cat = catalogue(TITLES)
    embed_catalogue(cat, config, encoder=CountingEncoder("fake-a"))
    other = CountingEncoder("fake-b")
    embed_catalogue(cat, config, encoder=other)
    assert len(other.encoded) == 5


def test_table_version_tracks_texts_encoder_and_backend(config: EncoderConfig) -> None:
    cat = catalogue(TITLES, descriptions=["x"] * 5)
    version = embed_catalogue(cat, config, encoder=CountingEncoder()).version
    assert embed_catalogue(cat, config, encoder=CountingEncoder()).version == version
    changed = catalogue([*TITLES[:4], "hair gel, strong hold"], descriptions=["x"] * 5)
    assert embed_catalogue(changed, config, encoder=CountingEncoder()).version != version
    assert embed_catalogue(cat, config, encoder=CountingEncoder("other")).version != version
    with_text = EncoderConfig(cache_dir=config.cache_dir, with_description=True)
    assert embed_catalogue(cat, with_text, encoder=CountingEncoder()).version != version
    texts = cat.texts()
    assert table_version("m@1", "b", cat.item_ids, texts) != table_version("m@2", "b", cat.item_ids, texts)


def _only_shard(config: EncoderConfig) -> Path:
    (shard,) = vector_cache_dir(config).rglob("shard-*.npz")
    return shard


def _flip_vector_byte(path: Path) -> None:
    with np.load(path) as shard:
        vectors = shard["vectors"]
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(vectors.tobytes()[:64])
    assert offset > 0
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))


def _reverse(field: str) -> Callable[[Path], None]:
    """Rewrite a shard as a valid file with one field's rows reversed and its stale checksums kept."""

    def damage(path: Path) -> None:
        with np.load(path) as shard:
            fields = {name: shard[name] for name in ("keys", "vectors", "meta")}
        fields[field] = fields[field][::-1]
        with path.open("wb") as handle:
            np.savez(handle, **fields)

    return damage


def _other_namespace(path: Path) -> None:
    with np.load(path) as shard:
        keys, vectors, meta = shard["keys"], shard["vectors"], json.loads(str(shard["meta"]))
    meta["namespace"] = ["another-model@1", "fake"]
    with path.open("wb") as handle:
        np.savez(handle, keys=keys, vectors=vectors, meta=np.array(json.dumps(meta)))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(b"not a shard at all"),
    "flipped vector byte": _flip_vector_byte,
    "keys out of order": _reverse("keys"),
    "vectors out of order": _reverse("vectors"),
    "another encoder's shard": _other_namespace,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_shard_is_set_aside_and_re_encoded_never_served(config: EncoderConfig, damage: str) -> None:
    cat = catalogue(TITLES)
    embed_catalogue(cat, config, encoder=CountingEncoder())
    shard = _only_shard(config)
    DAMAGE[damage](shard)
    encoder = CountingEncoder()
    table = embed_catalogue(cat, config, encoder=encoder)
    np.testing.assert_array_equal(table.vectors, expected(cat))
    assert len(encoder.encoded) == 5
    assert shard.with_suffix(".corrupt").exists()


def test_damage_after_opening_is_caught_at_lookup(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, encoder_id="m@1", backend="b", dim=DIM)
    keys = [text_key(t) for t in TITLES]
    cache.put(keys, np.stack([fake_vector(t) for t in TITLES]))
    reopened = EmbeddingCache(tmp_path, encoder_id="m@1", backend="b", dim=DIM)
    assert len(reopened) == 5
    _flip_vector_byte(next(tmp_path.rglob("shard-*.npz")))
    vectors, found = reopened.lookup(keys)
    assert not found.any() and not vectors.any()
    assert len(reopened) == 0


def test_put_rejects_bad_vectors(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, encoder_id="m@1", backend="b", dim=DIM)
    with pytest.raises(EncoderError, match="float32"):
        cache.put([text_key("a")], np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(EncoderError, match="non-finite"):
        cache.put([text_key("a")], np.full((1, DIM), np.nan, np.float32))
    assert cache.put([text_key("a")] * 2, np.stack([fake_vector("a")] * 2)) == 1


def test_encoder_returning_wrong_shape_is_an_error(config: EncoderConfig) -> None:
    class Broken(CountingEncoder):
        def encode(self, texts: Sequence[str], *, on_batch: ProgressFn | None = None) -> np.ndarray:
            return np.zeros((len(texts) - 1, DIM), np.float32)

    with pytest.raises(EncoderError, match="returned"):
        embed_catalogue(catalogue(TITLES), config, encoder=Broken())


@given(st.lists(st.integers(0, 300), max_size=60), st.integers(1, 9))
def test_length_sorted_batches_partition_and_sort(lengths: list[int], batch_size: int) -> None:
    batches = length_sorted_batches(lengths, batch_size)
    flat = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(len(b) <= batch_size for b in batches)
    assert np.all(np.diff(np.asarray(lengths)[flat]) >= 0)


@given(st.lists(st.integers(0, 300), max_size=60), st.integers(1, 9))
def test_encode_sorted_puts_rows_back_in_input_order(lengths: list[int], batch_size: int) -> None:
    seen: list[int] = []
    out = encode_sorted(
        lengths, batch_size, 2, lambda batch: np.stack([batch, batch], axis=1).astype(np.float32), seen.append
    )
    np.testing.assert_array_equal(out[:, 0], np.arange(len(lengths)))
    assert sum(seen) == len(lengths)
