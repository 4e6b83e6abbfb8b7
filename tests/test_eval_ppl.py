"""`deltanet eval ppl` (deltanet.eval.perplexity) on the CPU with debug models.

Windows that carry the cache give the NLL of one whole-document forward, for DeltaNet, Transformer++ and the
sliding-window hybrid, at window sizes that do not divide the length and at 1, with documents of different
lengths side by side; windows that reset the state score the same targets with less context; bits per byte
follow from the NLL and the bytes of the targets (byte and Hugging Face tokenizers, EOS included as training
does); a run's checkpoint is evaluated on its own held-out files by default; bad input is one line, status 2.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train_tokenizers import make_local_hf_tokenizer

from deltanet.cli import main as cli_main
from deltanet.eval.perplexity import score_documents
from deltanet.models import DeltaNetForCausalLM
from deltanet.models.presets import preset_config
from deltanet.train.config import TrainConfig
from deltanet.train.tokenizers import load_tokenizer

PRESETS = ["deltanet-debug", "transformer++-debug", "deltanet-swa-debug"]  # swa: a window of 16 tokens

# float64 bound on |NLL sum of the windows - NLL sum of the whole pass| / NLL sum. The two compute the same
# function in a different order (the chunked delta rule's chunks of 64 cut at other places, attention over
# cached keys concatenated with the new ones): observed ~1e-15, a few float64 epsilons (2.2e-16) per op.
# 1e-12 leaves three orders of magnitude for other machines, while a state lost or misplaced between
# windows (a dropped conv input, a rotary position off by one) changes the sum by more than 1e-4 (the
# no-carry check below shows the scale).
FLOAT64_BOUND = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_model(preset: str, seed: int = 0) -> DeltaNetForCausalLM:
    torch.manual_seed(seed)
    return DeltaNetForCausalLM(preset_config(preset)).double().eval()


def whole_document_nll(model, ids: torch.Tensor) -> float:
    """Independent reference: one forward over the whole document, no cache; -log p of tokens 1..L-1."""
    ids = ids.long()[None]
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits  # (1, L, V)
    log_probs = F.log_softmax(logits[0, :-1].double(), dim=-1)
    return -float(log_probs.gather(1, ids[0, 1:, None]).sum())


def run_ppl(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["eval", "ppl", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("preset", PRESETS)
def test_carried_windows_equal_one_whole_document_pass(preset):
    model = random_model(preset)
    generator = torch.Generator().manual_seed(1)
    documents = [torch.randint(0, 256, (length,), generator=generator) for length in (100, 38, 64)]
    expected = [whole_document_nll(model, ids) for ids in documents]

    # one document: 99 inputs in windows of 37 (37 + 37 + 25), of 1, and in a single window
    for window in (37, 1, 2048):
        score = score_documents(model, documents[:1], window=window)
        assert score.targets == 99 and score.documents == 1
        error = abs(score.nll_sum - expected[0]) / expected[0]
        assert error <= FLOAT64_BOUND, f"window {window}: relative error {error:.1e}"

    # three documents side by side: the shorter ones end inside a window (padded), then leave the batch
    score = score_documents(model, documents, window=37, batch_size=3)
    assert score.targets == 99 + 37 + 63 and score.documents == 3
    error = abs(score.nll_sum - sum(expected)) / sum(expected)
    assert error <= FLOAT64_BOUND, f"batch of 3: relative error {error:.1e}"

    # without the carried state the same targets see less context: another NLL, by far more than the bound
    reset = score_documents(model, documents[:1], window=10, carry_state=False)
    assert reset.targets == 99
    assert abs(reset.nll_sum - expected[0]) / expected[0] > 1e4 * FLOAT64_BOUND


def test_windows_without_state_lose_the_context_that_structured_text_needs():
    """A DeltaNet fitted to a period-8 pattern of two symbols, whose next symbol takes the last 3 to tell:
    with its state carried it predicts the text almost surely; windows of 2 tokens without it cannot."""
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(preset_config("deltanet-debug"))
    document = torch.tensor(list(b"aababbab" * 6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        loss = model(input_ids=document[None], labels=document[None], use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    carried = score_documents(model, [document], window=2)
    reset = score_documents(model, [document], window=2, carry_state=False)
    carried_nll, reset_nll = carried.nll_sum / carried.targets, reset.nll_sum / reset.targets
    assert carried_nll < 0.1 and reset_nll > 0.5, (carried_nll, reset_nll)


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    DeltaNetForCausalLM(preset_config("deltanet-swa-debug")).save_pretrained(folder)
    return folder


def test_bits_per_byte_of_a_byte_tokenizer(tmp_path, capsys, byte_checkpoint):
    texts = {"a.txt": "héllo wörld, 日本 😀\n", "b.txt": "x", "c.txt": "def f(x):\n    return x * 2\n"}
    data = tmp_path / "data"
    data.mkdir()
    for name, text in texts.items():
        (data / name).write_text(text, encoding="utf-8")
    out = tmp_path / "ppl.json"
    code, stdout, _ = run_ppl(capsys, str(byte_checkpoint), "--data", str(data), "--split", "all", "--window",
                              "7", "--dtype", "float64", "--device", "cpu", "--json", str(out))
    assert code == 0
    results = json.loads(out.read_text())

    model = DeltaNetForCausalLM.from_pretrained(byte_checkpoint, dtype=torch.float64).eval()
    scored = [text.encode("utf-8") for text in texts.values() if len(text.encode("utf-8")) >= 2]  # not "x"
    nll_sum = sum(whole_document_nll(model, torch.tensor(list(raw))) for raw in scored)
    num_bytes = sum(len(raw) - 1 for raw in scored)  # every byte but each document's first is a target
    assert results["documents"] == 2 and results["tokens"] == results["bytes"] == num_bytes
    assert abs(results["nll_sum"] - nll_sum) <= FLOAT64_BOUND * nll_sum
    assert results["nll"] == pytest.approx(nll_sum / num_bytes, rel=1e-12)
    assert results["perplexity"] == pytest.approx(math.exp(nll_sum / num_bytes), rel=1e-12)
    assert results["bits_per_byte"] == pytest.approx(nll_sum / math.log(2) / num_bytes, rel=1e-12)
    header, row = stdout.strip().splitlines()
    assert "bits per byte" in header and f"{results['bits_per_byte']:.4f}" in row

    # the limits: 10 targets, cut from the first document; one document
    code, _, _ = run_ppl(capsys, str(byte_checkpoint), "--data", str(data), "--split", "all", "--max-tokens",
                         "10", "--json", str(out))
    assert code == 0 and json.loads(out.read_text())["tokens"] == 10
    code, _, _ = run_ppl(capsys, str(byte_checkpoint), "--data", str(data), "--split", "all",
                         "--max-documents", "1", "--json", str(out))
    assert code == 0 and json.loads(out.read_text())["documents"] == 1


def test_hugging_face_tokenizer_scores_eos_and_counts_the_targets_bytes(tmp_path, capsys):
    """Documents end with EOS as in training: it is a target (the model learns where text ends) that
    stands for no bytes; the first token is no target, so its bytes are not counted either."""
    folder = make_local_hf_tokenizer(tmp_path / "model")
    tokenizer = load_tokenizer(str(folder))
    torch.manual_seed(0)
    config = preset_config("deltanet-debug", vocab_size=tokenizer.vocab_size)
    DeltaNetForCausalLM(config).save_pretrained(folder)
    text = "the quick brown fox jumps over the lazy dog, héllo wörld"
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "ppl.json"
    code, _, _ = run_ppl(capsys, str(folder), "--data", str(tmp_path / "doc.txt"), "--split", "all",
                         "--window", "5", "--dtype", "float64", "--json", str(out))
    assert code == 0
    results = json.loads(out.read_text())

    ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
    model = DeltaNetForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    nll_sum = whole_document_nll(model, torch.tensor(ids))
    first_token_bytes = len(tokenizer.decode(ids[:1]).encode("utf-8"))
    assert results["tokens"] == len(ids) - 1
    assert results["bytes"] == len(text.encode("utf-8")) - first_token_bytes
    assert abs(results["nll_sum"] - nll_sum) <= FLOAT64_BOUND * nll_sum
    assert results["bits_per_byte"] == pytest.approx(nll_sum / math.log(2) / results["bytes"], rel=1e-12)


def test_a_runs_checkpoint_is_evaluated_on_its_own_held_out_files(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    names = [f"doc{i:02d}.txt" for i in range(30)]
    for name in names:
        (data / name).write_text(f"{name}: some text of its own\n", encoding="utf-8")
    valid_percent = 20.0
    # held out as open_corpus promises: crc32 of the relative path (or the last file if none is)
    held_out = [name for name in names if zlib.crc32(name.encode()) % 10000 < valid_percent * 100]
    assert 0 < len(held_out) < len(names)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000005"
    torch.manual_seed(0)
    DeltaNetForCausalLM(preset_config("deltanet-debug")).save_pretrained(checkpoint)
    settings = TrainConfig(data=[str(data)], valid_percent=valid_percent).to_dict()
    (checkpoint / "train_config.json").write_text(json.dumps(settings))

    out = tmp_path / "ppl.json"
    code, _, err = run_ppl(capsys, str(tmp_path / "run"), "--json", str(out))  # the run's folder
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["data"] == [str(data)] and results["split"] == "valid"
    assert results["checkpoint"] == str(checkpoint)
    assert results["documents"] == len(held_out)
    assert results["tokens"] == sum(len(f"{name}: some text of its own\n") - 1 for name in held_out)

    code, _, _ = run_ppl(capsys, str(tmp_path / "run"), "--split", "train", "--json", str(out))
    assert code == 0 and json.loads(out.read_text())["documents"] == len(names) - len(held_out)


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, byte_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("some text\n")
    (tmp_path / "empty").mkdir()
    cases = {
        "missing checkpoint": ([str(tmp_path / "nowhere" / "model"), "--data", str(data)], "does not exist"),
        "not a model": ([str(tmp_path / "empty"), "--data", str(data)], "is not a model"),
        "no data found": ([str(byte_checkpoint), "--data", str(tmp_path / "empty")], "no files"),
        "no data given": ([str(byte_checkpoint)], "--data"),
        "window 0": ([str(byte_checkpoint), "--data", str(data), "--window", "0"], "--window"),
        "nothing held out": ([str(byte_checkpoint), "--data", str(data), "--valid-percent", "0"],
                             "--split all"),
        "max tokens 0": ([str(byte_checkpoint), "--data", str(data), "--max-tokens", "0"], "--max-tokens"),
    }
    for case, (args, expected) in cases.items():
        code, _, err = run_ppl(capsys, *args)
        assert code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deltanet eval ppl: error:"), (case, err)
        assert expected in lines[0], (case, lines[0])
