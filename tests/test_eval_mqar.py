"""`deltanet eval mqar`: the example generator, the scored positions, the command, and a CPU-sized run in
which DeltaNet learns the recall better than linear attention."""

from __future__ import annotations

import json

import pytest
import torch

from deltanet import cli
from deltanet.eval import mqar
from deltanet.eval.errors import EvalError
from deltanet.models import DeltaNetForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: the runs are the same everywhere


def test_examples_follow_the_task():
    task = mqar.MQARTask(seq_len=64, num_kv_pairs=8, vocab_size=128)
    inputs, targets = mqar.make_examples(task, 50, torch.Generator().manual_seed(3))
    assert inputs.shape == targets.shape == (50, 64)
    P, half = task.num_kv_pairs, task.vocab_size // 2
    for row, target in zip(inputs.tolist(), targets.tolist()):
        keys, values = row[0:2 * P:2], row[1:2 * P:2]
        assert len(set(keys)) == P and all(1 <= k < half for k in keys)
        assert all(half <= v < task.vocab_size for v in values)
        scored = [t for t, y in enumerate(target) if y != mqar.IGNORE]
        assert len(scored) == P and min(scored) >= 2 * P  # one query per key, after the pairs
        answer = dict(zip(keys, values))
        for t in scored:
            assert row[t] in answer and target[t] == answer[row[t]] == row[t + 1]
        assert sorted(row[t] for t in scored) == sorted(keys)


def test_examples_are_seeded_and_near_queries_likelier():
    task = mqar.MQARTask(seq_len=256, num_kv_pairs=8, vocab_size=256)
    a = mqar.make_examples(task, 400, torch.Generator().manual_seed(0))
    b = mqar.make_examples(task, 400, torch.Generator().manual_seed(0))
    c = mqar.make_examples(task, 400, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    # weight d^(a-1) with a = 0.01 favours near slots: the mean query slot is well below the uniform draw's
    slots = ((a[1] != mqar.IGNORE).nonzero()[:, 1] - 2 * task.num_kv_pairs) // 2
    num_slots = (task.seq_len - 2 * task.num_kv_pairs) // 2
    assert slots.float().mean() < 0.75 * (num_slots - 1) / 2


def test_scored_logits_are_the_full_forward_at_the_queries():
    task = mqar.MQARTask(seq_len=32, num_kv_pairs=4, vocab_size=64)
    config = mqar.model_config("deltanet", 32, 2, task)
    model = DeltaNetForCausalLM(config).double().eval()
    inputs, targets = mqar.make_examples(task, 3, torch.Generator().manual_seed(0))
    logits, answers = mqar.scored_logits(model, inputs, targets)
    full = model(input_ids=inputs, use_cache=False).logits
    mask = targets != mqar.IGNORE
    torch.testing.assert_close(logits, full[mask], rtol=1e-12, atol=1e-12)
    assert torch.equal(answers, targets[mask])


def test_scored_logits_with_a_known_count_per_row_match_boolean_indexing_and_their_gradients():
    """per_row (the training loop's path, with no read-back from the device) picks the same positions in
    the same order: equal logits, answers, loss and gradients."""
    task = mqar.MQARTask(seq_len=48, num_kv_pairs=6, vocab_size=64)
    model = DeltaNetForCausalLM(mqar.model_config("deltanet", 32, 2, task)).double()
    inputs, targets = mqar.make_examples(task, 5, torch.Generator().manual_seed(3))
    results = []
    for per_row in (None, task.num_kv_pairs):
        model.zero_grad()
        logits, answers = mqar.scored_logits(model, inputs, targets, per_row=per_row)
        torch.nn.functional.cross_entropy(logits, answers).backward()
        results.append((logits.detach(), answers, [p.grad.clone() for p in model.parameters()]))
    (by_mask, answers_mask, grads_mask), (by_count, answers_count, grads_count) = results
    assert by_count.shape == (5 * 6, 64) and torch.equal(answers_count, answers_mask)
    torch.testing.assert_close(by_count, by_mask, rtol=0, atol=0)
    for grad_count, grad_mask in zip(grads_count, grads_mask):
        torch.testing.assert_close(grad_count, grad_mask, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", [
    dict(seq_len=30, num_kv_pairs=8),  # 4P > T
    dict(num_kv_pairs=0),
    dict(vocab_size=16, num_kv_pairs=8),  # 7 keys in the lower half
    dict(power_a=0.0),
])
def test_bad_tasks_are_refused(bad):
    with pytest.raises(EvalError):
        mqar.MQARTask(**{**dict(seq_len=64, num_kv_pairs=8, vocab_size=128), **bad}).validate()


@pytest.mark.parametrize("argv, words", [
    (["--models", "gla"], "--models"),
    (["--dims", "30", "--heads", "4"], "--dims"),
    (["--train-mix", "64"], "--train-mix"),
    (["--train-mix", "64:40"], "--train-mix entry '64:40'"),
    (["--steps", "0"], "--steps"),
    (["--lrs", "-1"], "--lrs"),
    (["--lrs", "nan"], "--lrs"),
    (["--dims", "0"], "--dims"),
    (["--report-only"], "--out"),
])
def test_bad_options_end_in_one_line(argv, words, capsys):
    assert cli.main(["eval", "mqar", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and err.startswith("deltanet eval mqar: error:")


def test_command_writes_rows_and_table(tmp_path, capsys):
    argv = ["eval", "mqar", "--device", "cpu", "--models", "deltanet", "transformer++", "--dims", "16",
            "--seq-len", "16", "--kv-pairs", "2", "--vocab", "16", "--train-mix", "8:1,16:2", "--steps", "3",
            "--batch-size", "4", "--eval-every", "2", "--test-examples", "8", "--lrs", "1e-3", "--out",
            str(tmp_path)]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["dim"], r["steps"]) for r in rows] == [("deltanet", 16, 3),
                                                                   ("transformer++", 16, 3)]
    assert [h["step"] for h in rows[0]["history"]] == [2, 3]
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert "| deltanet |" in table and "| transformer++ |" in table
    capsys.readouterr()
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write('{"model": "deltanet", "dim"')  # a line cut short by a kill is skipped
    assert cli.main(["eval", "mqar", "--out", str(tmp_path), "--report-only"]) == 0
    assert capsys.readouterr().out.strip() == table.strip()
    (tmp_path / "results.jsonl").write_text('{"loss": 1.0}\n')  # not this command's rows: one line, status 2
    assert cli.main(["eval", "mqar", "--out", str(tmp_path), "--report-only"]) == 2
    assert "is not a row" in capsys.readouterr().err


def test_deltanet_recalls_better_than_linear_attention():
    """The paper's MQAR ordering at a CPU size: 2 layers, width 32 (2 heads of 16), no convolution, 32
    tokens with 6 pairs, vocabulary 64. After 400 steps DeltaNet answered 21.9% of the queries and linear
    attention 17.1% (chance: 1/32) on 2026-11-27; at the paper's size on an H100 the gap is 54% against 2%
    (docs/results.md). The margin asserted here, 2 points, is ~1.4 standard errors of the difference of two
    accuracies near 0.2 over 1536 test queries each: the run is deterministic on one thread, and the
    assertion fails if a change to the model, the ops or the generator costs DeltaNet its lead."""
    task = mqar.MQARTask(seq_len=32, num_kv_pairs=6, vocab_size=64)
    settings = mqar.RunSettings(steps=400, batch_size=64, test_examples=256, eval_every=400)
    test_set = mqar.make_examples(task, settings.test_examples, torch.Generator().manual_seed(12345))
    mix = mqar.parse_mix("16:2,32:4,32:6", task)
    accuracy = {}
    for name in ("deltanet", "linear-attn"):
        row = mqar.train_one(name, 32, 1e-2, task, settings, 2, torch.device("cpu"), test_set,
                             train_tasks=mix)
        accuracy[name] = row["test_accuracy"]
    assert accuracy["deltanet"] > 3 / 32  # it learned something: three times chance
    assert accuracy["deltanet"] > accuracy["linear-attn"] + 0.02, accuracy


def test_a_diverged_run_is_marked_and_the_next_one_goes_on():
    """lr 1e12 turns the loss into NaN within two steps: the row says diverged, scores 0, and the table says
    so; run() goes on to the next rate."""
    task = mqar.MQARTask(seq_len=16, num_kv_pairs=2, vocab_size=16)
    settings = mqar.RunSettings(steps=6, batch_size=4, test_examples=8, eval_every=2)
    test_set = mqar.make_examples(task, 8, torch.Generator().manual_seed(0))
    row = mqar.train_one("transformer++", 16, 1e12, task, settings, 2, torch.device("cpu"), test_set)
    assert row["diverged"] and row["steps"] == 2 and row["test_accuracy"] == 0.0
    assert "diverged" in mqar.format_table([row])
    healthy = mqar.train_one("transformer++", 16, 1e-3, task, settings, 2, torch.device("cpu"), test_set)
    assert not healthy["diverged"] and healthy["steps"] == 6


def test_table_keeps_head_counts_apart():
    """Rows of one model at two head counts (one results.jsonl shared by runs with --heads 1 and 2): one
    table line per head count, each with its best rate, rather than the best of both under one name."""
    def row(heads, dim, lr, accuracy):
        return {"model": "deltanet", "heads": heads, "dim": dim, "lr": lr, "steps": 100,
                "test_accuracy": accuracy}

    rows = [row(2, 64, 1e-3, 0.63), row(2, 64, 5e-4, 0.59), row(1, 64, 1e-3, 0.72), row(2, 128, 2e-3, 0.58)]
    lines = mqar.format_table(rows).splitlines()
    assert lines[2] == "| deltanet, 2 heads | 63.0% (lr 0.001, 100 steps) | 58.0% (lr 0.002, 100 steps) |"
    assert lines[3] == "| deltanet, 1 head | 72.0% (lr 0.001, 100 steps) |  |"
    one_count = mqar.format_table(rows[:2])  # a single head count: the plain model name
    assert one_count.splitlines()[2].startswith("| deltanet | 63.0% (lr 0.001")
