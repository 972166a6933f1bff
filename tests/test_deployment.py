"""fedhome as a Flower App: its run config, and `flwr run` on a real SuperLink with two SuperNodes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployment_toy import BIN, ROOT, TINY_RUN, Deployment, running_deployment, wait_for_health
from federated_toy import read_jsonl, tiny_settings
from flwr.common.config import flatten_dict, get_project_config, validate_config

from shared.config import FedhomeConfig, from_flat, to_flat

pytestmark = pytest.mark.deployment

# Settings in [tool.flwr.app.config] that differ from shared/config.py on purpose (a small demo); any other
# difference is a copy that went stale.
DEMO_KEYS = {
    "data.synthetic.n_users",
    "data.synthetic.n_items",
    "data.synthetic.n_categories",
    "federated.rounds",
    "federated.sample_rate",
    "federated.eval_every",
    "federated.run_dir",
}


def app_run_config() -> dict[str, bool | float | int | str]:
    """[tool.flwr.app.config] as Flower flattens it into a run config (nested tables -> dotted keys)."""
    return flatten_dict(get_project_config(ROOT)["tool"]["flwr"]["app"]["config"])


def test_pyproject_is_a_valid_flower_app_naming_our_apps() -> None:
    config = get_project_config(ROOT)
    valid, errors, _ = validate_config(config, check_module=True, project_dir=ROOT)
    assert valid, errors
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "server.server_app:app",
        "clientapp": "client.client_app:app",
    }
    assert "federations" not in config["tool"]["flwr"], (
        "flwr run would move it to FLWR_HOME, rewriting the file"
    )


def test_app_config_lists_every_setting_so_run_config_can_override_it() -> None:
    flat = app_run_config()
    defaults = to_flat(FedhomeConfig())
    missing, unknown = sorted(defaults.keys() - flat.keys()), sorted(flat.keys() - defaults.keys())
    assert not missing and not unknown, f"add to / remove from pyproject: {missing} / {unknown}"
    config = from_flat(flat)
    assert to_flat(config)["data.synthetic.n_users"] == flat["data.synthetic.n_users"]
    assert {k for k in flat if flat[k] != defaults[k]} == DEMO_KEYS


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    yield from running_deployment(tmp_path)


def test_flwr_run_on_a_superlink_with_two_supernodes_trains_and_leaves_a_verifiable_ledger(
    deployment: Deployment,
) -> None:
    """Central DP with secure aggregation: the SuperNodes keep each round's secrets in their context state
    across the protocol's messages, and the server sees only their noised sum."""
    link_port = deployment.start_superlink()
    for partition in range(2):
        deployment.start_supernode(
            f"supernode-{partition}",
            link_port=link_port,
            node_config=f"partition-id={partition} num-partitions=2",
        )
    run_dir = deployment.root / "run"
    settings = tiny_settings(
        deployment.root, deployment.root / "cache", privacy__secure_aggregation="true", **TINY_RUN
    )
    wait_for_health(deployment, link_port)
    run_id = deployment.submit(settings)
    deployment.require_completed(run_id, run_dir / "summary.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["rounds"], summary["nodes"], summary["population"]) == (2, 2, 40)
    entries = read_jsonl(run_dir / "ledger.jsonl")
    assert [entry["round"] for entry in entries] == [1, 2]
    for entry in entries:  # both SuperNodes' masked inputs were summed and unmasked
        assert entry["secure_aggregation"]["masked_inputs"] == 2 and not entry["secure_aggregation"]["failed"]
    audit = subprocess.run(
        [
            str(BIN / "fedhome-audit"),
            "verify",
            str(run_dir),
            "--public-key",
            str(run_dir / "ledger_public_key.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
