"""The one-command GPU campaign: its dry run validates every GPU preset without a GPU (CI runs it)."""

from __future__ import annotations

from medseg_tutorial.experiment import list_experiments
from medseg_tutorial.tools.gpu_campaign import _commands, campaign


def test_dry_run_lists_every_experiment_the_gpu_tests_and_the_benchmark() -> None:
    lines: list[str] = []
    assert campaign(dry_run=True, say=lines.append) == 0
    for name in list_experiments():
        assert any(line.startswith(f"{name}: ") and "gpu preset" in line for line in lines), name
    assert any("[gpu-tests]" in line for line in lines) and any("[bench]" in line for line in lines)


def test_every_part_is_bounded_by_the_budget() -> None:
    for _, cmd in _commands(540, ["losses"]):
        assert cmd[0] == "timeout" and int(cmd[1]) <= 540


def test_a_tuned_experiment_gets_a_second_pass_for_its_later_seeds() -> None:
    (_, cmd), = [(n, c) for n, c in _commands(540, ["optimizers"]) if n == "optimizers"]
    assert cmd[2:4] == ["sh", "-c"] and cmd[4].count("experiment optimizers --preset gpu") == 2
    (_, plain), = [(n, c) for n, c in _commands(540, ["losses"]) if n == "losses"]
    assert "sh" not in plain and plain.count("losses") == 1
