"""`fedhome-server`: the central service's commands: embed a catalogue, make the signing key, publish and
withdraw signed model releases, publish catalogue deltas (catalogue-add)."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from pathlib import Path

from server.catalogue import catalogue_command
from server.embedding.catalogue_embedding import embed_catalogue
from shared import signing
from shared.config import EncoderConfig, ServiceConfig, ServiceSecrets, with_overrides
from shared.data.loaders import load_dataset
from shared.errors import ConfigError, FedhomeError, SignatureError
from shared.release_index import INDEX_LIFETIME_S
from shared.run_folder import RunFolder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhome-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser(
        "embed", help="embed a catalogue's item texts (only new or changed texts are encoded)"
    )
    embed.add_argument("data", type=Path, help="a data folder/file in any supported format")
    embed.add_argument("--backend", choices=["auto", "torch", "onnx-int8"], default="auto")
    embed.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    embed.add_argument(
        "--cache-dir", type=Path, default=None, help="vector cache (default .cache/fedhome/embeddings)"
    )
    embed.add_argument("--out", type=Path, default=None, help="also write the table as .npy + .json here")
    embed.add_argument("--no-description", action="store_true", help="embed title | category | brand only")
    keygen = sub.add_parser("keygen", help="make the Ed25519 key that signs the privacy ledger")
    keygen.add_argument(
        "--out", type=Path, required=True, help="folder for ledger_signing_key.pem (0600) and .pub.pem"
    )
    release = sub.add_parser("release", help="publish a signed model release from a run folder")
    release.add_argument("run_dir", type=Path, help="a federated run folder")
    release.add_argument("--store", type=Path, required=True, help="the release store folder")
    release.add_argument("--signing-key", type=Path, required=True, help="the server's Ed25519 key (PEM)")
    release.add_argument(
        "--ledger-public-key",
        type=Path,
        default=None,
        help="key the run's ledger is checked with (default: the signing key's public half)",
    )
    release.add_argument(
        "--round", type=int, default=None, help="release a checkpoint instead of the final model"
    )
    serve = sub.add_parser("serve", help="run the model service (FastAPI + uvicorn)")
    serve.add_argument("--store", type=Path, required=True, help="the release store folder")
    serve.add_argument("--run", type=Path, required=True, help="the run whose ledger and report are served")
    serve.add_argument("--public-key", type=Path, required=True, help="the server's public key (PEM)")
    serve.add_argument("--signing-key", default="", help="the server's private key, for admin withdrawals")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--demo-shoppers", default="", help="JSON lines of synthetic shoppers for the /demo page"
    )
    shoppers = sub.add_parser(
        "demo-shoppers", help="write simulated shoppers of a run's synthetic shop for the /demo page"
    )
    shoppers.add_argument("run_dir", type=Path, help="a run folder trained on the synthetic shop")
    shoppers.add_argument("--out", type=Path, required=True, help="the JSON-lines file to write")
    shoppers.add_argument("--n", type=int, default=8, help="how many shoppers")
    catalogue_command.add_parser(sub)
    withdraw = sub.add_parser("withdraw", help="withdraw a release: devices fall back to the previous one")
    withdraw.add_argument("version", type=int)
    withdraw.add_argument("--store", type=Path, required=True)
    withdraw.add_argument("--signing-key", type=Path, required=True)
    withdraw.add_argument("--reason", required=True, help="why (kept in the signed index)")
    refresh = sub.add_parser(
        "refresh-index",
        help="re-sign the release index with a new serial and expiry (devices refuse an expired index); "
        "run it from a timer when the service holds no signing key",
    )
    refresh.add_argument("--store", type=Path, required=True)
    refresh.add_argument("--signing-key", type=Path, required=True)
    refresh.add_argument(
        "--lifetime-s", type=float, default=INDEX_LIFETIME_S, help="seconds until it expires (default a week)"
    )
    return parser


def command_release(args: argparse.Namespace) -> int:
    from server.catalogue.delta_publisher import DeltaStore, load_base
    from server.releases.release_builder import load_run
    from server.releases.release_store import ReleaseStore

    key = signing.load_private_key(args.signing_key)
    ledger_key = (
        signing.load_public_key(args.ledger_public_key) if args.ledger_public_key else key.public_key()
    )
    model, catalogue, source = load_run(args.run_dir, ledger_key, round_number=args.round)
    store = ReleaseStore(args.store)
    version = store.publish(model, catalogue, source, key)
    manifest = store.manifest(version)
    if DeltaStore(store).record():  # items written after earlier releases carry over to this one
        DeltaStore(store).publish(load_base(store, version, args.run_dir, ledger_key), [], key)
    print(
        json.dumps({"version": version, "folder": str(store.folder(version)), "privacy": manifest["privacy"]})
    )
    return 0


def command_serve(args: argparse.Namespace) -> int:
    """Check the run and the key (refusing before anything binds), bind, print where to look, serve."""
    import uvicorn

    from server.api.service import make_app

    config = ServiceConfig(
        release_store=args.store,
        run_dir=args.run,
        public_key=args.public_key,
        signing_key=args.signing_key,
        host=args.host,
        port=args.port,
        demo_shoppers=args.demo_shoppers,
    )
    check_serve_inputs(config)
    secrets = ServiceSecrets.from_environment(config)  # the admin token, read once, here
    app = make_app(config, secrets)
    listener = bind(config.host, config.port)
    print(serve_banner(config.host, config.port), flush=True)
    # log_config None: uvicorn's records go through the handler main() configured, at info level
    uvicorn_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_config=None, log_level="info"
    )
    server = uvicorn.Server(uvicorn_config)
    server.run(sockets=[listener])
    return 0


def check_serve_inputs(config: ServiceConfig) -> None:
    """Refuse to serve a folder that is not a run with a ledger (ConfigError), or with a public key that did
    not sign the run's ledger head or the release store's index (SignatureError); each in one line."""
    from server.ledger import read_entries, signed_bytes
    from server.releases.release_store import ReleaseStore

    folder = RunFolder(config.run_dir)
    if not folder.root.is_dir():
        raise ConfigError(f"--run {folder.root}: no such run folder")
    entries = read_entries(folder.ledger)  # DataError on a damaged ledger
    if not entries:
        raise ConfigError(f"--run {folder.root}: no privacy ledger ({folder.ledger.name}) with entries")
    key = signing.load_public_key(config.public_key)  # ConfigError missing, SignatureError malformed
    given = f"--public-key {config.public_key} (key id {signing.key_id(key)})"
    head = entries[-1]
    try:
        signing.verify(key, signed_bytes(head), str(head.get("signature", "")))
    except SignatureError as exc:
        raise SignatureError(
            f"{given} did not sign the run's ledger (its last entry names key id {head.get('key_id')}); "
            f"use the run's {folder.public_key.name}"
        ) from exc
    try:
        ReleaseStore(config.release_store).index(key)
    except SignatureError as exc:
        raise SignatureError(
            f"{given} does not verify the release index of {config.release_store}: {exc}"
        ) from exc


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (ConfigError when it cannot listen there, e.g. the port is taken)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve_banner(host: str, port: int) -> str:
    """Where the service answers, and the pages a person opens first."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # all interfaces
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"  # an IPv6 address in brackets
    return (
        f"fedhome-server: serving on {url}\n"
        f"  demo:      {url}/demo\n"
        f"  dashboard: {url}/dashboard\n"
        f"  API docs:  {url}/docs"
    )


def command_demo_shoppers(args: argparse.Namespace) -> int:
    from server.api.demo_shoppers import synthetic_shoppers, write_demo_shoppers

    shoppers = synthetic_shoppers(args.run_dir, n=args.n)
    write_demo_shoppers(shoppers, args.out)
    print(json.dumps({"shoppers": len(shoppers), "out": str(args.out)}))
    return 0


def command_withdraw(args: argparse.Namespace) -> int:
    from server.releases.release_store import ReleaseStore

    store = ReleaseStore(args.store)
    store.withdraw(args.version, reason=args.reason, key=signing.load_private_key(args.signing_key))
    print(json.dumps({"withdrawn": args.version, "latest": store.latest()}))
    return 0


def command_refresh_index(args: argparse.Namespace) -> int:
    from server.releases.release_store import ReleaseStore

    store = ReleaseStore(args.store, index_lifetime_s=args.lifetime_s)
    index = store.refresh_index(signing.load_private_key(args.signing_key))
    summary = {"serial": index["serial"], "expires_utc": index["expires_utc"], "latest": store.latest()}
    print(json.dumps(summary))
    return 0


def command_embed(args: argparse.Namespace) -> int:
    overrides = {"backend": args.backend, "device": args.device, "with_description": not args.no_description}
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    config: EncoderConfig = with_overrides(EncoderConfig(), overrides)
    dataset, _ = load_dataset(args.data)
    start = time.perf_counter()
    table = embed_catalogue(dataset.catalogue, config, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    summary = {
        "items": table.n_items,
        "dim": table.dim,
        "encoder": table.encoder_id,
        "backend": table.backend,
        "version": table.version,
        "seconds": round(seconds, 2),
    }
    if args.out is not None:
        import numpy as np

        args.out.mkdir(parents=True, exist_ok=True)
        np.save(args.out / f"embeddings-{table.version}.npy", table.vectors)
        meta = {**summary, "item_ids": table.item_ids}
        (args.out / f"embeddings-{table.version}.json").write_text(json.dumps(meta) + "\n")
    print(json.dumps(summary))
    return 0


def command_keygen(args: argparse.Namespace) -> int:
    """Write a new signing key pair; print only the public key's id (never the private key)."""
    args.out.mkdir(parents=True, exist_ok=True)
    private_path = args.out / "ledger_signing_key.pem"
    public_path = args.out / "ledger_signing_key.pub.pem"
    if public_path.exists():
        raise ConfigError(f"{public_path} already exists; refusing to overwrite a key file")
    key = signing.generate_private_key()
    signing.save_private_key(key, private_path)
    signing.save_public_key(key.public_key(), public_path)
    print(json.dumps({"key_id": signing.key_id(key.public_key())}))
    return 0


COMMANDS = {
    "embed": command_embed,
    "keygen": command_keygen,
    "release": command_release,
    "withdraw": command_withdraw,
    "refresh-index": command_refresh_index,
    "catalogue-add": catalogue_command.command_catalogue_add,
    "serve": command_serve,
    "demo-shoppers": command_demo_shoppers,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting RDP order warnings: noise here
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin INFO lines when Flower imports it
    try:
        return COMMANDS[args.command](args)
    except FedhomeError as exc:
        print(f"fedhome-server: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
