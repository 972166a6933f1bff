"""Devices that train from their own event stores in a real Flower deployment: a SuperLink, three device
SuperNodes (node config "train-from" = "device-store", each with its own device folder holding the shop's
start release, as the app synced it, and "release-key", the key the app pins) and `flwr run`.

What a device recorded between rounds is in its next round's examples, and each device's receipts show the
rounds it joined. The observable never leaves the devices: each keeps a training log in its folder (round,
events and examples it trained on: client/training/device_store.py), which the test reads from the folder, as
the device's app could; the server sees only the clipped sums."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployment_toy import (
    DEVICE_T0,
    RUN_TIMEOUT_S,
    TINY_RUN,
    Deployment,
    publish_start_release,
    record_views,
    running_deployment,
    wait_for_health,
)
from federated_toy import read_jsonl, tiny_config, tiny_settings

from client.device.receipts import ReceiptStore
from client.training.device_store import DeviceStore
from server.embedding.catalogue_embedding import embed_catalogue
from shared.data.source import configured_split
from shared.errors import DataError

pytestmark = pytest.mark.deployment

DEVICES = 3
CAPPED = 2  # this device's own participation cap is 1: it joins round 1 only
FIRST, LATER = 3, 3  # distinct items each device views before the run, and between rounds 1 and 2
T0 = DEVICE_T0  # unix seconds of the first event


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    yield from running_deployment(tmp_path)


def wait_for_round_one(deployment: Deployment, folders: list[Path]) -> None:
    """Until every device's training log shows round 1 (a line is written before the device replies, so
    round 2 cannot have started on any device yet)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        try:
            if all(DeviceStore(folder).training_log() for folder in folders):
                return
        except DataError:  # a line being written
            pass
        deployment.check_alive()
        if time.monotonic() > deadline:
            deployment.fail(f"the devices did not all train in round 1 within {RUN_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def test_three_devices_train_from_their_stores_and_see_new_events_in_the_next_round(
    deployment: Deployment,
) -> None:
    settings = tiny_settings(
        deployment.root,
        deployment.root / "cache",
        **TINY_RUN,
        federated__nodes=str(DEVICES),
        federated__sample_rate="1.0",  # every device is sampled in both rounds
        federated__train_on_valid="true",  # what a device-store node requires: it trains on all it holds
        federated__max_examples_per_user="32",
        privacy__delta="1e-3",  # N = 3 devices: the default N^-1.1 would be 0.3
    )
    config = tiny_config(deployment.root, deployment.root / "cache", **TINY_RUN)
    catalogue = configured_split(config.data).dataset.catalogue
    ids = catalogue.item_ids
    # the shop's start release, over the text the ServerApp embeds (the same encoder cache): the app synced it
    text = embed_catalogue(catalogue, config.encoder, progress=False).vectors
    start = publish_start_release(config, text, deployment.root / "release")
    folders = [deployment.root / "devices" / f"device-{d}" for d in range(DEVICES)]
    per_device = FIRST + LATER
    for d, folder in enumerate(folders):
        start.install(folder)
        own = ids[d * per_device : (d + 1) * per_device]
        record_views(folder, own[:FIRST], start=0)
    record_views(folders[0], ["an-item-this-shop-does-not-sell"], start=FIRST)  # left out, counted locally

    link_port = deployment.start_superlink()
    for d, folder in enumerate(folders):
        node_config = f'train-from="device-store" device-dir="{folder}" release-key="{start.key_file}"'
        if d == CAPPED:
            node_config += " participation-cap=1"
        deployment.start_supernode(f"supernode-{d}", link_port=link_port, node_config=node_config)
    wait_for_health(deployment, link_port)
    run_dir = deployment.root / "run"
    run_id = deployment.submit(settings)
    wait_for_round_one(deployment, folders)
    for d, folder in enumerate(folders):  # the shoppers go on between the rounds
        record_views(folder, ids[d * per_device + FIRST : (d + 1) * per_device], start=FIRST + 1)
    deployment.require_completed(run_id, run_dir / "summary.json")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["rounds"], summary["nodes"], summary["population"]) == (2, DEVICES, DEVICES)
    assert summary["trained_on_valid"] is True
    metrics = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "cohort" in row]
    rounds = [(r["round"], r["cohort"], r["refused_users"], r["rejected_users"]) for r in metrics]
    assert rounds == [(1, DEVICES, 0, 0), (2, DEVICES, 1, 0)]  # the capped device refused round 2
    server_run = summary["run_id"]
    before = (FIRST, FIRST - 1)  # (events, examples): the first event has no history, so no example
    after = (FIRST + LATER, FIRST + LATER - 1)
    for d, folder in enumerate(folders):
        log = DeviceStore(folder).training_log()
        joined = [1] if d == CAPPED else [1, 2]
        assert [line.run_id for line in log] == [server_run] * len(joined)
        assert [(line.round, line.events, line.examples) for line in log] == [
            (r, *(before if r == 1 else after)) for r in joined
        ], f"device {d}: {log}"
        receipts = ReceiptStore(folder)
        try:
            assert [(r.run_id, r.round) for r in receipts.receipts()] == [(server_run, r) for r in joined]
        finally:
            receipts.close()
