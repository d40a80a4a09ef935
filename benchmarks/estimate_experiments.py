"""Estimate the CPU time of the book's experiments from a measured per-image cost.

    python benchmarks/estimate_experiments.py --preset cpu [--threads 1] [--json out.json]

For every run of every experiment in configs/experiments/ the script counts what the run will
process, from the prepared dataset and the split the trainer will use:

    training images  = epochs x min(batches per epoch, max_steps_per_epoch) x batch size
    evaluated images = validations x validation slices + test slices

and multiplies by the CPU seconds per training image and per evaluated image measured here, on
this machine, for the EfficientNet-Lite0 U-Net at each slice size used (median of a few batches,
``time.process_time``: CPU time, so a busy machine inflates it less than wall time). Source runs
(experiment source_transfer) and LR range tests (experiment optimizers) are counted once per run
that needs them, plus a fixed per-run overhead (model build, weights, cached data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch

from medseg_tutorial.config import Config
from medseg_tutorial.data.prepare import prepare_dataset
from medseg_tutorial.data.splits import label_fraction, patient_split
from medseg_tutorial.experiment import (
    check_config,
    expand_grid,
    list_experiments,
    load_experiment,
    source_name,
    source_raw,
)
from medseg_tutorial.losses import build_loss
from medseg_tutorial.models import build_model

OVERHEAD_S = 5.0  # per run: imports are shared, but model build, weights and the cached table are not
_COSTS: dict[tuple, tuple[float, float]] = {}


def per_image_cost(cfg: Config, batch: int = 16, repeats: int = 5) -> tuple[float, float]:
    """(CPU s per training image, CPU s per evaluated image) of cfg's model at cfg's slice size."""
    key = (cfg.model.encoder, cfg.model.arch, cfg.model.in_channels, cfg.model.classes, tuple(cfg.data.size))
    if key in _COSTS:
        return _COSTS[key]
    model = build_model(cfg.model.encoder, None, cfg.model.in_channels, cfg.model.classes, cfg.model.arch)
    loss_fn = build_loss("dice_ce" if cfg.model.classes > 1 else "dice_bce",
                         "multiclass" if cfg.model.classes > 1 else "binary")
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, cfg.model.in_channels, *cfg.data.size)
    y = torch.randint(0, max(2, cfg.model.classes), (batch, *cfg.data.size))
    train, evaluate = [], []
    for _ in range(repeats + 1):
        start = time.process_time()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        train.append(time.process_time() - start)
        with torch.no_grad():
            model.eval()
            start = time.process_time()
            model(x)
            evaluate.append(time.process_time() - start)
            model.train()
    # the first iteration warms up allocators and kernels: leave it out
    _COSTS[key] = (statistics.median(train[1:]) / batch, statistics.median(evaluate[1:]) / batch)
    return _COSTS[key]


def run_cost(cfg: Config) -> dict[str, float]:
    """Training and evaluated images of one run, and its estimated CPU seconds."""
    dc, tc = cfg.data, cfg.train
    table = prepare_dataset(dc.dataset, root=dc.root, size=dc.size, keep_empty=dc.keep_empty, seed=dc.seed,
                            progress=False, **dc.options)
    split = patient_split(table, dc.fractions, seed=dc.seed)
    train_patients = label_fraction(split.train, dc.label_fraction, seed=dc.seed) if dc.label_fraction < 1 \
        else split.train
    n_train, n_val, n_test = (len(table.rows_for(p)) for p in (train_patients, split.val, split.test))
    batches = n_train // tc.batch_size
    steps = tc.epochs * min(batches, tc.max_steps_per_epoch or batches)
    validations = sum(1 for e in range(tc.epochs) if (e + 1) % tc.val_every == 0 or e + 1 == tc.epochs)
    train_images, eval_images = steps * tc.batch_size, validations * n_val + n_test
    t_train, t_eval = per_image_cost(cfg)
    return {"train_images": train_images, "eval_images": eval_images,
            "cpu_s": train_images * t_train + eval_images * t_eval + OVERHEAD_S}


def estimate(name: str, preset: str) -> dict[str, float]:
    """Estimated CPU seconds of every run of experiment ``name``."""
    exp = load_experiment(name, preset)
    total = {"runs": 0, "train_images": 0, "eval_images": 0, "cpu_s": 0.0}
    sources_done = set()
    for spec in expand_grid(exp):
        try:
            cfg = check_config(spec)
        except ValueError as exc:  # e.g. a key the trainer does not have yet: count it as a plain run
            print(f"  {name} {spec.run_id}: {exc}; estimated without that key", file=sys.stderr)
            raw = {k: ({kk: vv for kk, vv in v.items() if kk != "split_mode"} if isinstance(v, dict) else v)
                   for k, v in spec.raw.items()}
            cfg = check_config(type(spec)(spec.run_id, spec.overrides, raw))
        cost = run_cost(cfg)
        source = source_name(spec.raw)
        if source is not None and source not in sources_done:  # trained once, shared by its runs
            sources_done.add(source)
            for key, value in run_cost(Config.from_dict(source_raw(exp, source))).items():
                cost[key] += value
        if spec.raw.get("optim", {}).get("lr") == "find":
            iters = int(exp.lr_finder.get("num_iter", 50))
            cost["cpu_s"] += iters * cfg.train.batch_size * per_image_cost(cfg)[0]
        total["runs"] += 1
        for key in ("train_images", "eval_images", "cpu_s"):
            total[key] += cost[key]
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the measurement (default 1)")
    parser.add_argument("--json", help="write the estimates as JSON")
    parser.add_argument("names", nargs="*", help="experiments (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {name: estimate(name, args.preset) for name in (args.names or list_experiments())}
    print(f"{'experiment':<18}{'runs':>6}{'train img':>12}{'eval img':>12}{'CPU-hours':>11}")
    for name, r in rows.items():
        print(f"{name:<18}{r['runs']:>6}{r['train_images']:>12,}{r['eval_images']:>12,}{r['cpu_s'] / 3600:>11.2f}")
    total = sum(r["cpu_s"] for r in rows.values()) / 3600
    print(f"{'total':<18}{'':>30}{total:>11.2f}")
    print("per-image CPU seconds (train, eval): " + ", ".join(
        f"{k[0]} {k[4][0]}px {k[2]}ch {k[3]}cls: {v[0] * 1000:.1f} / {v[1] * 1000:.1f} ms" for k, v in _COSTS.items()))
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; "
          f"wall time on 2 dedicated cores ~ CPU-hours / 2 when two experiments run side by side "
          f"(OMP_NUM_THREADS=1 each), ~ CPU-hours when one runs at a time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "experiments": rows, "per_image_cpu_s": {
                str(k): v for k, v in _COSTS.items()}, "total_cpu_hours": total}, f, indent=2)
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.exit(main())
