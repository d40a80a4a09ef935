"""The GPU campaign in one command: every experiment's ``gpu`` preset, the GPU tests and the benchmark.

On one GPU (an H100/H200 with 16 CPU cores) the experiments run side by side, one process each,
sharing the device; each writes its table under ``book/results/gpu/`` and everything goes to
``book/results/gpu/campaign.log``. A wall-clock budget (default 9 minutes) bounds the whole
campaign: what is not finished by then is resumed by the next call (the runner is resumable).

    python -m medseg_tutorial.tools.gpu_campaign            # on the GPU machine
    python -m medseg_tutorial.tools.gpu_campaign --dry-run  # anywhere: validates every GPU config (CI runs it)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from ..experiment import list_experiments, load_experiment, run_experiment
from ..paths import REPO

__all__ = ["campaign"]


def _commands(budget_s: int, experiments: list[str]) -> list[tuple[str, list[str]]]:
    py = sys.executable
    per_run = max(60, budget_s - 30)
    runs = []
    for name in experiments:
        cmd = [py, "-m", "medseg_tutorial.cli", "experiment", name, "--preset", "gpu", "--threads", "2",
               "--no-progress", "--rerun-stale"]
        if load_experiment(name, "gpu").tune:  # a second pass runs the seeds that waited for the tuning seed
            cmd = ["sh", "-c", f"{shlex.join(cmd)} && {shlex.join(cmd)}"]
        runs.append((name, ["timeout", str(per_run), *cmd]))
    runs.append(("gpu-tests", ["timeout", str(per_run), py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               str(REPO / "tests")]))
    runs.append(("bench", ["timeout", str(per_run), py, "-m", "medseg_tutorial.cli", "bench", "--device", "cuda",
                           "--json", str(REPO / "book" / "results" / "gpu" / "bench.json")]))
    return runs


def campaign(budget_s: int = 540, dry_run: bool = False, experiments: list[str] | None = None,
             say=print) -> int:
    """Run (or, with ``dry_run``, validate and list) the campaign; returns the number of failed parts."""
    experiments = experiments or list_experiments()
    if dry_run:
        for name in experiments:  # every GPU config is valid, every run is listed: nothing trains
            report = run_experiment(name, "gpu", dry_run=True, say=lambda _: None)
            say(f"{name}: {len(report.planned)} runs in the gpu preset, {len(report.skipped)} done -> {report.results}")
        for part, cmd in _commands(budget_s, experiments):
            say(f"would run [{part}]: {' '.join(cmd[3:])}")
        return 0
    out = REPO / "book" / "results" / "gpu"
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "campaign.log"
    started = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n=== campaign started {time.strftime('%Y-%m-%d %H:%M:%S')}, budget {budget_s} s ===\n")
        env = {**os.environ, "OMP_NUM_THREADS": "2", "NO_ALBUMENTATIONS_UPDATE": "1"}
        procs = [(part, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env))
                 for part, cmd in _commands(budget_s, experiments)]
        failed = 0
        for part, proc in procs:
            code = proc.wait()
            failed += code != 0
            line = f"[{part}] exit {code} after {time.monotonic() - started:.0f} s"
            log.write(line + "\n")
            say(line)
    say(f"log: {log_path}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="validate and list, train nothing (CPU is fine)")
    parser.add_argument("--budget", type=int, default=540, help="wall-clock seconds for the whole campaign")
    parser.add_argument("--only", nargs="*", help="experiment names (default: all)")
    args = parser.parse_args(argv)
    return 1 if campaign(args.budget, args.dry_run, args.only) else 0


if __name__ == "__main__":
    sys.exit(main())
