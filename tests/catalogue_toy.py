"""A run folder written the way the ServerApp writes one (real encoder, a perturbed model, a signed ledger
entry for its parameters; no Flower), a release of it, and items to write after the release."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from federated_toy import tiny_config
from ledger_toy import KEY, write_run

from server.embedding.catalogue_embedding import embed_catalogue
from server.releases.release_builder import load_run
from server.releases.release_store import ReleaseStore
from shared.config import to_flat
from shared.data.schema import Catalogue
from shared.data.source import load_configured
from shared.model import ItemFeatures, TwoTower
from shared.model.params import get_flat, params_sha256, set_flat, trainable_layout
from shared.run_folder import RunFolder, save_final, write_json_atomic

NOW = 1_900_000_000  # request time of the device tests, unix seconds (after every synthetic item)


def write_model_run(tmp: Path, cache: Path) -> Path:
    """A one-round run folder under `tmp` whose ledger (signed by ledger_toy.KEY) records its parameters."""
    config = tiny_config(tmp, cache)
    folder = RunFolder(Path(config.federated.run_dir))
    folder.create()
    write_json_atomic(folder.config, to_flat(config))
    dataset, _ = load_configured(config.data)
    table = embed_catalogue(dataset.catalogue, config.encoder, progress=False)
    np.save(folder.item_vectors, table.vectors)
    torch.manual_seed(config.federated.seed)
    model = TwoTower(ItemFeatures.from_catalogue(dataset.catalogue, table.vectors), config.model)
    layout = trainable_layout(model, config.federated.trainable)
    rng = np.random.default_rng(5)  # "trained": the item tower's correction and bias are not zero
    params = (get_flat(model, layout) + 0.05 * rng.normal(size=layout.dim)).astype(np.float32)
    set_flat(model, layout, params)
    save_final(folder, params, model.state_dict(), {"rounds": 1})
    digest = params_sha256(params)
    write_run(folder.root, rounds=1, tweak=lambda _, fields: fields.update(model_sha256_after=digest))
    return folder.root


def release_of(run: Path, store_root: Path) -> ReleaseStore:
    """A store with one release (version 1) of `run`, signed with ledger_toy.KEY."""
    store = ReleaseStore(store_root)
    model, catalogue, source = load_run(run, KEY.public_key())
    store.publish(model, catalogue, source, KEY)
    return store


def new_item(item_id: str = "new-0001", **fields: object) -> dict[str, object]:
    """A plausible item that the release does not have, created just before NOW."""
    item: dict[str, object] = {
        "id": item_id,
        "title": "Velvet matte liquid lipstick in deep berry",
        "category": "Beauty > Makeup > Lipstick",
        "brand": "Lumiere",
        "price": 14.5,
        "created_at": NOW - 3_600,
        "on_promotion": False,
        "description": "Long-wearing matte liquid lipstick with a soft velvet finish.",
    }
    item.update(fields)
    return item


def release_item(catalogue: Catalogue, row: int) -> dict[str, object]:
    """Row `row` of the release's base catalogue as a write, every field as the release has it."""
    price = float(catalogue.price[row])
    return {
        "id": catalogue.item_ids[row],
        "title": catalogue.titles[row],
        "category": catalogue.categories[row],
        "brand": catalogue.brands[row],
        "price": None if math.isnan(price) else price,
        "created_at": int(catalogue.created_at[row]),
        "on_promotion": bool(catalogue.on_promotion[row]),
        "description": catalogue.descriptions[row],
    }


def serve(folder: Path, port: int) -> None:
    """Serve a toy run and its release on 127.0.0.1:`port` (admin token read from FEDHOME_ADMIN_TOKEN when
    it starts), for schema fuzzing of the catalogue routes:
    `PYTHONPATH=.:tests python tests/catalogue_toy.py DIR PORT`."""
    import uvicorn

    from server.api.service import make_app
    from shared.config import ServiceConfig
    from shared.signing import save_private_key, save_public_key

    run = write_model_run(folder, folder / "cache")
    store = release_of(run, folder / "store")
    save_public_key(KEY.public_key(), folder / "public.pem")
    save_private_key(KEY, folder / "private.pem")
    config = ServiceConfig(
        release_store=store.root,
        run_dir=run,
        public_key=folder / "public.pem",
        signing_key=str(folder / "private.pem"),
        max_catalogue_batch=20,
    )
    uvicorn.run(make_app(config), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    import sys

    serve(Path(sys.argv[1]), int(sys.argv[2]))
