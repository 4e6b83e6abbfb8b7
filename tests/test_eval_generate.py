"""`deltanet generate` (deltanet.eval.generate) on the CPU with debug models.

Greedy decoding with the cache equals a loop that recomputes the whole forward for every token; sampling is
reproducible from its seed and keeps to the nucleus; what is streamed adds up to exactly the text, and never
shows U+FFFD for a character whose bytes are still coming; generation stops at EOS; bad input is one line
and status 2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from test_train_tokenizers import make_local_sentencepiece_tokenizer

from deltanet.cli import main as cli_main
from deltanet.eval.generate import TextStream, generate, next_token
from deltanet.eval.loading import LoadedModel
from deltanet.models import DeltaNetForCausalLM
from deltanet.models.presets import preset_config
from deltanet.train.tokenizers import ByteTokenizer, load_tokenizer

PROMPT = "The delta rule: S = S - β k (kᵀS - v)ᵀ. "  # multi-byte characters (β, ᵀ)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Random debug models saved with save_pretrained: a DeltaNet and the hybrid with a sliding window of 16
    tokens (shorter than prompt + generation, so that the attention cache drops keys while decoding)."""
    folders = {}
    for preset in ("deltanet-debug", "deltanet-swa-debug"):
        folder = tmp_path_factory.mktemp(preset)
        torch.manual_seed(0)
        DeltaNetForCausalLM(preset_config(preset)).save_pretrained(folder)
        folders[preset] = folder
    return folders


def run_generate(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("preset", ["deltanet-debug", "deltanet-swa-debug"])
def test_greedy_equals_a_full_forward_argmax_loop(tmp_path, capsys, checkpoints, preset):
    out = tmp_path / "generation.json"
    code, _, err = run_generate(capsys, str(checkpoints[preset]), "--prompt", PROMPT, "--greedy",
                                "--max-new-tokens", "40", "--dtype", "float64", "--device", "cpu",
                                "--json", str(out))
    assert code == 0, err
    generated = json.loads(out.read_text())["token_ids"]

    # the reference: no cache, the whole sequence again for every token, the last position's argmax
    model = DeltaNetForCausalLM.from_pretrained(checkpoints[preset], dtype=torch.float64).eval()
    ids = list(PROMPT.encode("utf-8"))
    expected = []
    with torch.no_grad():
        for _ in range(40):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            top2 = logits.topk(2).values
            assert top2[0] - top2[1] > 1e-9, "a near-tie: the comparison would test round-off, not decoding"
            expected.append(int(logits.argmax()))
            ids.append(expected[-1])
    assert generated == expected


def test_temperature_0_is_greedy_and_the_nucleus_keeps_the_most_probable_tokens():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert next_token(logits, 0.0, 0.95, None).tolist() == [1]
    # probabilities at temperature 1: 0.032, 0.644, 0.087, 0.237; top-p 0.8 keeps tokens 1 and 3 (0.88)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([next_token(logits, 1.0, 0.8, generator) for _ in range(4000)]).flatten()
    counts = torch.bincount(draws, minlength=4).double() / draws.numel()
    probs = torch.softmax(logits[0].double(), dim=0)
    kept = probs[[1, 3]] / probs[[1, 3]].sum()  # renormalised: 0.731, 0.269
    assert counts[0] == 0 and counts[2] == 0
    # 4000 draws: standard error sqrt(0.73 * 0.27 / 4000) = 0.007; 0.03 is above 4 of them
    assert abs(counts[1] - kept[0]) < 0.03 and abs(counts[3] - kept[1]) < 0.03


def test_sampling_is_reproducible_from_its_seed(checkpoints):
    model = DeltaNetForCausalLM.from_pretrained(checkpoints["deltanet-debug"]).eval()
    prompt = list(PROMPT.encode("utf-8"))
    first = generate(model, prompt, 30, temperature=1.0, top_p=0.9, seed=0).token_ids
    again = generate(model, prompt, 30, temperature=1.0, top_p=0.9, seed=0).token_ids
    other = generate(model, prompt, 30, temperature=1.0, top_p=0.9, seed=1).token_ids
    assert first == again and len(first) == 30
    assert first != other
    # a nucleus smaller than any single token's probability leaves the argmax alone: greedy
    assert generate(model, prompt, 30, temperature=1.0, top_p=1e-6, seed=0).token_ids == \
        generate(model, prompt, 30, temperature=0.0).token_ids


class ScriptedModel(torch.nn.Module):
    """Predicts, after any input, the next token of a fixed script (one-hot logits): a stand-in for a model
    that writes a known text."""

    def __init__(self, script: list[int], vocab_size: int = 256):
        super().__init__()
        self.script, self.vocab_size, self.position = script, vocab_size, 0
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device and a dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def new_cache(self):
        self.position = 0
        return None

    def forward(self, input_ids, cache=None, use_cache=True, logits_to_keep=1):
        logits = torch.full((input_ids.shape[0], 1, self.vocab_size), -1e4)
        logits[:, :, self.script[min(self.position, len(self.script) - 1)]] = 0
        self.position += 1
        return type("Output", (), {"logits": logits})


class RecordingStdout(io.StringIO):
    """sys.stdout that keeps each write apart: what the user saw appear, piece by piece."""

    def __init__(self):
        super().__init__()
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        self.pieces.append(text)
        return super().write(text)

    def isatty(self) -> bool:
        return False


def test_streamed_pieces_add_up_to_the_text_and_wait_for_whole_characters(tmp_path, monkeypatch, capsys):
    text = "naïve café — 日本語 😀 ok"  # characters of 2, 3 and 4 bytes
    script = list(text.encode("utf-8"))
    loaded = LoadedModel(ScriptedModel(script), ByteTokenizer(), "scripted", torch.device("cpu"),
                         torch.float32)
    monkeypatch.setattr("deltanet.eval.generate.load_model", lambda *args, **kwargs: loaded)
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    out = tmp_path / "generation.json"
    code = cli_main(["generate", "scripted", "--prompt", "π ", "--greedy", "--max-new-tokens",
                     str(len(script)), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert stdout.getvalue() == text
    assert not any("\ufffd" in piece for piece in stdout.pieces)
    assert len([piece for piece in stdout.pieces if piece]) == len(text)  # each character once it is whole
    figures = json.loads(out.read_text())
    assert figures["text"] == text and figures["token_ids"] == script
    assert figures["generated_tokens"] == len(script)


def test_stream_of_a_random_model_is_exactly_its_decoded_tokens(tmp_path, capsys, checkpoints):
    """Random bytes: invalid UTF-8 included, shown as U+FFFD as the byte tokenizer decodes it."""
    out = tmp_path / "generation.json"
    code, stdout, err = run_generate(capsys, str(checkpoints["deltanet-debug"]), "--prompt", PROMPT,
                                     "--max-new-tokens", "50", "--seed", "3", "--json", str(out))
    assert code == 0
    figures = json.loads(out.read_text())
    assert stdout == ByteTokenizer().decode(figures["token_ids"]) == figures["text"]
    assert figures["prompt_tokens"] == len(PROMPT.encode("utf-8")) and figures["generated_tokens"] == 50
    assert figures["decode_steps"] == 49 and figures["decode_tokens_per_second"] > 0
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"prompt: {figures['prompt_tokens']} tokens, prefill") and "tokens/s" in summary


def test_text_stream_keeps_the_spaces_that_sentencepiece_spells_in_its_tokens(tmp_path):
    """A SentencePiece tokenizer (byte fallback, a decoder that strips a text's first space): decoded
    alone, a continuation would lose its leading space and show a character's byte tokens as U+FFFD."""
    tokenizer = load_tokenizer(str(make_local_sentencepiece_tokenizer(tmp_path / "tokenizer", "llama")))
    ids = tokenizer.encode("the quick brown fox 日本 😀 jumps over the lazy dog")
    cut = 2  # the prompt: the first two tokens
    stream = TextStream(tokenizer, ids[:cut])
    pieces = [stream.push(token) for token in ids[cut:]] + [stream.finish()]
    assert "".join(pieces) == tokenizer.decode(ids)[len(tokenizer.decode(ids[:cut])):]
    assert "".join(pieces).startswith(" ") and not any("\ufffd" in piece for piece in pieces)


def test_text_stream_shows_invalid_and_unfinished_bytes_as_the_decoder_does():
    stream = TextStream(ByteTokenizer(), list(b"ab"))
    assert stream.push(0xFF) == ""  # invalid, or unfinished: not known yet
    assert stream.push(ord("c")) == "\ufffdc"  # invalid after all: shown with the next character
    assert stream.push(0xE6) == "" and stream.push(0x97) == ""  # 2 of the 3 bytes of 日
    assert stream.finish() == "\ufffd"  # stopped before its last byte


def test_generation_stops_at_eos_and_does_not_print_it(monkeypatch, capsys):
    class ByteTokenizerWithEos(ByteTokenizer):
        eos_token_id = 0

    script = list(b"stop here") + [0] + list(b"never")
    model = ScriptedModel(script)
    result = generate(model, [65], max_new_tokens=30, eos_token_id=0)
    assert result.token_ids == script[:10] and result.stopped_at_eos

    loaded = LoadedModel(ScriptedModel(script), ByteTokenizerWithEos(), "scripted", torch.device("cpu"),
                         torch.float32)
    monkeypatch.setattr("deltanet.eval.generate.load_model", lambda *args, **kwargs: loaded)
    code, stdout, err = run_generate(capsys, "scripted", "--prompt", "A", "--max-new-tokens", "30")
    assert code == 0 and stdout == "stop here" and "stopped at end-of-sequence" in err


def test_prompt_from_stdin(monkeypatch, capsys):
    loaded = LoadedModel(ScriptedModel(list(b"ok")), ByteTokenizer(), "scripted", torch.device("cpu"),
                         torch.float32)
    monkeypatch.setattr("deltanet.eval.generate.load_model", lambda *args, **kwargs: loaded)
    monkeypatch.setattr("sys.stdin", io.StringIO("a piped prompt"))
    code, stdout, err = run_generate(capsys, "scripted", "--max-new-tokens", "2", "--greedy")
    assert code == 0 and stdout == "ok"
    assert "prompt: 14 tokens" in err


class TerminalStdin(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bad_input_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, checkpoints):
    checkpoint = str(checkpoints["deltanet-debug"])
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "not-a-model").mkdir()
    monkeypatch.setattr("sys.stdin", TerminalStdin())
    cases = {
        "missing checkpoint": ([str(tmp_path / "nowhere" / "model"), "--prompt", "a"], "does not exist"),
        "folder that is not a model": ([str(tmp_path / "not-a-model"), "--prompt", "a"], "is not a model"),
        "empty prompt file": ([checkpoint, "--prompt-file", str(tmp_path / "empty.txt")], "is empty"),
        "missing prompt file": ([checkpoint, "--prompt-file", str(tmp_path / "none.txt")], "--prompt-file"),
        "no prompt at a terminal": ([checkpoint], "--prompt"),
        "negative temperature": ([checkpoint, "--prompt", "a", "--temperature", "-1"], "--temperature"),
        "infinite temperature": ([checkpoint, "--prompt", "a", "--temperature", "inf"], "--temperature"),
        "top-p 0": ([checkpoint, "--prompt", "a", "--top-p", "0"], "--top-p"),
        "top-p above 1": ([checkpoint, "--prompt", "a", "--top-p", "1.5"], "--top-p"),
        "no new tokens": ([checkpoint, "--prompt", "a", "--max-new-tokens", "0"], "--max-new-tokens"),
        "bad dtype": ([checkpoint, "--prompt", "a", "--dtype", "float8"], "--dtype"),
    }
    for case, (args, expected) in cases.items():
        code, stdout, err = run_generate(capsys, *args)
        assert code == 2 and stdout == "", case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deltanet generate: error:"), (case, err)
        assert expected in lines[0], (case, lines[0])

    # argparse's own: both prompt options
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["generate", checkpoint, "--prompt", "a", "--prompt-file", str(tmp_path / "empty.txt")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--prompt" in lines[0]


def test_figures_are_consistent(tmp_path, capsys, checkpoints):
    out = tmp_path / "generation.json"
    code, _, err = run_generate(capsys, str(checkpoints["deltanet-swa-debug"]), "--prompt", PROMPT,
                                "--max-new-tokens", "8", "--json", str(out))
    assert code == 0
    figures = json.loads(out.read_text())
    # 8 tokens: the first comes from the prefill's logits, the other 7 from single-token steps (the speed)
    assert figures["generated_tokens"] == len(figures["token_ids"]) == 8 and figures["decode_steps"] == 7
    assert figures["prompt_tokens"] == len(PROMPT.encode())
    assert 0 < figures["prefill_seconds"] and 0 < figures["decode_seconds"]
    # the line on stderr says what the JSON says
    line = err.strip().splitlines()[-1]
    assert f"prompt: {figures['prompt_tokens']} tokens" in line
    assert "generated 8 tokens, decode 7 steps" in line
    assert f"({figures['decode_tokens_per_second']:.1f} tokens/s)" in line
    assert figures["temperature"] == 0.8 and figures["top_p"] == 0.95 and figures["seed"] == 0


def test_a_tokenizer_smaller_than_the_output_layer_only_gets_its_own_ids(tmp_path, capsys):
    """A model with 300 output ids read with --tokenizer bytes: ids 256..299 stand for no byte and must never
    be chosen (sampled or greedy), whatever their logits. Here half of them get a logit of about +-1000 from
    the final norm's one remaining channel, so one half wins every draw unless they are left out."""
    model = DeltaNetForCausalLM(preset_config("deltanet-debug", vocab_size=300))
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0  # hidden = (x_0 / rms(x), 0, ..., 0)
        model.lm_head.weight[256:] = 0
        model.lm_head.weight[256:278, 0] = 1e3
        model.lm_head.weight[278:, 0] = -1e3
    model.save_pretrained(tmp_path / "wide")
    for options in (["--greedy"], ["--temperature", "1.0", "--top-p", "1.0"]):
        out = tmp_path / "generation.json"
        code, _, err = run_generate(capsys, str(tmp_path / "wide"), "--tokenizer", "bytes", "--prompt", "ab",
                                    "--max-new-tokens", "12", "--device", "cpu", "--json", str(out), *options)
        assert code == 0, err
        ids = json.loads(out.read_text())["token_ids"]
        assert len(ids) == 12 and max(ids) < 256


def test_a_mistyped_run_folder_is_a_missing_path_not_a_hub_name(tmp_path, monkeypatch, capsys):
    """'runs/typo' beside an existing runs/ fails at once as a path, without asking the Hugging Face hub."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained",
                        lambda *a, **k: pytest.fail("the hub was asked for a local path"))
    code, _, err = run_generate(capsys, "runs/typo", "--prompt", "a")
    assert code == 2
    assert err.strip() == "deltanet generate: error: no such checkpoint: 'runs/typo' does not exist"
