"""A small random two-tower model and releases of it, for the device and service tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from server.releases.release_builder import ReleaseSource
from server.releases.release_store import ReleaseStore
from shared.config import ModelConfig, SyntheticShopConfig
from shared.data.schema import Catalogue
from shared.data.synthetic.shop import generate_shop
from shared.model import ItemFeatures, TwoTower
from shared.signing import Ed25519PrivateKey, save_private_key, save_public_key

CONFIG = ModelConfig(dim=16, n_heads=2, residual_rank=8, max_history=6)


def random_model(seed: int = 0) -> tuple[TwoTower, Catalogue]:
    shop = generate_shop(SyntheticShopConfig(n_users=30, n_items=300, n_categories=5))
    rng = np.random.default_rng(0)
    text = rng.normal(size=(300, 24)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    torch.manual_seed(seed)
    model = TwoTower(ItemFeatures.from_catalogue(shop.catalogue, text), CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model, shop.catalogue


def source(tag: str) -> ReleaseSource:
    privacy = {"unit": "user", "epsilon": 8.0, "delta": 1e-5, "ledger_head": "ab" * 32, "ledger_entries": 3}
    encoder = {"name": "test", "backend": "none", "item_text_vectors_sha256": "cd" * 32}
    return ReleaseSource(f"run-{tag}", "ef" * 32, 3, encoder, privacy)


def two_releases(folder: Path, key: Ed25519PrivateKey) -> ReleaseStore:
    """A release store in `folder / "store"` holding two releases signed with `key` whose model files differ,
    and the key pair beside it (public.pem, private.pem)."""
    store = ReleaseStore(folder / "store")
    for seed in (0, 1):
        model, catalogue = random_model(seed)
        store.publish(model, catalogue, source(str(seed)), key)
    save_public_key(key.public_key(), folder / "public.pem")
    save_private_key(key, folder / "private.pem")
    return store
