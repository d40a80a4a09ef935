"""The benchmark runs end to end and reports every figure; timings themselves are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from medseg_tutorial.cli import main
from medseg_tutorial.models import build_model
from medseg_tutorial.tools.bench import (
    BenchConfig,
    format_report,
    peak_tflops,
    run_bench,
    save_report,
    training_flops,
)

TINY = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared CPU, two threads that wait for each other are much slower
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report() -> dict:
    bc = BenchConfig(device="cpu", encoder="resnet18", size=32, batch_size=4, repeats=2, steps=2, warmup=1,
                     smp_kwargs=TINY)
    return run_bench(bc)


def test_report_has_every_figure_and_they_are_positive(report: dict, tmp_path: Path) -> None:
    path = save_report(report, tmp_path / "bench.json")
    data = json.loads(path.read_text())
    assert data["config"]["size"] == 32 and data["config"]["batch_size"] == 4 and data["config"]["device"] == "cpu"
    assert data["flops_per_step"] > 0
    for name in ("trainer", "plain", "loader", "plain_loader"):
        row = data["results"][name]
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0 and row["cpu_ms_per_step"] > 0
        assert len(row["repeats_s"]) == 2 and all(s > 0 for s in row["repeats_s"])
    for name in ("trainer", "plain"):
        assert data["results"][name]["tflops"] > 0
        assert data["results"][name]["fraction_of_peak"] is None  # no stated peak for a CPU
    assert data["speedup_trainer_vs_plain"] > 0 and data["loader_headroom"] > 0
    assert data["peak_tflops"] is None and data["amp"] == "float32"
    assert data["environment"]["threads"] >= 1


def test_format_report_prints_one_line_per_contestant(report: dict) -> None:
    text = format_report(report)
    for label in ("trainer step", "plain loop (fp32)", "our loader alone", "plain loader alone", "GFLOP", "n/a"):
        assert label in text


def test_training_flops_counts_forward_and_backward() -> None:
    model = build_model("resnet18", None, 1, 3, **TINY)
    x = torch.randn(2, 1, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()  # dense convolutions: the counted backward is right
    counted = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    total = training_flops(model, x)
    assert abs(total - counted) <= 0.01 * counted
    assert all(p.grad is None for p in model.parameters())  # the model itself is left untouched


def test_training_flops_is_not_fooled_by_depthwise_backward() -> None:
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)  # 2 * 9 * 32 * 64 * 64 FLOPs forward
    x = torch.randn(1, 32, 64, 64)
    assert training_flops(conv, x) == 3 * 2 * 9 * 32 * 64 * 64
    with FlopCounterMode(display=False) as counter:
        conv(x.requires_grad_()).sum().backward()
    assert counter.get_total_flops() > 10 * 2 * 9 * 32 * 64 * 64  # torch's counter: why we do not use it


def test_peak_table_is_for_cuda_only() -> None:
    peak, name = peak_tflops(torch.device("cpu"))
    assert peak is None and name


def test_cli_bench_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    code = main(["bench", "--device", "cpu", "--encoder", "resnet18", "--size", "32", "--batch-size", "2",
                 "--repeats", "1", "--steps", "1", "--warmup", "0", "--json", str(out)])
    assert code == 0
    assert "trainer step" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"]["trainer"]["images_per_s"] > 0
