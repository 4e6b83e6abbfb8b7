"""`deltanet eval compare`: the table and plot from runs' metrics, compared where every run was evaluated
(equal tokens), the train command, and the orchestration of runs over lanes."""

from __future__ import annotations

import json
import os
import sys

import pytest

from deltanet import cli
from deltanet.eval import compare


def write_run(folder, name, last_step, bits, tokens_per_step=1000, valid_every=50):
    """metrics.jsonl of a run that logged every 10 steps up to last_step and evaluated every valid_every."""
    run = folder / name
    run.mkdir(parents=True)
    lines = []
    for step in range(10, last_step + 1, 10):
        lines.append({"step": step, "split": "train", "loss": 3.0 - step / 1000, "lr": 1e-3, "grad_norm": 1.0,
                      "tokens_per_s": 5000.0, "tokens": step * tokens_per_step})
        if step % valid_every == 0:
            lines.append({"step": step, "split": "valid", "loss": bits(step) * 0.69,
                          "bits_per_byte": bits(step)})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 9')
    return run


def test_report_compares_where_every_run_was_evaluated(tmp_path):
    # deltanet stopped early (step 120): the others are compared at its last evaluation, step 100
    write_run(tmp_path, "deltanet", 120, lambda step: 2.0 - step / 1000)
    write_run(tmp_path, "transformer++", 200, lambda step: 2.5 - step / 1000)
    lines = compare.report(tmp_path, ["deltanet", "transformer++", "linear-attn"], "debug")
    assert [line["architecture"] for line in lines] == ["deltanet", "transformer++"]  # no run: left out
    assert all(line["step"] == 100 and line["tokens"] == 100_000 for line in lines)
    assert lines[0]["valid_bits_per_byte"] == pytest.approx(1.9)
    assert lines[1]["valid_bits_per_byte"] == pytest.approx(2.4)  # not its step-200 figure
    assert lines[1]["tokens_trained"] == 200_000 and lines[0]["tokens_per_s"] == pytest.approx(5000)
    assert lines[0]["parameters"] > 0
    table = (tmp_path / "results.md").read_text()
    assert table.index("| deltanet |") < table.index("| transformer++ |")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == lines
    pytest.importorskip("matplotlib")
    assert (tmp_path / "loss_curves.png").stat().st_size > 0


def test_report_gives_passes_over_the_text_and_each_runs_lowest_held_out_loss(tmp_path):
    """Held-out loss falling to a minimum then rising (memorisation); the text starts again after 60K tokens
    in one run (logged epoch), never in another, and a third has no epoch records (runs from before)."""
    def with_epochs(run, repeat_after, from_tokens=0):
        """epoch = passes of repeat_after tokens completed, in the train records from from_tokens on (a run
        resumed after the field appeared has it only in its later records)."""
        path = run / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()[:-1]]
        for record in records:
            if record["split"] == "train" and record["tokens"] >= from_tokens:
                record["epoch"] = 0 if repeat_after is None else record["tokens"] // repeat_after
        path.write_text("".join(json.dumps(record) + "\n" for record in records))

    def u_shaped(step):  # lowest (1.5) at step 150
        return 1.5 + abs(step - 150) / 100

    with_epochs(write_run(tmp_path, "deltanet", 200, u_shaped), repeat_after=64_000)
    with_epochs(write_run(tmp_path, "transformer++", 200, lambda step: 3.0 - step / 1000), repeat_after=None)
    write_run(tmp_path, "linear-attn", 200, lambda step: 3.5 - step / 1000)
    with_epochs(write_run(tmp_path, "deltanet-swa", 200, u_shaped), repeat_after=24_000, from_tokens=20_000)
    lines = {line["architecture"]: line for line in compare.report(
        tmp_path, ["deltanet", "transformer++", "linear-attn", "deltanet-swa"], "debug")}
    deltanet = lines["deltanet"]
    assert deltanet["step"] == 200 and deltanet["valid_bits_per_byte"] == pytest.approx(2.0)
    assert deltanet["lowest_bits_per_byte"] == pytest.approx(1.5) and deltanet["lowest_at_tokens"] == 150_000
    # epoch 0 at 60K tokens, 1 at 70K (records every 10K): the pass is taken as 65K (true: 64K)
    assert deltanet["data_passes"] == pytest.approx(200_000 / 65_000)
    assert lines["transformer++"]["data_passes"] == 0.0 and lines["linear-attn"]["data_passes"] is None
    # epoch only from 20K tokens on: 0 there, 1 at 30K: the pass ~ (20K + 30K) / 2
    assert lines["deltanet-swa"]["data_passes"] == pytest.approx(200_000 / 25_000)
    assert compare.data_passes([{"tokens": 100_000, "epoch": 3}], 200_000) == pytest.approx(7.0)
    assert lines["transformer++"]["lowest_at_tokens"] == 200_000
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| deltanet |"))
    assert "| 3.1 | 1.5000 (" in row
    assert "| < 1 |" in table and "| - |" in table and "memorisation" in table


def test_report_without_runs_is_an_error(tmp_path, capsys):
    assert cli.main(["eval", "compare", "--out", str(tmp_path), "--report-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no runs with metrics" in err


@pytest.mark.parametrize("argv, words", [
    (["--architectures", "gla"], "--architectures"),
    (["--size", "7b"], "--size"),
    (["--runs-per-gpu", "0"], "--runs-per-gpu"),
    (["--gpus", "7"], "--gpus 7"),  # no such CUDA device (none at all on a CPU machine)
])
def test_bad_options_end_in_one_line(tmp_path, argv, words, capsys):
    assert cli.main(["eval", "compare", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_train_command_passes_the_shared_settings(tmp_path):
    parser = cli.build_parser(["eval", "compare"])
    args = parser.parse_args(["eval", "compare", "--out", str(tmp_path), "--steps", "7", "--lr", "2e-3",
                              "--data", "a.txt", "b/", "--compile"])
    command = compare.train_command("deltanet-swa", args, tmp_path / "deltanet-swa")
    assert command[:4] == [sys.executable, "-m", "deltanet", "train"]
    options = dict(zip(command[4::1], command[5::1]))
    assert options["--model"] == "deltanet-swa-small" and options["--steps"] == "7"
    assert options["--lr"] == "0.002" and options["--out-dir"] == str(tmp_path / "deltanet-swa")
    assert command[command.index("--data") + 1:command.index("--data") + 3] == ["a.txt", "b/"]
    assert "--compile" in command and "--device" not in command and "--resume" not in command
    on_gpu = compare.train_command("deltanet", args, tmp_path / "deltanet", gpu="3")
    assert on_gpu[on_gpu.index("--device") + 1] == "cuda"  # CUDA_VISIBLE_DEVICES=3: no fall-back to the CPU
    args.resume = True
    assert "--resume" not in compare.train_command("deltanet", args, tmp_path / "deltanet")  # no checkpoint
    (tmp_path / "deltanet" / "checkpoints" / "step-0000005").mkdir(parents=True)
    assert "--resume" in compare.train_command("deltanet", args, tmp_path / "deltanet")
    # every option is one `deltanet train` accepts
    train_args = cli.build_parser(command[3:]).parse_args(command[3:])
    assert train_args.steps == 7 and train_args.model == "deltanet-swa-small"


def test_runs_spread_over_lanes_and_failures_are_reported(tmp_path, monkeypatch, capsys):
    """run_all with a stand-in for `deltanet train`: each run writes metrics and exits 0, but linear-attn
    exits 3; two lanes on one 'GPU' run them all, and the command says which failed."""
    script = ("import json, os, sys; out = sys.argv[1]; name = os.path.basename(out); "
              "open(os.path.join(out, 'metrics.jsonl'), 'w').write(json.dumps({'step': 50, 'split': 'train', "
              "'loss': 1.0, 'tokens_per_s': 10.0, 'tokens': 500}) + '\\n' + json.dumps({'step': 50, "
              "'split': 'valid', 'loss': 1.0, 'bits_per_byte': 1.5}) + '\\n'); "
              "print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('OMP_NUM_THREADS')); "
              "sys.exit(3 if name == 'linear-attn' else 0)")
    monkeypatch.setattr(compare, "train_command",
                        lambda arch, args, out, gpu=None: [sys.executable, "-c", script, str(out)])
    monkeypatch.setattr(compare, "visible_gpus", lambda: ["0", "5"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # a GPU host's cores: more than the cap
    status = cli.main(["eval", "compare", "--out", str(tmp_path), "--size", "debug", "--gpus", "5",
                       "--runs-per-gpu", "2", "--architectures", "deltanet", "linear-attn", "transformer++"])
    assert status == 1
    captured = capsys.readouterr()
    assert "linear-attn" in captured.err and "failed" in captured.err
    for name in ("deltanet", "linear-attn", "transformer++"):  # a share of the cores, at most 8 on a GPU
        assert (tmp_path / name / "log.txt").read_text().split() == ["5", "8"]
    assert "| transformer++ |" in (tmp_path / "results.md").read_text()
    # no GPU (--gpus with none): one run at a time on the CPU, with every core
    cli.main(["eval", "compare", "--out", str(tmp_path / "cpu"), "--size", "debug", "--gpus",
              "--architectures", "deltanet"])
    assert (tmp_path / "cpu" / "deltanet" / "log.txt").read_text().split() == ["None", "64"]
