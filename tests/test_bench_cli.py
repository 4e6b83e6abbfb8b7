"""`deltanet bench kernels` and `deltanet bench model` through the command line, on the CPU at tiny sizes.

What they check: each command writes its JSON with one row per implementation (or model) and sequence
length, every time is finite and positive, the figure's PNG is written, and bad options end in one line on
stderr with exit status 2 before anything is measured. Speed itself is not checked: the CPU runs are smoke
tests of the same code paths that the GPU runs take.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from deltanet import cli
from deltanet.benchmarks import model as model_benchmark

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def bench():
    """cli.main(["bench", *argv]) -> exit status (argparse's errors exit through SystemExit)."""
    def run(*argv: str) -> int:
        try:
            return cli.main(["bench", *argv])
        except SystemExit as exit:
            return exit.code

    yield run


def assert_positive(row: dict, *keys: str) -> None:
    for key in keys:
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)


def assert_png(path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the 'bench' extra) draws the plots")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_bench_kernels_cpu_figure_and_table(bench, tmp_path, capsys):
    out = tmp_path / "kernels"
    # The table's first shape is also the figure's (B*T = 64, T = 32): it must be measured once.
    status = bench("kernels", "--out", str(out), "--device", "cpu", "--tokens", "64", "--seq-lens", "32",
                   "64", "--heads", "1", "--head-dims", "8", "--table-shapes", "2x32x1x8", "--varlen-lengths",
                   "20", "12", "--repeats", "1")
    assert status == 0
    progress = capsys.readouterr().out.splitlines()
    assert progress.count("B=2 T=32 H=1 D=8") == 1 and progress.count("B=1 T=32 H=1 D=8 varlen") == 1
    result = json.loads((out / "kernels.json").read_text())
    assert result["card"] and result["date"] and result["tokens"] == 64
    implementations = ["deltanet", "recurrent", "sdpa_flash"]
    figure = result["figure"]
    assert sorted((row["impl"], row["T"]) for row in figure) == sorted(
        (impl, T) for impl in implementations for T in (32, 64))
    for row in figure:
        assert row["B"] * row["T"] == 64 and (row["H"], row["D"]) == (1, 8)
        # On the CPU the recurrence is the PyTorch loop, so it has a backward too.
        assert_positive(row, "fwd_ms", "fwd_bwd_ms", "fwd_tflops", "fwd_bwd_tflops")
    table = result["rows"]
    assert table[:3] == [row for row in figure if row["T"] == 32]
    assert [(row["impl"], row["varlen"]) for row in table] == [
        ("deltanet", False), ("recurrent", False), ("sdpa_flash", False),  # attention has no packed form here
        ("deltanet", True), ("recurrent", True)]
    for row in table:
        assert_positive(row, "fwd_ms", "fwd_bwd_ms")
    assert_png(out / "kernels.png")


def test_bench_model_cpu_sweep(bench, tmp_path):
    out = tmp_path / "model"
    status = bench("model", "--out", str(out), "--device", "cpu", "--preset", "debug", "--shapes", "2x16",
                   "1x32", "--steps", "1", "--warmup", "0", "--sections", "sweep")
    assert status == 0
    result = json.loads((out / "model.json").read_text())
    assert "train" not in result and "decode" not in result
    shapes = [(2, 16), (1, 32)]
    assert [(row["model"], row["batch"], row["seq_len"]) for row in result["sweep"]] == [
        (name, batch, seq_len) for name in model_benchmark.SWEEP_MODELS for batch, seq_len in shapes]
    for row in result["sweep"]:
        assert_positive(row, "tokens_per_s", "step_s", "model_tflops", "params", "loss")
    assert result["args"]["sections"] == ["sweep"]
    assert_png(out / "model_sweep.png")


BAD_OPTIONS = [
    (["kernels", "--device", "cpu", "--table-shapes", "8x2048"], "--table-shapes"),
    (["kernels", "--device", "cpu", "--seq-lens", "1000"], "--seq-lens"),
    (["kernels", "--device", "cpu", "--head-dims", "512"], "--head-dims"),
    (["kernels", "--device", "cpu", "--fla"], "--fla"),
    (["kernels", "--device", "cpu", "--only", "9"], "--only"),
    (["kernels", "--sections", "plots"], "--sections"),
    (["model", "--device", "cpu", "--preset", "debug", "--shapes", "8by2048"], "--shapes"),
    (["model", "--device", "cpu", "--preset", "debug", "--sections", "sweep", "--sweep-models", "mamba"],
     "--sweep-models"),
    (["model", "--device", "cpu", "--preset", "debug", "--models", "deltanet-swa"], "--models"),
    (["model", "--device", "cpu", "--preset", "huge"], "--preset"),
    (["model", "--device", "cpu", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize("argv, option", BAD_OPTIONS, ids=[" ".join(argv) for argv, _ in BAD_OPTIONS])
def test_bad_options_exit_2_with_one_line(bench, tmp_path, capsys, argv, option):
    status = bench(*argv, "--out", str(tmp_path / "out"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith(f"deltanet bench {argv[0]}: error:"), lines
    assert option in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was measured or written


@pytest.mark.parametrize("command", ["kernels", "model"])
def test_no_cuda_says_so_and_suggests_the_cpu_smoke_test(bench, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no CUDA, even on a GPU machine
    status = bench(command, "--out", str(tmp_path / "out"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert "no CUDA device" in lines[0] and "--device cpu" in lines[0]
