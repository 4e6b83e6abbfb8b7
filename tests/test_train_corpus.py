"""deltanet.train.corpus: corpus sources, their held-out split, document order and resume, data errors."""

from __future__ import annotations

import json
import sys
import types
import zlib

import pytest
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
    assert both.unit_names("train") == ["data.parquet"]
    assert list(both.documents("train", start=20)) == as_read[20:]

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
    assert len(in_order) == 9 + 4  # the last text file is held out; the jsonl file counts its lines
    for start in (0, 1, 5, 6, 9, 12, 13, 20):  # inside and around the jsonl file, at and past the end
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


def test_empty_splits(tmp_path):
    single = write_texts(tmp_path / "one", {"only.txt": "a single document"}) / "only.txt"
    with pytest.raises(DataError, match="no documents for the valid split") as error:
        open_corpus([str(single)])
    assert_one_line(error)

    write_texts(tmp_path / "two", {"a.txt": "one", "b.txt": "two"})
    with pytest.raises(DataError, match="no documents left for training"):
        open_corpus([str(tmp_path / "two")], valid_percent=100.0)
    with pytest.raises(DataError, match="valid_percent must be in"):
        open_corpus([str(tmp_path / "two")], valid_percent=-1.0)

    # One jsonl file of three documents: none of indices 0..2 is held out at 2 %, which shows on reading.
    assert not any(held_out(str(i), 2.0) for i in range(3))
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(3)))
    corpus = open_corpus([str(path)])
    assert len(list(corpus.documents("train"))) == 3
    with pytest.raises(DataError, match="the valid split has no documents"):
        list(corpus.documents("valid"))
    with pytest.raises(DataError, match="the valid split has no documents"):
        PackedRows(corpus, ByteTokenizer(), "valid", seq_len=8).next_rows(1)
