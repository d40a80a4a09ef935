"""Reading, aggregating and plotting committed results tables (small CSV fixtures in tmp_path)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from medseg_tutorial import results


def _runs() -> pd.DataFrame:
    """Two strategies x two label fractions x three seeds, with known means."""
    rows = []
    for strategy, offset in (("full_finetune", 0.1), ("scratch", 0.0)):
        for fraction, n_pat, base in ((0.1, 18, 0.5), (1.0, 182, 0.8)):
            for seed, noise in zip((0, 1, 2), (-0.01, 0.0, 0.01)):
                rows.append({
                    "experiment": "data_efficiency", "dataset": "msd_hippocampus", "strategy": strategy,
                    "encoder": "efficientnet-lite0", "weights": "scratch" if strategy == "scratch" else "imagenet",
                    "label_fraction": fraction, "n_train_patients": n_pat, "seed": seed, "loss": "dice_ce",
                    "optimizer": "adamw", "split": "patient", "test_dice": base + offset + noise,
                    "test_dice_anterior": base + offset, "val_dice_best": base, "best_epoch": 3, "epochs": 5,
                    "wall_time_s": 10.0 + seed, "hardware": "cpu", "commit": "abc", "config": "x.yaml",
                })
    return pd.DataFrame(rows)


@pytest.fixture
def folder(tmp_path):
    _runs().to_csv(tmp_path / "data_efficiency.csv", index=False)
    return tmp_path


def test_load_results_present_missing_and_invalid(folder):
    df = results.load_results("data_efficiency", folder)
    assert len(df) == 12 and set(results.RUN_COLUMNS) <= set(df.columns)
    assert results.load_results("data_efficiency.csv", folder) is not None
    assert results.load_results("source_transfer", folder) is None
    pd.DataFrame(columns=["test_dice"]).to_csv(folder / "empty.csv", index=False)
    assert results.load_results("empty", folder) is None
    pd.DataFrame({"dice": [0.5]}).to_csv(folder / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing columns"):
        results.load_results("bad", folder)


def test_missing_message_names_file_and_command(tmp_path):
    msg = results.missing_message("source_transfer", tmp_path)
    assert str(tmp_path / "source_transfer.csv") in msg
    assert "medseg experiment source_transfer --preset cpu" in msg
    assert "medseg experiment data_efficiency --preset gpu" in results.missing_message("gpu/data_efficiency", tmp_path)
    assert str(tmp_path / "gpu" / "data_efficiency.csv") in results.missing_message("gpu/data_efficiency", tmp_path)
    assert "medseg experiment other --preset cpu" in results.missing_message("other.csv", tmp_path)
    # the repository's own tables are named as the reader's clone has them, not by the build machine's path
    repo_msg = results.missing_message("cpu/no_such_table", results.REPO / "book" / "results")
    assert "No committed results table book/results/cpu/no_such_table.csv yet." in repo_msg
    assert str(results.REPO) not in repo_msg
    assert results.experiment_command("gpu/leakage") == "medseg experiment leakage --preset gpu"


def test_default_results_dir_is_repo_book_results_or_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = results.REPO / "book" / "results"
    assert results.default_results_dir() == (expected if expected.is_dir() else tmp_path / "results")


def test_aggregate_mean_std_n_and_order(folder):
    df = results.load_results("data_efficiency", folder)
    agg = results.aggregate(df, ["strategy", "label_fraction"])
    # scratch comes first whatever the row order in the file
    assert agg["strategy"].tolist() == ["scratch", "scratch", "full_finetune", "full_finetune"]
    row = agg[(agg.strategy == "full_finetune") & (agg.label_fraction == 0.1)].iloc[0]
    assert row["mean"] == pytest.approx(0.6)
    assert row["std"] == pytest.approx(0.01)  # sample std of (-0.01, 0, 0.01)
    assert row["n"] == 3 and row["n_train_patients"] == 18
    both = results.aggregate(df, ["strategy"], ["test_dice", "wall_time_s"])
    assert {"test_dice_mean", "test_dice_std", "wall_time_s_mean", "n"} <= set(both.columns)
    assert both.loc[both.strategy == "scratch", "wall_time_s_mean"].item() == pytest.approx(11.0)
    with pytest.raises(KeyError, match="nope"):
        results.aggregate(df, ["nope"])


def test_aggregate_single_run_has_nan_std(folder):
    df = results.load_results("data_efficiency", folder)
    agg = results.aggregate(df[df.seed == 0], ["strategy", "label_fraction"])
    assert agg["n"].eq(1).all() and agg["std"].isna().all()


def test_summary_table_formats_cells(folder):
    table = results.summary_table(results.load_results("data_efficiency", folder), ["strategy", "label_fraction"],
                                  metrics=["test_dice"])
    assert table.index.get_level_values("strategy").unique().tolist() == ["scratch", "full_finetune"]
    assert table.loc[("full_finetune", 1.0)].iloc[-1] == "0.900 ± 0.010"


def test_order_levels_prefers_book_order():
    assert results.order_levels(["lgg", "imagenet", "acdc", "scratch"], "weights") == [
        "scratch", "imagenet", "acdc", "lgg"]
    assert results.order_levels([1.0, 0.1, 0.25]) == [0.1, 0.25, 1.0]


def test_plot_data_efficiency_draws_one_line_per_strategy(folder):
    df = results.load_results("data_efficiency", folder)
    ax = results.plot_data_efficiency(df, title="t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scratch", "full finetune"]
    line = ax.get_lines()[0]
    assert np.allclose(line.get_xdata(), [18, 182]) and np.allclose(line.get_ydata(), [0.5, 0.8])
    assert ax.get_xscale() == "log" and "3 seeds" in ax.get_ylabel()
    ax2 = results.plot_data_efficiency(df, x="label_fraction", logx=False)
    assert np.allclose(ax2.get_lines()[0].get_xdata(), [0.1, 1.0])
    plt.close("all")


def test_plot_grouped_bars_heights(folder):
    df = results.load_results("data_efficiency", folder)
    ax = results.plot_grouped_bars(df, group="label_fraction", hue="weights")
    heights = [p.get_height() for p in ax.patches]
    assert np.allclose(sorted(heights), [0.5, 0.6, 0.8, 0.9])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "1.0"]
    ax = results.plot_grouped_bars(df, group="strategy")
    assert len(ax.patches) == 2
    plt.close("all")


def _history(tmp_path):
    hist = pd.DataFrame({
        "epoch": [0, 1, 2, 3], "train_loss": [1.0, 0.8, 0.6, 0.5], "lr": [1e-3] * 4,
        "val_dice": [0.2, 0.5, 0.7, 0.65], "val_dice_anterior": [0.1, 0.4, 0.6, 0.6],
        "time": [1.0] * 4, "unfrozen": ["", "", "encoder.stage5", "encoder.stage4;encoder.stage3"],
        "trainable": [10, 10, 20, 30], "step": [2, 4, 6, 8],
    })
    run = tmp_path / "run"
    run.mkdir()
    hist.to_csv(run / "metrics.csv", index=False)
    return run, hist


def test_read_history_and_training_curves(tmp_path):
    run, hist = _history(tmp_path)
    read = results.read_history(run)
    assert read["unfrozen"].isna().tolist() == [True, True, False, False]
    pd.testing.assert_frame_equal(results.read_history(run / "metrics.csv"), read)
    ax_loss, ax_dice = results.plot_training_curves(run, title="run")
    best = [ln for ln in ax_dice.get_lines() if ln.get_label().startswith("best")]
    assert best and best[0].get_xdata()[0] == 2 and math.isclose(best[0].get_ydata()[0], 0.7)
    vlines = [ln for ln in ax_loss.get_lines() if ln.get_linestyle() == ":"]
    assert [ln.get_xdata()[0] for ln in vlines] == [1.5, 2.5]  # the two unfreezing epochs
    assert any("stage4, stage3" in t.get_text() for t in ax_dice.texts)
    results.plot_training_curves(hist, per_class=False, mark_unfreeze=False)
    with pytest.raises(FileNotFoundError):
        results.read_history(tmp_path / "nothing")
    plt.close("all")


def test_run_provenance(folder):
    line = results.run_provenance(results.load_results("data_efficiency", folder))
    assert line.startswith("12 runs") and "hardware: cpu" in line and "commit: abc" in line
    assert "median 11 s per run" in line


def test_a_run_whose_killed_call_lost_its_time_is_counted_by_its_epochs(folder):
    runs = results.load_results("data_efficiency", folder)
    assert runs["run_seconds"].equals(runs["wall_time_s"])  # no curves: the recorded time
    ids = [f"r{i}" for i in range(len(runs))]
    table = pd.read_csv(folder / "data_efficiency.csv").assign(run_id=ids)
    table.to_csv(folder / "data_efficiency.csv", index=False)
    # every run trained two epochs of 4 s (below its 10-12 s wall time), but r0's first call was killed
    curves = pd.DataFrame({"run_id": ids * 2, "epoch": [0] * 12 + [1] * 12, "time": 4.0})
    curves.loc[curves["run_id"] == "r0", "time"] = 3600.0
    curves.to_csv(folder / "data_efficiency_curves.csv", index=False)
    runs = results.load_results("data_efficiency", folder)
    assert runs.loc[runs.run_id == "r0", "run_seconds"].item() == 7200.0
    assert runs.loc[runs.run_id != "r0", "run_seconds"].equals(runs.loc[runs.run_id != "r0", "wall_time_s"])
    line = results.run_provenance(runs)
    assert "1 of them counted by their epoch times" in line and f"{(7200 + runs.wall_time_s[1:].sum()) / 3600:.2f} h" in line
    assert "epoch times" not in results.run_provenance(runs[runs.run_id != "r0"])


def test_select_on_validation_picks_each_arms_best_choice_without_looking_at_test():
    df = pd.DataFrame({
        "optimizer": ["sgd"] * 4 + ["adam"] * 4,
        "lr": [0.01, 0.01, 0.1, 0.1, 1e-3, 1e-3, 1e-2, 1e-2],
        "val_dice_best": [0.5, 0.6, 0.8, 0.7, 0.9, 0.8, 0.4, 0.3],
        "test_dice": [0.99, 0.99, 0.1, 0.1, 0.2, 0.2, 0.99, 0.99],  # must not influence the choice
    })
    chosen = results.select_on_validation(df, "optimizer", "lr")
    assert chosen.attrs["selected"] == {"adam": 1e-3, "sgd": 0.1}
    assert len(chosen) == 4 and set(chosen["test_dice"]) == {0.1, 0.2}


def test_diverged_runs_are_counted_apart_not_averaged_in() -> None:
    # rmsprop seed 2 never learned (validation Dice 0.01): it must not turn the cell into 0.54 +- 0.45
    df = pd.DataFrame({"optimizer": ["rmsprop"] * 3 + ["adam"] * 3, "seed": [0, 1, 2] * 2,
                       "test_dice": [0.80, 0.82, 0.0, 0.85, 0.84, 0.86],
                       "val_dice_best": [0.81, 0.83, 0.01, 0.86, 0.85, float("nan")]})
    assert results.diverged(df).tolist() == [False, False, True, False, False, True]  # NaN: no best either
    agg = results.aggregate(df, ["optimizer"]).set_index("optimizer")
    assert agg.loc["rmsprop", "mean"] == pytest.approx(0.81) and agg.loc["rmsprop", "n"] == 2
    assert agg.loc["rmsprop", "n_diverged"] == 1 and agg.loc["adam", "n_diverged"] == 1
    everything = results.aggregate(df, ["optimizer"], drop_diverged=False).set_index("optimizer")
    assert everything.loc["rmsprop", "mean"] == pytest.approx(0.54) and everything.loc["rmsprop", "n"] == 3
    table = results.summary_table(df, ["optimizer"], metrics=["test_dice"])
    assert table.loc["rmsprop"].tolist() == [2, 1, "0.810 ± 0.014"]


# --- paired comparisons from the per-patient table -----------------------------------------------------


def _patient_tables(folder, diverged_seed: int | None = None) -> None:
    """3 seeds x 12 patients x 2 classes; full_finetune = scratch + 0.05 Dice on every patient."""
    rng = np.random.default_rng(0)
    runs, scores = [], []
    base = rng.uniform(0.6, 0.9, 12)
    for strategy, offset in (("scratch", 0.0), ("full_finetune", 0.05)):
        for seed in range(3):
            run_id = f"{strategy}-{seed}"
            bad = strategy == "full_finetune" and seed == diverged_seed
            runs.append({"run_id": run_id, "strategy": strategy, "seed": seed, "label_fraction": 0.25,
                         "test_dice": 0.0 if bad else 0.8, "val_dice_best": 0.01 if bad else 0.8, "hd95": 2.0})
            for p, b in enumerate(base):
                for cls, shift in (("anterior", 0.01), ("posterior", -0.01)):
                    dice = 0.0 if bad else b + offset + shift + rng.normal(0, 0.002)
                    scores.append({"run_id": run_id, "patient_id": f"p{p:02d}", "class_name": cls,
                                   "dice": dice, "hd95": 3.0 - 10 * offset if cls == "anterior" else np.inf})
    pd.DataFrame(runs).to_csv(folder / "toy.csv", index=False)
    pd.DataFrame(scores).to_csv(folder / "toy_patients.csv", index=False)


def test_load_patients_averages_classes_and_sets_diverged_runs_apart(tmp_path):
    _patient_tables(tmp_path, diverged_seed=2)
    scores = results.load_patients("toy", tmp_path)
    assert scores.attrs["diverged"] == ["full_finetune-2"]
    assert len(scores) == 5 * 12 and "full_finetune-2" not in set(scores["run_id"])
    one = scores[(scores["run_id"] == "scratch-0") & (scores["patient_id"] == "p00")].iloc[0]
    raw = pd.read_csv(tmp_path / "toy_patients.csv")
    assert one["dice"] == pytest.approx(raw[(raw.run_id == "scratch-0") & (raw.patient_id == "p00")]["dice"].mean())
    assert one["hd95"] == pytest.approx(3.0)  # the infinite class (nothing predicted) is left out of the mean
    assert results.load_patients("absent", tmp_path) is None


def test_compare_finds_a_known_difference_and_pairs_only_common_seeds(tmp_path):
    _patient_tables(tmp_path, diverged_seed=2)
    scores = results.load_patients("toy", tmp_path)
    c = results.compare(scores, "strategy", "full_finetune", "scratch", n_boot=2000)
    assert c.difference == pytest.approx(0.05, abs=0.002) and c.direction == 1
    assert c.n_groups == 2 and c.n_units == 12  # seed 2 diverged: its pairs are not compared
    assert c.low > 0.04 and c.high < 0.06
    reverse = results.compare(scores, "strategy", "scratch", "full_finetune", n_boot=2000)
    assert reverse.direction == -1 and "lower Dice" in reverse.sentence("scratch", "full_finetune")
    with pytest.raises(KeyError, match="not in the table"):
        results.compare(scores, "strategy", "full_finetune", "scratch", where={"optimizer": "sgd"})


def test_compare_table_rows_holm_and_hd95_sign(tmp_path):
    _patient_tables(tmp_path)
    scores = results.load_patients("toy", tmp_path)
    table = results.compare_table(scores, "strategy", "scratch", by=["label_fraction"], n_boot=2000,
                                  names={"full_finetune": "full fine-tuning"})
    assert len(table) == 1 and table.loc[0, "strategy"] == "full_finetune"
    assert table.loc[0, "direction"] == 1 and table.loc[0, "p_holm"] >= table.loc[0, "p"]
    assert table.loc[0, "sentence"].startswith("label fraction 0.25: Full fine-tuning scores 0.05")
    assert table.loc[0, "wilcoxon_p"] < 0.01 and "1 comparison" in table.attrs["note"]
    hd = results.compare_table(scores, "strategy", "scratch", metric="hd95", n_boot=2000)
    assert hd.loc[0, "difference"] == pytest.approx(-0.5) and hd.loc[0, "direction"] == -1
    assert "lower HD95 (mm)" in hd.loc[0, "sentence"]


def test_compare_on_the_committed_data_efficiency_table():
    """The first converged runs: all five strategies on all training volumes (seed 0)."""
    scores = results.load_patients("cpu/data_efficiency")
    if scores is None:
        pytest.skip("book/results/cpu/data_efficiency.csv is not committed")
    cell = scores[scores["label_fraction"] == 1.0]
    assert cell.groupby("run_id")["patient_id"].nunique().eq(52).all()  # every test volume scored
    c = results.compare(scores, "strategy", "full_finetune", "scratch", where={"label_fraction": 1.0}, n_boot=2000)
    assert c.n_units == 52 and -0.05 < c.low <= c.difference <= c.high < 0.05


def test_comparison_markdown_lists_sentences_note_and_diverged_runs(tmp_path):
    _patient_tables(tmp_path, diverged_seed=2)
    scores = results.load_patients("toy", tmp_path)
    text = results.comparison_markdown(results.compare_table(scores, "strategy", "scratch", n_boot=500), scores)
    assert text.startswith("- full_finetune scores 0.05") and "Holm-adjusted p" in text
    assert "only 2 seeds" in text and "1 diverged run" in text and "full_finetune-2" in text
    assert "nothing to compare" in results.comparison_markdown(pd.DataFrame())


def test_compare_table_names_cells_and_sets_unpaired_levels_apart(tmp_path):
    _patient_tables(tmp_path)
    scores = results.load_patients("toy", tmp_path)
    lonely = scores[scores["strategy"] == "scratch"].assign(strategy="frozen_encoder", seed=7)  # no common seed
    table = results.compare_table(pd.concat([scores, lonely]), "strategy", "scratch", by=["label_fraction"],
                                  n_boot=500, names={"full_finetune": "full fine-tuning"})
    assert list(table["strategy"]) == ["full_finetune"]
    assert table.loc[0, "sentence"].startswith("label fraction 0.25: Full fine-tuning scores")
    assert table.attrs["skipped"] == ["label fraction 0.25: frozen_encoder against scratch: 0 common (seed, patient) pairs"]
    text = results.comparison_markdown(table, scores, title="Against scratch")
    assert text.startswith("**Against scratch**") and "Not compared yet" in text and "frozen_encoder" in text


def test_family_verdicts_and_summary_table(tmp_path):
    _patient_tables(tmp_path)
    scores = results.load_patients("toy", tmp_path)
    dice = results.compare_table(scores, "strategy", "scratch", n_boot=500)
    hd = results.compare_table(scores, "strategy", "scratch", metric="hd95", n_boot=500)
    both = results.family([dice, hd, pd.DataFrame()])
    assert len(both) == 2 and "2 comparisons" in both.attrs["note"]
    assert (both["p_holm"] >= both["p"]).all()
    # Dice higher and HD95 lower are both "better" for full fine-tuning
    assert results.verdicts(dice, "strategy")["better"] == ["full_finetune"]
    assert results.verdicts(hd, "strategy", "hd95")["better"] == ["full_finetune"]
    assert results.verdicts(dice.assign(direction=0), "strategy")["undecided"] == ["full_finetune"]
    # an interval clear of zero whose Holm-adjusted p is not below 0.05: decided, but not held
    assert results.verdicts(dice.assign(p_holm=0.04), "strategy")["not_held"] == []
    loose = results.verdicts(dice.assign(p_holm=0.09), "strategy")
    assert loose["better"] == ["full_finetune"] and loose["held"] == [] and loose["not_held"] == ["full_finetune"]
    assert results.verdicts(dice.assign(direction=-1, p_holm=0.09), "strategy")["not_held"] == ["full_finetune"]
    assert results.verdicts(dice.assign(direction=0, p_holm=0.09), "strategy")["not_held"] == []
    assert results.holm_mark("full_finetune", loose) == " (not after Holm's correction)"
    assert results.holm_mark("full_finetune", results.verdicts(dice.assign(p_holm=0.04), "strategy")) == ""
    runs = results.load_results("toy", tmp_path).rename(columns={"hd95": "test_hd95"})
    table = results.summary_table(runs, ["strategy"], ["test_dice", "test_hd95", "absent"])
    assert list(table.columns) == ["runs", "diverged", "test Dice", "test HD95 (mm)"]
    assert table.loc["scratch", "test Dice"] == "0.800 ± 0.000" and table.loc["scratch", "runs"] == 3


def test_select_on_validation_on_a_tuning_seed_keeps_every_seed_at_the_choice():
    rows = [("sgd", 0.01, 0, 0.80), ("sgd", 0.03, 0, 0.85), ("sgd", 0.03, 1, 0.70), ("sgd", 0.03, 2, 0.72),
            ("recipe", 0.01, 0, 0.60), ("recipe", 0.01, 1, 0.61)]
    df = pd.DataFrame(rows, columns=["arm", "lr", "seed", "val_dice_best"])
    picked = results.select_on_validation(df, "arm", "lr", seed=0)
    assert picked.attrs["selected"] == {"recipe": 0.01, "sgd": 0.03}
    assert sorted(picked.loc[picked["arm"] == "sgd", "seed"]) == [0, 1, 2] and len(picked) == 5
    # over the mean of all seeds instead, 0.03's weaker seeds 1-2 would decide for 0.01
    assert results.select_on_validation(df, "arm", "lr").attrs["selected"]["sgd"] == 0.01


def test_directions_agree_only_when_each_direction_is_its_interval():
    rows = pd.DataFrame({"direction": [1, 0, -1, 0], "low": [0.01, -0.02, -0.05, -0.01], "high": [0.03, 0.01, -0.01, 0.0]})
    assert results.directions_agree(rows) and results.directions_agree(rows.iloc[:0]) and results.directions_agree(None)
    assert not results.directions_agree(rows.assign(direction=[1, 1, -1, 0]))  # "better" on an interval holding zero
    assert not results.directions_agree(rows.assign(direction=[0, 0, -1, 0]))  # "undecided" on one above zero
    assert not results.directions_agree(rows.assign(direction=[1, 0, 1, 0]))   # the wrong sign


def test_convergence_counts_runs_that_passed_their_best_and_names_the_rest():
    runs = pd.DataFrame({"arm": ["a", "b", "c"], "seed": [0, 0, 1], "best_epoch": [3, 14, 9], "epochs": [9, 15, 15],
                         "stopped_early": ["True", "False", "False"]})
    conv, text = results.convergence(runs, cap=15, patience=5)
    assert conv["best_before_last"].tolist() == [True, False, True]
    assert conv["stopped"].tolist() == [True, False, False] and conv["at_cap"].tolist() == [False, True, True]
    assert text.startswith("2 of 3 runs (67%) had their best validation before their last one")
    assert "1 of 3 (33%) stopped early, after 5 validations" in text and "2 ran to the cap of 15" in text
    assert text.endswith("(still improving when the run ended): b, seed 0.")
    _, done = results.convergence(runs.iloc[[0]], patience=5)
    assert done.endswith("No run had its best at its last validation.") and "0 ran to the cap" in done
    assert results.convergence(runs.iloc[:0])[1] == "No runs yet."
