"""deltanet eval harness: the lm-eval model wrapper (DeltaNetLM) against an independent float64 computation,
and the command end to end on a local task (tests/data/harness, no download).

The wrapper and the references run the same float64 model: its batches are left padded and cut into
windows, the references are one unpadded forward per text, so any difference beyond float64 rounding is a
wrong padding mask, a misplaced continuation or a state lost between windows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'deltanet[harness]')")

from lm_eval.api.instance import Instance  # noqa: E402

from deltanet.cli import main  # noqa: E402
from deltanet.eval import harness  # noqa: E402
from deltanet.eval.harness import DeltaNetLM  # noqa: E402
from deltanet.eval.loading import load_model  # noqa: E402
from deltanet.models import DeltaNetForCausalLM  # noqa: E402
from deltanet.models.presets import preset_config  # noqa: E402

DATA = Path(__file__).parent / "data" / "harness"
TASK = "deltanet_tiny_choice"  # tests/data/harness/tiny_choice.yaml: 12 three-way questions
# float64 throughout: the wrapper's padded, batched sums against one plain forward differ by rounding only
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("harness") / "debug"
    DeltaNetForCausalLM(preset_config("deltanet-debug")).save_pretrained(folder)  # bytes: vocab 256
    return folder


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(str(checkpoint), "cpu", "float64")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub look-ups and a throwaway datasets cache (datasets reads both from its config at call time)."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def log_probs(model, ids: list[int]) -> torch.Tensor:
    """float64 [len(ids), vocab]: ln p of the next token after each of `ids`, one unpadded forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


def reference_loglikelihood(model, context: bytes, continuation: bytes, max_length: int) -> float:
    """Bytes are tokens: the continuation after the context, the whole cut to max_length inputs."""
    tokens = list(context + continuation)[-(max_length + 1):]
    scores = log_probs(model, tokens[:-1])[-len(continuation):]  # the continuation's predictions
    return float(scores.gather(1, torch.tensor(list(continuation))[:, None]).sum())


def test_loglikelihood_matches_one_forward(loaded):
    max_length = 24
    lm = DeltaNetLM(loaded.model, loaded.tokenizer, batch_size=3, max_length=max_length, progress=False)
    pairs = [
        ("The capital of France is", " Paris"),
        ("Question: 2 + 2 = ? Answer: ", "4"),  # the context's space belongs to the continuation
        ("café", " au lait"),  # a two-byte character
        ("x" * 40 + " and then", " more"),  # 54 tokens: the context is cut from the left
        ("", "hello"),  # no context: "h" is given, "ello" scored
        ("a", "b"),
        ("Long continuation:", " " + "y" * 30),  # longer than max_length: scored whole, one context token
    ]
    results = lm.loglikelihood([request("loglikelihood", *pair) for pair in pairs], disable_tqdm=True)
    expected = [
        reference_loglikelihood(loaded.model, b"The capital of France is", b" Paris", max_length),
        reference_loglikelihood(loaded.model, b"Question: 2 + 2 = ? Answer:", b" 4", max_length),
        reference_loglikelihood(loaded.model, "café".encode(), b" au lait", max_length),
        reference_loglikelihood(loaded.model, b"x" * 40 + b" and then", b" more", max_length),
        reference_loglikelihood(loaded.model, b"h", b"ello", max_length),
        reference_loglikelihood(loaded.model, b"a", b"b", max_length),
        reference_loglikelihood(loaded.model, b":", b" " + b"y" * 30, 31),
    ]
    for (context, continuation), (score, _), want in zip(pairs, results, expected):
        assert abs(score - want) <= TOLERANCE * max(1.0, abs(want)), (context, continuation, score, want)
    assert all(isinstance(greedy, bool) for _, greedy in results)


def test_is_greedy_for_the_models_own_argmax(loaded):
    lm = DeltaNetLM(loaded.model, loaded.tokenizer, batch_size=4, progress=False)
    context = list(b"Once upon a time")
    greedy = []
    for _ in range(6):  # the argmax continuation, one full forward per token
        greedy.append(int(log_probs(loaded.model, context + greedy)[-1].argmax()))
    runner_up = int(log_probs(loaded.model, context + greedy[:3])[-1].argsort()[-2])
    pairs = [
        (context, greedy),
        (context, greedy[:1]),
        (context, greedy[:3] + [runner_up]),  # the last token is not the argmax
        (context, [(greedy[0] + 1) % 256] + greedy[1:]),  # nor is the first
    ]
    results = lm.loglikelihood_tokens(pairs, disable_tqdm=True)
    assert [is_greedy for _, is_greedy in results] == [True, True, False, False]
    assert results[0][0] > results[3][0]


def test_loglikelihood_rolling_matches_one_pass(loaded):
    lm = DeltaNetLM(loaded.model, loaded.tokenizer, max_length=16, progress=False)
    texts = [
        "The delta rule updates a fast-weight memory, one key at a time, and corrects what it recalls."[:83],
        "x",  # one token: nothing to score
        "short text",  # one window
    ]
    results = lm.loglikelihood_rolling([request("loglikelihood_rolling", text) for text in texts],
                                       disable_tqdm=True)
    for text, score in zip(texts, results):
        ids = list(text.encode())
        if len(ids) < 2:
            assert score == 0.0
            continue
        # 82 inputs in windows of 16 (the last of 2) against one forward over all of them
        want = float(log_probs(loaded.model, ids[:-1]).gather(1, torch.tensor(ids[1:])[:, None]).sum())
        assert abs(score - want) <= TOLERANCE * abs(want), (text, score, want)


def test_generate_until_is_greedy_and_stops(loaded):
    lm = DeltaNetLM(loaded.model, loaded.tokenizer, batch_size=3, progress=False)
    prompts = ["Hello", "A longer prompt, padded less", "1 2 3"]
    expected = []
    for prompt in prompts:  # greedy, one full forward per token
        ids = list(prompt.encode())
        new = []
        for _ in range(12):
            new.append(int(log_probs(loaded.model, ids + new)[-1].argmax()))
        expected.append(loaded.tokenizer.decode(new))
    # a stop string: the first character after the third that is plain ASCII, cut before it
    stop = next(char for char in expected[0][3:] if char.isascii())
    requests = [request("generate_until", prompt, {"until": [], "max_gen_toks": 12}) for prompt in prompts]
    requests.append(request("generate_until", prompts[0], {"until": [stop], "max_gen_toks": 12}))
    texts = lm.generate_until(requests, disable_tqdm=True)
    assert texts[:3] == expected
    assert texts[3] == expected[0][:expected[0].index(stop)]


def test_command_runs_a_local_task(checkpoint, offline, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(DATA)  # lm-eval reads data_files relative to the working directory
    out = tmp_path / "results.json"
    status = main(["eval", "harness", str(checkpoint), "--tasks", TASK, "--include-path", str(DATA),
                   "--limit", "5", "--batch-size", "4", "--device", "cpu", "--json", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert TASK in printed and "acc" in printed  # lm-eval's table
    import json

    results = json.loads(out.read_text())
    assert 0.0 <= results["results"][TASK]["acc,none"] <= 1.0
    assert results["n-samples"][TASK] == {"original": 12, "effective": 5}
    assert results["config"]["model_source"] == str(checkpoint)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unknown_task_is_one_line(checkpoint, offline, capsys):
    status = main(["eval", "harness", str(checkpoint), "--tasks", "hellaswagg", "--include-path", str(DATA)])
    assert status == 2
    message = one_line_error(capsys)
    assert message.startswith("deltanet eval harness: error: unknown task 'hellaswagg'")
    assert "hellaswag" in message.split("did you mean", 1)[1] and "lm-eval ls tasks" in message


BROKEN_TASKS = {
    "syntax": ("task: broken\ndataset_path: json\n  dataset_kwargs: [\n", "line 3"),
    "no data": ("task: broken\noutput_type: multiple_choice\n", "no dataset_path"),
    "unknown setting": ((DATA / "tiny_choice.yaml").read_text().replace("doc_to_text", "doc_to_txt")
                        .replace(TASK, "broken"), "doc_to_txt"),
}


@pytest.mark.parametrize("case", BROKEN_TASKS)
def test_broken_task_file_is_one_line(case, checkpoint, offline, monkeypatch, tmp_path, capsys):
    text, expected = BROKEN_TASKS[case]
    (tmp_path / "broken.yaml").write_text(text)
    monkeypatch.chdir(DATA)
    status = main(["eval", "harness", str(checkpoint), "--tasks", "broken", "--include-path", str(tmp_path)])
    assert status == 2
    message = one_line_error(capsys)
    assert message.startswith("deltanet eval harness: error:") and str(tmp_path / "broken.yaml") in message
    assert expected in message


def test_missing_checkpoint_and_missing_lm_eval(checkpoint, monkeypatch, tmp_path, capsys):
    status = main(["eval", "harness", str(tmp_path / "nothing"), "--tasks", TASK])
    assert status == 2 and "does not exist" in one_line_error(capsys)
    monkeypatch.setattr(harness, "LM", object)  # as when the import of lm_eval failed
    status = main(["eval", "harness", str(checkpoint), "--tasks", TASK])
    assert status == 2 and 'pip install "deltanet[harness]"' in one_line_error(capsys)
