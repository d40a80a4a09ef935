"""Run ``medseg bench`` over a small matrix of options and collect one JSON file per setting.

    python benchmarks/bench_matrix.py --device cuda      # GPU: 256 px, batch 32
    python benchmarks/bench_matrix.py --device cpu       # CPU: 64 px, batch 8, 1 thread

The JSON files go to ``--out`` (default ``<cache dir>/bench``, outside the repository).

On CUDA the matrix crosses the encoders (ResNet-34, EfficientNet-Lite0) with three trainer settings:
fp32, bf16 autocast + channels-last, and the same with ``torch.compile``. The plain float32 loop is
re-measured in every setting, interleaved with the trainer, so each speed-up compares runs that
shared the machine at the same time. A summary table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from medseg_tutorial.paths import cache_dir
from medseg_tutorial.tools.bench import BenchConfig, run_bench, save_report

SETTINGS = {
    "cuda": [
        {"amp": "off", "channels_last": False, "compile": False},
        {"amp": "bf16", "channels_last": True, "compile": False},
        {"amp": "bf16", "channels_last": True, "compile": True},
    ],
    "cpu": [{"amp": "off", "channels_last": False, "compile": False}],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=cache_dir() / "bench")
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--encoders", nargs="+", default=["resnet34", "efficientnet-lite0"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, help="CPU threads (default: 1 on CPU, torch's default on CUDA)")
    args = parser.parse_args()
    threads = args.threads or (1 if args.device == "cpu" else None)
    summary = []
    for encoder in args.encoders:
        for setting in SETTINGS[args.device]:
            bc = BenchConfig(device=args.device, encoder=encoder, dataset=args.dataset, repeats=args.repeats,
                             steps=args.steps, warmup=5 if setting["compile"] else 3, threads=threads,
                             num_workers=0 if args.device == "cpu" else 4, **setting)
            report = run_bench(bc, progress=lambda line: print(line, file=sys.stderr))
            tag = f"{args.device}_{encoder}_{setting['amp']}{'_cl' if setting['channels_last'] else ''}" \
                  f"{'_compile' if setting['compile'] else ''}"
            save_report(report, args.out / f"{tag}.json")
            r = report["results"]
            summary.append((tag, r["trainer"]["images_per_s"], r["plain"]["images_per_s"],
                            report["speedup_trainer_vs_plain"], r["trainer"]["tflops"],
                            r["trainer"]["fraction_of_peak"], r["loader"]["images_per_s"]))
    print(f"{'setting':<44}{'trainer img/s':>14}{'plain img/s':>12}{'speed-up':>9}{'TFLOP/s':>9}"
          f"{'of peak':>9}{'loader img/s':>13}")
    for tag, ours, plain, speedup, tflops, frac, loader in summary:
        frac_text = f"{frac:.1%}" if frac else "n/a"
        print(f"{tag:<44}{ours:>14.1f}{plain:>12.1f}{speedup:>8.2f}x{tflops:>9.3f}{frac_text:>9}{loader:>13.1f}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
