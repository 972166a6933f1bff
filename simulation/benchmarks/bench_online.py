"""The online loop's benchmark: one `fedhome-sim online` run, timed, with how busy the machine was; its
figures are copied into docs/results (online.csv, online.md, online.png, online.json).

    python -m simulation.benchmarks.bench_online                      # 30 days x 3,000 shoppers (defaults)
    python -m simulation.benchmarks.bench_online --days 2 --shoppers 200 --docs ''   # a quick look

Options are `fedhome-sim online`'s (`--set online.*` and any other section's keys). The machine's load
(the 1-minute load average, sampled every 10 s) and this process's CPU seconds are written beside the wall
time: on the shared 2-core machines other people's jobs slow a run down, and the figures say by how much.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shlex
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from simulation.online_loop import run_online, write_outputs
from simulation.sim_cli import build_parser, configure_logging, online_configs

DOCS = Path("docs/results")
OUTPUTS = ("online.csv", "online.md", "online.png", "online.json")
LOAD_EVERY_S = 10.0


class LoadSampler:
    """The 1-minute load average every LOAD_EVERY_S seconds while the benchmark runs (a daemon thread)."""

    def __init__(self) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(LOAD_EVERY_S):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        return {
            "load_1min_mean": sum(self.samples) / len(self.samples),
            "load_1min_max": max(self.samples),
            "load_1min_at_start": self.samples[0],
            "cores": os.cpu_count(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--docs", default=str(DOCS), help="folder the figures are copied to ('' = none)")
    known, rest = parser.parse_known_args(argv)
    args = build_parser().parse_args(["online", *rest])
    configure_logging(verbose=args.verbose)
    logging.getLogger("server.ledger").setLevel(logging.WARNING)  # a line per round: the bar says enough
    online, base = online_configs(args)
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    with LoadSampler() as load:
        result = run_online(online, base, args.out, progress=not args.no_progress and sys.stderr.isatty())
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    extra = {
        "machine": {**load.summary(), "process_cpu_s": cpu_s, "wall_s": result.wall_s},
        "per_day_wall_s": result.wall_s / online.days,
    }
    command = "python -m simulation.benchmarks.bench_online " + " ".join(shlex.quote(a) for a in argv or [])
    table = write_outputs(result, args.out, command=command.strip(), extra=extra)
    if known.docs:
        Path(known.docs).mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            shutil.copyfile(Path(args.out) / name, Path(known.docs) / name)
    print(
        f"\n{table}\n{result.wall_s:.0f} s wall ({result.wall_s / online.days:.1f} s a day), "
        f"{cpu_s:.0f} s CPU; load average {load.summary()['load_1min_mean']:.2f} on {os.cpu_count()} cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
