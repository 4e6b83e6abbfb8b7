"""The training corpus: documents from files or Hugging Face datasets, in a "train" and a "valid" split.

Where it sits: on top of errors only (pyarrow and datasets are imported only when a source needs them);
PackedRows streams a split's documents from it.

* A unit is a file (text, .jsonl, .parquet) or one split of a Hugging Face dataset; each yields its documents
  in order, lazily.
* `open_corpus` lists the units of the sources and divides them into a "train" and a held-out "valid" split,
  by a hash of the file's path (or of the document's index), the same on every machine; a lone text file
  gives the tail of its lines.
* `Corpus.documents` streams a split's documents lazily, in a deterministic (optionally shuffled) order, from
  any document on, so that a resumed run continues where it stopped.

Every error meant for the user is a `DataError` with a one-line message.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deltanet.train.errors import DataError, _first_line

SPLITS = ("train", "valid")
PIP_HINT = 'pip install "deltanet[data]"'
BINARY_PROBE_BYTES = 8192  # a NUL byte in this many leading bytes marks a file as binary
STDLIB_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def _import_optional(module: str, needed_by: str):
    """Import a dependency of the "data" extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(f"{needed_by} needs the {module.split('.')[0]} package: {PIP_HINT}") from exc


# ---------------------------------------------------------------------------------------------------------
# Units: a file, or one split of a Hugging Face dataset. Each yields its documents, in order, lazily.
# ---------------------------------------------------------------------------------------------------------


class _TextFile:
    """A file read as UTF-8 text (errors replaced): one document; or its bytes [start, end) only."""

    holds_many_documents = False
    num_documents = 1  # known without opening the file: resuming skips it unread

    def __init__(self, path: Path, name: str, start: int = 0, end: int | None = None):
        self.path, self.name = path, name
        self.start, self.end = start, end

    def read_bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.start)
                return file.read() if self.end is None else file.read(self.end - self.start)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {_first_line(exc)}") from exc

    def documents(self) -> Iterator[str]:
        # The bytes are cut only after a b"\n", which is never inside a UTF-8 character: decoding a piece
        # gives the same text as cutting the decoded whole.
        yield self.read_bytes().decode("utf-8", errors="replace")


class _JsonLinesFile:
    """A .jsonl file: one JSON object a line, the document is obj[text_field]; blank lines skipped."""

    holds_many_documents = True
    num_documents = None  # unknown until read

    def __init__(self, path: Path, name: str, text_field: str):
        self.path, self.name, self.text_field = path, name, text_field

    def documents(self) -> Iterator[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as lines:
                for line_number, line in enumerate(lines, start=1):
                    if line.strip():
                        yield self._text(line, line_number)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {_first_line(exc)}") from exc

    def count_documents(self, limit: int) -> int:
        """min(documents in the file, limit), reading no further than the limit-th (non-blank lines)."""
        count = 0
        try:
            with open(self.path, encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    count += bool(line.strip())
                    if count == limit:
                        break
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {_first_line(exc)}") from exc
        return count

    def _text(self, line: str, line_number: int) -> str:
        where = f"{self.path} line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{where}: a JSON {type(record).__name__}, not an object")
        return _text_of(record, self.text_field, where)


class _ParquetFile:
    """A .parquet file: the documents are the string column text_field, read one row group at a time."""

    holds_many_documents = True

    def __init__(self, path: Path, name: str, text_field: str):
        self.path, self.name, self.text_field = path, name, text_field
        pa = _import_optional("pyarrow", f"{path} (parquet)")
        parquet = _import_optional("pyarrow.parquet", f"{path} (parquet)")
        try:
            metadata = parquet.read_metadata(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            raise DataError(f"{path}: not a readable parquet file: {_first_line(exc)}") from exc
        schema = metadata.schema.to_arrow_schema()
        if text_field not in schema.names:
            raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)})")
        column_type = schema.field(text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataError(f"{path}: column {text_field!r} holds {column_type}, not strings")
        self.num_documents = metadata.num_rows  # from the footer: resuming skips the file unread

    def documents(self) -> Iterator[str]:
        parquet = importlib.import_module("pyarrow.parquet")
        try:
            table = parquet.ParquetFile(self.path)
            for group in range(table.num_row_groups):
                column = table.read_row_group(group, columns=[self.text_field]).column(0)
                for text in column.to_pylist():
                    yield "" if text is None else text  # a null is an empty document (skipped when packed)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {_first_line(exc)}") from exc

    def count_documents(self, limit: int) -> int:
        return min(self.num_documents, limit)


class _HubSplit:
    """One split of a streamed Hugging Face dataset (datasets.IterableDataset)."""

    holds_many_documents = True
    num_documents = None

    def __init__(self, source: str, split: str, dataset, text_field: str):
        self.name = f"{source}[{split}]"
        self.dataset, self.text_field = dataset, text_field

    def documents(self) -> Iterator[str]:
        for index, example in enumerate(self.dataset):  # a new pass over the stream each time
            yield _text_of(example, self.text_field, f"{self.name} example {index}")


def _text_of(record: dict, text_field: str, where: str) -> str:
    """record[text_field] as a document; null is an empty one."""
    if text_field not in record:
        fields = ", ".join(map(str, list(record)[:10]))
        raise DataError(f"{where}: no field {text_field!r} (fields: {fields})")
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is a {type(text).__name__}, not a string")
    return text


# ---------------------------------------------------------------------------------------------------------
# Sources -> units
# ---------------------------------------------------------------------------------------------------------


def _is_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return b"\0" in file.read(BINARY_PROBE_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {_first_line(exc)}") from exc


def _walk_files(root: Path, skip_dir: Callable[[str], bool], keep_file: Callable[[str], bool]):
    """(relative posix path, path) of the files under root, sorted by relative path."""
    found = []
    for directory, dir_names, file_names in os.walk(root):
        dir_names[:] = [name for name in dir_names if not skip_dir(name)]  # prune: os.walk won't descend
        for file_name in file_names:
            if keep_file(file_name):
                path = Path(directory, file_name)
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _stdlib_units() -> list[_TextFile]:
    """The running Python's standard library .py files, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _walk_files(root, lambda name: name in STDLIB_SKIPPED_DIRS, lambda name: name.endswith(".py"))
    if not files:
        raise DataError(f"stdlib: no .py files under {root}")
    # No binary probe: these are Python sources, and opening ~2000 files would cost a third of a second.
    return [_TextFile(path, name) for name, path in files]


def _local_units(source: str, text_field: str) -> list:
    """The units of a local file or directory (recursively, hidden entries skipped), sorted by path."""
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError(f"{source}: no such file or directory")
    if root.is_dir():
        # Hidden entries (.git, .DS_Store, ...) are tooling, not corpus.
        files = _walk_files(root, lambda name: name.startswith("."), lambda name: not name.startswith("."))
        if not files:
            raise DataError(f"{source}: no files in the directory")
    else:
        files = [(root.name, root)]
    units = []
    for name, path in files:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            units.append(_JsonLinesFile(path, name, text_field))
        elif suffix == ".parquet":
            units.append(_ParquetFile(path, name, text_field))
        elif not _is_binary(path):
            units.append(_TextFile(path, name))
    if not units:
        raise DataError(f"{source}: only binary files (a NUL byte in the first {BINARY_PROBE_BYTES} bytes)")
    return units


# ---------------------------------------------------------------------------------------------------------
# Held-out split
# ---------------------------------------------------------------------------------------------------------


def _held_out(key: str, valid_percent: float) -> bool:
    """Whether `key` (a relative path, or a document index as a string) belongs to the held-out split.

    crc32, not hash(): the same on every machine and run, so a checkpoint resumes on the same split.
    """
    return zlib.crc32(key.encode("utf-8")) % 10000 < valid_percent * 100


@dataclass
class _Part:
    """A unit in one split; `keep(index)` picks its documents when a unit is split by document."""

    unit: object
    keep: Callable[[int], bool] | None = None

    def documents(self) -> Iterator[str]:
        for index, text in enumerate(self.unit.documents()):
            if self.keep is None or self.keep(index):
                yield text


def _split_by_document(unit, valid_percent: float) -> tuple[_Part, _Part]:
    def valid(index: int) -> bool:
        return _held_out(str(index), valid_percent)

    return _Part(unit, keep=lambda index: not valid(index)), _Part(unit, keep=valid)


def _first_index(valid_percent: float, held: bool) -> int | None:
    """The first document index that the held-out rule puts in valid (held) or in train; None: no index."""
    # Held out: crc32 % 10000 < valid_percent * 100, which 0 satisfies if any value does; trained on:
    # >= valid_percent * 100, which 9999 satisfies if any value does.
    if (held and valid_percent <= 0) or (not held and valid_percent * 100 > 9999):
        return None
    index = 0  # crc32 % 10000 of the indices takes every value: the loop ends
    while _held_out(str(index), valid_percent) != held:
        index += 1
    return index


def _split_lone_document_file(unit, valid_percent: float) -> tuple[list[_Part], list[_Part]]:
    """Train and valid parts of a lone .jsonl / .parquet file, by document index.

    Counts the documents only as far as needed (the first index of each split) to say now, rather than when
    a split is read, that one of them would be empty.
    """
    train, valid = _split_by_document(unit, valid_percent)
    first_valid, first_train = _first_index(valid_percent, True), _first_index(valid_percent, False)
    if first_train is None:  # valid_percent ~100: open_corpus says that nothing is left for training
        return [], [valid]
    count = unit.count_documents(limit=max(first_valid, first_train) + 1)
    if count <= first_valid:
        raise DataError(
            f"{unit.path}: none of its {count} document(s) is held out at valid_percent={valid_percent} "
            f"(documents are held out by a hash of their index; the first would be document "
            f"{first_valid + 1}): use --valid-percent 0 to train without validation, or give more documents"
        )
    if count <= first_train:
        raise DataError(
            f"{unit.path}: all of its {count} document(s) are held out at valid_percent={valid_percent}: "
            "use a smaller --valid-percent (0: no validation), or give more documents"
        )
    return [train], [valid]


def _split_lone_text_file(unit: _TextFile, valid_percent: float) -> tuple[list[_Part], list[_Part]]:
    """Train and valid parts of a lone text file: the last valid_percent % of its lines (at least one) are
    held out, the rest is trained on; each is one document, cut after a line's b"\n"."""
    data = unit.read_bytes()
    num_lines = data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))  # a last unended line counts
    held_lines = max(1, int(num_lines * valid_percent / 100))
    if held_lines >= num_lines:
        raise DataError(
            f"{unit.path}: a single text file of {num_lines} line(s) cannot be divided into training text "
            f"and a held-out tail of {held_lines} line(s) (valid_percent={valid_percent}): use "
            "--valid-percent 0 to train without validation, or give more lines or files"
        )
    cut = len(data) - 1 if data.endswith(b"\n") else len(data)  # the last line's own b"\n" starts none
    for _ in range(held_lines):  # held_lines < num_lines: there are that many b"\n" before the cut
        cut = data.rfind(b"\n", 0, cut)
    cut += 1  # the held-out tail starts after a b"\n"
    train = _TextFile(unit.path, unit.name, end=cut)
    valid = _TextFile(unit.path, unit.name, start=cut, end=len(data))
    return [_Part(train)], [_Part(valid)]


def _split_files(units: list, valid_percent: float) -> tuple[list[_Part], list[_Part]]:
    """Train and valid parts of the file units: by unit; a lone file by document, or by line if it is text."""
    if valid_percent == 0:
        return [_Part(unit) for unit in units], []
    if len(units) == 1:
        if units[0].holds_many_documents:
            return _split_lone_document_file(units[0], valid_percent)
        return _split_lone_text_file(units[0], valid_percent)
    valid_units = [unit for unit in units if _held_out(unit.name, valid_percent)]
    if not valid_units:
        valid_units = [units[-1]]  # too few units for the hash to pick one: both splits must have documents
    held = {id(unit) for unit in valid_units}
    return [_Part(unit) for unit in units if id(unit) not in held], [_Part(unit) for unit in valid_units]


def _hub_parts(source: str, text_field: str, valid_percent: float) -> tuple[list[_Part], list[_Part]]:
    """Train and valid parts of "hf:NAME" or "hf:NAME:CONFIG"."""
    pieces = source[len("hf:"):].split(":")
    if len(pieces) > 2 or not all(pieces):
        raise DataError(f"{source}: expected hf:NAME or hf:NAME:CONFIG")
    name, config = pieces[0], (pieces[1] if len(pieces) == 2 else None)
    datasets = _import_optional("datasets", source)
    try:
        splits = datasets.load_dataset(name, config, streaming=True)
    except Exception as exc:  # missing dataset, bad config, no network...: datasets has many error types
        raise DataError(f"{source}: cannot load the dataset: {_first_line(exc)}") from exc
    if "train" not in splits:
        raise DataError(f"{source}: no 'train' split (splits: {', '.join(splits)})")
    train = _HubSplit(source, "train", splits["train"], text_field)
    if valid_percent == 0:
        return [_Part(train)], []  # no held-out split: not even the dataset's own "validation"
    if "validation" in splits:
        return [_Part(train)], [_Part(_HubSplit(source, "validation", splits["validation"], text_field))]
    train_part, valid_part = _split_by_document(train, valid_percent)
    return [train_part], [valid_part]


# ---------------------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------------------


def open_corpus(sources: list[str], text_field: str = "text", valid_percent: float = 2.0) -> Corpus:
    """The documents of `sources`, divided into a "train" and a held-out "valid" split.

    Args:
        sources: each one of
            "stdlib": the .py files of the running Python's standard library (no download);
            a local file or directory (recursively; hidden entries skipped): .jsonl (the document is
                obj[text_field] of each non-blank line), .parquet (the string column text_field; needs
                pyarrow), anything else one UTF-8 document per file (binary files skipped);
            "hf:NAME" or "hf:NAME:CONFIG": a Hugging Face dataset, streamed (needs datasets).
            A single string is taken as a list of one.
        text_field: the JSON field / parquet column / dataset field that holds the text.
        valid_percent: in [0, 100], the share held out as the "valid" split, the same on every machine:
            0: nothing is held out: every file and dataset is training data and the valid split is empty
                (a dataset's own "validation" split is not used).
            Several files (all the sources' files together): about this share of them, chosen by crc32 of
                the relative path; if the hash chooses none, the last file.
            A lone text file: the last valid_percent % of its lines (at least one line), cut at a line
                boundary, is the valid split's document; the lines before it are the training document.
            A lone .jsonl / .parquet file: about this share of its documents, chosen by crc32 of the
                document's index; there must be enough documents for both splits to get one (at 2 %, 77).
            A dataset: its "validation" split, or else about this share of the documents of its "train"
                split, chosen as in a lone .jsonl file.

    Raises:
        DataError: a missing path, no files, an unknown "hf:" form, a missing package, a parquet file
            without the column, no training data, or a lone file too short to hold out part of it at this
            valid_percent. Bad JSON lines surface when they are read.
    """
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise DataError("no data sources given")
    if not 0 <= valid_percent <= 100:
        raise DataError(f"valid_percent must be in [0, 100], got {valid_percent}")
    file_units: list = []
    hub_parts: dict[str, list[_Part]] = {"train": [], "valid": []}
    for source in sources:
        if source.startswith("hf:"):
            train, valid = _hub_parts(source, text_field, valid_percent)
            hub_parts["train"] += train
            hub_parts["valid"] += valid
        elif source == "stdlib":
            file_units += _stdlib_units()
        else:
            file_units += _local_units(source, text_field)
    train, valid = _split_files(file_units, valid_percent) if file_units else ([], [])
    parts = {"train": train + hub_parts["train"], "valid": valid + hub_parts["valid"]}
    description = " ".join(sources)
    if not parts["train"]:
        raise DataError(f"{description}: no documents left for training with valid_percent={valid_percent}")
    return Corpus(parts, description)


class Corpus:
    """The units of each split ("train", "valid") and their documents, streamed. Built by open_corpus."""

    def __init__(self, parts: dict[str, list[_Part]], description: str):
        self._parts = parts
        self.description = description

    def _split(self, split: str) -> list[_Part]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self._parts[split]

    def num_units(self, split: str) -> int:
        """Units (files / dataset splits) of "train" or "valid"; a unit split by document or by line counts
        in both; 0 for "valid" when nothing is held out."""
        return len(self._split(split))

    def unit_names(self, split: str) -> list[str]:
        """The units' names in their unshuffled order: relative posix paths, or "hf:NAME[split]"."""
        return [part.unit.name for part in self._split(split)]

    def documents(
        self, split: str, epoch: int = 0, seed: int = 0, shuffle: bool = False, start: int = 0
    ) -> Iterator[str]:
        """The split's documents in a deterministic order, lazily (files are opened when reached).

        Args:
            split: "train" or "valid".
            epoch, seed: with shuffle, the order of the units is a permutation drawn from both (documents
                inside a unit keep their order); without shuffle, units come in sorted order.
            start: skip the first `start` documents of that order (to resume); units whose document count
                is known without reading (text files, parquet files) are skipped unopened.

        Raises:
            DataError: when the split turns out to hold no document at all, or on a bad record.
        """
        parts = list(self._split(split))
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if shuffle:
            # A string seed is hashed with SHA-512 by random.Random: the same order on every machine.
            random.Random(f"deltanet-data/{seed}/{epoch}").shuffle(parts)
        return self._stream(split, parts, start)

    def _stream(self, split: str, parts: list[_Part], start: int) -> Iterator[str]:
        to_skip, seen = start, 0
        for part in parts:
            known = part.unit.num_documents if part.keep is None else None
            if known is not None and known <= to_skip:
                to_skip -= known
                seen += known
                continue
            for text in part.documents():
                seen += 1
                if to_skip:
                    to_skip -= 1
                    continue
                yield text
        if seen == 0:
            raise DataError(f"{self.description}: the {split} split has no documents")
