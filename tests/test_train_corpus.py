"""deltanet.train.corpus: corpus sources, their held-out split, document order and resume, data errors."""

from __future__ import annotations

import copy
import json
import sys
import types
import zlib

import pytest
import torch
from train_helpers import assert_one_line, write_texts

from deltanet.train.corpus import open_corpus
from deltanet.train.errors import DataError
from deltanet.train.packing import PackedRows
from deltanet.train.tokenizers import ByteTokenizer


def held_out(key: str, valid_percent: float) -> bool:
    """The held-out rule, restated here so that the tests check it rather than reuse it."""
    return zlib.crc32(key.encode("utf-8")) % 10000 < valid_percent * 100


# ----------------------------------------------------------------------------------------------------------
# Corpus sources and the held-out split
# ----------------------------------------------------------------------------------------------------------


def test_stdlib_corpus():
    corpus = open_corpus(["stdlib"])
    train, valid = corpus.unit_names("train"), corpus.unit_names("valid")
    assert corpus.num_units("train") == len(train) > 100
    assert corpus.num_units("valid") == len(valid) > 0
    assert not set(train) & set(valid)
    assert train == sorted(train) and valid == sorted(valid)
    for name in train + valid:
        assert name.endswith(".py")
        assert not {"site-packages", "dist-packages", "__pycache__"} & set(name.split("/"))
    assert valid == [name for name in sorted(train + valid) if held_out(name, 2.0)]

    again = open_corpus(["stdlib"])
    assert again.unit_names("train") == train
    first = list(zip(range(5), corpus.documents("train")))
    assert [doc for _, doc in first] == [doc for _, doc in zip(range(5), again.documents("train"))]
    for _, document in first:
        compile(document, "<stdlib>", "exec")  # Python source
    assert any("def " in document or "import " in document for _, document in first)


def test_site_packages_corpus_reads_the_installed_packages_py_files(tmp_path, monkeypatch):
    """A fake purelib/platlib pair: .py files of both, no caches, hidden folders or other files; names
    prefixed site-packages/, split by name as every file source; a platlib that links to purelib (lib64 ->
    lib) is read once."""
    import sysconfig

    purelib, platlib = tmp_path / "purelib", tmp_path / "platlib"
    texts = {f"pkg{i}/mod{j}.py": f"value = {i * 10 + j}\n" for i in range(6) for j in range(5)}
    texts |= {"pkg0/__pycache__/mod0.cpython-312.py": "cache = 1\n", ".hidden/x.py": "hidden = 1\n",
              "pkg0/data.json": "{}", "pkg0-1.0.dist-info/METADATA": "Name: pkg0\n"}
    write_texts(purelib, texts)
    write_texts(platlib, {"compiled/ext.py": "ext = 1\n"})
    real = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths",
                        lambda *a, **k: {**real, "purelib": str(purelib), "platlib": str(platlib)})
    corpus = open_corpus(["site-packages"], valid_percent=20.0)
    names = corpus.unit_names("train") + corpus.unit_names("valid")
    expected = {f"site-packages/pkg{i}/mod{j}.py" for i in range(6) for j in range(5)}
    assert set(names) == expected | {"site-packages/compiled/ext.py"} and len(names) == 31
    assert corpus.num_units("valid") > 0
    assert corpus.unit_names("valid") == [name for name in sorted(names) if held_out(name, 20.0)]
    text_of = {f"site-packages/{name}": text for name, text in texts.items()}
    text_of["site-packages/compiled/ext.py"] = "ext = 1\n"
    assert sorted(corpus.documents("train")) == sorted(text_of[name] for name in corpus.unit_names("train"))

    linked = tmp_path / "lib64"
    linked.symlink_to(purelib)
    monkeypatch.setattr(sysconfig, "get_paths",
                        lambda *a, **k: {**real, "purelib": str(purelib), "platlib": str(linked)})
    once = open_corpus(["site-packages"], valid_percent=20.0)
    assert sorted(once.unit_names("train") + once.unit_names("valid")) == sorted(expected)

    monkeypatch.setattr(sysconfig, "get_paths",
                        lambda *a, **k: {**real, "purelib": str(tmp_path / "none"),
                                         "platlib": str(tmp_path / "none")})
    with pytest.raises(DataError, match="site-packages: no .py files") as error:
        open_corpus(["site-packages"])
    assert_one_line(error)


def test_directory_of_text_files_held_out_by_file(tmp_path):
    texts = {f"doc_{i:02d}.txt": f"document {i}\n" for i in range(20)}
    texts |= {f"nested/more_{i}.md": f"nested {i}" for i in range(10)}
    texts[".hidden.txt"] = "hidden files are skipped"
    texts[".git/config"] = "and so are hidden directories"
    write_texts(tmp_path, texts)
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\x00\x01binary")

    corpus = open_corpus([str(tmp_path)], valid_percent=20.0)
    listed = sorted(name for name in texts if not name.startswith("."))
    expected_valid = [name for name in listed if held_out(name, 20.0)]
    assert 0 < len(expected_valid) < len(listed)  # the rule does split these names
    assert corpus.unit_names("valid") == expected_valid
    assert corpus.unit_names("train") == [name for name in listed if name not in expected_valid]
    assert list(corpus.documents("valid")) == [texts[name] for name in expected_valid]
    assert list(corpus.documents("train")) == [texts[name] for name in corpus.unit_names("train")]


def test_last_file_held_out_when_the_hash_picks_none(tmp_path):
    write_texts(tmp_path, {"a.txt": "one", "b.txt": "two", "c.txt": "three"})
    assert not any(held_out(name, 2.0) for name in ("a.txt", "b.txt", "c.txt"))
    corpus = open_corpus([str(tmp_path)])
    assert corpus.unit_names("train") == ["a.txt", "b.txt"]
    assert corpus.unit_names("valid") == ["c.txt"]
    assert list(corpus.documents("valid")) == ["three"]


def test_single_jsonl_file_held_out_by_document(tmp_path):
    documents = [f"document number {i}" for i in range(60)]
    lines = []
    for i, document in enumerate(documents):
        lines.append(json.dumps({"id": i, "content": document}))
        if i % 7 == 0:
            lines.append("   ")  # blank lines are skipped and do not count as documents
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    corpus = open_corpus([str(path)], text_field="content", valid_percent=10.0)
    assert corpus.num_units("train") == corpus.num_units("valid") == 1
    expected_valid = [doc for i, doc in enumerate(documents) if held_out(str(i), 10.0)]
    assert 0 < len(expected_valid) < 20
    assert list(corpus.documents("valid")) == expected_valid
    assert list(corpus.documents("train")) == [doc for doc in documents if doc not in expected_valid]


def test_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    documents = [f"row {i} " * (i % 5) for i in range(50)]
    documents[3] = None  # a null is an empty document
    table = pa.table({"body": documents, "id": list(range(50))})
    parquet.write_table(table, tmp_path / "data.parquet", row_group_size=16)  # 4 row groups

    corpus = open_corpus([str(tmp_path / "data.parquet")], text_field="body", valid_percent=10.0)
    as_read = ["" if doc is None else doc for doc in documents]
    expected_valid = [doc for i, doc in enumerate(as_read) if held_out(str(i), 10.0)]
    assert expected_valid
    assert list(corpus.documents("valid")) == expected_valid
    assert list(corpus.documents("train")) == [d for i, d in enumerate(as_read) if not held_out(str(i), 10.0)]

    # Two files: held out by file; resuming skips a whole file by its row count.
    parquet.write_table(table, tmp_path / "other.parquet", row_group_size=16)
    both = open_corpus([str(tmp_path)], text_field="body", valid_percent=0.0)
    assert both.unit_names("train") == ["data.parquet", "other.parquet"]
    assert list(both.documents("train", start=20)) == as_read[20:] + as_read
    assert list(both.documents("train", start=70)) == as_read[20:]

    with pytest.raises(DataError, match="no column 'text'") as error:
        open_corpus([str(tmp_path / "data.parquet")])
    assert_one_line(error)


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail, installed or not
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "data.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r'pip install "deltanet\[data\]"') as error:
        open_corpus([str(tmp_path)])
    assert_one_line(error)


def fake_datasets(splits: dict[str, list[dict]], calls: list) -> types.ModuleType:
    """A stand-in `datasets` module: load_dataset returns lists of examples (what streaming yields)."""
    module = types.ModuleType("datasets")

    def load_dataset(name, config=None, streaming=False):
        calls.append((name, config, streaming))
        if name == "missing/dataset":
            raise FileNotFoundError("Dataset 'missing/dataset' doesn't exist on the Hub\nmore detail")
        return dict(splits)

    module.load_dataset = load_dataset
    return module


def test_hugging_face_dataset_sources(monkeypatch):
    train = [{"text": f"train {i}"} for i in range(40)]
    validation = [{"text": f"validation {i}"} for i in range(5)]
    calls = []

    with_validation = fake_datasets({"train": train, "validation": validation}, calls)
    monkeypatch.setitem(sys.modules, "datasets", with_validation)
    corpus = open_corpus(["hf:org/name:config"])
    assert calls == [("org/name", "config", True)]
    assert corpus.unit_names("valid") == ["hf:org/name:config[validation]"]
    assert list(corpus.documents("train")) == [example["text"] for example in train]
    assert list(corpus.documents("valid")) == [example["text"] for example in validation]

    # Without a "validation" split, documents of "train" are held out by index.
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"train": train}, calls))
    corpus = open_corpus(["hf:org/name"], valid_percent=20.0)
    assert calls[-1] == ("org/name", None, True)
    expected_valid = [ex["text"] for i, ex in enumerate(train) if held_out(str(i), 20.0)]
    assert 0 < len(expected_valid) < len(train)
    assert list(corpus.documents("valid")) == expected_valid
    assert list(corpus.documents("train")) == [ex["text"] for ex in train if ex["text"] not in expected_valid]

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"train": [{"body": "x"}]}, calls))
    with pytest.raises(DataError, match=r"hf:org/name\[train\] example 0: no field 'text'") as error:
        list(open_corpus(["hf:org/name"]).documents("train"))
    assert_one_line(error)

    with pytest.raises(DataError, match="cannot load the dataset: FileNotFoundError") as error:
        open_corpus(["hf:missing/dataset"])
    assert_one_line(error)

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r'pip install "deltanet\[data\]"'):
        open_corpus(["hf:org/name"])


class StreamStandIn:
    """A streamed split without stream state (datasets < 2.18): each pass reads from the first example."""

    def __init__(self, examples: list[dict]):
        self.examples = examples
        self.passes: list[int] = []  # the index of each pass's first example

    def __iter__(self):  # a generator, as in datasets: a pass begins at its first next()
        first = self._first_index()
        self.passes.append(first)
        for index in range(first, len(self.examples)):
            self._advanced_to(index + 1)
            yield self.examples[index]

    def _first_index(self) -> int:
        return 0

    def _advanced_to(self, index: int) -> None:
        pass


class ResumableStreamStandIn(StreamStandIn):
    """With datasets >= 2.18's stream state, as datasets keeps it: state_dict() is the latest pass's (after
    its last example), and load_state_dict() sets where every later pass starts, not only the next one."""

    def __init__(self, examples: list[dict]):
        super().__init__(examples)
        self._starting_state: dict | None = None
        self._state = self._initial_state()

    @staticmethod
    def _initial_state() -> dict:
        return {"examples_iterable": {"shard_idx": 0, "shard_example_idx": 0, "type": "ExamplesIterable"},
                "epoch": 0}

    def _first_index(self) -> int:
        self._state = copy.deepcopy(self._starting_state) if self._starting_state else self._initial_state()
        return self._state["examples_iterable"]["shard_example_idx"]

    def _advanced_to(self, index: int) -> None:
        self._state["examples_iterable"]["shard_example_idx"] = index

    def state_dict(self) -> dict:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._starting_state = state


@pytest.mark.parametrize("valid_percent", [0.0, 20.0])
@pytest.mark.parametrize("resumable", [True, False])
def test_hugging_face_resume(monkeypatch, resumable, valid_percent):
    examples = [{"text": f"e{i} " * (i % 4)} for i in range(30)]  # every fourth one empty
    stream = (ResumableStreamStandIn if resumable else StreamStandIn)(examples)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"train": stream}, []))
    corpus = open_corpus(["hf:org/name"], valid_percent=valid_percent)  # 20: split by document
    seq_len, num_rows, chunk = 8, 50, 12

    def fresh() -> PackedRows:
        return PackedRows(corpus, ByteTokenizer(), "train", seq_len, shuffle=True)

    reference_ids = fresh().next_rows(num_rows + chunk)[0]
    epoch_tokens = sum(len(text.encode()) for text in corpus.documents("train"))
    assert 2 * epoch_tokens < num_rows * seq_len < 3 * epoch_tokens  # resumes in three epochs
    crossing = 0
    for split_at in range(num_rows + 1):
        first = fresh()
        if split_at:
            first.next_rows(split_at)
        state = json.loads(json.dumps(first.state_dict()))
        position = state["source"]
        assert position is None or ("hf" in position) == (resumable and position["unit_doc"] > 0)
        for saved in (state, {key: value for key, value in state.items() if key != "source"}):
            stream.passes.clear()
            second = fresh()
            second.load_state_dict(saved)
            assert torch.equal(second.next_rows(chunk)[0], reference_ids[split_at: split_at + chunk])
            # With stream state, the resumed pass starts at the saved example: those before it are not read
            # (the position is where that example, the current document, starts). Without, from the start.
            # Later passes (epochs) start at the start either way.
            sought = resumable and "source" in saved and position is not None
            assert stream.passes[0] == (position["unit_doc"] if sought else 0), (split_at, saved)
            assert stream.passes[1:] == [0] * (len(stream.passes) - 1)
            crossing += len(stream.passes) > 1
    assert crossing > 0  # resumes that went on into the next epoch


@pytest.mark.parametrize("source", ["hf:", "hf:a:b:c", "hf::config", "hf:name:"])
def test_unknown_hf_form(source):
    with pytest.raises(DataError, match="expected hf:NAME or hf:NAME:CONFIG") as error:
        open_corpus([source])
    assert_one_line(error)


def test_documents_start_and_shuffle(tmp_path):
    texts = {f"{i:02d}.txt": f"text {i}" for i in range(10)}
    (tmp_path / "05_lines.jsonl").write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(4)))
    corpus = open_corpus([str(write_texts(tmp_path, texts))], valid_percent=0.0)
    in_order = list(corpus.documents("train"))
    assert len(in_order) == 10 + 4  # nothing held out; the jsonl file counts its lines
    for start in (0, 1, 5, 6, 9, 13, 14, 20):  # inside and around the jsonl file, at and past the end
        assert list(corpus.documents("train", start=start)) == in_order[start:]

    epoch0 = list(corpus.documents("train", epoch=0, seed=0, shuffle=True))
    epoch1 = list(corpus.documents("train", epoch=1, seed=0, shuffle=True))
    assert epoch0 != epoch1 != in_order
    assert sorted(epoch0) == sorted(epoch1) == sorted(in_order)
    lines = [f"line {i}" for i in range(4)]
    start = epoch1.index("line 0")
    assert epoch1[start:start + 4] == lines  # documents keep their order inside a unit
    assert epoch0 == list(corpus.documents("train", epoch=0, seed=0, shuffle=True))
    assert epoch0 != list(corpus.documents("train", epoch=0, seed=1, shuffle=True))
    assert list(corpus.documents("train", epoch=1, shuffle=True, start=3)) == epoch1[3:]


def test_documents_from_positions(tmp_path):
    # Every position a stream gives (before and after each document) starts a stream at that document.
    texts = {f"{i}.txt": f"text {i}" for i in range(3)}
    write_texts(tmp_path, texts)
    for name, count in (("x.jsonl", 4), ("y.jsonl", 1), ("z.jsonl", 6)):
        lines = [json.dumps({"text": f"{name} {i}"}) + ("\n\n" if i % 3 else "\r\n") for i in range(count)]
        (tmp_path / name).write_text("".join(lines), newline="")
    corpus = open_corpus([str(tmp_path)], valid_percent=0.0)
    for epoch in (0, 1):
        arguments = dict(epoch=epoch, seed=4, shuffle=True)
        in_order = list(corpus.documents("train", **arguments))
        assert corpus.unit_names("train", **arguments) != corpus.unit_names("train")  # shuffled
        stream = corpus.documents("train", **arguments)
        assert stream.last_position() is None

        def resumed(index: int, position: dict) -> list[str]:
            assert json.loads(json.dumps(position)) == position  # JSON-able
            return list(corpus.documents("train", start=index, position=position, **arguments))

        for index, document in enumerate(in_order):
            assert resumed(index, stream.next_position()) == in_order[index:]  # may be the last unit's end
            assert next(stream) == document
            assert resumed(index, stream.last_position()) == in_order[index:]
        end = stream.next_position()
        assert end["unit"] == corpus.num_units("train") - 1 and end["unit_doc"] > 0
        assert resumed(len(in_order), end) == []

    # A position whose unit is no longer there (the data changed) falls back to reading the documents before.
    in_order = list(corpus.documents("train"))
    position = corpus.documents("train").next_position()
    assert position == {"unit": 0, "name": "0.txt", "unit_doc": 0}
    for changed in ({"unit": 0, "name": "gone.txt", "unit_doc": 0}, {"unit": 99, "name": "0.txt"}):
        assert list(corpus.documents("train", start=5, position=changed)) == in_order[5:]
    assert list(corpus.documents("train", start=5, position={"unit": corpus.num_units("train")})) == []
    for malformed in ({"unit": -1}, {"unit": 0, "byte": "12"}, {"unit": 0, "hf": [1]}, [0, 1]):
        with pytest.raises(ValueError, match="position"):
            corpus.documents("train", start=1, position=malformed)


def test_jsonl_seek_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": "three"}\n{"text": oops}\n')
    corpus = open_corpus([str(path)], valid_percent=0.0)
    stream = corpus.documents("train")
    next(stream), next(stream)
    position = stream.next_position()
    assert position == {"unit": 0, "name": "data.jsonl", "unit_doc": 2, "byte": 33, "line": 3}
    resumed = corpus.documents("train", start=2, position=position)
    assert next(resumed) == "three"
    with pytest.raises(DataError, match=r"data\.jsonl line 5: not JSON") as error:  # lines counted as before
        next(resumed)
    assert_one_line(error)

    path.write_text('{"text": "one, longer now"}\n{"text": "two"}\n')  # changed since the position was saved
    with pytest.raises(DataError, match=r"data\.jsonl: the saved position \(byte 33\) is not the start of "
                       "a line: the file has changed since the checkpoint") as error:
        next(corpus.documents("train", start=2, position=position))
    assert_one_line(error)


# ----------------------------------------------------------------------------------------------------------
# Data errors
# ----------------------------------------------------------------------------------------------------------


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or directory") as error:
        open_corpus([str(tmp_path / "nowhere")])
    assert_one_line(error)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files") as error:
        open_corpus([str(tmp_path / "empty")])
    assert_one_line(error)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="only binary files"):
        open_corpus([str(tmp_path / "binary")])


def test_bad_jsonl_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": oops}\n')
    corpus = open_corpus([str(path)], valid_percent=0.0)
    with pytest.raises(DataError, match=r"bad\.jsonl line 3: not JSON") as error:
        list(corpus.documents("train"))
    assert str(path) in str(error.value)
    assert_one_line(error)

    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: no field 'text' \(fields: body\)") as error:
        list(open_corpus([str(path)], valid_percent=0.0).documents("train"))
    assert_one_line(error)

    path.write_text('["a list"]\n')
    with pytest.raises(DataError, match="line 1: a JSON list, not an object"):
        list(open_corpus([str(path)], valid_percent=0.0).documents("train"))

    path.write_text('{"text": 42}\n')
    with pytest.raises(DataError, match="line 1: field 'text' is a int, not a string"):
        list(open_corpus([str(path)], valid_percent=0.0).documents("train"))


def test_valid_percent_zero_holds_nothing_out(tmp_path, monkeypatch):
    texts = {f"{i:02d}.txt": f"text {i}" for i in range(5)}
    directory = write_texts(tmp_path / "many", texts)
    single = write_texts(tmp_path / "one", {"input.txt": "line 1\nline 2\nline 3\n"}) / "input.txt"
    lone_jsonl = tmp_path / "one.jsonl"
    lone_jsonl.write_text(json.dumps({"text": "the only document"}) + "\n")
    for sources, expected in (
        ([str(directory)], list(texts.values())),
        ([str(single)], ["line 1\nline 2\nline 3\n"]),
        ([str(lone_jsonl)], ["the only document"]),
        ([str(directory), str(lone_jsonl)], list(texts.values()) + ["the only document"]),
    ):
        corpus = open_corpus(sources, valid_percent=0.0)
        assert corpus.num_units("valid") == 0 and corpus.unit_names("valid") == []
        assert list(corpus.documents("train")) == expected
        with pytest.raises(DataError, match="the valid split has no documents"):  # only when read
            PackedRows(corpus, ByteTokenizer(), "valid", seq_len=8).next_rows(1)

    # A dataset: its train split is training data; its own "validation" split is not used.
    train = [{"text": f"train {i}"} for i in range(3)]
    splits = {"train": train, "validation": [{"text": "validation"}]}
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(splits, []))
    corpus = open_corpus(["hf:org/name"], valid_percent=0.0)
    assert corpus.num_units("valid") == 0
    assert list(corpus.documents("train")) == [example["text"] for example in train]


def test_single_text_file_holds_out_its_last_lines(tmp_path):
    lines = [f"line {i}: naïve ✓ 😀\n" for i in range(1, 101)]  # multi-byte characters on each line
    path = tmp_path / "input.txt"
    path.write_text("".join(lines), encoding="utf-8")
    for valid_percent, held_lines in ((2.0, 2), (10.0, 10), (0.5, 1), (1.5, 1), (99.0, 99)):
        corpus = open_corpus([str(path)], valid_percent=valid_percent)
        assert corpus.unit_names("train") == corpus.unit_names("valid") == ["input.txt"]
        assert list(corpus.documents("train")) == ["".join(lines[: 100 - held_lines])], valid_percent
        assert list(corpus.documents("valid")) == ["".join(lines[100 - held_lines:])], valid_percent
        assert list(corpus.documents("train", start=1)) == []  # one document each: skipped unread

    # No newline at the end, Windows line ends, blank lines: cut after a "\n" all the same; the same rule
    # for the only file of a directory.
    text = "first\r\n\r\nthird\r\nfourth\r\nlast, no newline"
    write_texts(tmp_path / "dir", {"only.txt": text})
    for source in (tmp_path / "dir", tmp_path / "dir" / "only.txt"):
        corpus = open_corpus([str(source)], valid_percent=40.0)  # 2 of 5 lines
        assert list(corpus.documents("train")) == ["first\r\n\r\nthird\r\n"]
        assert list(corpus.documents("valid")) == ["fourth\r\nlast, no newline"]
        rows = PackedRows(corpus, ByteTokenizer(), "valid", seq_len=4, shuffle=True)
        tail = "fourth\r\nlast, no newline".encode("utf-8")
        assert rows.next_rows(2)[0].flatten().tolist() == list(tail[:8])

    # Too few lines to leave some for training: one clear error, naming the way out.
    for text in ("one line\n", "one line, no newline", ""):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=r"input\.txt: a single text file of [01] line.*--valid-percent 0"
                           ) as error:
            open_corpus([str(path)], valid_percent=2.0)
        assert_one_line(error)
    path.write_text("a\nb\n", encoding="utf-8")
    assert list(open_corpus([str(path)], valid_percent=2.0).documents("valid")) == ["b\n"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_lone_document_file_too_short_to_hold_documents_out(tmp_path, kind):
    def write(count: int) -> str:
        texts = [f"doc {i}" for i in range(count)]
        if kind == "jsonl":
            path = tmp_path / "docs.jsonl"
            path.write_text("".join(json.dumps({"text": text}) + "\n\n" for text in texts))
        else:
            pa = pytest.importorskip("pyarrow")
            parquet = pytest.importorskip("pyarrow.parquet")
            path = tmp_path / "docs.parquet"
            parquet.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), path)
        return str(path)

    first_valid = next(i for i in range(10**6) if held_out(str(i), 2.0))
    assert first_valid + 1 == 77  # the least number of documents at 2 %, as open_corpus's docstring says
    for count in (1, 3, first_valid):  # the hash holds out none of indices 0..count-1 at 2 %
        with pytest.raises(DataError, match=f"none of its {count} document.*--valid-percent 0") as error:
            open_corpus([write(count)], valid_percent=2.0)
        assert_one_line(error)
    corpus = open_corpus([write(first_valid + 1)], valid_percent=2.0)
    assert list(corpus.documents("valid")) == [f"doc {first_valid}"]
    assert len(list(corpus.documents("train"))) == first_valid

    # At 50 % index 0 and 1 are held out: one or two documents leave none for training.
    assert held_out("0", 50.0) and held_out("1", 50.0) and not held_out("2", 50.0)
    with pytest.raises(DataError, match="all of its 2 document.* held out at valid_percent=50.0") as error:
        open_corpus([write(2)], valid_percent=50.0)
    assert_one_line(error)
    assert list(open_corpus([write(1)], valid_percent=0.0).documents("train")) == ["doc 0"]
    with pytest.raises(DataError, match="no documents left for training"):
        open_corpus([write(200)], valid_percent=99.995)  # no index is trained on: all of them held out


def test_empty_splits(tmp_path, monkeypatch):
    write_texts(tmp_path / "two", {"a.txt": "one", "b.txt": "two"})
    with pytest.raises(DataError, match="no documents left for training") as error:
        open_corpus([str(tmp_path / "two")], valid_percent=100.0)
    assert_one_line(error)
    with pytest.raises(DataError, match="valid_percent must be in"):
        open_corpus([str(tmp_path / "two")], valid_percent=-1.0)

    # A dataset's train split is streamed: too few documents for the held-out share show when read.
    assert not any(held_out(str(i), 2.0) for i in range(3))
    three = [{"text": f"doc {i}"} for i in range(3)]
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"train": three}, []))
    corpus = open_corpus(["hf:org/name"], valid_percent=2.0)
    assert len(list(corpus.documents("train"))) == 3
    with pytest.raises(DataError, match="the valid split has no documents"):
        list(corpus.documents("valid"))
    with pytest.raises(DataError, match="the valid split has no documents"):
        PackedRows(corpus, ByteTokenizer(), "valid", seq_len=8).next_rows(1)
