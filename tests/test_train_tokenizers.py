"""deltanet.train.tokenizers: bytes and Hugging Face tokenizers, and their use by PackedRows."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import assert_one_line, expected_stream, write_texts

from deltanet.train.corpus import open_corpus
from deltanet.train.errors import DataError
from deltanet.train.packing import PackedRows
from deltanet.train.tokenizers import ByteTokenizer, HuggingFaceTokenizer, load_tokenizer


def test_byte_tokenizer_round_trip():
    tokenizer = load_tokenizer("bytes")
    assert isinstance(tokenizer, ByteTokenizer)
    assert (tokenizer.name, tokenizer.vocab_size) == ("bytes", 256)
    text = "héllo wörld — 日本語 😀\n\ttabs"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert len(ids) > len(text)  # multi-byte characters are several tokens
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_tensor(text).tolist() == ids
    assert tokenizer.encode_tensor("").numel() == 0
    assert tokenizer.decode([0xFF, 0x41]) == "\ufffdA"  # invalid UTF-8 is replaced, not raised
    assert tokenizer.count_bytes(ids) == len(text.encode("utf-8"))
    assert tokenizer.count_bytes(ids[:3]) == 3 and tokenizer.count_bytes([]) == 0


def make_local_hf_tokenizer(directory: Path) -> Path:
    """A tiny byte-level BPE trained here and saved as a Hugging Face tokenizer: no download."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog", "héllo wörld"] * 20, trainer)
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    wrapped.save_pretrained(directory)
    return directory


def test_hugging_face_tokenizer_from_a_local_path(tmp_path):
    path = make_local_hf_tokenizer(tmp_path / "tokenizer")
    tokenizer = load_tokenizer(str(path))
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert tokenizer.name == str(path)
    assert tokenizer.vocab_size == len(tokenizer._tokenizer) > 256  # bytes + merges + <eos>

    text = "the quick wörld 😀"
    ids = tokenizer.encode(text)
    assert tokenizer._tokenizer.eos_token_id not in ids  # no special tokens added
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned and used
    assert tokenizer.decode(ids) == text

    eos = tokenizer.eos_token_id
    assert eos is not None and tokenizer.count_bytes([eos]) == 0  # EOS stands for no text
    assert tokenizer.count_bytes(ids + [eos]) == len(text.encode("utf-8"))

    # Packed rows end each document with EOS, so that the model learns where documents end.
    (tmp_path / "docs").mkdir()
    texts = {"a.txt": "the lazy dog", "b.txt": "héllo"}
    corpus = open_corpus([str(write_texts(tmp_path / "docs", texts))], valid_percent=0.0)
    input_ids, position_ids = PackedRows(corpus, tokenizer, "train", seq_len=3, shuffle=False).next_rows(4)
    with_eos = lambda text: tokenizer.encode(text) + [eos]  # noqa: E731
    tokens, positions = expected_stream([texts["a.txt"], texts["b.txt"]] * 6, with_eos)
    assert input_ids.flatten().tolist() == tokens[:12]
    assert position_ids.flatten().tolist() == positions[:12]
    assert eos in input_ids.flatten().tolist()


def make_local_sentencepiece_tokenizer(directory: Path, layout: str) -> Path:
    """A tiny SentencePiece-style BPE ("▁" marks a space, byte fallback) trained here: no download.

    layout "metaspace": tokenizers' Metaspace pre-tokenizer and decoder; "llama": Llama 2's, a normalizer
    that turns spaces into "▁" and a decoder chain that strips the text's first space.
    """
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    if layout == "metaspace":
        bpe.pre_tokenizer = pre_tokenizers.Metaspace()
        bpe.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    else:
        bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # words, as SentencePiece
        bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    byte_pieces = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<eos>"] + byte_pieces)
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog", "héllo wörld"] * 20, trainer)
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", unk_token="<unk>")
    wrapped.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind", ["byte-level", "metaspace", "llama"])
def test_count_bytes(tmp_path, kind):
    if kind == "byte-level":  # GPT-2 style: "Ġ" marks a space
        tokenizer = load_tokenizer(str(make_local_hf_tokenizer(tmp_path / "tokenizer")))
    else:
        tokenizer = load_tokenizer(str(make_local_sentencepiece_tokenizer(tmp_path / "tokenizer", kind)))
    text = "the quick brown fox jumps over the lazy dog, héllo wörld 日本 😀."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.count_bytes([]) == 0
    # SentencePiece spells the text's first space too ("▁the"): inside a longer text it stands for " the".
    assert tokenizer.count_bytes(ids) == len(text.encode("utf-8")) + (kind != "byte-level")

    # The tokens after the first k stand for the rest of the text, leading space included, wherever k cuts
    # between characters (not inside 日's byte tokens).
    cuts = 0
    for k in range(1, len(ids)):
        head = tokenizer.decode(ids[:k])
        if "\ufffd" not in head + tokenizer.decode(ids[k:]):
            assert tokenizer.count_bytes(ids[k:]) == len(text.encode("utf-8")) - len(head.encode("utf-8")), k
            cuts += 1
    assert cuts >= 10

    # Word tokens with a space marker: decoded alone, SentencePiece's lose their space; counted, they keep it.
    pieces = tokenizer._tokenizer.convert_ids_to_tokens(ids)
    spaced = [(i, piece) for i, piece in zip(ids, pieces) if piece[0] in "Ġ▁" and piece[1:].isalpha()
              and piece[1:].isascii()]
    assert len(spaced) >= 5, pieces
    for token_id, piece in spaced:
        assert tokenizer.count_bytes([token_id]) == len(piece)
        if kind != "byte-level":
            assert tokenizer.decode([token_id]) == piece[1:]  # a per-token table would be a byte short


def test_hugging_face_tokenizer_that_cannot_load(tmp_path):
    with pytest.raises(DataError, match="cannot load the tokenizer") as error:
        load_tokenizer(str(tmp_path))  # an existing directory without tokenizer files: nothing downloaded
    assert_one_line(error)
