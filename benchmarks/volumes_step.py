"""Step and validation times of the arms of configs/experiments/volumes.yaml (chapter 10), on one thread.

    python benchmarks/volumes_step.py --steps 5                      # every arm of the cpu preset
    python benchmarks/volumes_step.py --arms 2d,3d-monai --extra data.patch=[48,64,48]

Each arm's first-seed config is built exactly as ``medseg experiment volumes`` builds it; one
optimizer step is the trainer's own (``tools.bench.trainer_step``: its loader, ``TrainStep`` and
scheduler), timed after one warm-up step; the median wall and process CPU time are printed (CPU time
varies less on a shared machine). For 3-D arms the sliding-window prediction of a few validation
volumes is timed too (``train.predict_rows``). These figures are the ``budget:`` of the experiment file.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from medseg_tutorial.builders import build_network
from medseg_tutorial.config import load_config, set_dotted
from medseg_tutorial.experiment import expand_grid, load_experiment
from medseg_tutorial.loaders import build_data
from medseg_tutorial.tools.bench import trainer_step
from medseg_tutorial.train import predict_rows


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--arms", default=None, help="comma-separated arm labels (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm, after one warm-up step")
    parser.add_argument("--volumes", type=int, default=3, help="validation volumes timed per 3-D arm")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every arm, e.g. data.patch=[48,64,48]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    wanted = set(args.arms.split(",")) if args.arms else None
    seen = set()
    for spec in expand_grid(load_experiment("volumes", args.preset)):
        if spec.label in seen or (wanted and spec.label not in wanted):
            continue
        seen.add(spec.label)
        raw = spec.raw
        for override in args.extra:
            key, _, value = override.partition("=")
            set_dotted(raw, key, yaml.safe_load(value))
        set_dotted(raw, "train.device", "cpu")
        set_dotted(raw, "optim.scheduler", "constant")  # trainer_step steps it every batch; plateau wants a score
        set_dotted(raw, "optim.scheduler_params", {})
        cfg = load_config(raw)
        step, _ = trainer_step(cfg, device)
        step()  # warm-up: first-call allocations, MKLDNN kernel choice
        wall, cpu = _timed(step, args.steps)
        line = f"{spec.label:16s} step: {wall:.2f} s wall, {cpu:.2f} s CPU (batch {cfg.train.batch_size})"
        if cfg.model.dims == 3:
            line += _validation(cfg, device, args.volumes)
        print(line, flush=True)


def _validation(cfg, device: torch.device, volumes: int) -> str:
    """Sliding-window prediction time per validation volume, as ``validate`` runs it."""
    data, (model, _) = build_data(cfg), build_network(cfg, device)
    rows = data.val_rows[:volumes]
    wall, cpu = _timed(lambda: predict_rows(model, data.table, rows, cfg, device, None), 1)
    return f"; sliding window: {wall / len(rows):.2f} s wall, {cpu / len(rows):.2f} s CPU per volume"


if __name__ == "__main__":
    main()
