"""`fedhome-client receipts --data DIR`: show the device's receipts and what they mean for its user.

`fedhome-client install --data DIR` marks the receipts a newly installed release includes. With
`--cache DIR --public-key KEY` the release in use is verified first and the receipts it includes are
marked with its version (client/device/receipts.py), and the run's published epsilon is read from its signed
manifest. `--json` prints the same content as JSON. DIR must be an existing folder (a DataError, exit 2,
otherwise: a mistyped path creates nothing); the device app creates it when it first trains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from client.device.receipts import ReceiptStore, summary
from client.device.release_cache import ReleaseCache
from shared.errors import ConfigError, DataError
from shared.signing import load_public_key

EXPLANATION = (
    "What this means: in each listed round your device sent one update, clipped to norm C, into a sum "
    "to which the server added Gaussian noise (multiplier z). The run's epsilon (from the signed release) "
    "is the guarantee for every user of the run. 'Your own bound' is an individual accounting bound: the "
    "privacy loss of exactly the rounds your device took part in, composed without counting on the chance "
    "of not being sampled. It holds for you given when you were sampled (who is sampled does not depend on "
    "anyone's data); it assumes the server added the noise it announced (the public ledger lets an auditor "
    "check that), covers training rounds only (not trending counts or evaluation), and says nothing about "
    "other users. With a participation cap your device refuses to train once it has taken part that many "
    "times."
)


def add_parser(sub: Any) -> None:
    """Register the `receipts` subcommand on fedhome-client's subparsers."""
    receipts = sub.add_parser("receipts", help="show the rounds this device took part in, and its bound")
    receipts.add_argument("--data", type=Path, required=True, help="the device's data folder")
    receipts.add_argument("--cache", type=Path, help="the release cache: bind receipts to the release in use")
    receipts.add_argument("--public-key", type=Path, help="the pinned release key (PEM), with --cache")
    receipts.add_argument("--json", action="store_true", help="print JSON instead of text")


def check_data_folder(data: Path) -> None:
    """DataError unless `data` is an existing folder (a device's data folder is never created here)."""
    if not Path(data).is_dir():
        raise DataError("no such data folder (the device's data folder must exist)", path=str(data))


def run(args: argparse.Namespace) -> int:
    """The receipts command (FedhomeError propagates to fedhome-client's handler)."""
    check_data_folder(args.data)
    store = ReceiptStore(args.data)
    try:
        manifest = None
        if args.cache is not None:
            if args.public_key is None:
                raise ConfigError("receipts --cache needs --public-key (the pinned release key)")
            manifest = ReleaseCache(args.cache, load_public_key(args.public_key)).verify_current()
            store.bind_release(manifest)
        runs = summary(store.receipts(), manifest)
        receipts = [vars(r) for r in store.receipts()]
    finally:
        store.close()
    if args.json:
        print(json.dumps({"runs": runs, "receipts": receipts}))
    else:
        print(render(runs, receipts))
    return 0


def render(runs: list[dict[str, Any]], receipts: list[dict[str, Any]]) -> str:
    """The receipts as text for the device's user."""
    if not runs:
        return "This device has not taken part in any training round.\n\n" + EXPLANATION
    lines = []
    for run in runs:
        cap = run["participation_cap"] or "none"
        run_epsilon = run["run_epsilon"] if run["run_epsilon"] is not None else "unknown (no release of it)"
        lines += [
            f"Run {run['run_id']}: your device took part in {run['rounds_taken_part']} rounds (cap: {cap}).",
            f"  run's epsilon: {run_epsilon} at delta {run['delta']:.3g}",
            f"  your own bound for these {run['rounds_taken_part']} rounds: epsilon "
            f"{_number(run['own_participation_epsilon'])} at delta {run['delta']:.3g}",
        ]
        for receipt in (r for r in receipts if r["run_id"] == run["run_id"]):
            release = receipt["release_version"] or "not in an installed release yet"
            lines.append(
                f"  round {receipt['round']}: C {receipt['clip_norm']:g}, "
                f"z {receipt['noise_multiplier']:.4g}, q {receipt['sample_rate']:g}, "
                f"at {receipt['time_utc']}; release {release}"
                + ("; sent masked (secure aggregation)" if receipt.get("secure_aggregation") else "")
            )
    return "\n".join(lines) + "\n\n" + EXPLANATION


def _number(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.3f}"


def bind(data: Path, manifest: dict[str, Any]) -> int:
    """Mark the receipts in the device's data folder that the verified release `manifest` includes
    (`fedhome-client install --data DIR` calls this after installing); returns how many were marked."""
    check_data_folder(data)
    store = ReceiptStore(data)
    try:
        return store.bind_release(manifest)
    finally:
        store.close()
