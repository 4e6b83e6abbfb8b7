"""`deltanet train` on the CPU at small sizes.

It learns; a run killed with SIGKILL at any moment resumes to the same losses as an uninterrupted run;
checkpoints are atomic and load with from_pretrained; a NaN stops the run naming its step; bad input gives a
one-line error and exit status 2; 2 processes (gloo) compute what 1 does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deltanet.cli import main as cli_main
from deltanet.models import DeltaNetForCausalLM
from deltanet.train.checkpoint import list_checkpoints
from deltanet.train.config import build_config
from deltanet.train.trainer import train

# A small, fast run: the debug model on the stdlib corpus, rows of 64 bytes. Metric lines every 3 steps and
# checkpoints every 4: a resumed run must restore a half-filled averaging window.
SMALL = dict(model="deltanet-debug", seq_len=64, batch_size=4, steps=12, log_interval=3,
             checkpoint_interval=4, eval_interval=0, eval_rows=4, sample_tokens=0, progress=False,
             tensorboard=False, device="cpu")


def run_train(out_dir: Path, **settings) -> dict:
    config = build_config({}, {**SMALL, "out_dir": str(out_dir), **settings})
    return train(config, stdout=open(os.devnull, "w"))


def train_losses(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def cli_args(out_dir: Path, **settings) -> list[str]:
    args = ["train", "--out-dir", str(out_dir)]
    for name, value in {**SMALL, **settings}.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_reduced_default_run_learns(tmp_path):
    """The default command's corpus, tokenizer and recipe, fewer and smaller steps: the loss falls."""
    summary = run_train(tmp_path, model="deltanet-mini", seq_len=128, batch_size=8, steps=40, eval_rows=8,
                        log_interval=1)
    losses = train_losses(tmp_path)
    assert losses[1] > 5.0  # ~ln(256) = 5.55 at the start: bytes are near uniform to the fresh model
    assert sum(losses[s] for s in range(36, 41)) / 5 < losses[1] - 1.0
    assert 0 < summary["valid_bits_per_byte"] < 7 and summary["step"] == 40


def test_sigkill_at_any_moment_resumes_to_the_same_losses(tmp_path):
    """Kill a run (SIGKILL, no chance to clean up) at two moments, resume each time: the losses of every step
    equal those of an uninterrupted run, no step is lost or logged twice; the checkpoints load with
    from_pretrained and give the uninterrupted model's weights."""
    reference = run_train(tmp_path / "reference")
    expected = train_losses(tmp_path / "reference")
    assert sorted(expected) == [3, 6, 9, 12]

    out = tmp_path / "killed"
    for kill_after_lines in (1, 3):  # metric lines written before the kill: before any checkpoint, after two
        process = subprocess.Popen([sys.executable, "-m", "deltanet", *cli_args(out, resume=True)],
                                   env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if lines >= kill_after_lines:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
        process.wait()
    summary = run_train(out, resume=True)
    assert summary["step"] == 12 and not summary["interrupted"]
    assert train_losses(out) == expected  # exactly: the CPU run is deterministic
    final = DeltaNetForCausalLM.from_pretrained(out / "checkpoints" / "step-0000012")
    reference_model = DeltaNetForCausalLM.from_pretrained(Path(reference["checkpoint"]))
    for a, b in zip(final.state_dict().values(), reference_model.state_dict().values()):
        assert torch.equal(a, b)
    assert [step for step, _ in list_checkpoints(out)] == [4, 8, 12]  # keep_checkpoints = 3


def test_sigterm_checkpoints_and_stops_then_resumes_to_the_same_losses(tmp_path):
    reference = tmp_path / "reference"
    run_train(reference)
    out = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "deltanet", *cli_args(out)], env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text():  # a step is done: stop in the middle of the run
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped at step" in stdout and "--resume" in stdout
    stopped_at = list_checkpoints(out)[-1][0]
    assert 3 <= stopped_at < 12  # a checkpoint at the step it stopped, not only at the 4-step interval
    run_train(out, resume=True)
    assert train_losses(out) == train_losses(reference)


def test_resume_with_more_steps_follows_the_new_schedule(tmp_path, capsys):
    from deltanet.train.schedule import warmup_cosine

    run_train(tmp_path, steps=4, log_interval=1)
    config = build_config({}, {**SMALL, "out_dir": str(tmp_path), "steps": 8, "log_interval": 1,
                               "resume": True})
    train(config)
    assert "the learning-rate schedule now decays to step 8" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in records if r["split"] == "train"}
    assert sorted(lr) == list(range(1, 9))
    assert lr[5] == pytest.approx(3e-4 * warmup_cosine(5, 8, 0, 0.1))  # the new schedule, from step 5 on


def test_activation_checkpointing_trains_the_same(tmp_path):
    plain = run_train(tmp_path / "plain", steps=3, log_interval=1)
    checkpointed = run_train(tmp_path / "checkpointed", steps=3, log_interval=1,
                             activation_checkpointing=True)
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "checkpointed")
    assert plain["step"] == checkpointed["step"] == 3


def test_default_output_folder_is_new_for_each_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(build_config({}, {**SMALL, "steps": 1}), stdout=open(os.devnull, "w"))
    runs = [path.name for path in (tmp_path / "runs").iterdir()]
    assert len(runs) == 1 and runs[0].startswith("deltanet-debug-")  # runs/<model>-<date>-<time>
    code, err = run_cli(["train", "--resume", "--steps", "1"])
    assert_one_line_error(code, err, "--out-dir")


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    """A failure while a checkpoint is being written leaves no step-* folder for it; the next run cleans up
    the partial one and resumes from the previous checkpoint."""
    import deltanet.train.checkpoint as checkpoint

    original = torch.save
    calls = []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: after the model and config are on disk
            raise OSError("disk full (simulated)")
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run_train(tmp_path)
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith("step-")] == ["step-0000004"]
    assert any(p.name.startswith(".tmp-") for p in root.iterdir())
    monkeypatch.setattr(checkpoint.torch, "save", original)
    summary = run_train(tmp_path, resume=True)
    assert summary["step"] == 12
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


def poison_forward(monkeypatch, from_call: int, poison) -> None:
    """Make DeltaNetForCausalLM's forward pass its output through poison(output) from its from_call-th call
    on (one training forward per step in these runs: call n is step n)."""
    forward = DeltaNetForCausalLM.forward
    calls = []

    def poisoned_forward(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) >= from_call:
            poison(output, len(calls))
        return output

    monkeypatch.setattr(DeltaNetForCausalLM, "forward", poisoned_forward)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    def nan_loss(output, call):
        if output.loss is not None:  # (evaluation forwards have no loss)
            output.loss = output.loss * float("nan")

    poison_forward(monkeypatch, 6, nan_loss)
    code, err = run_cli(cli_args(tmp_path))
    assert code == 2
    assert "loss is nan at step 6" in err and "step-0000004" in err
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]


def test_infinite_gradient_stops_naming_the_step(tmp_path, monkeypatch):
    """A finite loss with an infinite gradient (clipping would turn the weights into NaN): stopped too."""
    def infinite_gradient(output, call):
        if call == 5:
            output.loss.register_hook(lambda grad: grad * float("inf"))

    poison_forward(monkeypatch, 5, infinite_gradient)
    code, err = run_cli(cli_args(tmp_path))
    assert_one_line_error(code, err, "gradient norm is", "at step 5", "step-0000004")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]


def run_cli(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(args)
    return code, stderr.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("deltanet train: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_gives_one_line_errors(tmp_path):
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--data", str(tmp_path / "missing")], ["missing"]),
        (["--data", str(empty)], [str(empty)]),
        (["--model", "deltanet-7b"], ["deltanet-7b", "deltanet-340m"]),  # the valid names are listed
        (["--model-config", "vocab_size=100"], ["256", "100"]),  # the byte tokenizer does not fit
        (["--model-config", "hidden_sise=64"], ["hidden_sise"]),
        (["--batch-size", "6", "--micro-batch-size", "4"], ["micro_batch_size"]),
        (["--precision", "fp8"], ["precision"]),
    ]
    for extra, fragments in cases:
        code, err = run_cli(cli_args(out, steps=1) + extra)
        assert_one_line_error(code, err, *fragments)
    assert not (out / "checkpoints").exists() or not list_checkpoints(out)


def test_config_files_unknown_keys_and_types(tmp_path):
    out = tmp_path / "run"
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text('seq_len = 64\nlearning_rate = 0.1\n')
    code, err = run_cli(["train", "--config", str(bad_key), "--out-dir", str(out)])
    assert_one_line_error(code, err, "learning_rate", "valid keys", "lr")
    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text("steps: many\n")
    code, err = run_cli(["train", "--config", str(bad_type), "--out-dir", str(out)])
    assert_one_line_error(code, err, "steps", "integer", "many")
    good = tmp_path / "good.yaml"
    good.write_text("steps: 3\nseq_len: 32\nmodel_config:\n  num_hidden_layers: 2\n")
    code, err = run_cli(["train", "--config", str(good), *cli_args(out, steps=2, log_interval=1)[1:],
                         "--model-config", "hidden_size=32"])
    assert code == 0, err
    saved = json.loads((out / "checkpoints" / "step-0000002" / "config.json").read_text())
    # the file's table and the command line's KEY=VALUE merge; the command line's steps wins over the file's
    assert saved["num_hidden_layers"] == 2 and saved["hidden_size"] == 32
    assert sorted(train_losses(out)) == [1, 2]


def test_resume_refuses_another_model_and_an_existing_run(tmp_path):
    out = tmp_path / "run"
    assert run_cli(cli_args(out, steps=4))[0] == 0
    code, err = run_cli(cli_args(out, steps=8))
    assert_one_line_error(code, err, "--resume")  # the run exists: continue it or choose another folder
    code, err = run_cli(cli_args(out, steps=8, resume=True) + ["--model-config", "num_hidden_layers=2"])
    assert_one_line_error(code, err, "num_hidden_layers")
    assert [step for step, _ in list_checkpoints(out)] == [4]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_processes_compute_what_one_does(tmp_path):
    """torchrun with 2 gloo processes and the same global batch: the same losses as 1 process (to float
    rounding: the gradients are averaged in another order), with gradient accumulation; a checkpoint of the
    2-process run resumes in 1 process."""
    import shutil

    settings = dict(steps=6, batch_size=8, micro_batch_size=2, checkpoint_interval=3, log_interval=1)
    one = tmp_path / "one"
    run_train(one, **settings)
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "deltanet", *cli_args(two, **settings)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = train_losses(one)
    assert sorted(expected) == list(range(1, 7))

    def assert_close(got: dict[int, float]) -> None:
        assert sorted(got) == sorted(expected)
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step

    assert_close(train_losses(two))
    changed = tmp_path / "two_then_one"  # the 2-process run's step-3 checkpoint, resumed by 1 process
    (changed / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "checkpoints" / "step-0000003", changed / "checkpoints" / "step-0000003")
    shutil.copy(two / "metrics.jsonl", changed / "metrics.jsonl")
    run_train(changed, **settings, resume=True)
    assert_close(train_losses(changed))


def test_tensorboard_events_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    run_train(tmp_path, steps=2, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("preset", ["deltanet-debug", "linear-attn-debug"])
def test_compiled_packed_batches_compile_once_per_document_count_bucket(preset):
    """With --compile the trainer pads cu_seqlens with empty documents to a power of two: batches with other
    document counts in the same bucket reuse one graph (no graph break either: no host read under
    tracing), and the padded, compiled loss equals the eager loss of the unpadded batch (Triton kernels, in
    the interpreter on the CPU). Linear attention pads each document to max_seqlen, the row length the
    trainer passes: its backward once failed to compile on a data-dependent length."""
    from torch._dynamo.utils import counters

    from deltanet.models import preset_config
    from deltanet.ops.host_offsets import remember_host_offsets
    from deltanet.train.trainer import flatten_rows

    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    model = DeltaNetForCausalLM(preset_config(preset, backend="triton", num_hidden_layers=1))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    for lengths in ([20, 30, 14], [64], [3, 3, 3, 55]):  # 6, 2, 8 documents in the 2 rows: all padded to 8
        positions = torch.cat([torch.arange(n) for n in lengths])[None].expand(2, -1).contiguous()
        ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(len(lengths)))
        flat_ids, flat_positions, cu_seqlens = flatten_rows(ids, positions, fixed_count=True)
        assert cu_seqlens.numel() == 9
        remember_host_offsets(cu_seqlens, cu_seqlens.tolist())
        loss = compiled(input_ids=flat_ids, position_ids=flat_positions, cu_seqlens=cu_seqlens,
                        max_seqlen=64, labels=flat_ids).loss
        eager = model(input_ids=ids, position_ids=positions, labels=ids).loss
        assert loss.item() == pytest.approx(eager.item(), rel=1e-5)
        if preset == "linear-attn-debug":  # (the Triton interpreter's backward would take minutes)
            loss.backward()
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("omp_set", [False, True])
def test_gpu_training_caps_host_threads_unless_omp_num_threads_is_set(monkeypatch, omp_set):
    """On a GPU the trainer's CPU ops are small and one thread per core made them slow; the cap applies to
    cuda devices only, and OMP_NUM_THREADS overrides it."""
    from deltanet.train.processes import GPU_HOST_THREADS, limit_host_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(GPU_HOST_THREADS + 4)  # as on a host with more cores than the cap
        if omp_set:
            monkeypatch.setenv("OMP_NUM_THREADS", str(GPU_HOST_THREADS + 4))
        else:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        limit_host_threads(torch.device("cpu"))
        assert torch.get_num_threads() == GPU_HOST_THREADS + 4
        limit_host_threads(torch.device("cuda", 0))
        assert torch.get_num_threads() == (GPU_HOST_THREADS + 4 if omp_set else GPU_HOST_THREADS)
    finally:
        torch.set_num_threads(before)


def test_a_second_pass_over_the_training_text_is_logged_and_said(tmp_path):
    """4 files of 390 bytes, 2 held out: the 12 steps of 4 x 64 bytes read the 780 training bytes ~3.9 times
    (the first pass ends in step 4); the metrics carry the passes completed, and the log says once that the
    text repeats."""
    data = tmp_path / "data"
    data.mkdir()
    for index in range(4):
        (data / f"part{index}.txt").write_text(f"document {index}: " + "abcdefgh " * 42)
    log = tmp_path / "log.txt"
    config = build_config({}, {**SMALL, "out_dir": str(tmp_path / "run"), "data": [str(data)],
                               "valid_percent": 25.0, "log_interval": 1})
    with open(log, "w") as stdout:
        train(config, stdout=stdout)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r["split"] == "train"]
    assert epochs == sorted(epochs) and epochs[0] == 0 and epochs[-1] == 3, epochs
    assert epochs[2:4] == [0, 1], epochs  # steps 3 and 4
    said = [line for line in log.read_text().splitlines() if "starts again" in line]
    assert len(said) == 1 and said[0].startswith("step 4:"), said
    assert "at most 1,024 tokens" in said[0]  # 4 steps of 256 read; one pass is 780


def test_a_step_that_reads_the_text_several_times_says_so_too(tmp_path):
    """One 100-byte training file, 4 x 64 bytes per step: the first step already reads it 2.56 times."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("x" * 100)
    (data / "b.txt").write_text("held out " * 5)
    log = tmp_path / "log.txt"
    config = build_config({}, {**SMALL, "out_dir": str(tmp_path / "run"), "data": [str(data)],
                               "valid_percent": 50.0, "steps": 2})
    with open(log, "w") as stdout:
        train(config, stdout=stdout)
    said = [line for line in log.read_text().splitlines() if "starts again" in line]
    assert len(said) == 1 and said[0].startswith("step 1:") and "at most 128 tokens" in said[0], said
