"""Committed results tables: read them, average over seeds, and plot them with error bars.

Long experiments are not re-run by the book build. ``medseg experiment NAME --preset cpu`` runs a
grid of training runs and writes one row per run to ``book/results/cpu/NAME.csv`` (``--preset gpu``:
``book/results/gpu/NAME.csv``), the per-patient test scores beside it (``NAME_patients.csv``), the
per-validation curves (``NAME_curves.csv``) and failed runs (``NAME_failed.csv``); the chapters read
those tables with the functions here, by the name ``cpu/NAME`` or ``gpu/NAME``. A row has
(at least) the columns of ``RUN_COLUMNS``:

``experiment, dataset, strategy, encoder, weights, label_fraction, n_train_patients, seed, loss,
optimizer, split, test_dice, test_dice_<class> ..., val_dice_best, best_epoch, epochs, wall_time_s,
hardware, commit, config``

``test_dice`` is the per-patient mean foreground Dice on the fixed test split; ``weights`` names
the source of the initial encoder weights (``scratch``, ``imagenet``, ``acdc``, ``lgg``, ...).

Typical use::

    df = load_results("cpu/data_efficiency")      # None if the table is not committed yet
    if df is None:
        print(missing_message("cpu/data_efficiency"))
    else:
        agg = aggregate(df, ["strategy", "n_train_patients"])   # mean, std, n over seeds
        plot_data_efficiency(df, hue="strategy")

and, for a single run folder written by the trainer, ``plot_training_curves(run_dir)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .paths import REPO
from .stats import Comparison, hierarchical_bootstrap, holm, multiplicity_note, paired_test

__all__ = [
    "compare_table",
    "comparison_markdown",
    "convergence",
    "directions_agree",
    "diverged",
    "family",
    "holm_mark",
    "load_curves",
    "load_patients",
    "load_results",
    "missing_message",
    "patients_to_match",
    "plot_curves",
    "plot_data_efficiency",
    "plot_grouped_bars",
    "plot_training_curves",
    "run_provenance",
    "select_on_validation",
    "summary_table",
    "verdicts",
]


# The columns every run row carries (per-class ``test_dice_<class>`` columns come on top).
RUN_COLUMNS = (
    "experiment", "dataset", "strategy", "encoder", "weights", "label_fraction", "n_train_patients", "seed",
    "loss", "optimizer", "split", "test_dice", "val_dice_best", "best_epoch", "epochs", "wall_time_s",
    "hardware", "commit", "config",
)
# Preferred plotting order; levels not listed follow in alphabetical order.
STRATEGY_ORDER = ("scratch", "frozen_encoder", "frozen_stages", "gradual_unfreezing", "discriminative_lr",
                  "full_finetune")
WEIGHTS_ORDER = ("scratch", "imagenet")
_ORDERS = {"strategy": STRATEGY_ORDER, "weights": WEIGHTS_ORDER}


# --------------------------------------------------------------------------------------------------
# Finding and reading tables
# --------------------------------------------------------------------------------------------------


def default_results_dir() -> Path:
    """The repository's ``book/results``; outside a clone (a course copy), ``./results``."""
    in_repo = REPO / "book" / "results"
    return in_repo if in_repo.is_dir() else Path.cwd() / "results"


def results_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Path of the table ``name`` (``"data_efficiency"`` or ``"data_efficiency.csv"``).

    Used in chapters 6, 7 and 9.
    """
    folder = default_results_dir() if folder is None else Path(folder)
    return folder / (name if name.endswith(".csv") else f"{name}.csv")


def load_results(
    name: str, folder: str | os.PathLike | None = None, required: Sequence[str] = ("test_dice",)
) -> pd.DataFrame | None:
    """Read a committed results table; ``None`` if it does not exist (or holds no rows).

    A table that exists but lacks a ``required`` column is an error, not a silent ``None``.

    Used in chapters 3-7, 9 and 10.
    """
    return _read_tables(name, folder, required)[0]


def _read_tables(name: str, folder: str | os.PathLike | None, required: Sequence[str]
                 ) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(the results table with ``run_seconds``, its per-epoch curves), each ``None`` where absent or empty."""
    path = results_path(name, folder)
    if not path.is_file():
        return None, None
    df = pd.read_csv(path)
    if df.empty:
        return None, None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(df.columns)}")
    curves_path = path.with_name(f"{path.stem}_curves.csv")
    curves = pd.read_csv(curves_path) if curves_path.is_file() else None
    return _with_run_seconds(df, curves), curves


def _with_run_seconds(df: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``run_seconds``: ``wall_time_s``, or the sum of the run's epoch times where that is larger.

    Before the trainer kept a killed call's time in ``last.pt``, ``run.json`` added up only the calls
    that finished, so a run cut short by the end of a session and resumed records too little; its epochs
    (``time`` in ``NAME_curves.csv``) still say how long they took.
    """
    if "wall_time_s" not in df.columns:
        return df
    summed = df["run_id"].map(epochs.groupby("run_id")["time"].sum()) if epochs is not None and "time" in epochs else None
    df["run_seconds"] = pd.concat([df["wall_time_s"], summed], axis=1).max(axis=1)  # NaN: the other
    return df


def load_curves(name: str, folder: str | os.PathLike | None = None) -> pd.DataFrame | None:
    """Per-epoch curves of table ``name`` (``NAME_curves.csv``) joined with the runs' settings; None if absent.

    Columns: those of the results table (optimizer, seed, strategy, ...) plus ``epoch``, ``step``,
    ``train_loss``, ``lr`` (renamed ``epoch_lr``) and ``val_dice`` (renamed ``epoch_val_dice``).

    Used in chapters 4-6, 9 and 10.
    """
    runs, curves = _read_tables(name, folder, ("test_dice",))
    if runs is None or curves is None or not len(curves):
        return None
    curves = curves.rename(columns={"lr": "epoch_lr", "val_dice": "epoch_val_dice"})
    return curves.merge(runs, on="run_id", how="inner")


def experiment_command(name: str) -> str:
    """The command that regenerates table ``name``: ``cpu/NAME`` (or ``NAME``) is the cpu preset,
    ``gpu/NAME`` the gpu one (``configs/experiments/NAME.yaml`` writes ``book/results/cpu/NAME.csv``
    with ``--preset cpu`` and ``book/results/gpu/NAME.csv`` with ``--preset gpu``).

    Used in chapters 6, 7 and 9.
    """
    preset = "gpu" if Path(name).parent.name == "gpu" else "cpu"
    return f"medseg experiment {Path(name).stem} --preset {preset}"


def missing_message(name: str, folder: str | os.PathLike | None = None) -> str:
    """The note a chapter prints when a committed table is absent: where it should be, how to make it.

    Used in chapters 3-7, 9 and 10.
    """
    command = experiment_command(name)
    path = results_path(name, folder)
    if path.is_relative_to(REPO):  # the published page names the repository's file, not the build machine's path
        path = path.relative_to(REPO)
    return (f"No committed results table {path} yet.\n"
            f"Run `{command}` to produce it (a grid of training runs; see the chapter text for its cost), "
            "then re-execute this chapter.")


# --------------------------------------------------------------------------------------------------
# Aggregating over seeds
# --------------------------------------------------------------------------------------------------


def order_levels(values: Sequence[Any] | pd.Series, column: str | None = None) -> list[Any]:
    """Distinct values in the book's preferred order (scratch first, ...), others sorted after them.

    Used in chapter 7.
    """
    seen = list(dict.fromkeys(pd.Series(values).dropna().tolist()))
    preferred = [v for v in _ORDERS.get(column or "", ()) if v in seen]
    rest = sorted((v for v in seen if v not in preferred), key=lambda v: (not isinstance(v, int | float), v))
    return preferred + rest


# A run whose best validation Dice stays below this never learned to segment the foreground: it
# diverged (or its learning rate was far off) and is reported apart, not averaged in. Decided on
# validation, so the test split never chooses which runs count.
DIVERGED_BELOW = 0.1


def diverged(df: pd.DataFrame, floor: float = DIVERGED_BELOW) -> pd.Series:
    """Which runs diverged: best validation Dice missing, not finite, or below ``floor``.

    Used in chapters 4, 6 and 7.
    """
    score = pd.to_numeric(df["val_dice_best"], errors="coerce") if "val_dice_best" in df else pd.Series(
        np.nan, index=df.index)
    return ~np.isfinite(score) | (score < floor)


def aggregate(
    df: pd.DataFrame, by: Sequence[str], metric: str | Sequence[str] = "test_dice", drop_diverged: bool = True
) -> pd.DataFrame:
    """Mean, standard deviation (over runs, i.e. seeds) and run count of ``metric`` per group.

    One metric gives the columns ``mean, std, n``; several give ``<metric>_mean, <metric>_std``
    and one ``n``. ``std`` is the sample standard deviation (ddof=1), NaN for a single run.
    ``n_train_patients`` (when present and not grouped on) is carried along as its group mean.
    Runs that :func:`diverged` are left out of the statistics (``drop_diverged``) and counted in
    ``n_diverged``, so one run that never learned cannot turn a cell into "0.54 ± 0.45".
    """
    by = list(by)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    missing = [c for c in [*by, *metrics] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table; it has {list(df.columns)}")
    bad = diverged(df) if drop_diverged and "val_dice_best" in df else pd.Series(False, index=df.index)
    # NaN: not counted, the group stays
    kept = df.assign(**{m: df[m].where(~bad) for m in metrics}, _diverged=bad)
    grouped = kept.groupby(by, sort=False, dropna=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [stat if len(metrics) == 1 else f"{m}_{stat}" for m, stat in out.columns]
    out["n"] = grouped[metrics[0]].count()
    out["n_diverged"] = grouped["_diverged"].sum()
    if "n_train_patients" in df.columns and "n_train_patients" not in by:
        out["n_train_patients"] = grouped["n_train_patients"].mean()
    out = out.reset_index()
    for col in by:  # the book's order, not the order rows were written in
        rank = {v: i for i, v in enumerate(order_levels(out[col], col))}
        out["_rank_" + col] = out[col].map(rank)
    out = out.sort_values([f"_rank_{c}" for c in by], kind="stable").drop(columns=[f"_rank_{c}" for c in by])
    return out.reset_index(drop=True)


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def select_on_validation(df: pd.DataFrame, arm: str, choice: str, score: str = "val_dice_best",
                         seed: Any = None) -> pd.DataFrame:
    """The runs of each ``arm`` at the ``choice`` (e.g. the learning rate) with the best mean ``score``.

    The choice is made on validation and never looks at the test columns, so the test scores of the
    selected runs are an honest estimate. With ``seed`` it is made on that seed's runs only (an
    experiment's ``tune: {seed}``: the other seeds ran only at the chosen value) and every seed's run
    at the chosen value is kept; otherwise over the mean of each (arm, choice) cell's seeds. An arm
    with one value has nothing to choose: all its runs are kept. The selected value is in ``choice``
    and ``attrs["selected"]`` maps each arm to it.

    Used in chapter 6.
    """
    tuning = df if seed is None else df[df["seed"] == seed]
    means = tuning.groupby([arm, choice], dropna=False)[score].mean().reset_index()
    best = means.loc[means.groupby(arm, dropna=False)[score].idxmax()]
    selected = dict(zip(best[arm], best[choice]))
    # one value on the tuning runs (a recipe, or a rate each run finds itself, e.g. the LR range test)
    single = {a for a, n in tuning.groupby(arm, dropna=False)[choice].nunique().items() if n <= 1}

    def same(a: Any, b: Any) -> bool:
        return bool(np.isclose(a, b)) if isinstance(a, float | int) and isinstance(b, float | int) else a == b

    out = df[[a in single or (a in selected and same(c, selected[a])) for a, c in zip(df[arm], df[choice])]].copy()
    out.attrs["selected"] = selected
    return out


def run_provenance(df: pd.DataFrame) -> str:
    """One line on where a results table came from: runs, hardware, commits, wall time.

    Used in chapters 3-7, 9 and 10.
    """
    parts = [f"{len(df)} runs"]
    for col, label, width in (("hardware", "hardware", None), ("commit", "commit", 12)):
        if col in df.columns:
            values = [str(v)[:width] for v in df[col].dropna().unique()]
            parts.append(f"{label}: {', '.join(values[:3])}{' ...' if len(values) > 3 else ''}")
    if "wall_time_s" in df.columns:
        t = df.get("run_seconds", df["wall_time_s"]).dropna()
        parts.append(f"wall time {t.sum() / 3600:.2f} h in total, median {t.median():.0f} s per run")
        short = int((t > df["wall_time_s"]).sum())
        if short:  # see _with_run_seconds
            parts.append(f"{short} of them counted by their epoch times (a killed call lost their recorded time)")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# Paired comparisons over seeds and test patients (what every comparison sentence is made from)
# --------------------------------------------------------------------------------------------------


def load_patients(name: str, folder: str | os.PathLike | None = None, drop_diverged: bool = True
                  ) -> pd.DataFrame | None:
    """One row per (run, test patient) of table ``name``: the run's columns, ``dice`` and ``hd95``.

    ``dice`` is the patient's mean over the foreground classes and ``hd95`` the mean of its finite
    per-class HD95 (mm), both from ``NAME_patients.csv``, which the runner writes beside the table.
    Runs that :func:`diverged` are left out (``drop_diverged``) and listed in ``attrs["diverged"]``,
    so they are reported apart instead of averaged in. ``None`` if either table is absent.

    Used in chapters 3-7, 9 and 10.
    """
    runs = load_results(name, folder)
    path = results_path(f"{name.removesuffix('.csv')}_patients", folder)
    if runs is None or not path.is_file():
        return None
    scores = pd.read_csv(path)
    bad = diverged(runs) if drop_diverged else pd.Series(False, index=runs.index)
    per_patient = (scores.assign(hd95=scores["hd95"].where(np.isfinite(scores["hd95"])))
                   .groupby(["run_id", "patient_id"], sort=False)[["dice", "hd95"]].mean().reset_index())
    out = per_patient.merge(runs[~bad].drop(columns=["hd95"], errors="ignore"), on="run_id", how="inner")
    out.attrs["diverged"] = runs.loc[bad, "run_id"].tolist()
    return out if len(out) else None


def _where(df: pd.DataFrame, where: dict[str, Any] | None) -> pd.DataFrame:
    for column, value in (where or {}).items():
        if column not in df.columns:
            raise KeyError(f"column {column!r} not in the table; it has {list(df.columns)}")
        df = df[np.isclose(df[column], value)] if isinstance(value, float) else df[df[column] == value]
    return df


def compare(scores: pd.DataFrame, arm: str, a: Any, b: Any, where: dict[str, Any] | None = None,
            metric: str = "dice", n_boot: int = 10_000, seed: int = 0) -> Comparison:
    """Arm ``a`` minus arm ``b`` on ``metric``, paired over (seed, test patient), with a bootstrap CI.

    ``scores`` is a :func:`load_patients` table; ``where`` keeps the rows of one cell (e.g.
    ``{"label_fraction": 0.25}``). Seeds and patients are both resampled
    (:func:`medseg_tutorial.stats.hierarchical_bootstrap`), so the interval covers a new training
    run as well as new patients. ``Comparison.sentence`` says it in words; ``direction`` is what a
    chapter's hidden check cell asserts.

    Used in chapters 3-7, 9 and 10.
    """
    return hierarchical_bootstrap(_where(scores, where), metric, arm, a, b, unit="patient_id", group="seed",
                                  n_boot=n_boot, seed=seed)


def _cell_label(by: Sequence[str], key: tuple) -> str:
    return ", ".join(f"{c.replace('_', ' ')} {v:g}" if isinstance(v, float | int | np.number) else f"{v}"
                     for c, v in zip(by, key))


def compare_table(scores: pd.DataFrame, arm: str, baseline: Any, by: Sequence[str] = (),
                  metric: str = "dice", names: dict[Any, str] | None = None, n_boot: int = 10_000,
                  alpha: float = 0.05, cell_label: Callable[[tuple], str] | None = None) -> pd.DataFrame:
    """Every other level of ``arm`` against ``baseline``, within each cell of ``by``: one row each.

    Columns: ``by``, ``arm``, ``difference``, ``low``, ``high`` (95% CI of level minus baseline),
    ``direction``, ``p`` (bootstrap), ``p_holm`` (Holm-adjusted over the whole table),
    ``wilcoxon_p`` (on the per-patient differences averaged over seeds), ``seeds``, ``patients``,
    ``note`` (when the CI is likely too narrow), ``sentence`` (prefixed with its cell of ``by``,
    written by ``cell_label(key)`` or as "label fraction 0.25"). ``names`` maps levels to the words
    of the sentences. For HD95 (lower is better) a negative difference favours the level.
    ``attrs["note"]`` is the table's multiplicity note; ``attrs["skipped"]`` lists the levels left
    out because they share fewer than two (seed, patient) pairs with the baseline yet.

    Used in chapters 3-7, 9 and 10.
    """
    names = names or {}
    rows, skipped = [], []
    cells = scores.groupby(list(by), sort=False) if by else [((), scores)]
    for key, cell in cells:
        key = key if isinstance(key, tuple) else (key,)
        where = (cell_label(key) if cell_label else _cell_label(by, key)) if by else ""
        for level in order_levels(cell[arm], arm):
            if level == baseline:
                continue
            pair = cell[cell[arm].isin([level, baseline])]
            means = pair.pivot_table(index=["seed", "patient_id"], columns=arm, values=metric).dropna()
            common = len(means) if level in means and baseline in means else 0
            if common < 2:
                skipped.append(f"{where + ': ' if where else ''}{names.get(level, level)} against "
                               f"{names.get(baseline, baseline)}: {common} common (seed, patient) pairs")
                continue
            c = compare(cell, arm, level, baseline, metric=metric, n_boot=n_boot)
            by_patient = means.groupby(level="patient_id").mean()
            test = paired_test(by_patient[level], by_patient[baseline])
            text = c.sentence(names.get(level, str(level)), names.get(baseline, str(baseline)),
                              metric="HD95 (mm)" if metric == "hd95" else "Dice")
            if text.split(" ", 1)[0].isalpha():  # "the sigmoid head" -> "The sigmoid head", not "Full_finetune"
                text = text[0].upper() + text[1:]
            rows.append({**dict(zip(by, key)), arm: level, "difference": c.difference, "low": c.low,
                         "high": c.high, "direction": c.direction, "p": c.p_value, "wilcoxon_p": test.wilcoxon_p,
                         "seeds": c.n_groups, "patients": c.n_units, "note": c.note,
                         "sentence": f"{where}: {text}" if where else text})
    out = pd.DataFrame(rows, columns=[*by, arm, "difference", "low", "high", "direction", "p", "p_holm",
                                      "wilcoxon_p", "seeds", "patients", "note", "sentence"])
    out.attrs["skipped"] = skipped
    return _adjusted(out, alpha)


def _adjusted(out: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm's correction over every row of ``out`` and the note saying what it asks (no rows: unchanged)."""
    if len(out):
        out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
        out.attrs["note"] = multiplicity_note(len(out), alpha)
    return out


def family(tables: Sequence[pd.DataFrame], alpha: float = 0.05) -> pd.DataFrame:
    """Several :func:`compare_table` results as one family: stacked, Holm's correction over all rows.

    Used in chapters 7 and 9.
    """
    parts = [t for t in tables if len(t)]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=next(
        (t.columns for t in tables if len(t.columns)), []))
    out.attrs["skipped"] = [s for t in tables for s in t.attrs.get("skipped", [])]
    return _adjusted(out, alpha)


def verdicts(table: pd.DataFrame, arm: str, metric: str = "dice") -> dict[str, list[Any]]:
    """The levels of a :func:`compare_table` sorted by what its intervals say about them.

    ``{"better": [...], "undecided": [...], "worse": [...]}`` against the table's baseline, with
    HD95's sign turned (lower is better); ``"held"`` lists the better ones whose Holm-adjusted p is
    below 0.05 too, and ``"not_held"`` the better or worse ones whose Holm-adjusted p is not: their
    interval clears zero, but with the table's other comparisons in mind the difference may be chance.
    With ``by``, a level appears once per cell.

    Used in chapters 3-7, 9 and 10.
    """
    better = -1 if metric == "hd95" else 1
    d = table["direction"] * better if len(table) else pd.Series(dtype=int)
    return {"better": table.loc[d == 1, arm].tolist(), "undecided": table.loc[d == 0, arm].tolist(),
            "worse": table.loc[d == -1, arm].tolist(),
            "held": table.loc[(d == 1) & (table["p_holm"] < 0.05), arm].tolist() if len(table) else [],
            "not_held": table.loc[(d != 0) & ~(table["p_holm"] < 0.05), arm].tolist() if len(table) else []}


def holm_mark(level: Any, verdict: dict[str, list[Any]]) -> str:
    """``" (not after Holm's correction)"`` for a level in ``verdict["not_held"]`` (see :func:`verdicts`), else ``""``:
    the suffix a generated sentence puts after such a level's name.

    Used in chapters 4-7, 9 and 10.
    """
    return " (not after Holm's correction)" if level in verdict["not_held"] else ""


def convergence(runs: pd.DataFrame, cap: int | None = None, patience: int | None = None,
                name: Callable[[Any], str] = lambda r: f"{r.arm}, seed {r.seed}") -> tuple[pd.DataFrame, str]:
    """Did the runs of a results table pass their best validation before they ended?

    Returns ``runs`` with three columns added (``best_before_last``: ``best_epoch``, counted from 0,
    came before the last validation; ``stopped``: ended by the stopping rule; ``at_cap``: ran all
    ``cap`` validations without stopping) and a sentence that counts them and names the runs whose best
    was their very last validation (``name(row)`` says which run it was). ``cap`` defaults to the
    longest run, ``patience`` is the stopping rule's number of validations.

    Used in chapters 5, 7 and 9.
    """
    stopped = runs["stopped_early"].astype(str).str.lower().eq("true")  # bool, or "True"/"False" from a CSV
    cap = cap or (int(runs["epochs"].max()) if len(runs) else 0)
    conv = runs.assign(best_before_last=runs["best_epoch"] + 1 < runs["epochs"], stopped=stopped,
                       at_cap=~stopped & (runs["epochs"] >= cap))
    if conv.empty:
        return conv, "No runs yet."
    n, k, s, c = len(conv), int(conv["best_before_last"].sum()), int(conv["stopped"].sum()), int(conv["at_cap"].sum())
    text = (f"{k} of {n} runs ({k / n:.0%}) had their best validation before their last one, so they had passed "
            f"their best checkpoint when they ended. {s} of {n} ({s / n:.0%}) stopped early, after "
            f"{patience or 'several'} validations without a new best; {c} ran to the cap of {cap} validations "
            "without meeting the stopping rule")
    text += ", so a few more steps might have improved them a little." if c else "."
    last = conv[~conv["best_before_last"]]
    text += (" Best at the very last validation (still improving when the run ended): "
             + "; ".join(name(r) for r in last.itertuples()) + "." if len(last)
             else " No run had its best at its last validation.")
    return conv, text


def directions_agree(table: pd.DataFrame) -> bool:
    """True when every row's ``direction`` is what its interval says: 1 only when the whole 95 % interval
    lies above zero, -1 only when it lies below, 0 when it holds zero (the sentences' "the data do not decide").

    Used in chapters 3-7, 9 and 10 (their hidden checks).
    """
    if table is None or not len(table):
        return True
    d, low, high = table["direction"], table["low"], table["high"]
    return bool((((d == 1) == (low > 0)) & ((d == -1) == (high < 0)) & d.isin([-1, 0, 1])).all())


def comparison_markdown(table: pd.DataFrame, scores: pd.DataFrame | None = None, title: str | None = None) -> str:
    """A :func:`compare_table` as Markdown: an optional bold ``title``, one bullet per sentence (with
    its Holm-adjusted p), the multiplicity note, the levels not comparable yet, and the diverged runs
    of ``scores`` (a :func:`load_patients` table) named apart.

    Used in chapters 3-7, 9 and 10.
    """
    lines = [f"**{title}**", ""] if title else []
    if table.empty:
        lines.append("_No pair of arms shares a seed and test patients yet: nothing to compare._")
    for _, row in table.iterrows():
        caveat = f" _{row['note']}._" if row.get("note") else ""
        lines.append(f"- {row['sentence']} Holm-adjusted p = {row['p_holm']:.2g}.{caveat}")
    if len(table):
        lines += ["", table.attrs.get("note", "")]
    skipped = table.attrs.get("skipped", [])
    if skipped:
        lines += ["", "Not compared yet (fewer than two paired values): " + "; ".join(map(str, skipped)) + "."]
    bad = [] if scores is None else scores.attrs.get("diverged", [])
    if bad:
        lines.append(f"\n{len(bad)} diverged {'run' if len(bad) == 1 else 'runs'} (best validation Dice below "
                     f"{DIVERGED_BELOW}) left out of every comparison: {', '.join(map(str, bad))}.")
    return "\n".join(lines)


def patients_to_match(df: pd.DataFrame, arm: str, a: Any, b: Any, x: str = "n_train_patients",
                      metric: str = "test_dice") -> str:
    """How many labelled patients arm ``b`` needs to reach arm ``a``'s mean ``metric`` at ``a``'s smallest
    size: the data-efficiency question in one line (means over seeds; see the comparisons for noise).

    Used in chapter 9.
    """
    means = aggregate(df, [x, arm], metric).pivot(index=x, columns=arm, values="mean").dropna()
    if a not in means.columns or b not in means.columns or not len(means):
        return f"no size with both {a} and {b} yet"
    smallest = means.index[0]
    goal = means.loc[smallest, a]
    enough = means.index[means[b] >= goal]
    reach = ("already with the same patients" if len(enough) and enough[0] == smallest else
             f"with {enough[0]} patients" if len(enough) else "with none of the sizes committed so far")
    return (f"mean {_metric_label(metric)}, {a} with {smallest} patients: {goal:.3f}; {b} reaches it {reach} "
            f"(sizes committed: {', '.join(map(str, means.index))})")


_SUMMARY_LABELS = {"test_dice": "test Dice", "test_hd95": "test HD95 (mm)", "val_dice_best": "best val Dice"}


def summary_table(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = ("test_dice", "test_hd95"),
                  digits: dict[str, int] | None = None) -> pd.DataFrame:
    """A display table: per group of ``by``, ``"mean ± std"`` over seeds of each metric, with the
    number of runs and of diverged runs (left out of the means).

    Used in chapters 3-7, 9 and 10.
    """
    digits = {"test_hd95": 2, **(digits or {})}
    metrics = [m for m in metrics if m in df.columns]
    agg = aggregate(df, by, metrics)
    out = agg[list(by)].copy()
    out["runs"], out["diverged"] = agg["n"], agg["n_diverged"]
    for m in metrics:
        mean, std = (agg["mean"], agg["std"]) if len(metrics) == 1 else (agg[f"{m}_mean"], agg[f"{m}_std"])
        out[_SUMMARY_LABELS.get(m, _metric_label(m))] = [_fmt(a, b, digits.get(m, 3)) for a, b in zip(mean, std)]
    return out.set_index(list(by))


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _label(name: str) -> str:
    return name.replace("_", " ")


_AXIS_LABELS = {"n_train_patients": "labelled training patients",
                "label_fraction": "fraction of training patients labelled"}


def _axis_label(column: str) -> str:
    return _AXIS_LABELS.get(column, _label(column))


def _metric_label(metric: str) -> str:
    """``test_dice`` -> ``test Dice``, ``val_dice_best`` -> ``val Dice best``."""
    return _label(metric).replace("dice", "Dice").replace("iou", "IoU")


def plot_data_efficiency(
    df: pd.DataFrame,
    x: str = "n_train_patients",
    hue: str = "strategy",
    metric: str = "test_dice",
    ax: Any = None,
    logx: bool = True,
    hue_order: Sequence[Any] | None = None,
    title: str | None = None,
) -> Any:
    """Score against the amount of labelled data, one line per ``hue`` level, error bars = std over seeds.

    ``x`` is ``"n_train_patients"`` (the default, a log axis labelled with the actual counts) or
    ``"label_fraction"``. Returns the matplotlib axes.

    Used in chapters 7 and 9.
    """
    ax = _axes(ax, (6.4, 4.2))
    agg = aggregate(df, [hue, x], metric)
    levels = list(hue_order) if hue_order is not None else order_levels(agg[hue], hue)
    for level in levels:
        part = agg[agg[hue] == level].sort_values(x)
        if part.empty:
            continue
        ax.errorbar(part[x], part["mean"], yerr=part["std"].fillna(0.0), marker="o", ms=4, capsize=3,
                    lw=1.5, label=_label(str(level)))
    xs = sorted(agg[x].unique())
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{v:g}" for v in xs])
    ax.minorticks_off()
    runs = agg["n"]
    seeds = f"{runs.min()}" if runs.min() == runs.max() else f"{runs.min()}-{runs.max()}"
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(f"{_metric_label(metric)} (mean ± std over {seeds} seed{'' if seeds == '1' else 's'})")
    ax.grid(alpha=0.3)
    ax.legend(title=_label(hue), fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_grouped_bars(
    df: pd.DataFrame,
    group: str,
    hue: str | None = None,
    metric: str = "test_dice",
    ax: Any = None,
    group_order: Sequence[Any] | None = None,
    hue_order: Sequence[Any] | None = None,
    title: str | None = None,
    annotate: bool = True,
) -> Any:
    """Bars of the mean ``metric`` per ``group`` (and per ``hue`` level side by side), std as error bars.

    E.g. ``plot_grouped_bars(df, group="dataset", hue="weights")`` for source-transfer results.

    Used in chapters 4, 5 and 9.
    """
    ax = _axes(ax, (6.4, 4.0))
    agg = aggregate(df, [group] + ([hue] if hue else []), metric)
    groups = list(group_order) if group_order is not None else order_levels(agg[group], group)
    hues = ([None] if hue is None else
            list(hue_order) if hue_order is not None else order_levels(agg[hue], hue))
    width = 0.8 / len(hues)
    centers = np.arange(len(groups))
    for j, level in enumerate(hues):
        part = agg if level is None else agg[agg[hue] == level]
        part = part.set_index(group).reindex(groups)
        pos = centers - 0.4 + width * (j + 0.5)
        bars = ax.bar(pos, part["mean"], width * 0.92, yerr=part["std"].fillna(0.0), capsize=3,
                      label=None if level is None else _label(str(level)))
        if annotate:
            for rect, m in zip(bars, part["mean"]):
                if not math.isnan(m):
                    ax.annotate(f"{m:.2f}", (rect.get_x() + rect.get_width() / 2, 0.02), ha="center",
                                va="bottom", fontsize=7, color="white", rotation=90)
    ax.set_xticks(centers)
    ax.set_xticklabels([_label(str(g)) for g in groups])
    ax.set_xlabel(_axis_label(group))
    ax.set_ylabel(f"{_metric_label(metric)} (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    if hue is not None:
        ax.legend(title=_label(hue), fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def read_history(run: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The per-epoch history of a run: its ``metrics.csv`` (a run folder or the file), or a DataFrame."""
    if isinstance(run, pd.DataFrame):
        return run
    path = Path(run)
    path = path / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (has the run finished an epoch?)")
    return pd.read_csv(path)  # an empty "unfrozen" cell reads as NaN


def _short_stage(name: str) -> str:
    return name.replace("encoder.", "")


def plot_curves(
    curves: pd.DataFrame, hue: str, value: str = "train_loss", ax: Any = None, title: str | None = None,
    ylabel: str | None = None,
) -> Any:
    """Mean ± standard deviation over runs of ``value`` per epoch, one line per level of ``hue``.

    ``curves`` is what :func:`load_curves` returns (one row per run and epoch); epochs without a
    value (no validation that epoch) are skipped. Returns the axes.

    Used in chapter 6.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(figsize=(5.6, 3.6))[1]
    data = curves.dropna(subset=[value])
    for level in order_levels(data[hue], hue):
        part = data[data[hue] == level].groupby("epoch")[value].agg(["mean", "std", "count"]).reset_index()
        ax.errorbar(part["epoch"], part["mean"], yerr=part["std"].fillna(0), marker="o", ms=3, capsize=2,
                    label=f"{_label(str(level))} (n={int(part['count'].max())})")
    ax.set(xlabel="epoch", ylabel=ylabel or _label(value), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return ax


def plot_training_curves(
    run: str | os.PathLike | pd.DataFrame,
    axes: Sequence[Any] | None = None,
    per_class: bool = True,
    mark_unfreeze: bool = True,
    title: str | None = None,
) -> Any:
    """Training loss and validation Dice per epoch of a run, with unfreezing and the best epoch marked.

    ``run`` is a run folder written by :func:`medseg_tutorial.train.train`, its ``metrics.csv``, or
    the ``history`` DataFrame of a ``RunResult``. Epochs in which encoder stages were unfrozen
    (column ``unfrozen``) get a dotted vertical line labelled with the stages. Returns the two axes.

    Used in chapter 8.
    """
    hist = read_history(run)
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 2, figsize=(9.6, 3.6))[1]
    ax_loss, ax_dice = axes
    ax_loss.plot(hist["epoch"], hist["train_loss"], marker="o", ms=3, label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    if "val_dice" in hist:
        val = hist.dropna(subset=["val_dice"])
        ax_dice.plot(val["epoch"], val["val_dice"], marker="o", ms=4, lw=2, color="k",
                     label="mean foreground Dice")
        if per_class:
            for col in [c for c in hist.columns if c.startswith("val_dice_")]:
                ax_dice.plot(val["epoch"], val[col], lw=1, ls="--", label=_label(col[len("val_dice_"):]))
        if len(val):
            best = val.loc[val["val_dice"].idxmax()]
            ax_dice.plot([best["epoch"]], [best["val_dice"]], marker="*", ms=14, color="tab:red",
                         ls="none", label=f"best (epoch {int(best['epoch'])})")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice (per patient)")
    if mark_unfreeze and "unfrozen" in hist:
        for _, row in hist.iterrows():
            stages = str(row["unfrozen"]) if isinstance(row["unfrozen"], str) else ""
            if stages:
                for ax in axes:
                    ax.axvline(row["epoch"] - 0.5, color="tab:gray", ls=":", lw=1)
                names = ", ".join(_short_stage(s) for s in stages.split(";"))
                ax_dice.annotate(f"unfreeze\n{names}", (row["epoch"] - 0.45, 0.02), fontsize=6.5,
                                 xycoords=("data", "axes fraction"), color="tab:gray", va="bottom")
    epochs = hist["epoch"].to_numpy()
    for ax in axes:
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    ax_dice.set_ylim(0, 1)
    ax_dice.legend(fontsize="x-small", loc="upper left")
    if title:
        ax_loss.figure.suptitle(title)
    return axes
