"""deltanet.train.packing: packed rows, their position ids, shuffle by epoch and exact resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import assert_one_line, byte_tokens, expected_stream, write_texts

from deltanet.train.corpus import open_corpus
from deltanet.train.errors import DataError
from deltanet.train.packing import PackedRows
from deltanet.train.tokenizers import ByteTokenizer

# Documents of awkward lengths for rows of 16 tokens: empty, 1, shorter than a row, several rows long,
# non-ASCII (2-4 byte characters). Opened with valid_percent=0: all of them are training documents.
PACKING_TEXTS = {
    "a_empty.txt": "",
    "b.txt": "first",
    "c.txt": "a document of forty bytes, more or less.",
    "d.txt": "x",
    "e.txt": "naïve café — ünïcode ✓ 😀 text",
    "f.txt": "0123456789" * 7,
    "g.txt": "tail",
    "sub/h.txt": "nested document in a sub directory",
}


@pytest.fixture
def packing_corpus(tmp_path):
    write_texts(tmp_path, PACKING_TEXTS)
    return open_corpus([str(tmp_path)], valid_percent=0.0)


def train_texts_sorted() -> list[str]:
    return [PACKING_TEXTS[name] for name in sorted(PACKING_TEXTS)]


def test_packed_rows_follow_the_documents(packing_corpus):
    seq_len, num_rows = 16, 30
    documents = train_texts_sorted()
    epoch_tokens, epoch_positions = expected_stream(documents)
    assert 3 * len(epoch_tokens) > seq_len * num_rows > 2 * len(epoch_tokens)  # into the third epoch

    rows = PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len, shuffle=False)
    input_ids, position_ids = rows.next_rows(num_rows)
    assert input_ids.dtype == position_ids.dtype == torch.int64
    assert input_ids.shape == position_ids.shape == (num_rows, seq_len)

    # Rows laid end to end are the documents laid end to end, epoch after epoch, in sorted order.
    flat_ids, flat_positions = input_ids.flatten().tolist(), position_ids.flatten().tolist()
    assert flat_ids == (epoch_tokens * 3)[: seq_len * num_rows]
    assert flat_positions == (epoch_positions * 3)[: seq_len * num_rows]

    # Position 0 exactly at each document start (the empty document has none).
    starts, offset = [], 0
    for _ in range(3):
        for document in documents:
            length = len(document.encode("utf-8"))
            if length:
                starts.append(offset)
            offset += length
    assert [i for i, p in enumerate(flat_positions) if p == 0] == [s for s in starts if s < len(flat_ids)]

    # Documents continue across rows with their positions continuing; one starts mid-row, too.
    continued = [r for r in range(1, num_rows) if position_ids[r, 0] != 0]
    assert continued
    for r in continued:
        assert position_ids[r, 0] == position_ids[r - 1, -1] + 1
    assert (position_ids[:, 1:] == 0).any()

    state = rows.state_dict()
    assert state["epoch"] == 2
    assert state["tokens_read"] == seq_len * num_rows
    assert json.loads(json.dumps(state)) == state


def test_packed_rows_seq_len_one_and_calls_of_any_size(packing_corpus):
    reference_ids, reference_positions = PackedRows(
        packing_corpus, ByteTokenizer(), "train", seq_len=1, shuffle=False
    ).next_rows(300)
    rows = PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len=1, shuffle=False)
    pieces = [rows.next_rows(n) for n in (1, 2, 97, 5, 195)]
    assert torch.equal(torch.cat([ids for ids, _ in pieces]), reference_ids)
    assert torch.equal(torch.cat([positions for _, positions in pieces]), reference_positions)
    tokens, positions = expected_stream(train_texts_sorted())
    assert reference_ids[: len(tokens), 0].tolist() == tokens
    assert reference_positions[: len(tokens), 0].tolist() == positions


def test_packed_rows_shuffle_by_epoch(packing_corpus):
    epoch_length = len(expected_stream(train_texts_sorted())[0])

    def stream(seed: int) -> list[int]:
        rows = PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len=8, seed=seed, shuffle=True)
        return rows.next_rows(2 * epoch_length // 8 + 1)[0].flatten().tolist()

    first = stream(seed=0)
    assert first == stream(seed=0)  # reproducible
    assert first != stream(seed=1)
    epoch0, epoch1 = first[:epoch_length], first[epoch_length: 2 * epoch_length]
    assert epoch0 != epoch1  # re-shuffled each epoch
    for epoch, tokens in ((0, epoch0), (1, epoch1)):
        order = packing_corpus.documents("train", epoch=epoch, seed=0, shuffle=True)
        assert tokens == expected_stream(list(order))[0]


@pytest.mark.parametrize("max_document_tokens", [1, 7, 16, 40])
def test_max_document_tokens_cuts_long_documents(packing_corpus, max_document_tokens):
    seq_len, num_rows = 16, 24
    documents = train_texts_sorted()
    # Each document as if it ended after max_document_tokens tokens (a 4-byte character may be cut too).
    tokens, positions = expected_stream(documents, lambda text: byte_tokens(text)[:max_document_tokens])
    rows = PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len, shuffle=False,
                      max_document_tokens=max_document_tokens)
    input_ids, position_ids = rows.next_rows(num_rows)
    repeats = seq_len * num_rows // len(tokens) + 1
    assert input_ids.flatten().tolist() == (tokens * repeats)[: seq_len * num_rows]
    assert position_ids.flatten().tolist() == (positions * repeats)[: seq_len * num_rows]
    assert int(position_ids.max()) == max_document_tokens - 1
    # Every non-empty document starts in each epoch: its first max_document_tokens tokens, no more.
    starts_per_epoch = sum(1 for document in documents if document)
    assert (position_ids == 0).sum() >= starts_per_epoch * (repeats - 1)

    uncut = PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len, shuffle=False,
                       max_document_tokens=max(len(byte_tokens(document)) for document in documents))
    assert torch.equal(uncut.next_rows(num_rows)[0],
                       PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len, shuffle=False
                                  ).next_rows(num_rows)[0])
    with pytest.raises(ValueError, match="max_document_tokens must be None or >= 1"):
        PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len, max_document_tokens=0)


def test_max_document_tokens_for_held_out_rows(tmp_path):
    # What the trainer does: held-out rows from the first seq_len tokens of held-out files, in a seeded
    # order, so that the rows come from many files.
    texts = {f"file_{i:03d}.txt": f"file {i} " * 200 for i in range(400)}
    corpus = open_corpus([str(write_texts(tmp_path, texts))], valid_percent=10.0)
    assert corpus.num_units("valid") > 20
    seq_len, num_rows = 32, 16
    rows = PackedRows(corpus, ByteTokenizer(), "valid", seq_len, seed=5, shuffle=True,
                      max_document_tokens=seq_len)
    input_ids, position_ids = rows.next_rows(num_rows)
    order = list(corpus.documents("valid", epoch=0, seed=5, shuffle=True))
    tokens, positions = expected_stream(order, lambda text: byte_tokens(text)[:seq_len])
    assert input_ids.flatten().tolist() == tokens[: seq_len * num_rows]
    assert position_ids.flatten().tolist() == positions[: seq_len * num_rows]
    assert (position_ids == 0).sum() == num_rows  # a new file each row

    # Each row ends at a cut: a state there points at the next file, and resumes past the skipped rest.
    for split_at in (1, 5, 15):
        first = PackedRows(corpus, ByteTokenizer(), "valid", seq_len, seed=5, shuffle=True,
                           max_document_tokens=seq_len)
        first.next_rows(split_at)
        state = first.state_dict()
        assert (state["doc_index"], state["token_offset"]) == (split_at, 0)
        second = PackedRows(corpus, ByteTokenizer(), "valid", seq_len, seed=5, shuffle=True,
                            max_document_tokens=seq_len)
        second.load_state_dict(state)
        assert torch.equal(second.next_rows(1)[0], input_ids[split_at: split_at + 1])


@pytest.mark.parametrize("max_document_tokens", [None, 7])
@pytest.mark.parametrize("shuffle", [False, True])
def test_packed_rows_resume_exactly(tmp_path, shuffle, max_document_tokens):
    # Text files and a jsonl file (whose documents are skipped by reading them) in one corpus.
    write_texts(tmp_path, PACKING_TEXTS)
    records = [{"text": "jsonl document %d " % i * (i + 1)} for i in range(4)] + [{"text": ""}]
    (tmp_path / "c_records.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    corpus = open_corpus([str(tmp_path)], valid_percent=0.0)
    seq_len, num_rows, chunk = 16, 48, 5

    def fresh() -> PackedRows:
        return PackedRows(corpus, ByteTokenizer(), "train", seq_len, seed=3, shuffle=shuffle,
                          max_document_tokens=max_document_tokens)

    reference_ids, reference_positions = fresh().next_rows(num_rows + chunk)
    order = list(corpus.documents("train", epoch=0, seed=3, shuffle=shuffle))
    tokens, _ = expected_stream(order, lambda text: byte_tokens(text)[:max_document_tokens])
    assert reference_ids.flatten()[: len(tokens)].tolist() == tokens
    states = []
    for split_at in range(num_rows + 1):
        first = fresh()
        if split_at:
            ids, positions = first.next_rows(split_at)
            assert torch.equal(ids, reference_ids[:split_at])
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
        assert state["tokens_read"] == split_at * seq_len
        states.append(state)

        second = fresh()
        second.load_state_dict(state)
        ids, positions = second.next_rows(chunk)
        assert torch.equal(ids, reference_ids[split_at: split_at + chunk]), split_at
        assert torch.equal(positions, reference_positions[split_at: split_at + chunk]), split_at

    # The split points cover a document cut between rows, a row boundary at a document boundary, and
    # resumes from before and after epoch boundaries; with max_document_tokens, states inside a cut
    # document and right after a cut (the skipped rest not counted in token_offset).
    assert any(state["token_offset"] > 0 for state in states)
    assert any(state["token_offset"] == 0 and state["doc_index"] > 0 for state in states)
    assert {state["epoch"] for state in states} >= {0, 1, 2}
    if max_document_tokens is not None:
        assert all(state["token_offset"] < max_document_tokens for state in states)
        assert {state["token_offset"] for state in states} >= set(range(1, max_document_tokens))


# Several .jsonl files (blank lines, "\r\n" line ends, an unended last line, empty and non-ASCII documents,
# a document longer than several rows) and text files, for resumes that seek.
SEEK_FILES = {
    "a.jsonl": "".join(json.dumps({"text": f"a{i} " * (i + 1)}) + "\r\n" + "\n" * (i % 2) for i in range(5)),
    "b/c.jsonl": "\n".join(json.dumps({"text": text}) for text in ("ünï ✓ 😀", "", "c2 long " * 9)),
    "d.jsonl": "\n".join(json.dumps({"text": f"d{i}"}) for i in range(7)) + "\n\n",
    "e.jsonl": json.dumps({"text": "0123456789" * 11}) + "\n",
    "f.txt": "text file f " * 3,
    "g.txt": "",
    "h.txt": "naïve h",
}


def rows_to_epoch_end(corpus, state: dict, seq_len: int, seed: int, max_document_tokens=None) -> int:
    """Whole rows left in the state's epoch: rows that read no document of the next epoch."""
    order = corpus.documents("train", epoch=state["epoch"], seed=seed, shuffle=True)
    lengths = [len(byte_tokens(text)[:max_document_tokens]) for text in order]
    return (sum(lengths[state["doc_index"]:]) - state["token_offset"]) // seq_len


def garbled_copy(source: Path, target: Path, corpus, state: dict, seed: int) -> Path:
    """A copy of the files with what a resume from state["source"] must not read garbled, every byte but
    b"\n" made "#" (neither JSON nor the text): the units before it in the epoch's order, and in its unit the
    bytes before its "byte" (a text file already read: all of it)."""
    shutil.copytree(source, target)
    position = state["source"]
    order = corpus.unit_names("train", epoch=state["epoch"], seed=seed, shuffle=True)
    for index, name in enumerate(order[: position["unit"] + 1]):
        data = (target / name).read_bytes()
        end = len(data)
        if index == position["unit"]:
            end = position.get("byte", 0) if name.endswith(".jsonl") else len(data) * position["unit_doc"]
        (target / name).write_bytes(re.sub(rb"[^\n]", b"#", data[:end]) + data[end:])
    return target


@pytest.mark.parametrize("max_document_tokens", [None, 5])
def test_resume_seeks_in_jsonl_and_text_files(tmp_path, max_document_tokens):
    data = write_texts(tmp_path / "data", SEEK_FILES)
    corpus = open_corpus([str(data)], valid_percent=0.0)
    seq_len, seed, num_rows, chunk = 16, 7, 50, 9

    def fresh(corpus) -> PackedRows:
        return PackedRows(corpus, ByteTokenizer(), "train", seq_len, seed=seed, shuffle=True,
                          max_document_tokens=max_document_tokens)

    reference_ids, reference_positions = fresh(corpus).next_rows(num_rows + chunk)
    states, crossing = [], 0
    for split_at in range(num_rows + 1):
        first = fresh(corpus)
        if split_at:
            first.next_rows(split_at)
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
        states.append(state)
        expected = reference_ids[split_at: split_at + chunk], reference_positions[split_at: split_at + chunk]

        # The same rows from the saved source position, and from an old state without it (read, not sought).
        for saved in (state, {key: value for key, value in state.items() if key != "source"}):
            second = fresh(corpus)
            second.load_state_dict(saved)
            ids, positions = second.next_rows(chunk)
            assert torch.equal(ids, expected[0]) and torch.equal(positions, expected[1]), (split_at, saved)

        # What comes before the position is not read: with it garbled, the rows to the epoch's end are the
        # same (the next epoch would read the garbled files again).
        left = rows_to_epoch_end(corpus, state, seq_len, seed, max_document_tokens)
        crossing += left < chunk  # the resumed rows above went on into the next epoch
        if state["source"] is None or left == 0:
            continue
        garbled = garbled_copy(data, tmp_path / f"garbled_{split_at}", corpus, state, seed)
        resumed = fresh(open_corpus([str(garbled)], valid_percent=0.0))
        resumed.load_state_dict(state)
        assert torch.equal(resumed.next_rows(left)[0], reference_ids[split_at: split_at + left]), split_at
        shutil.rmtree(garbled)

    # The split points cover positions inside a document, past the first line of a .jsonl file, past
    # the first unit of an epoch, in three epochs, and resumes that go on into the next epoch.
    sources = [state["source"] for state in states if state["source"] is not None]
    assert any(state["token_offset"] > 0 for state in states)
    assert any(source.get("byte", 0) > 0 and source["unit_doc"] > 0 for source in sources)
    assert any(source["unit"] > 0 for source in sources)
    assert {state["epoch"] for state in states} >= {0, 1, 2}
    assert crossing > 0


def test_resume_seeks_to_the_parquet_row_group(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rows_per_group = 3
    for file_index, count in enumerate((10, 4, 7)):
        texts = [f"p{file_index}.{i} " * (i % 4) if i != 2 else None for i in range(count)]  # "" and a null
        parquet.write_table(pa.table({"text": pa.array(texts, type=pa.string())}),
                            tmp_path / f"part_{file_index}.parquet", row_group_size=rows_per_group)
    corpus = open_corpus([str(tmp_path)], valid_percent=0.0)
    seq_len, seed, num_rows, chunk = 8, 1, 40, 6

    reads = []  # (file name, row group) of each row group read

    class ParquetFileSpy(parquet.ParquetFile):
        def __init__(self, source, *args, **kwargs):
            super().__init__(source, *args, **kwargs)
            self.file_name = Path(source).name

        def read_row_group(self, group, *args, **kwargs):
            reads.append((self.file_name, group))
            return super().read_row_group(group, *args, **kwargs)

    monkeypatch.setattr(parquet, "ParquetFile", ParquetFileSpy)

    def fresh() -> PackedRows:
        return PackedRows(corpus, ByteTokenizer(), "train", seq_len, seed=seed, shuffle=True)

    reference_ids = fresh().next_rows(num_rows + chunk)[0]
    first_groups = []
    for split_at in range(num_rows + 1):
        first = fresh()
        if split_at:
            first.next_rows(split_at)
        state = json.loads(json.dumps(first.state_dict()))
        second = fresh()
        second.load_state_dict(state)
        assert torch.equal(second.next_rows(chunk)[0], reference_ids[split_at: split_at + chunk]), split_at

        # Up to the epoch's end, a resume reads the row group that holds the saved row, and what follows it.
        left, position = rows_to_epoch_end(corpus, state, seq_len, seed), state["source"]
        if position is None or left == 0:
            continue
        order = corpus.unit_names("train", epoch=state["epoch"], seed=seed, shuffle=True)
        reads.clear()
        resumed = fresh()
        resumed.load_state_dict(state)
        assert torch.equal(resumed.next_rows(left)[0], reference_ids[split_at: split_at + left]), split_at
        expected = []  # the row groups from the one holding the saved row on (none if the unit is done)
        for name in order[position["unit"]:]:
            num_rows = parquet.read_metadata(tmp_path / name).num_rows
            first_row = position["unit_doc"] if name == order[position["unit"]] else 0
            for group, group_start in enumerate(range(0, num_rows, rows_per_group)):
                if first_row < min(group_start + rows_per_group, num_rows):
                    expected.append((name, group))
        assert reads == expected[: len(reads)], (split_at, position)
        first_groups.append(expected[0][1] if expected[0][0] == order[position["unit"]] else None)
    assert max(group or 0 for group in first_groups) > 0  # some resumes skip row groups of their file
    assert None in first_groups  # and some open their file at its end: nothing read in it


def test_load_state_dict_rejects_bad_states(packing_corpus):
    rows = PackedRows(packing_corpus, ByteTokenizer(), "train", seq_len=4)
    with pytest.raises(ValueError, match="doc_index"):
        rows.load_state_dict({"epoch": 0, "doc_index": -1, "token_offset": 0, "tokens_read": 0})
    with pytest.raises(ValueError, match="tokens_read"):
        rows.load_state_dict({"epoch": 0, "doc_index": 0, "token_offset": 0})
    with pytest.raises(ValueError, match="split must be one of"):
        PackedRows(packing_corpus, ByteTokenizer(), "test", seq_len=4)


def test_split_without_tokens(tmp_path):
    write_texts(tmp_path, {"a.txt": "", "b.txt": ""})
    corpus = open_corpus([str(tmp_path)], valid_percent=0.0)
    rows = PackedRows(corpus, ByteTokenizer(), "train", seq_len=4)
    with pytest.raises(DataError, match="the train split yields no token") as error:
        rows.next_rows(1)
    assert_one_line(error)


def test_stdlib_rows():
    corpus = open_corpus(["stdlib"])
    rows = PackedRows(corpus, ByteTokenizer(), "train", seq_len=512, seed=0)
    for _ in range(3):
        input_ids, position_ids = rows.next_rows(64)
        assert input_ids.shape == position_ids.shape == (64, 512)
        assert 0 <= int(input_ids.min()) and int(input_ids.max()) < 256
    assert rows.state_dict()["tokens_read"] == 3 * 64 * 512
