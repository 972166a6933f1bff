"""What a model update costs a device: the bytes of a first install and of a new model of the same catalogue,
before (every per-item array shipped) and after (derived on the device, shared/derived_items.py), per
catalogue size, and the device's derivation time.

    python -m simulation.benchmarks.bench_release_bytes \\
        --runs runs/quality/amazon_beauty/federated-8-seed0 runs/quality/amazon_beauty/federated-4-seed0 \\
        --items 100000 1000000

--runs: two finished runs on one catalogue (their ledgers verify with the ledger_public_key.pem in each run
folder). Their final models are released by the real builder (ReleaseStore.publish, signed with a throwaway
key), first the one then the other, each served by the real model service on loopback; a device syncs after
each (client/device/sync.py) and its SyncResult gives what it downloaded (HTTP 200) and reused (304). The
"before" figures are the same releases in the format before derivation (the manifest re-signed without the
"derived" block and the inputs it names): a device then downloads every per-item array of each new model.

--items N: catalogue sizes beyond the run's, made as bench_device makes them: the real items first, then
seeded mixtures 0.8 x_i + 0.6 x_k of two real items' text vectors (attributes and metadata those of x_i,
under new ids). No training: the two runs' model files (user tower, item-tower weights, scoring) are reused
as they are, and the builder's derivation (derive_files, the projection from the derived vectors) writes each
release's per-item arrays. The bytes a device downloads are then computed from the two manifests as sync
fetches (every listed file whose sha256 differs from the release it holds, derived files excepted), a rule
the real-service figures at the run's own size check (the two must agree there, or the benchmark stops).

At the run's own size it also prints how close the released vectors (derived from int8 text) are to the
model's own, against text stored as float16 instead (`fidelity`). Per size it prints: the bytes of a first
install and of a new model, before and after; the device's storage after the install (the release folder);
and the device's derivation of one release (a fresh process, one thread: wall seconds, and its resident set
before and at its peak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.device.release_cache import ReleaseCache, derive_copy
from client.device.sync import SyncResult, sync
from shared.derived_items import (
    ATTRIBUTES,
    CATALOGUE_INPUTS,
    CHUNK_ROWS,
    CODE_FILES,
    DERIVED_FILES,
    ITEM_BIAS,
    ITEMS_F32,
    PRIOR,
    TEXT_INT8,
    TEXT_SCALES,
    TOWER_BIAS,
    TOWER_FILES,
    VECTOR_FILES,
    derive_files,
    derived_block,
    derived_names,
)
from shared.item_codes import PROJECTION_FILE, code_dim_for, principal_projection, quantize_rows
from shared.release_manifest import MANIFEST_NAME, file_digest, read_manifest, sign_manifest
from shared.signing import Ed25519PrivateKey, generate_private_key, save_public_key

MIB = 2**20
MODEL_FILES = ("user_tower.onnx", "scoring.json", *TOWER_FILES, TOWER_BIAS)  # copied from the runs' releases
NEW_INPUTS = (*CATALOGUE_INPUTS, PRIOR, *TOWER_FILES, TOWER_BIAS)  # what the format before did not have


def old_format(folder: Path, key: Ed25519PrivateKey) -> None:
    """Turn a release folder into the format before derivation: the derivation's inputs removed, the
    manifest re-signed without them and without its "derived" block (the per-item arrays stay: a device
    downloads each of them)."""
    manifest = read_manifest(folder)
    for name in NEW_INPUTS:
        (folder / name).unlink(missing_ok=True)
    files = {k: v for k, v in manifest["files"].items() if k not in NEW_INPUTS}
    fields = {k: v for k, v in manifest.items() if k not in ("derived", "signature", "format", "key_id")}
    (folder / MANIFEST_NAME).write_text(json.dumps(sign_manifest({**fields, "files": files}, key), indent=2))


def real_syncs(runs: list[Path], work: Path, *, before: bool) -> list[tuple[SyncResult, float]]:
    """Publish each run's final model in turn (the real builder), serve the store on loopback and sync one
    device after each publication: (SyncResult, wall seconds of the sync) per release."""
    from server.releases.release_builder import load_run
    from server.releases.release_store import ReleaseStore
    from shared.config import ServiceConfig
    from shared.signing import load_public_key
    from simulation.local_service import running

    key = generate_private_key()
    save_public_key(key.public_key(), work / "public.pem")
    store = ReleaseStore(work / "store")
    cache = ReleaseCache(work / "device", key.public_key())
    results = []
    for run in runs:
        model, catalogue, source = load_run(run, load_public_key(run / "ledger_public_key.pem"))
        version = store.publish(model, catalogue, source, key)
        del model
        if before:
            old_format(store.folder(version), key)
        config = ServiceConfig(release_store=store.root, run_dir=work, public_key=work / "public.pem")
        with running(config) as url:
            start = time.perf_counter()
            result = sync(cache, url)
            results.append((result, time.perf_counter() - start))
        if result.installed != version:
            raise RuntimeError(f"the device did not install release {version}")
    return results


def fidelity(run: Path, users: int = 300) -> dict[str, Any]:
    """How close the release's vectors and bias, derived from int8 text (and, for comparison, from float16
    text), are to the torch model's own float32 ones: max abs errors, and recall@50 / @10 of the top items
    by score for user-tower vectors of random 20-item histories and for random unit vectors."""
    import torch

    from server.releases.release_builder import load_run, released_prior, tower_weights
    from shared.derived_items import attribute_columns, item_rows
    from shared.model import HistoryBatch
    from shared.signing import load_public_key

    model, _, _ = load_run(run, load_public_key(run / "ledger_public_key.pem"))
    model.eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        vectors, bias = (t.numpy() for t in model.items())
        temperature = float(model.temperature())
        rows = rng.integers(0, len(vectors), size=(users, 20))
        ones, zeros = np.ones((users, 20), np.int64), np.zeros(users, np.int64)
        tower = model.user_vectors(HistoryBatch(rows, ones, ones, zeros, zeros)).numpy()
    unit = rng.normal(size=(users, vectors.shape[1])).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    text, columns = model.items.text.numpy(), attribute_columns(model.items.attributes.numpy())
    q, scales = quantize_rows(text)
    variants = {"int8": q.astype(np.float32) * scales[:, None], "float16": text.astype(np.float16)}
    exact = {name: temperature * u @ vectors.T + bias for name, u in (("tower", tower), ("unit", unit))}
    out: dict[str, Any] = {}
    for name, approx in variants.items():
        derived, derived_bias = item_rows(
            approx.astype(np.float32), columns, tower_weights(model), released_prior(model)
        )
        out[f"{name}_text_max_abs_error_vectors"] = float(np.abs(derived - vectors).max())
        out[f"{name}_text_max_abs_error_bias"] = float(np.abs(derived_bias - bias).max())
        for who, u in (("tower", tower), ("unit", unit)):
            scores = temperature * u @ derived.T + derived_bias
            for k in (50, 10):
                out[f"{name}_text_recall_at_{k}_{who}_users"] = round(overlap(exact[who], scores, k), 4)
    return out


def overlap(exact: np.ndarray, approx: np.ndarray, k: int) -> float:
    """Mean |top-k of approx & top-k of exact| / k over the rows (users)."""
    a, b = (np.argpartition(-x, k, axis=1)[:, :k] for x in (exact, approx))
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def fetched_bytes(manifest: dict[str, Any], held: dict[str, Any] | None, manifest_bytes: int) -> int:
    """What sync downloads of the release `manifest` for a device holding the release `held` (None: none):
    the manifest, and every listed file it does not derive whose sha256 differs from the held file's."""
    derived = derived_names(manifest)
    old = {} if held is None else held["files"]
    return manifest_bytes + sum(
        int(listed["bytes"])
        for name, listed in manifest["files"].items()
        if name not in derived and old.get(name, {}).get("sha256") != listed["sha256"]
    )


def signed_bytes(manifest: dict[str, Any], key: Ed25519PrivateKey) -> int:
    """The size of `manifest` as a release store writes it, signed (indent 2)."""
    return len(json.dumps(sign_manifest(manifest, key), indent=2).encode())


# --- the synthetic catalogue sizes -------------------------------------------------------------------------


def mixtures(n0: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, k) for rows lo..hi: row r < n0 is item r itself (k = -1); beyond, seeded distinct pairs."""
    rows = np.arange(lo, hi)
    rng = np.random.default_rng(lo)
    i = np.where(rows < n0, rows, rng.integers(0, n0, size=len(rows)))
    k = np.where(rows < n0, -1, (i + rng.integers(1, n0, size=len(rows))) % n0)
    return i, k


def write_catalogue(release: Path, folder: Path, n: int) -> None:
    """The catalogue-only files of an n-item catalogue grown from the real release `release`: text int8 and
    scales (mixtures of real text vectors), attribute columns and items.json (those of the first item)."""
    folder.mkdir(parents=True)
    text_q, text_s = np.load(release / TEXT_INT8, mmap_mode="r"), np.load(release / TEXT_SCALES)
    columns = np.load(release / ATTRIBUTES)
    n0, dim = text_q.shape
    q = np.lib.format.open_memmap(folder / TEXT_INT8, "w+", np.int8, (n, dim))
    scales = np.lib.format.open_memmap(folder / TEXT_SCALES, "w+", np.float32, (n,))
    cols = np.lib.format.open_memmap(folder / ATTRIBUTES, "w+", columns.dtype, (n, columns.shape[1]))
    items = json.loads((release / "items.json").read_text())
    with (folder / "items.json").open("w", encoding="utf-8") as out:
        out.write("[")
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, n)
            i, k = mixtures(n0, lo, hi)
            text = np.asarray(text_q[i], dtype=np.float32) * text_s[i, None]
            mixed = k >= 0
            text[mixed] = (
                0.8 * text[mixed] + 0.6 * np.asarray(text_q[k[mixed]], np.float32) * text_s[k[mixed], None]
            )
            q[lo:hi], scales[lo:hi] = quantize_rows(text)
            cols[lo:hi] = columns[i]
            records = [
                items[a] if b < 0 else {**items[a], "id": f"{items[a]['id']}~{r}"}
                for r, a, b in zip(range(lo, hi), i, k, strict=True)
            ]
            out.write(("," if lo else "") + ",".join(json.dumps(r, ensure_ascii=False) for r in records))
        out.write("]")
    for array in (q, scales, cols):
        array.flush()


def server_release(
    catalogue: Path, model_release: Path, folder: Path, key: Ed25519PrivateKey
) -> dict[str, Any]:
    """A release of `catalogue` (its files hard-linked) with the model files of the real release
    `model_release`, its per-item arrays written by the builder's derivation; returns its signed manifest
    (also written to the folder)."""
    folder.mkdir(parents=True)
    for path in catalogue.iterdir():
        os.link(path, folder / path.name)
    for name in MODEL_FILES:
        shutil.copyfile(model_release / name, folder / name)
    derive_files(folder, (*VECTOR_FILES, ITEM_BIAS))  # as the builder does (release_builder.py)
    derived = np.load(folder / ITEMS_F32, mmap_mode="r")
    chunks = (derived[lo : lo + CHUNK_ROWS] for lo in range(0, len(derived), CHUNK_ROWS))
    np.save(folder / PROJECTION_FILE, principal_projection(chunks, code_dim_for(*derived.shape)))
    del derived
    derive_files(folder, CODE_FILES)
    names = sorted(p.name for p in folder.iterdir())
    real = read_manifest(model_release)  # its provenance and privacy fields, as a real manifest has them
    fields = {k: v for k, v in real.items() if k not in ("files", "derived", "signature", "format", "key_id")}
    files = {name: file_digest(folder / name) for name in names}
    manifest = sign_manifest({**fields, "files": files, "derived": derived_block(names)}, key)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest


def without_derivation(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest the format before derivation would have had: no inputs, no "derived" block."""
    files = {k: v for k, v in manifest["files"].items() if k not in NEW_INPUTS}
    return {k: v for k, v in manifest.items() if k not in ("derived", "signature", "format", "key_id")} | {
        "files": files
    }


def derive_in_fresh_process(release: Path, work: Path, *, requests: bool = False) -> dict[str, Any]:
    """A device's derivation of `release` (its downloaded files hard-linked into a new folder) in a fresh
    Python process on one thread: wall seconds, its resident set before and at its peak, the copy's storage
    (each file's), and with `requests` the request figures on that copy (requests_on)."""
    device = work / "device-copy"
    device.mkdir()
    manifest = read_manifest(release)
    for name in [*manifest["files"], MANIFEST_NAME]:
        if name not in derived_names(manifest):
            os.link(release / name, device / name)
    command = [sys.executable, "-m", "simulation.benchmarks.bench_release_bytes", "--derive", str(device)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=one_thread_env())
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["storage_mib"] = round(sum(p.stat().st_size for p in device.iterdir()) / MIB, 1)
    result["storage_by_file_mib"] = {p.name: round(p.stat().st_size / MIB, 2) for p in device.iterdir()}
    if requests:
        result["requests"] = requests_on(device)
    shutil.rmtree(device)
    return result


def one_thread_env() -> dict[str, str]:
    """This process's environment with the numeric libraries held to one thread (a device's)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def requests_on(device: Path) -> dict[str, Any]:
    """bench_device's request figures on the device's own copy (a fresh process, one thread): p50/p99 of a
    homepage request, the index's resident arrays and recall@50 against exact scoring of the same copy."""
    command = [sys.executable, "-m", "simulation.benchmarks.bench_device", "--release", str(device)]
    command += ["--measure", str(device), "--requests", "300", "--recall-users", "200"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=one_thread_env())
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def derive_here(folder: Path) -> None:
    """The child's work: derive and record the release copy in `folder`; print its wall seconds, the
    process's resident set before (imports done) and its peak after (VmHWM: this process's own, where
    getrusage's ru_maxrss would count the parent's memory at the fork)."""
    before = memory_mib()["VmRSS"]
    start = time.perf_counter()
    derive_copy(folder, read_manifest(folder))
    seconds = time.perf_counter() - start
    peak = memory_mib()["VmHWM"]
    print(json.dumps({"derive_s": round(seconds, 2), "rss_before_mib": before, "peak_rss_mib": peak}))


def memory_mib() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process, MiB (/proc/self/status)."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def size_figures(release_a: Path, release_b: Path, n: int, work: Path) -> dict[str, Any]:
    """Bytes before and after, storage and derivation time for an n-item catalogue (see the docstring)."""
    key = generate_private_key()
    write_catalogue(release_a, work / "catalogue", n)
    first = server_release(work / "catalogue", release_a, work / "a", key)
    for name in DERIVED_FILES:  # only its digests are needed from here on
        (work / "a" / name).unlink()
    second = server_release(work / "catalogue", release_b, work / "b", key)
    derivation = derive_in_fresh_process(work / "b", work, requests=True)
    old_first, old_second = without_derivation(first), without_derivation(second)
    figures = {
        **costs(first, second, signed_bytes(second, key)),
        **costs(old_first, old_second, signed_bytes(old_second, key), prefix="before_"),
        "device_storage_mib": derivation.pop("storage_mib"),
        "device_storage_before_mib": round(
            (signed_bytes(old_second, key) + sum(f["bytes"] for f in old_second["files"].values())) / MIB, 1
        ),
        **derivation,
    }
    shutil.rmtree(work)
    return figures


def costs(
    first: dict[str, Any], second: dict[str, Any], manifest_bytes: int, prefix: str = ""
) -> dict[str, Any]:
    return {
        f"{prefix}first_install_mib": round(fetched_bytes(second, None, manifest_bytes) / MIB, 3),
        f"{prefix}new_model_mib": round(fetched_bytes(second, first, manifest_bytes) / MIB, 3),
    }


# --- the run's own size, over the real service ------------------------------------------------------------


def real_figures(runs: list[Path], work: Path) -> dict[str, Any]:
    """The run's catalogue over the real service, after and before; checks the byte rule against sync."""
    figures: dict[str, Any] = {}
    for before in (False, True):
        prefix = "before_" if before else ""
        folder = work / f"{prefix}real"
        folder.mkdir()
        (install, _), (update, update_s) = real_syncs(runs, folder, before=before)
        release = folder / "device" / "releases" / "000002"
        manifests = [read_manifest(folder / "store" / f"{v:06d}") for v in (1, 2)]
        manifest_bytes = (folder / "store" / "000002" / MANIFEST_NAME).stat().st_size
        if (install.downloaded_bytes, update.downloaded_bytes) != (
            fetched_bytes(manifests[0], None, (folder / "store" / "000001" / MANIFEST_NAME).stat().st_size),
            fetched_bytes(manifests[1], manifests[0], manifest_bytes),
        ):
            raise RuntimeError("the byte rule disagrees with what sync downloaded")
        figures.update(
            {
                f"{prefix}first_install_mib": round(install.downloaded_bytes / MIB, 3),
                f"{prefix}new_model_mib": round(update.downloaded_bytes / MIB, 3),
                f"{prefix}new_model_downloaded": sorted(update.downloaded),
                f"{prefix}new_model_sync_s": round(update_s, 2),
                f"{prefix}device_storage_mib": round(
                    sum(p.stat().st_size for p in release.iterdir()) / MIB, 1
                ),
            }
        )
        if not before:
            figures["new_model_reused"] = sorted(update.reused)
            figures["new_model_derived"] = sorted(update.derived)
            figures.update(derive_in_fresh_process(folder / "store" / "000002", work))
            figures.pop("storage_mib")
            figures.pop("storage_by_file_mib")
            for version in (1, 2):  # the releases the synthetic sizes take their model files from
                shutil.copytree(folder / "store" / f"{version:06d}", work / f"release-{version}")
        shutil.rmtree(folder)
    figures["items"] = len(json.loads((work / "release-2" / "items.json").read_text()))
    figures["fidelity"] = fidelity(runs[1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs=2, help="two finished runs on one catalogue")
    parser.add_argument("--items", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed")
    parser.add_argument("--derive", type=Path, default=None, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    if args.derive is not None:
        derive_here(args.derive)
        return 0
    if args.runs is None:
        parser.error("--runs is required")
    work = Path(tempfile.mkdtemp(prefix="bench-release-bytes-")) if args.work_dir is None else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        results: dict[str, Any] = {"real": real_figures(args.runs, work)}
        print(json.dumps({"real": results["real"]}), flush=True)
        for n in args.items:
            results[f"{n}_items"] = size_figures(
                work / "release-1", work / "release-2", n, work / f"items-{n}"
            )
            print(json.dumps({f"{n}_items": results[f"{n}_items"]}), flush=True)
        print(json.dumps(results, indent=2))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
