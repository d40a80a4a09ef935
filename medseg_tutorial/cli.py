"""The ``medseg`` command line: one small function per subcommand, registered in ``COMMANDS``.

Heavy imports (torch, smp) happen inside the handlers so that ``medseg --help`` is instant. It is also
what ``torchrun`` runs for multi-GPU training (every process runs the same command; rank 0 prints)::

    torchrun --standalone --nproc_per_node=2 -m medseg_tutorial.cli train --config acdc preset=full
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import MedsegError

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand ``name`` with its argument setup and handler."""

    def deco(handler: Handler) -> Handler:
        COMMANDS[name] = (help, configure, handler)
        return handler

    return deco


# --- medseg data ... ---------------------------------------------------------------------------


def _data_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_cmd", required=True)
    c = sub.add_parser("check", help="scan a dataset folder (or a registered name) and report every problem",
                       description="Read every file once and report every problem. A folder of your own images "
                                   "is read as `medseg train --config folder data.path=DIR` would read it; the "
                                   "options below set what detection would otherwise guess.")
    c.add_argument("target", help="a folder, or a registered dataset name")
    c.add_argument("--root", help="data root of a registered dataset (default: $MEDSEG_DATA_ROOT); not for a folder")
    c.add_argument("--images", help="image folder inside the target (default: images/, Imgs/, ... or the target)")
    c.add_argument("--masks", help="mask folder inside the target; the image folder when masks sit beside the images")
    c.add_argument("--mask-suffix", help="mask name = image name + suffix, e.g. _mask or _Annotation")
    c.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="merge NAME<suffix>_1, _2, ... (one mask file per object) into one label map")
    c.add_argument("--subject", help="grouping rule for the split: stem, folder, or a regex with one (group)")
    c.add_argument("--stack", action="store_true", help="a subject's same-size images are slices of one volume")
    c.add_argument("--spacing-csv", help="CSV of per-image pixel spacing in mm, relative to the target")
    c.add_argument("--spacing-columns", type=lambda text: [c.strip() for c in text.split(",")],
                   help="its file column, then one or two mm columns, comma-separated (default: file,pixel_mm)")
    s = sub.add_parser("summary", help="counts, shapes and class frequencies of a registered dataset")
    s.add_argument("name")
    s.add_argument("--root")
    lst = sub.add_parser("list", help="registered datasets, their licences and whether they are present locally")
    lst.add_argument("--root")
    f = sub.add_parser("fetch", help="download a dataset, or explain how to obtain it")
    f.add_argument("name")
    f.add_argument("--root")
    r = sub.add_parser("prepare", help="prepare (and cache) the training slices of a config, as `medseg train` would",
                       description="Read, normalise and resize the data of a config into the prepared-slice cache "
                                   "and say what was prepared. The cache key covers the importer, its options, the "
                                   "dataset description and every file's size and modification time.")
    r.add_argument("items", nargs="*", metavar="[CONFIG] KEY=VALUE",
                   help="a config and overrides, as for train, e.g. folder data.path=DIR")
    r.add_argument("--config", help="a YAML config or a shipped name such as folder or lgg")
    r.add_argument("--root", help="data root of a registered dataset (data.root); not for the folder dataset")
    r.add_argument("--rebuild", action="store_true", help="prepare afresh even if a cached table matches (data.rebuild)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    e = sub.add_parser("export-nnunet", help="write a dataset as an nnU-Net v2 raw dataset (DatasetXXX_Name)")
    e.add_argument("name", help="a registered dataset")
    e.add_argument("out", type=Path, help="the nnUNet_raw folder")
    e.add_argument("--id", type=int, required=True, dest="dataset_id", help="nnU-Net dataset id, e.g. 504")
    e.add_argument("--dataset-name", help="the Name of DatasetXXX_Name (default: the dataset name)")
    e.add_argument("--split", type=Path,
                   help="a run's split.json: its test patients go to imagesTs/labelsTs, train/val to fold 0 of "
                        "medseg_split.json, so nnU-Net trains and is tested on the same cases")
    e.add_argument("--root", help="data root (default: $MEDSEG_DATA_ROOT)")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in the same folder")


_FOLDER_FLAGS = ("images", "masks", "mask_suffix", "instances", "subject", "spacing_csv", "spacing_columns")


def _folder_options(args: argparse.Namespace) -> Any:
    """The folder options given on the command line, or None when none was."""
    from .data.folder import FolderOptions

    given = {k: getattr(args, k) for k in _FOLDER_FLAGS if getattr(args, k) is not None}
    if args.stack:
        given["stack"] = True
    if not given:
        return None
    if "mask_suffix" in given and "masks" not in given and "images" not in given:
        given["images"] = "."  # a suffix alone: masks beside the images, in the folder itself
    options = FolderOptions(**given)
    options._check()
    return options


def _data_check(args: argparse.Namespace) -> int:
    from .tools.check import check_dataset

    report = check_dataset(args.target, root=args.root, options=_folder_options(args))
    print(report.format())
    return 0 if report.ok else 1


def _config_and_overrides(args: argparse.Namespace, hint: str) -> tuple[str, list[str]]:
    """(the config, its ``key=value`` overrides): ``--config``, or a first item that is no override."""
    items = list(args.items)
    config = args.config or (items.pop(0) if items and "=" not in items[0] else None)
    if config is None:
        raise ValueError(f"no config: {hint}")
    return config, items


def _data_prepare(args: argparse.Namespace) -> int:
    from .config import load_config

    config, items = _config_and_overrides(args, "pass one, e.g. `medseg data prepare folder data.path=DIR` or "
                                                "`medseg data prepare lgg`")
    items += [f"data.root={args.root}"] if args.root else []
    cfg = load_config(config, items)
    cfg.data.rebuild = cfg.data.rebuild or args.rebuild
    show = sys.stderr.isatty() if args.progress is None else args.progress
    table = cfg.data.prepare(progress=show)
    counts, cache = table.meta.get("counts", {}), table.meta.get("cache", {})
    how = "loaded from the cache" if cache.get("loaded_from_cache") else f"prepared in {table.meta['prepare_seconds']:.1f}s"
    print(f"{table.info.name}: {len(table)} slices of {table.images.shape[2]}x{table.images.shape[3]} "
          f"({table.images.shape[1]} channel(s): {', '.join(table.info.channel_names)}), {len(table.patients)} "
          f"patients, {counts.get('cases', '?')} volumes, {counts.get('foreground', '?')} slices with foreground; "
          f"classes {', '.join(table.info.class_names)}; normaliser {table.meta['params']['normalizer']}")
    print(f"source: {table.meta.get('source')}")
    print(f"cache: {cache.get('path')} ({how})")
    return 0


@command("data", "inspect, check, prepare and fetch datasets", _data_args)
def _data(args: argparse.Namespace) -> int:
    from . import data
    from .tools import catalog

    if args.data_cmd == "check":
        return _data_check(args)
    if args.data_cmd == "prepare":
        return _data_prepare(args)
    if args.data_cmd == "summary":
        for key, value in data.summarize_dataset(args.name, root=args.root).items():
            print(f"{key:>16}: {value}")
        return 0
    if args.data_cmd == "list":
        print(catalog.format_dataset_list(args.root))
        return 0
    if args.data_cmd == "fetch":
        print(catalog.fetch_dataset(args.name, root=args.root))
        return 0
    if args.data_cmd == "export-nnunet":
        return _data_export_nnunet(args)
    raise AssertionError(args.data_cmd)


def _data_export_nnunet(args: argparse.Namespace) -> int:
    from .data import dataset_info, iter_cases
    from .data.splits import load_split
    from .tools.nnunet_export import export_nnunet

    split = load_split(args.split) if args.split else None
    folder = export_nnunet(iter_cases(args.name, args.root), dataset_info(args.name), args.out, args.dataset_id,
                           args.dataset_name, split=split, overwrite=args.overwrite)
    copy = (f"; copy {folder / 'medseg_split.json'} to $nnUNet_preprocessed/{folder.name}/splits_final.json"
            if split else "")
    print(f"{folder}: nnU-Net v2 raw dataset. Next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} "
          f"--verify_dataset_integrity{copy}; nnUNetv2_train {args.dataset_id} 2d 0")
    return 0


# --- medseg train / evaluate / predict -------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def _set_threads(threads: int | None) -> None:
    """On a shared CPU, fewer torch threads can be much faster (threads spin-wait for each other)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG] KEY=VALUE",
                   help="overrides such as preset=quick train.epochs=3 (a config path may come first)")
    p.add_argument("--config", help="a YAML config (configs/*.yaml) or a shipped name such as phantom")
    p.add_argument("--run-dir", help="output folder (default: output.run_dir of the config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last.pt")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when the terminal shows them)")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")


@command("train", "train one model from a YAML config", _train_args)
def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .paths import shown
    from .train import train

    config, items = _config_and_overrides(args, "pass --config FILE.yaml (or a shipped name such as phantom)")
    cfg = load_config(config, items)
    _set_threads(args.threads)
    result = train(cfg, args.run_dir, resume=args.resume, progress=args.progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun: one report, from rank 0
    print(f"run {shown(result.run_dir)}: best validation Dice {result.best_score:.4f} at epoch {result.best_epoch}, "
          f"{result.epochs_run} epochs in {result.wall_time:.0f}s; best checkpoint {shown(result.best_checkpoint)}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", type=Path, help="a run folder written by `medseg train` (uses its best.pt)")
    where.add_argument("--checkpoint", type=Path, help="a checkpoint file (best.pt)")
    p.add_argument("--split", default="test", help="train, val, test or all (default: test)")
    p.add_argument("--out", type=Path, help="per-patient CSV (default: <run dir>/eval_<split>.csv)")
    p.add_argument("--overlays", type=int, default=0, metavar="N",
                   help="also save N image | truth | prediction rows as <run dir>/overlays_<split>.png")
    p.add_argument("--grid", choices=("native", "prepared"), default="native",
                   help="native (default): every slice of each volume, scored in its own voxels, 3-D Dice and HD95 "
                        "in mm; prepared: the training slices (quick, not for reporting)")
    p.add_argument("--slice-spacing", type=float, help="with --grid prepared: mm between slices, to compute HD95")
    p.add_argument("--device", default="auto")


@command("evaluate", "score a trained model per patient on a split of its dataset", _evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    checkpoint = args.checkpoint or args.run_dir / "best.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    scores = evaluate(checkpoint, None, args.split, device=args.device, slice_spacing=args.slice_spacing,
                      grid=args.grid)
    summary = scores.attrs["summary"]
    print(f"{checkpoint}: {args.split} split, {scores['patient_id'].nunique()} patients, "
          f"mean foreground Dice {scores.attrs['mean_dice']:.4f} (mean +- std over patients; "
          f"slices: {scores.attrs['eval_slices']}, grid: {scores.attrs['eval_grid']})")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    out = args.out or checkpoint.parent / f"eval_{args.split}.csv"
    write_table(scores, out)
    print(f"per-patient scores: {out}")
    if args.overlays:
        print(f"overlays: {_save_split_overlays(checkpoint, args.split, args.overlays, args.device)}")
    return 0


def write_table(df: Any, out: Path) -> Path:
    """Write a DataFrame as CSV atomically (never a header-only file); names that are not UTF-8
    (file names with undecodable bytes become patient ids) are kept as backslash escapes."""
    from .files import atomic_write

    with atomic_write(out) as f:
        f.write(df.to_csv(index=False).encode("utf-8", "backslashreplace"))
    return out


def _save_split_overlays(checkpoint: Path, split: str, n: int, device: str) -> Path:
    """Image | truth | prediction rows for ``n`` slices of ``split`` (the patients of split.json)."""
    from .data.splits import load_split, patient_split
    from .evaluate import Predictor, save_overlays, stored_config

    predictor = Predictor.load(checkpoint, device)
    dc = stored_config(predictor).data
    table = dc.prepare()
    saved = checkpoint.parent / "split.json"
    subsets = load_split(saved) if saved.is_file() else patient_split(table, dc.fractions, seed=dc.seed)
    rows = table.rows_for(table.patients if split == "all" else getattr(subsets, split))
    preds = predictor.predict_prepared(table.images[rows])
    return save_overlays(table.images[rows], table.masks[rows], preds, checkpoint.parent / f"overlays_{split}.png",
                         n=n, class_names=predictor.class_names, title=f"{table.info.name}, {split} split")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a best.pt written by `medseg train`")
    p.add_argument("input", type=Path, help="a folder of PNG/JPEG/TIFF images, or a NIfTI volume (.nii, .nii.gz)")
    p.add_argument("out", type=Path, help="output folder (images) or file or folder (NIfTI)")
    p.add_argument("--device", default="auto")


@command("predict", "segment new images (a folder) or a NIfTI volume with a trained model", _predict_args)
def _predict(args: argparse.Namespace) -> int:
    from .evaluate import predict_folder, predict_nifti

    if args.input.is_dir():
        written = predict_folder(args.checkpoint, args.input, args.out, device=args.device)
        print(f"wrote {len(written)} label maps to {args.out}")
        return 0
    if args.input.name.endswith((".nii", ".nii.gz")):
        out = args.out
        if out.is_dir() or not out.name.endswith((".nii", ".nii.gz")):  # a folder: name the file after the input
            out = out / args.input.name.replace(".nii", "_seg.nii", 1)
        print(f"wrote {predict_nifti(args.checkpoint, args.input, out, device=args.device)}")
        return 0
    raise FileNotFoundError(f"{args.input} is neither a folder of images nor a NIfTI file (.nii, .nii.gz)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a run's best.pt")
    p.add_argument("out", type=Path, help="an empty folder for the model and its model card")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in the same folder")


@command("export", "export a trained model for segmentation_models_pytorch.from_pretrained, with a model card",
         _export_args)
def _export(args: argparse.Namespace) -> int:
    from .tools.export import export_pretrained

    out = export_pretrained(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"{out}: load it with segmentation_models_pytorch.from_pretrained({str(out)!r}); "
          f"model card {out / 'README.md'}")
    return 0


# --- medseg experiment / bench ---------------------------------------------------------------------


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="an experiment name (configs/experiments/NAME.yaml) or a YAML path")
    p.add_argument("--preset", help="cpu or gpu (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--smoke", action="store_true",
                   help="one combination, two steps on 32 px slices, into a temporary folder (a check that it runs)")
    p.add_argument("--results", type=Path, help="results CSV (default: the preset's, e.g. book/results/cpu/NAME.csv)")
    p.add_argument("--run-root", type=Path, help="folder of the run folders (default: <cache>/experiments/NAME/PRESET)")
    p.add_argument("--dry-run", action="store_true", help="validate every config and list the runs, done or pending")
    p.add_argument("--list", action="store_true", help="list the shipped experiments")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--threads", type=_positive, help="torch CPU threads (on a busy CPU, 1 can be much faster)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="run every N-th grid point starting at K (0-based), e.g. two processes with 0/2 and 1/2")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only grid points with this value, e.g. train.seed=0 (repeatable)")
    p.add_argument("--rerun-stale", action="store_true",
                   help="rows and finished runs from another commit are deleted and run again at this commit")
    p.add_argument("--allow-mixed-commits", action="store_true",
                   help="keep rows from other commits in the table (the commit column says which)")


def _where(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--where {text!r}: expected KEY=VALUE, e.g. train.seed=0")
    return key, yaml.safe_load(value)


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 0/2") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 <= K < N")
    return k, n


@command("experiment", "run a grid of training runs and append one row per run to a results table",
         _experiment_args)
def _experiment(args: argparse.Namespace) -> int:
    from .experiment import list_experiments, run_experiment

    if args.list or not args.name:
        print("\n".join(list_experiments()))
        return 0 if args.list else 2
    _set_threads(args.threads)
    report = run_experiment(args.name, args.preset, smoke=args.smoke, results=args.results, run_root=args.run_root,
                            dry_run=args.dry_run, progress=args.progress, shard=args.shard,
                            where=dict(_where(text) for text in args.where), rerun_stale=args.rerun_stale,
                            allow_mixed_commits=args.allow_mixed_commits)
    print(report.summary())
    for run_id, error in report.failed.items():
        print(f"  failed {run_id}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--encoder", default="efficientnet-lite0", help="e.g. efficientnet-lite0, resnet34")
    p.add_argument("--arch", default="unet")
    p.add_argument("--dataset", default="phantom", help="a registered dataset (default: the offline phantom)")
    p.add_argument("--size", type=int, help="slice side in pixels (default 256 on CUDA, 64 on CPU)")
    p.add_argument("--batch-size", type=int, help="default 32 on CUDA, 8 on CPU")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the trainer's model")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=_positive, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the report as JSON")


@command("bench", "training throughput: our trainer step vs a plain smp + albumentations loop", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from .tools.bench import BenchConfig, format_report, run_bench, save_report

    bc = BenchConfig(device=args.device, encoder=args.encoder, arch=args.arch, dataset=args.dataset, size=args.size,
                     batch_size=args.batch_size, amp=args.amp, channels_last=args.channels_last,
                     compile=args.compile, num_workers=args.num_workers, repeats=args.repeats, steps=args.steps,
                     warmup=args.warmup, threads=args.threads)
    report = run_bench(bc, progress=lambda line: print(line, file=sys.stderr))
    print(format_report(report))
    if args.json:
        print(f"JSON: {save_report(report, args.json)}")
    return 0


# --- medseg course ... -------------------------------------------------------------------------


def _course_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="course_cmd", required=True)
    e = sub.add_parser("export", help="write student (solutions removed) and teacher copies of the chapters")
    e.add_argument("dest", type=Path, help="output folder; student/ and teacher/ are written inside it")
    e.add_argument("--book", type=Path, help="folder of chapter notebooks (default: the repository's book/)")
    e.add_argument("--execute", nargs="?", const="both", choices=("both", "student", "teacher"),
                   help="run the copied notebooks (both copies, or only the student or teacher copy) and "
                        "report failures")
    e.add_argument("--timeout", type=int, default=600, help="seconds per cell with --execute (default 600)")
    e.add_argument("--force", action="store_true", help="replace existing student/ and teacher/ folders")


@command("course", "export the chapter notebooks for teaching a course", _course_args)
def _course(args: argparse.Namespace) -> int:
    from .tools.course import export_course

    result = export_course(
        args.dest, args.book, execute=args.execute or False, timeout=args.timeout, overwrite=args.force
    )
    print(result.summary())
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medseg-tutorial {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, _) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_text))
    return parser


def _one_line(exc: BaseException) -> str:
    """The message of an error a user can fix, as one line (OSError: what failed, on which file)."""
    if isinstance(exc, OSError) and exc.strerror:
        what = {errno.ENOSPC: "no space left writing", errno.EACCES: "permission denied for",
                errno.EROFS: "read-only file system, cannot write", errno.ENOENT: "no such file or folder"}
        name = exc.filename or ""
        return f"{what.get(exc.errno, exc.strerror)} {name}".strip() if name else exc.strerror
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())  # a message of several lines (torch's, numpy's) on one line


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script.

    The one place where errors become messages: a :class:`~medseg_tutorial.errors.MedsegError` (or an
    ``OSError``, or the ``ValueError``/``KeyError`` of a bad argument) prints one line and exits 2;
    anything else is a bug and keeps its traceback.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (``--run-dir X train.epochs=2``) are overrides all the same
        if hasattr(args, "items") and all("=" in e and not e.startswith("-") for e in extra):
            args.items = [*args.items, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command][2](args)
    except (MedsegError, OSError, ValueError, KeyError) as exc:
        print(f"medseg {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
