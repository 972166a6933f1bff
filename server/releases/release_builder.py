"""Model releases: build one from a finished (or checkpointed) run, keep their history, withdraw one.

A release folder (see shared/release_manifest.py for the manifest) holds:
- `user_tower.onnx`: the user tower (opset 17, exported in eval mode, dynamic batch and history length);
  inputs history (B, L, E) float32 item vectors, events (B, L) int64, gaps (B, L) int64, hour (B,) int64,
  weekday (B,) int64; output user_vector (B, E), unit norm;
- `item_vectors_f32.npy` (N, E) float32, the item tower's vectors of the whole catalogue;
- `item_vectors_int8.npy` (N, E) int8 and `item_scales.npy` (N,) float32: symmetric per-row quantisation,
  vector ~ int8 * scale;
- `item_projection.npy` (E, P) float32, the top P = min(64, E) principal directions of the item vectors,
  `item_codes_int8.npy` (P, N) int8 (one column per item) and `item_code_scales.npy` (N,) float32: the
  device's coarse codes, Q^T v ~ code * scale (shared/item_codes.py). Optional for a device: releases
  before these files load too, the device computes the same from the item vectors;
- `item_bias.npy` (N,) float32 and, in `scoring.json`, the temperature: score = t <u, v> + bias;
- `items.json`: the catalogue's metadata (id, title, category, brand, price, created_at, on_promotion);
- `trending_counts.npy` (N,) float32 when the run made DP trending releases: the latest accounted counts
  (server/releases/release_trending.py), bound to their ledger entry in the manifest's privacy block.

The per-item arrays above (item vectors f32/int8 and scales, item bias, codes and code scales) are DERIVED
(shared/derived_items.py) for a model without an item-id residual: the release also carries what they are
computed from, `item_text_int8.npy` + `item_text_scales.npy` (the catalogue's text embeddings, per-row
int8), `item_attributes.npy` (each item's attribute multi-hot columns), `item_popularity_prior.npy` (when the
model has a non-zero prior), the item tower's weights (`item_tower_down.npy`, `item_tower_up.npy`,
`item_tower_attributes.npy`, `item_tower_bias.npy`) and the projection; the manifest's "derived" block names
them. The server's copies are written by the same numpy derivation a device runs (`derive_files`), checked
against the torch model first (`check_derivation`, `check_released_rows`). A model with an item-id residual
gets the per-item arrays written from the torch model as they are, and no "derived" block.

A run with a popularity prior (server/trending/popularity_release.py) is rebuilt with the prior it used
(the run folder's popularity_prior.npy), so `item_bias.npy` includes it; the manifest's privacy block binds
the prior to its count release's ledger entry ("popularity_prior").

A release of a run's final model is bound to its start check's ledger entry when one followed the last round
(server/rounds/start_check.py): the model is the one that check shipped, the trained one or the start.

The store of releases, their history and the signed index is server/releases/release_store.py.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.ledger_entries import is_training_round, start_check_after
from server.releases.release_trending import epsilon_all, latest_trending, popularity_prior_block
from shared.config import from_flat
from shared.data.schema import UNKNOWN_TIME, Catalogue
from shared.data.source import load_configured
from shared.derived_items import (
    CHUNK_ROWS,
    CODE_FILES,
    ITEM_BIAS,
    ITEM_SCALES,
    ITEMS_F32,
    ITEMS_INT8,
    PRIOR,
    TEXT_SCALES,
    VECTOR_FILES,
    ItemTowerWeights,
    attribute_columns,
    derive_files,
    derived_block,
    item_rows,
    save_catalogue_inputs,
)
from shared.errors import ConfigError, DataError
from shared.item_codes import (
    CODE_SCALES_FILE,
    CODES_FILE,
    PROJECTION_FILE,
    coarse_codes,
    code_dim_for,
    principal_projection,
    quantize_rows,
)
from shared.model import ItemFeatures, TwoTower
from shared.model.params import params_sha256, set_flat, trainable_layout
from shared.release_manifest import file_digest
from shared.run_folder import RunFolder, load_round_checkpoint
from shared.signing import Ed25519PublicKey

USER_TOWER = "user_tower.onnx"
ITEMS_META = "items.json"
SCORING = "scoring.json"
INDEX = "index.json"
ONNX_OPSET = 17
START_CHECK_FIELDS = ("decision", "noised_gain_sum", "noise_std", "margin", "model_sha256_trained")
USER_TOWER_INPUTS = ("history", "events", "gaps", "hour", "weekday")
DERIVATION_TOLERANCE = 1e-5  # float32 rounding between torch and numpy: the formula is the model's


def export_user_tower(model: TwoTower, path: Path) -> None:
    """Write the user tower as ONNX (opset 17, eval mode, dynamic batch and history length)."""
    model.eval()
    tower = model.users
    batch, length, dim = 2, tower.max_history, model.items.text.shape[1]
    example = (
        torch.zeros(batch, length, dim),
        torch.ones(batch, length, dtype=torch.int64),
        torch.zeros(batch, length, dtype=torch.int64),
        torch.zeros(batch, dtype=torch.int64),
        torch.zeros(batch, dtype=torch.int64),
    )
    dynamic = {name: {0: "batch", 1: "length"} for name in USER_TOWER_INPUTS[:3]}
    dynamic.update({name: {0: "batch"} for name in USER_TOWER_INPUTS[3:]})
    dynamic["user_vector"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False) on purpose: the dynamo one needs onnxscript (NOTES.md)
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
        torch.onnx.export(
            tower,
            example,
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(USER_TOWER_INPUTS),
            output_names=["user_vector"],
            dynamic_axes=dynamic,
        )


def catalogue_metadata(catalogue: Catalogue) -> list[dict[str, Any]]:
    """One JSON-safe record per item, in index order."""
    rows = []
    for i in range(catalogue.n_items):
        price = float(catalogue.price[i])
        created = int(catalogue.created_at[i])
        rows.append(
            {
                "id": catalogue.item_ids[i],
                "title": catalogue.titles[i],
                "category": catalogue.categories[i],
                "brand": catalogue.brands[i],
                "price": None if math.isnan(price) else round(price, 2),
                "created_at": None if created == UNKNOWN_TIME else created,
                "on_promotion": bool(catalogue.on_promotion[i]),
            }
        )
    return rows


@dataclass(frozen=True)
class ReleaseSource:
    """Everything a release is made of besides the model: provenance and the privacy spent."""

    run_id: str
    model_sha256: str
    model_round: int
    encoder: dict[str, str]
    privacy: dict[str, Any]  # unit, epsilon, delta, ledger_head, ledger_entries[, record_epsilon, ...]
    trending_file: Path | None = None  # the run's counts file for privacy["trending"], when there is one


def write_release_files(model: TwoTower, catalogue: Catalogue, folder: Path) -> dict[str, Any]:
    """The release's model and catalogue files (not the manifest) into `folder`; returns the manifest fields
    besides "files" that they need: {"derived": ...} when the per-item arrays are derived from the release's
    inputs (shared/derived_items.py), {} for a model with an item-id residual (its per-item arrays are
    model parameters: written as they come)."""
    if catalogue.n_items != model.items.n_items:
        raise ConfigError(f"catalogue has {catalogue.n_items} items, the model {model.items.n_items}")
    model.eval()
    export_user_tower(model, folder / USER_TOWER)
    with torch.no_grad():
        vectors, bias = model.items()
        temperature = float(model.temperature())
    vectors_np, bias_np = vectors.numpy().astype(np.float32), bias.numpy().astype(np.float32)
    (folder / ITEMS_META).write_text(json.dumps(catalogue_metadata(catalogue), ensure_ascii=False))
    scoring = {
        "temperature": temperature,
        "max_history": model.users.max_history,
        "dim": int(vectors.shape[1]),
    }
    (folder / SCORING).write_text(json.dumps(scoring))
    if model.items.id_emb is not None:
        write_item_arrays(vectors_np, bias_np, folder)
        return {}
    write_derivation_inputs(model, folder)
    check_derivation(model, vectors_np, bias_np)
    derive_files(folder, (*VECTOR_FILES, ITEM_BIAS))  # the server's copies, as a device derives them
    check_released_rows(model, folder, vectors_np, bias_np)
    derived = np.load(folder / ITEMS_F32, mmap_mode="r")
    chunks = (derived[lo : lo + CHUNK_ROWS] for lo in range(0, len(derived), CHUNK_ROWS))
    np.save(folder / PROJECTION_FILE, principal_projection(chunks, code_dim_for(*derived.shape)))
    del derived
    derive_files(folder, CODE_FILES)
    return {"derived": derived_block({p.name for p in folder.iterdir()})}


def write_item_arrays(vectors: np.ndarray, bias: np.ndarray, folder: Path) -> None:
    """The per-item arrays of a release whose devices download them (no "derived" block): the vectors
    (N, E) float32 and bias (N,) as they are, their int8 form, the projection and the coarse codes."""
    q, scale = quantize_rows(vectors)
    np.save(folder / ITEMS_F32, vectors)
    np.save(folder / ITEMS_INT8, q)
    np.save(folder / ITEM_SCALES, scale)
    projection = principal_projection([vectors], code_dim_for(*vectors.shape))
    codes, code_scales = coarse_codes(vectors, projection)
    np.save(folder / PROJECTION_FILE, projection)
    np.save(folder / CODES_FILE, codes)
    np.save(folder / CODE_SCALES_FILE, code_scales)
    np.save(folder / ITEM_BIAS, bias)


def tower_weights(model: TwoTower) -> ItemTowerWeights:
    """The item tower's weights as a release ships them (shared/derived_items.py)."""
    tower = model.items
    weight = tower.popularity_weight
    with torch.no_grad():
        offset = [tower.bias.bias.reshape(1), torch.zeros(1) if weight is None else weight.reshape(1)]
        return ItemTowerWeights(
            down=tower.down.weight.numpy().astype(np.float32),
            up=tower.up.weight.numpy().astype(np.float32),
            attributes=tower.embed_attributes.weight.numpy().astype(np.float32),
            bias=torch.cat([tower.bias.weight.reshape(-1), *offset]).numpy().astype(np.float32),
        )


def released_prior(model: TwoTower) -> np.ndarray | None:
    """The popularity prior a release ships: None when the model has no prior term or it is all zeros."""
    prior = model.items.popularity.numpy().astype(np.float32)
    return None if model.items.popularity_weight is None or not prior.any() else prior


def write_derivation_inputs(model: TwoTower, folder: Path) -> None:
    """The derivation's inputs: the catalogue's text (int8) and attribute columns, the run's prior, the
    item tower's weights."""
    save_catalogue_inputs(folder, model.items.text.numpy(), attribute_columns(model.items.attributes.numpy()))
    prior = released_prior(model)
    if prior is not None:
        np.save(folder / PRIOR, prior)
    tower_weights(model).save(folder)


def check_derivation(model: TwoTower, vectors: np.ndarray, bias: np.ndarray) -> None:
    """DataError unless the numpy derivation (shared/derived_items.py), fed the model's own float32 text,
    gives the torch model's item vectors and bias within float32 rounding (DERIVATION_TOLERANCE): the
    formula devices use is the model's."""
    columns = attribute_columns(model.items.attributes.numpy())
    weights, prior = tower_weights(model), released_prior(model)
    text = model.items.text.numpy()
    for lo in range(0, len(text), CHUNK_ROWS):
        hi = lo + CHUNK_ROWS
        got = item_rows(text[lo:hi], columns[lo:hi], weights, None if prior is None else prior[lo:hi])
        for name, mine, torch_rows in (("vectors", got[0], vectors[lo:hi]), ("bias", got[1], bias[lo:hi])):
            if not np.allclose(mine, torch_rows, rtol=DERIVATION_TOLERANCE, atol=DERIVATION_TOLERANCE):
                error = float(np.abs(mine - torch_rows).max())
                raise DataError(f"the derived item {name} differ from the model's by up to {error:.3g}")


def check_released_rows(model: TwoTower, folder: Path, vectors: np.ndarray, bias: np.ndarray) -> None:
    """DataError unless the released (derived, from int8 text) vectors and bias are within the bound that
    the text's quantisation allows of the model's: |dv_j| <= e_j (1 + max row sum |U D|), |db_j| <= e_j
    ||w||_1, e_j = s_j / 2 the row's largest text rounding error (plus float32 rounding)."""
    weights = tower_weights(model)
    half_step = np.load(folder / TEXT_SCALES) / 2
    gain = 1 + float(np.abs(weights.up @ weights.down).sum(axis=1).max())
    bounds = {"vectors": half_step * gain, "bias": half_step * float(np.abs(weights.bias[:-2]).sum())}
    released = {"vectors": np.load(folder / ITEMS_F32, mmap_mode="r"), "bias": np.load(folder / ITEM_BIAS)}
    for lo in range(0, len(vectors), CHUNK_ROWS):
        hi = lo + CHUNK_ROWS
        errors = {
            "vectors": np.abs(released["vectors"][lo:hi] - vectors[lo:hi]).max(axis=1),
            "bias": np.abs(released["bias"][lo:hi] - bias[lo:hi]),
        }
        for name, error in errors.items():
            limit = bounds[name][lo:hi] * (1 + DERIVATION_TOLERANCE) + DERIVATION_TOLERANCE
            if (error > limit).any():
                raise DataError(f"released item {name} are further from the model's than int8 text allows")


def load_run(
    run_dir: Path, public_key: Ed25519PublicKey, *, round_number: int | None = None
) -> tuple[TwoTower, Catalogue, ReleaseSource]:
    """The model of a run (its final model, or the checkpoint of `round_number`), its catalogue, and the
    release provenance. The run's ledger must verify with `public_key`, and the parameters must be the
    ones the ledger records for that round (model_sha256_after): a release never carries an unaccounted
    model. The final model of a run whose start check followed its last round is bound to that check's entry
    instead (its epsilon covers the check): the parameters must be the model it shipped
    (model_sha256_shipped), the trained one or, when training lost, the start."""
    from server.audit.verify import verify_ledger  # the auditor's checks, run before anything is released

    folder = RunFolder(Path(run_dir))
    report = verify_ledger(folder.root, public_key)
    if not report.ok:
        raise DataError(f"the run's ledger does not verify: {report.problems[:3]}")
    config = from_flat(json.loads(folder.config.read_text()))
    ledger = [json.loads(line) for line in folder.ledger.read_text().splitlines() if line.strip()]
    entries = [e for e in ledger if is_training_round(e)]  # the training rounds, in order
    final = round_number is None
    if round_number is None:
        params = np.load(folder.final_params)
        round_number = int(json.loads(folder.summary.read_text()).get("rounds", len(entries)))
    else:
        params = load_round_checkpoint(folder, round_number).get("params")
        if not isinstance(params, np.ndarray):
            raise DataError(f"the checkpoint of round {round_number} holds no parameter array")
    if not 1 <= round_number <= len(entries):
        raise DataError(f"round {round_number} is not in the ledger ({len(entries)} entries)")
    entry = entries[round_number - 1]
    check = start_check_after(ledger, round_number) if final else None
    bound = entry if check is None else dict(check)  # the entry the release is bound to
    model_sha256 = entry["model_sha256_after"] if check is None else check["model_sha256_shipped"]
    if params_sha256(params) != model_sha256:
        raise DataError(
            f"the run's parameters are not the model the ledger records after round {round_number}"
            + ("" if check is None else " (the model its start check shipped)")
        )
    dataset, _ = load_configured(config.data)
    vectors = np.load(folder.item_vectors)
    torch.manual_seed(
        config.federated.seed
    )  # parameters outside the trained layout keep their initial values
    popularity = popularity_prior_block(ledger, folder.root)  # the prior the run used, bound to its entry
    features = ItemFeatures.from_catalogue(dataset.catalogue, vectors)
    model = TwoTower(features.with_popularity(None if popularity is None else popularity[0]), config.model)
    set_flat(model, trainable_layout(model, config.federated.trainable), params)
    privacy: dict[str, Any] = {
        "unit": bound.get("unit_of_privacy", "user"),
        "epsilon": bound["user_epsilon"]["pld"],
        "epsilon_rdp": bound["user_epsilon"]["rdp"],
        "delta": bound["delta"],
        "ledger_head": bound["entry_hash"],
        "ledger_entries": round_number,
        "ledger_key_id": bound["key_id"],
    }
    for name in ("record_epsilon", "record_delta", "participation_cap", "epsilon_bound"):
        if name in entry:
            privacy[name] = entry[name]
    if check is not None:  # which model the start check shipped, and why
        privacy["start_check"] = {name: check[name] for name in START_CHECK_FIELDS}
    if popularity is not None:  # in the model's item bias; its epsilon is in every later entry's
        privacy["popularity_prior"] = popularity[1]
    trending = latest_trending(ledger, round_number, folder.root)
    if trending is not None:
        privacy["trending"] = trending[1]
        privacy["epsilon_all"] = epsilon_all(privacy["epsilon"], trending[1])
    source = ReleaseSource(
        run_id=str(entry["run_id"]),
        model_sha256=str(model_sha256),
        model_round=round_number,
        encoder={
            "name": config.encoder.model_name,
            "backend": config.encoder.backend,
            "item_text_vectors_sha256": file_digest(folder.item_vectors)["sha256"],
        },
        privacy=privacy,
        trending_file=None if trending is None else trending[0],
    )
    return model, dataset.catalogue, source
