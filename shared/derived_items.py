"""A release's per-item arrays, derived from catalogue-only inputs and small item-tower weights (numpy only).

The item tower is linear in its frozen inputs (shared/model/towers.py ItemTower, without an item-id residual):

    h_j = D t_j + sum_{c in cols_j} W[:, c]          (r,)  the low-rank code of item j
    v_j = t_j + U h_j                                (E,)  its vector
    b_j = w . t_j + b0 + pw * prior_j                      its score offset

t_j the item's text embedding, cols_j the columns of its attribute multi-hot that are set (category, price
bucket, promotion), D (r, E), U (E, r), W (r, A), w (E,), b0, pw the model's weights, prior the run's
popularity prior. So every per-item array of a release is a function of three kinds of file:
- catalogue-only inputs, whose bytes only a catalogue change alters: `item_text_int8.npy` (N, E) int8 and
  `item_text_scales.npy` (N,) float32 (the text embeddings, per-row symmetric int8: t_j ~ q_j * s_j, the
  one quantisation the release's item vectors use too, shared/item_codes.py), `item_attributes.npy` (N, K)
  int16 (or int32 when A > 32767): the set columns of each item's attribute multi-hot, -1 where a row has
  fewer than K;
- the run's popularity prior `item_popularity_prior.npy` (N,) float32 (one per run; absent when the model
  has none, or it is all zeros);
- model files of a size that does not grow with N: `item_tower_down.npy` D (r, E), `item_tower_up.npy`
  U (E, r), `item_tower_attributes.npy` W (r, A), `item_tower_bias.npy` (E + 2,) [w, b0, pw], all float32,
  and `item_projection.npy` (E, P), the principal directions the coarse codes use (the server computes it
  from the derived vectors: a device reads it, never recomputes it).

The derived files (DERIVED_FILES) are the release's item vectors, their int8 form, the item bias and the
coarse codes, each computed from v and b exactly as the release builder computed them before
(shared/item_codes.py). The release builder writes the server's copies with `derive_files`, and a device
that understands SCHEME downloads none of them: it computes the bias and the coarse codes with the same
function (DEVICE_DERIVED) and keeps no vector file, reading a row's vector from its text when it needs one
(client/device/vector_store.py TextVectorStore). The signed
manifest names them in its "derived" block ({"scheme", "files": {name: {"from": [inputs]}}}); every file,
derived or not, stays in "files" with its sha256, so a browser or an auditor that downloads everything
verifies everything. Floats are not bit-exact across machines, so a derived file's sha256 there is the
server's copy's: a device checks its own derived files against the record it writes when it derives them
(RECORD, a name no manifest may list), bound to the manifest they were derived for; a derived file the
device does not keep is simply absent from its copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from shared.errors import DataError, SignatureError
from shared.item_codes import CODE_SCALES_FILE, CODES_FILE, PROJECTION_FILE, coarse_codes, quantize_rows
from shared.release_manifest import check_file_name, file_digest
from shared.signing import canonical_json

SCHEME: Final = "item-tower-linear/1"
TEXT_INT8: Final = "item_text_int8.npy"  # (N, E) int8
TEXT_SCALES: Final = "item_text_scales.npy"  # (N,) float32
ATTRIBUTES: Final = "item_attributes.npy"  # (N, K) int16/int32 set multi-hot columns, -1: none
PRIOR: Final = "item_popularity_prior.npy"  # (N,) float32, optional
TOWER_DOWN: Final = "item_tower_down.npy"  # (r, E) float32
TOWER_UP: Final = "item_tower_up.npy"  # (E, r) float32
TOWER_ATTRIBUTES: Final = "item_tower_attributes.npy"  # (r, A) float32
TOWER_BIAS: Final = "item_tower_bias.npy"  # (E + 2,) float32: [w, b0, pw]
ITEMS_F32: Final = "item_vectors_f32.npy"  # (N, E) float32
ITEMS_INT8: Final = "item_vectors_int8.npy"  # (N, E) int8
ITEM_SCALES: Final = "item_scales.npy"  # (N,) float32
ITEM_BIAS: Final = "item_bias.npy"  # (N,) float32
CATALOGUE_INPUTS: Final = (TEXT_INT8, TEXT_SCALES, ATTRIBUTES)
TOWER_FILES: Final = (TOWER_DOWN, TOWER_UP, TOWER_ATTRIBUTES)
VECTOR_FILES: Final = (ITEMS_F32, ITEMS_INT8, ITEM_SCALES)
CODE_FILES: Final = (CODES_FILE, CODE_SCALES_FILE)
DERIVED_FILES: Final = (*VECTOR_FILES, ITEM_BIAS, *CODE_FILES)
# what a device computes and keeps of them: its vectors it reads from the text when it needs a row
# (client/device/vector_store.py TextVectorStore), so a new model adds no per-item vector file on the device
DEVICE_DERIVED: Final = (ITEM_BIAS, *CODE_FILES)
_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    ITEMS_F32: np.dtype(np.float32),
    ITEMS_INT8: np.dtype(np.int8),
    ITEM_SCALES: np.dtype(np.float32),
    ITEM_BIAS: np.dtype(np.float32),
    CODE_SCALES_FILE: np.dtype(np.float32),
}
RECORD: Final = ".derived.json"  # a device's record of the files it derived (no manifest can list it)
CHUNK_ROWS: Final = 16_384  # items derived at a time (16k x 384 float32: 24 MiB per temporary)


@dataclass(frozen=True, eq=False)
class ItemTowerWeights:
    """The item tower's weights that a release ships (float32)."""

    down: np.ndarray  # (r, E)
    up: np.ndarray  # (E, r)
    attributes: np.ndarray  # (r, A)
    bias: np.ndarray  # (E + 2,) [w (E), b0, popularity weight]

    def __post_init__(self) -> None:
        shapes = (self.down.shape, self.up.shape, self.attributes.shape, self.bias.shape)
        rank, dim = self.down.shape if self.down.ndim == 2 else (-1, -1)
        if shapes != ((rank, dim), (dim, rank), (rank, self.attributes.shape[-1]), (dim + 2,)):
            raise DataError(f"item-tower weights of shapes {shapes} do not fit together")
        arrays = (self.down, self.up, self.attributes, self.bias)
        if any(a.dtype != np.float32 or not np.isfinite(a).all() for a in arrays):
            raise DataError("item-tower weights must be finite float32")

    @property
    def dim(self) -> int:
        return int(self.down.shape[1])

    @classmethod
    def load(cls, folder: Path) -> ItemTowerWeights:
        down, up, attributes, bias = (_load(Path(folder), name) for name in (*TOWER_FILES, TOWER_BIAS))
        return cls(down=down, up=up, attributes=attributes, bias=bias)

    def save(self, folder: Path) -> None:
        arrays = (self.down, self.up, self.attributes, self.bias)
        for name, array in zip((*TOWER_FILES, TOWER_BIAS), arrays, strict=True):
            np.save(Path(folder) / name, array)


def attribute_columns(multi_hot: np.ndarray) -> np.ndarray:
    """(N, K) the set columns of an (N, A) 0/1 attribute multi-hot, in column order, -1-padded (K: the most
    set in one row, at least 1); int16, or int32 when A > 32767. DataError unless every entry is 0 or 1."""
    if multi_hot.ndim != 2 or not np.isin(multi_hot, (0.0, 1.0)).all():
        raise DataError("an attribute multi-hot must be an (N, A) array of zeros and ones")
    rows, cols = np.nonzero(multi_hot)
    counts = np.bincount(rows, minlength=len(multi_hot))
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within its row
    dtype = np.int16 if multi_hot.shape[1] <= np.iinfo(np.int16).max else np.int32
    out = np.full((len(multi_hot), max(1, int(counts.max(initial=0)))), -1, dtype=dtype)
    out[rows, slot] = cols
    return out


def item_rows(
    text: np.ndarray, columns: np.ndarray, weights: ItemTowerWeights, prior: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (k, E), bias (k,)) float32 of k items: text (k, E) float32, columns (k, K) their set
    attribute columns (-1: none), prior (k,) or None (no prior term): the formula of the module docstring."""
    width = weights.attributes.shape[1]
    if columns.size and (columns.min() < -1 or columns.max() >= width):
        raise DataError(f"attribute columns must lie in [-1, {width})")
    table = np.vstack([weights.attributes.T, np.zeros((1, weights.attributes.shape[0]), np.float32)])
    hidden = text @ weights.down.T + table[np.where(columns < 0, width, columns)].sum(axis=1)  # (k, r)
    vectors = text + hidden @ weights.up.T  # (k, E)
    bias = text @ weights.bias[:-2] + weights.bias[-2]  # (k,)
    if prior is not None:
        bias = bias + weights.bias[-1] * prior
    return vectors.astype(np.float32), bias.astype(np.float32)


def save_catalogue_inputs(folder: Path, text: np.ndarray, columns: np.ndarray) -> None:
    """The catalogue-only input files: text (N, E) float32 as per-row int8, the attribute columns as they
    are (attribute_columns)."""
    q, scales = quantize_rows(np.asarray(text, dtype=np.float32))
    np.save(Path(folder) / TEXT_INT8, q)
    np.save(Path(folder) / TEXT_SCALES, scales)
    np.save(Path(folder) / ATTRIBUTES, columns)


def derived_block(files: Collection[str]) -> dict[str, Any]:
    """The manifest's "derived" block of a release whose folder holds `files` (PRIOR among them or not)."""
    vectors = [*CATALOGUE_INPUTS, *TOWER_FILES]
    sources = {name: vectors for name in VECTOR_FILES}
    sources[ITEM_BIAS] = [TEXT_INT8, TEXT_SCALES, TOWER_BIAS, *([PRIOR] if PRIOR in files else [])]
    sources.update({name: [*vectors, PROJECTION_FILE] for name in CODE_FILES})
    return {"scheme": SCHEME, "files": {name: {"from": sorted(sources[name])} for name in DERIVED_FILES}}


def derived_names(manifest: dict[str, Any]) -> frozenset[str]:
    """The files of a signed release manifest that a device derives instead of downloading: none for a
    release without a "derived" block or with a scheme this code does not know (the device downloads
    them all, as before); DataError when the block is malformed, or names inputs the release lacks."""
    block = manifest.get("derived")
    if block is None or (isinstance(block, dict) and block.get("scheme") != SCHEME):
        return frozenset()
    files = manifest.get("files")
    if not isinstance(block, dict) or not isinstance(files, dict) or not isinstance(block.get("files"), dict):
        raise DataError('a release manifest\'s "derived" block must be {"scheme", "files"}')
    if block != derived_block(files):
        raise DataError(f'the manifest\'s "derived" block is not what scheme {SCHEME} derives from its files')
    needed = {source for entry in block["files"].values() for source in entry["from"]}
    missing = sorted((needed | set(block["files"])) - set(files))
    if missing:
        raise DataError(f"a derived release lacks {', '.join(missing)} in its files")
    for name in files:
        check_file_name(name)
    return frozenset(block["files"])


def derive_files(
    folder: Path, outputs: Iterable[str] = DERIVED_FILES, *, chunk_rows: int = CHUNK_ROWS
) -> None:
    """Write the derived files `outputs` (a subset of DERIVED_FILES) into `folder` from the inputs there,
    `chunk_rows` items at a time: the text is read and every output written as a stream (nothing of
    catalogue size in memory but the (N,) inputs and the (P, N) int8 codes, at most CODE_BUDGET_BYTES; no
    file mapped). The coarse codes need `item_projection.npy` in the folder. DataError when an input is
    missing or does not fit. The bias has the prior term when the folder holds PRIOR (a device derives in a
    folder that holds only what the signed manifest lists)."""
    folder, outputs = Path(folder), tuple(outputs)
    if not set(outputs) <= set(DERIVED_FILES):
        raise DataError(f"{sorted(set(outputs) - set(DERIVED_FILES))} are not derived files")
    scales, columns = _load(folder, TEXT_SCALES), _load(folder, ATTRIBUTES)
    weights, n = ItemTowerWeights.load(folder), len(scales)
    prior = _load(folder, PRIOR) if (folder / PRIOR).is_file() else None
    projection = _load(folder, PROJECTION_FILE) if set(outputs) & set(CODE_FILES) else None
    with _NpyRows(folder / TEXT_INT8) as text, ExitStack() as stack:
        dim = text.shape[1]
        fits = (
            text.dtype == np.int8 and text.shape[0] == n and scales.ndim == 1 and scales.dtype == np.float32
        )
        fits &= columns.ndim == 2 and len(columns) == n and columns.dtype.kind == "i" and dim == weights.dim
        fits &= prior is None or (prior.shape == (n,) and prior.dtype == np.float32)
        fits &= projection is None or (projection.ndim == 2 and projection.shape[0] == dim)
        if not fits:
            raise DataError(f"{folder}: the derivation's inputs do not fit one another")
        shapes = {ITEMS_F32: (n, dim), ITEMS_INT8: (n, dim)}
        out = {
            name: stack.enter_context(_NpyWriter(folder / name, shapes.get(name, (n,)), _DTYPES[name]))
            for name in outputs
            if name != CODES_FILE
        }
        codes = None
        if CODES_FILE in outputs and projection is not None:
            codes = np.zeros((projection.shape[1], n), dtype=np.int8)  # (P, N): one column per item
        for lo in range(0, n, chunk_rows):
            hi = min(lo + chunk_rows, n)
            block = text.read(hi - lo).astype(np.float32) * scales[lo:hi, None]
            vectors, bias = item_rows(block, columns[lo:hi], weights, _piece(prior, lo, hi))
            _write_chunk(out, codes, lo, hi, vectors, bias, projection)
    if codes is not None:
        np.save(folder / CODES_FILE, codes)


def device_derived_names(manifest: dict[str, Any]) -> list[str]:
    """The derived files of `manifest` a device computes and keeps (DEVICE_DERIVED among derived_names), in
    DERIVED_FILES order; the other derived files it neither fetches nor writes."""
    names = derived_names(manifest)
    return [name for name in DEVICE_DERIVED if name in names]


def write_record(folder: Path, manifest: dict[str, Any]) -> None:
    """Record the files a device derived in `folder` (RECORD: their sha256 and size, bound to `manifest`)."""
    names = sorted(device_derived_names(manifest))
    record = {
        "scheme": SCHEME,
        "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
        "files": {name: file_digest(Path(folder) / name) for name in names},
    }
    (Path(folder) / RECORD).write_text(json.dumps(record, sort_keys=True))


def check_record(folder: Path, manifest: dict[str, Any]) -> None:
    """SignatureError unless every file of `manifest` that a device derives (device_derived_names) is in
    `folder` exactly as the record written when it was derived says (for this manifest); a missing or
    unreadable record is one too."""
    names = device_derived_names(manifest)
    if not names:
        return
    try:
        record = json.loads((Path(folder) / RECORD).read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"the record of the derived files is missing or unreadable ({exc})") from exc
    digest = hashlib.sha256(canonical_json(manifest)).hexdigest()
    if not isinstance(record, dict) or record.get("manifest_sha256") != digest:
        raise SignatureError("the record of the derived files belongs to another release")
    recorded = record.get("files")
    for name in sorted(names):
        path = Path(folder) / name
        if not isinstance(recorded, dict) or not path.is_file() or file_digest(path) != recorded.get(name):
            raise SignatureError(f"derived file {name} is not the one derived on this device")


def _write_chunk(
    out: Mapping[str, _NpyWriter],
    codes: np.ndarray | None,
    lo: int,
    hi: int,
    vectors: np.ndarray,
    bias: np.ndarray,
    projection: np.ndarray | None,
) -> None:
    """Items lo..hi's rows of each output: `out`'s streams, and their columns of `codes`."""
    q, scales = quantize_rows(vectors) if {ITEMS_INT8, ITEM_SCALES} & set(out) else (None, None)
    code, code_scales = coarse_codes(vectors, projection) if projection is not None else (None, None)
    if codes is not None and code is not None:
        codes[:, lo:hi] = code
    rows = {
        ITEMS_F32: vectors,
        ITEMS_INT8: q,
        ITEM_SCALES: scales,
        ITEM_BIAS: bias,
        CODE_SCALES_FILE: code_scales,
    }
    for name, stream in out.items():
        stream.write(rows[name])


class _NpyWriter:
    """A .npy file written a block of rows at a time (the same bytes np.save writes)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.path, self.shape, self.dtype, self.rows = path, shape, dtype, 0
        self.handle = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.handle, header)

    def write(self, block: np.ndarray | None) -> None:
        if block is None or block.shape[1:] != self.shape[1:]:
            raise DataError(f"{self.path.name}: a block that does not fit its rows")
        self.handle.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def __enter__(self) -> _NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        if exc[0] is None and self.rows != self.shape[0]:
            raise DataError(f"{self.path.name}: {self.rows} rows written of {self.shape[0]}")


class _NpyRows:
    """The rows of a 2-d .npy file, read in order a block at a time (never mapped, never read whole)."""

    def __init__(self, path: Path) -> None:
        try:
            self.handle = path.open("rb")
            version = np.lib.format.read_magic(self.handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            self.shape, fortran, self.dtype = read_header(self.handle)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({type(exc).__name__})") from exc
        if fortran or len(self.shape) != 2 or self.dtype.hasobject:
            self.handle.close()
            raise DataError(f"{path}: not a C-ordered 2-d array")

    def read(self, rows: int) -> np.ndarray:
        block = np.fromfile(self.handle, dtype=self.dtype, count=rows * self.shape[1])
        if block.size != rows * self.shape[1]:
            raise DataError("the text embeddings file is shorter than its header says")
        return block.reshape(rows, self.shape[1])

    def __enter__(self) -> _NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _piece(prior: np.ndarray | None, lo: int, hi: int) -> np.ndarray | None:
    return None if prior is None else prior[lo:hi]


def _load(folder: Path, name: str) -> np.ndarray:
    try:
        array: np.ndarray = np.load(folder / name, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: cannot read {name} ({type(exc).__name__})") from exc
    return array
