"""`fedhome-audit`: the privacy auditor's commands.

- `verify RUN_DIR --public-key KEY.pem` checks a ledger;
- `report RUN_DIR --public-key KEY.pem --out DIR` writes report.html and report.json: the guarantee in
  words, the verification of every entry, the mismatches between what ran and what the accountants assume,
  what the guarantee does not cover, plots, and the run's canary audit if it has one.

Exit status: 0 when every check passes, 1 when any check fails (tampering, a mismatch, a damaged ledger, a
public key that signed none of the entries: `verify` then prints that in one line), 2 on a usage error or a
missing/unreadable ledger or key file. `report` writes its files in both cases.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from server.audit.verify import LedgerVerification, verify_ledger
from shared.errors import FedhomeError
from shared.signing import load_public_key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhome-audit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify",
        help="verify a run's privacy ledger: signatures, hash chain, rounds, noise, recomputed epsilon",
    )
    verify.add_argument("run_dir", type=Path, help="the run folder holding ledger.jsonl (or the ledger file)")
    verify.add_argument(
        "--public-key", type=Path, required=True, help="the ledger's Ed25519 public key (PEM)"
    )
    verify.add_argument(
        "--expect-head",
        default=None,
        help="the ledger head hash pinned by a release (catches cut-off entries; without it a ledger cut "
        "off at the end still verifies, and the output says so)",
    )
    verify.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    report = sub.add_parser("report", help="write the privacy report of a run as HTML and JSON")
    report.add_argument("run_dir", type=Path, help="the run folder holding ledger.jsonl")
    report.add_argument("--public-key", type=Path, required=True, help="the ledger's Ed25519 public key")
    report.add_argument("--out", type=Path, required=True, help="folder for report.html and report.json")
    report.add_argument("--expect-head", default=None, help="the ledger head hash pinned by a release")
    report.add_argument(
        "--release", type=Path, default=None, help="a release folder to check against the ledger"
    )
    return parser


def command_verify(args: argparse.Namespace) -> int:
    public_key = load_public_key(args.public_key)
    report = verify_ledger(args.run_dir, public_key, expected_head=args.expect_head)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.key_mismatch:  # every entry would fail twice over the same fact: say it once
        print(f"FAILED: {wrong_key_line(report, args.public_key)}")
    else:
        print(summary(report))
    return 0 if report.ok else 1


def command_report(args: argparse.Namespace) -> int:
    from server.audit.audit_report import build_report
    from server.audit.report_html import render_html

    public_key = load_public_key(args.public_key)
    report = build_report(args.run_dir, public_key, expected_head=args.expect_head, release=args.release)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.html").write_text(render_html(report))
    verification = report["verification"]
    ok = verification["ok"] and not report["mismatches"] and report["release"].get("ok", True)
    print(f"{'VERIFIED' if ok else 'FAILED'}: {verification['entries']} ledger entries, "
          f"{len(verification['problems'])} problem(s), {len(report['mismatches'])} mismatch(es); "
          f"report written to {args.out / 'report.html'} and report.json")  # fmt: skip
    return 0 if ok else 1


def summary(report: LedgerVerification) -> str:
    """A short human-readable account of a verification."""
    lines = [
        f"ledger: {report.entries} entries, key {report.key_id}, head {report.head_hash}",
        f"user epsilon at delta={report.delta}: claimed {_eps(report.claimed_epsilon)} (PLD); "
        f"recomputed {_eps(report.recomputed_epsilon)} (PLD), {_eps(report.recomputed_rdp_epsilon)} (RDP)",
    ]
    if report.target_epsilon is not None:
        lines.append(
            f"recorded budget: epsilon {report.target_epsilon:g} for the whole run, planned over "
            f"{report.planned_rounds} round(s); every entry's recomputed epsilon checked against it"
        )
    if report.trending:
        after = ", ".join(str(row["after_round"]) for row in report.trending)
        lines.append(f"trending releases: {len(report.trending)} (after rounds {after}), accounted above")
    for row in report.cohort_dispersion:
        lines.append(
            f"realised cohorts at q={row['sample_rate']:g}, N={row['population']}: {row['rounds']} round(s), "
            f"mean {row['mean_cohort']:.4g} (q*N {row['expected_cohort']:.4g}), dispersion {row['verdict']}"
        )
    if report.local_dp is not None:
        lines.append(report.local_dp["statement"])
    if report.ok:
        lines.append(
            "OK: every signature, link, round and epsilon checks out"
            + (" (notes below)" if report.notes else "")
        )
    else:
        lines.append(f"FAILED: {len(report.problems)} problem(s)")
        lines.extend(f"  - {problem}" for problem in report.problems)
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def wrong_key_line(report: LedgerVerification, key_path: Path) -> str:
    """One line for a ledger the given key signed none of (`report.key_mismatch`): the key file and its id,
    the key id(s) the entries name."""
    named = ", ".join(report.ledger_key_ids)
    return (
        f"the public key {key_path} (key id {report.key_id}) does not match the ledger's signatures (its "
        f"entries name key id {named}): none of its {report.entries} entries verifies with it; is it the "
        "run's ledger_public_key.pem?"
    )


def _eps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting RDP order warnings: noise here
    try:
        return command_report(args) if args.command == "report" else command_verify(args)
    except FedhomeError as exc:
        print(f"fedhome-audit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
