"""The privacy/utility table and plot: test NDCG@10 of federated runs against their user-level epsilon.

Reads the `results.json` that `fedhome-sim federated` writes into each run folder, and draws the federated
runs next to reference lines (the centralised two-tower, text similarity, popularity) given on the command
line, so every figure in the plot comes from a run folder or a measured number stated in the command.

    python -m simulation.privacy_utility runs/fed-eps1 runs/fed-eps2 ... --reference "centralised=0.0540" \
        --out docs/privacy_utility.png
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


@dataclass(frozen=True)
class RunPoint:
    folder: Path
    epsilon: float  # math.inf without noise
    test_ndcg_10: float
    valid_ndcg_10: float
    rounds: int
    noise_multiplier: float | None  # None: z changed during the run (a legacy resumed run; see its summary)
    wall_s: float


def read_run(folder: Path) -> RunPoint:
    results = json.loads((folder / "results.json").read_text())
    summary = results["summary"]
    epsilon = summary["user_epsilon"]
    return RunPoint(
        folder=folder,
        epsilon=math.inf if epsilon == "inf" else float(epsilon),
        test_ndcg_10=float(results["test"]["overall"]["ndcg_10"]),
        valid_ndcg_10=float(results["valid"]["overall"]["ndcg_10"]),
        rounds=int(summary["rounds"]),
        noise_multiplier=None if summary["noise_multiplier"] is None else float(summary["noise_multiplier"]),
        wall_s=float(results["wall_time_s"]),
    )


def markdown(points: list[RunPoint], references: dict[str, float]) -> str:
    lines = [
        "| model | user epsilon | z | rounds | valid NDCG@10 | test NDCG@10 | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p.epsilon):
        eps = "no noise (inf)" if math.isinf(p.epsilon) else f"{p.epsilon:.2f}"
        z = "varied" if p.noise_multiplier is None else f"{p.noise_multiplier:.3f}"
        lines.append(
            f"| federated ({p.folder.name}) | {eps} | {z} | {p.rounds} "
            f"| {p.valid_ndcg_10:.4f} | {p.test_ndcg_10:.4f} | {p.wall_s:.0f} |"
        )
    for name, value in references.items():
        lines.append(f"| {name} | - | - | - | - | {value:.4f} | - |")
    return "\n".join(lines)


def plot(
    points: list[RunPoint],
    references: dict[str, float],
    out: Path,
    *,
    title: str = "amazon_beauty: privacy vs utility",
) -> None:
    finite = sorted((p for p in points if math.isfinite(p.epsilon)), key=lambda p: p.epsilon)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if finite:
        ax.plot(
            [p.epsilon for p in finite],
            [p.test_ndcg_10 for p in finite],
            "o-",
            label="federated, user-level DP",
        )
    for p in points:
        if math.isinf(p.epsilon):
            ax.axhline(
                p.test_ndcg_10, linestyle="--", color="tab:green", label="federated, clipping only (no noise)"
            )
    styles = ((":", "black"), ("-.", "tab:orange"), ((0, (1, 3)), "tab:purple"), ("--", "gray"))
    for (name, value), (style, color) in zip(references.items(), styles, strict=False):
        ax.axhline(value, linestyle=style, color=color, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("user-level epsilon (delta = N^-1.1)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _reference(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="federated run folders (with results.json)")
    parser.add_argument("--reference", type=_reference, action="append", default=[], metavar="NAME=NDCG")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    points = [read_run(folder) for folder in args.runs]
    references = dict(args.reference)
    plot(points, references, args.out)
    print(markdown(points, references))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
