"""The quality benchmark: every model on every shop, one run after another, into docs/results/quality.json.

For each set: popularity, text similarity and the centralised two-tower (`fedhome-sim run`), federated
training at epsilon 8 and without noise (clipping only, same rounds), and on the sweep sets (default
amazon_beauty; `--sweep-sets` a comma list) also epsilon 4, 2 and 1 (`fedhome-sim federated`), each model
from every seed given. Each run is the real command in a subprocess, written to `<out>/<set>/<run>/`; a run
whose folder already holds its results is read, not run again, so an interrupted benchmark continues where
it stopped. It prints a
line per run (what, seed, wall time, test NDCG@10) and writes:

- `quality.json`: one object per set, `{"dataset", "popularity", "text", "central", "federated": {"8", "4",
  "2", "1", "none"}}` with the mean test NDCG@10 over the seeds, and under "runs" every seed's figure;
- a privacy-utility PNG per set (`quality-<set>.png`) beside it.

    python -m simulation.benchmarks.bench_quality --data-root ../shared/data --seeds 0,1

Sets missing from the data root are said and skipped (the benchmark data is never part of the repository).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulation.privacy_utility import RunPoint, plot, read_run

DEFAULT_SETS = ("amazon_beauty", "amazon_scientific", "amazon_health", "amazon_clothing", "synthetic")
HEADLINE_EPSILONS = ("8",)
SWEEP_EPSILONS = ("8", "4", "2", "1")
CENTRAL_MODELS = ("popularity", "text", "two-tower")


@dataclass(frozen=True)
class Job:
    """One command of the benchmark and the folder it writes."""

    dataset: str  # the set's name (folder name, or "synthetic")
    kind: str  # "central" or the federated key: "8", "4", "2", "1", "none"
    seed: int
    folder: Path
    command: tuple[str, ...]

    @property
    def done(self) -> bool:
        marker = "metrics.json" if self.kind == "central" else "results.json"
        return (self.folder / marker).is_file()


def dataset_argument(data_root: Path, name: str) -> str | None:
    """What `--dataset` gets for set `name`, or None when its folder is not there."""
    if name == "synthetic":
        return "synthetic"
    folder = data_root / name
    return str(folder) if folder.is_dir() else None


def jobs_for(
    name: str, dataset: str, *, out: Path, seeds: Sequence[int], epsilons: Sequence[str], extra: Sequence[str]
) -> list[Job]:
    """The runs of one set: the central models, then each epsilon and clipping only, for every seed."""
    common = ("--dataset", dataset, "--no-progress", "--set", "data.cold_item_fraction=0", *extra)
    jobs = []
    for seed in seeds:
        folder = out / name / f"central-seed{seed}"
        command = (
            "fedhome-sim", "run", *common, "--model", ",".join(CENTRAL_MODELS),
            "--set", f"train.seed={seed}", "--out", str(folder),
        )  # fmt: skip
        jobs.append(Job(name, "central", seed, folder, command))
    for kind in (*epsilons, "none"):
        for seed in seeds:
            folder = out / name / f"federated-{kind}-seed{seed}"
            privacy = ("--mode", "none") if kind == "none" else ("--epsilon", kind)
            command = (
                "fedhome-sim", "federated", *common, *privacy, "--set", f"federated.seed={seed}",
                "--set", f"privacy.seed={seed}", "--out", str(folder),
            )  # fmt: skip
            jobs.append(Job(name, kind, seed, folder, command))
    return jobs


def run_job(job: Job) -> float:
    """Run `job` (unless its results are there); returns the wall seconds it took (0 when skipped)."""
    if job.done:
        return 0.0
    job.folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (job.folder.parent / f"{job.folder.name}.log").open("w") as log:
        code = subprocess.run(job.command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{shlex.join(job.command)} failed with exit code {code} (log: {log.name})")
    return time.perf_counter() - start


def central_figures(folder: Path) -> dict[str, float]:
    """Test NDCG@10 of each model of a `fedhome-sim run` folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return {name: float(m["test"]["overall"]["ndcg_10"]) for name, m in metrics["models"].items()}


def set_summary(name: str, jobs: Sequence[Job]) -> dict[str, Any]:
    """The set's quality.json object: means over seeds, every seed's figure under "runs"."""
    runs: dict[str, dict[str, float]] = {}
    for job in jobs:
        if not job.done:
            continue
        seed = f"seed{job.seed}"
        if job.kind == "central":
            figures = central_figures(job.folder)
            for model, key in (("popularity", "popularity"), ("text", "text"), ("two-tower", "central")):
                runs.setdefault(key, {})[seed] = figures[model]
        else:
            runs.setdefault(f"federated_{job.kind}", {})[seed] = read_run(job.folder).test_ndcg_10
    mean = {key: round(sum(v.values()) / len(v), 5) for key, v in runs.items()}
    federated = {k.removeprefix("federated_"): v for k, v in mean.items() if k.startswith("federated_")}
    summary: dict[str, Any] = {
        "dataset": name,
        "popularity": mean.get("popularity"),
        "text": mean.get("text"),
        "central": mean.get("central"),
        "federated": federated,
        "runs": runs,
    }
    text, central, eps8 = summary["text"], summary["central"], federated.get("8")
    if text and central and eps8 is not None and central != text:
        summary["eps8_share_of_central_gain"] = round((eps8 - text) / (central - text), 3)
    return summary


def plot_set(summary: dict[str, Any], jobs: Sequence[Job], out: Path) -> None:
    """The set's privacy-utility PNG: each federated run against its epsilon, the references as lines."""
    points: list[RunPoint] = [read_run(j.folder) for j in jobs if j.kind != "central" and j.done]
    labels = (
        ("central", "centralised two-tower"),
        ("text", "text similarity (the start)"),
        ("popularity", "popularity"),
    )
    references = {label: summary[key] for key, label in labels if summary.get(key) is not None}
    plot(points, references, out, title=f"{summary['dataset']}: privacy vs utility")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS), help="comma list of set names")
    parser.add_argument(
        "--sweep-sets",
        "--sweep-set",
        default="amazon_beauty",
        help="comma list of the sets that get every epsilon",
    )
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="where the runs go")
    parser.add_argument("--json", type=Path, default=Path("docs/results/quality.json"))
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", help="passed to every run"
    )
    parser.add_argument(
        "--kinds",
        default="",
        help="run only these kinds (comma list of central, 8, 4, 2, 1, none); all by default",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--no-run", action="store_true", help="run nothing: write quality.json from the runs already there"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = [item for pair in args.extra for item in ("--set", pair)]
    plan: dict[str, list[Job]] = {}
    for name in [s for s in args.sets.split(",") if s]:
        dataset = dataset_argument(args.data_root, name)
        if dataset is None:
            print(f"{name}: not in {args.data_root}, skipped", flush=True)
            continue
        epsilons = SWEEP_EPSILONS if name in args.sweep_sets.split(",") else HEADLINE_EPSILONS
        plan[name] = jobs_for(name, dataset, out=args.out, seeds=seeds, epsilons=epsilons, extra=extra)
    kinds = {k for k in args.kinds.split(",") if k}
    todo = [job for jobs in plan.values() for job in jobs if not kinds or job.kind in kinds]
    if args.dry_run:
        for job in todo:
            print(("done  " if job.done else "to run ") + shlex.join(job.command))
        return 0
    start = time.perf_counter()
    if args.no_run:
        todo = [job for job in todo if job.done]
    for index, job in enumerate(todo, 1):
        seconds = run_job(job)
        if job.kind == "central":
            figure = central_figures(job.folder)["two-tower"]
        else:
            figure = read_run(job.folder).test_ndcg_10
        state = "already there" if seconds == 0 else f"{seconds:.0f} s"
        what = f"[{index}/{len(todo)}] {job.dataset} {job.kind} seed {job.seed}"
        print(f"{what}: test NDCG@10 {figure:.4f} ({state})", flush=True)
    summaries = [set_summary(name, jobs) for name, jobs in plan.items() if any(job.done for job in jobs)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summaries, indent=1) + "\n")
    for summary in summaries:
        plot_set(summary, plan[summary["dataset"]], args.json.parent / f"quality-{summary['dataset']}.png")
    print(f"wrote {args.json} ({len(summaries)} sets) in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
