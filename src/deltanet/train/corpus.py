"""The training corpus: documents from files or Hugging Face datasets, in a "train" and a "valid" split.

Where it sits: on top of errors only (pyarrow and datasets are imported only when a source needs them);
PackedRows streams a split's documents from it.

* A unit is a file (text, .jsonl, .parquet) or one split of a Hugging Face dataset; each yields its documents
  in order, lazily.
* `open_corpus` lists the units of the sources and divides them into a "train" and a held-out "valid" split,
  by a hash of the file's path (or of the document's index), the same on every machine; a lone text file
  gives the tail of its lines.
* `Corpus.documents` streams a split's documents lazily, in a deterministic (optionally shuffled) order, from
  any document on, so that a resumed run continues where it stopped. The stream says where it stands (a
  position: the unit, the documents read in it, the byte of a .jsonl line, a dataset's own state), and a
  stream started from a position seeks there rather than reading the documents before it.

Every error meant for the user is a `DataError` with a one-line message.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import random
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deltanet.train.errors import DataError, first_line

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
#
# unit.read(cursor) reads from a cursor, a small JSON-able dict that says where a document of the unit starts,
# and keeps it up to date: after each document, it says where the next one starts. {} is the unit's start.
#   "unit_doc": the unit's documents before that point (every unit)
#   "byte", "line": .jsonl: the offset of the next line in the file, and the number of lines before it
#   "hf": a streamed dataset's own state (IterableDataset.state_dict), where datasets has one
# A missing key is 0 (or, for "hf", the stream's start).
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
            raise DataError(f"{self.path}: cannot read: {first_line(exc)}") from exc

    def read(self, cursor: dict) -> Iterator[str]:
        if cursor.get("unit_doc", 0) >= 1:
            return  # read already: not opened
        # The bytes are cut only after a b"\n", which is never inside a UTF-8 character: decoding a piece
        # gives the same text as cutting the decoded whole.
        text = self.read_bytes().decode("utf-8", errors="replace")
        cursor["unit_doc"] = 1
        yield text


class _JsonLinesFile:
    """A .jsonl file: one JSON object a line, the document is obj[text_field]; blank lines skipped."""

    holds_many_documents = True
    num_documents = None  # unknown until read

    def __init__(self, path: Path, name: str, text_field: str):
        self.path, self.name, self.text_field = path, name, text_field

    # Lines end at b"\n", JSON Lines' separator (a "\r" before it is JSON whitespace), read as bytes: a line's
    # offset is then known without decoding, and b"\n" is never inside a UTF-8 character, so decoding line by
    # line gives the text that decoding the whole would.

    def read(self, cursor: dict) -> Iterator[str]:
        """The documents from cursor's line on: a resumed run seeks to it, the lines before it unread."""
        doc, byte, line_number = (cursor.get(key, 0) for key in ("unit_doc", "byte", "line"))
        try:
            with open(self.path, "rb") as file:
                if byte:
                    self._seek_line(file, byte)
                for raw in file:
                    byte += len(raw)
                    line_number += 1
                    line = raw.decode("utf-8", errors="replace")
                    if line.strip():
                        text = self._text(line, line_number)
                        doc += 1
                        cursor.update(unit_doc=doc, byte=byte, line=line_number)
                        yield text
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {first_line(exc)}") from exc

    def count_documents(self, limit: int) -> int:
        """min(documents in the file, limit), reading no further than the limit-th (non-blank lines)."""
        count = 0
        try:
            with open(self.path, "rb") as file:
                for raw in file:
                    count += bool(raw.decode("utf-8", errors="replace").strip())
                    if count == limit:
                        break
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {first_line(exc)}") from exc
        return count

    def _seek_line(self, file, byte: int) -> None:
        """Seek to a saved line start; a file changed since it was saved is an error rather than garbage."""
        size = os.fstat(file.fileno()).st_size
        at_line_start = byte == size  # the end (after an unended last line too)
        if byte < size:
            file.seek(byte - 1)
            at_line_start = file.read(1) == b"\n"
        if not at_line_start:
            raise DataError(f"{self.path}: the saved position (byte {byte}) is not the start of a line: "
                            "the file has changed since the checkpoint")
        file.seek(byte)

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
            raise DataError(f"{path}: not a readable parquet file: {first_line(exc)}") from exc
        schema = metadata.schema.to_arrow_schema()
        if text_field not in schema.names:
            raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)})")
        column_type = schema.field(text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataError(f"{path}: column {text_field!r} holds {column_type}, not strings")
        self.num_documents = metadata.num_rows  # from the footer: resuming skips the file unread

    def read(self, cursor: dict) -> Iterator[str]:
        """The documents from cursor's row on: the row groups before the one that holds it are not read."""
        doc = cursor.get("unit_doc", 0)
        if doc >= self.num_documents:
            return  # read already: not opened
        parquet = importlib.import_module("pyarrow.parquet")
        try:
            table = parquet.ParquetFile(self.path)
            group_start = 0  # the file's row index of the group's first row
            for group in range(table.num_row_groups):
                group_rows = table.metadata.row_group(group).num_rows
                if doc < group_start + group_rows:
                    column = table.read_row_group(group, columns=[self.text_field]).column(0)
                    for text in column.slice(doc - group_start).to_pylist():
                        doc += 1
                        cursor["unit_doc"] = doc
                        yield "" if text is None else text  # a null: an empty document (skipped when packed)
                group_start += group_rows
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {first_line(exc)}") from exc

    def count_documents(self, limit: int) -> int:
        return min(self.num_documents, limit)


class _HubSplit:
    """One split of a streamed Hugging Face dataset (datasets.IterableDataset)."""

    holds_many_documents = True
    num_documents = None

    def __init__(self, source: str, split: str, dataset, text_field: str):
        self.name = f"{source}[{split}]"
        self.dataset, self.text_field = dataset, text_field
        self._start_state = _stream_start_state(dataset)  # None: resuming skips examples by reading them

    def read(self, cursor: dict) -> Iterator[str]:
        """The documents from the cursor on: with datasets' stream state the pass starts there (datasets goes
        to the shard and skips inside it as it can); without it, the examples before it are read."""
        doc = cursor.get("unit_doc", 0)
        resumable = self._start_state is not None
        to_skip = 0 if resumable and "hf" in cursor else doc
        if resumable:
            # load_state_dict says where every later pass starts, not only the next one: each pass sets its
            # own (a copy: datasets may keep parts of it and update them as it iterates).
            self.dataset.load_state_dict(copy.deepcopy(cursor.get("hf", self._start_state)))
        for example in self.dataset:  # a new pass, which starts from the state loaded just above
            if to_skip:
                to_skip -= 1
                continue
            text = _text_of(example, self.text_field, f"{self.name} example {doc}")
            doc += 1
            cursor["unit_doc"] = doc
            if resumable:
                cursor["hf"] = self.dataset.state_dict()  # a copy, after this example
            yield text


def _stream_start_state(dataset) -> dict | None:
    """The state of a datasets.IterableDataset at its start (datasets >= 2.18) if JSON-able; else None."""
    if not all(callable(getattr(dataset, method, None)) for method in ("state_dict", "load_state_dict")):
        return None
    try:
        state = dataset.state_dict()
        json.dumps(state)  # it goes into checkpoints' data_state.json
    except Exception:  # RuntimeError (no state yet), TypeError (not JSON-able), ...: resume by reading
        return None
    return state


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
        raise DataError(f"{path}: cannot read: {first_line(exc)}") from exc


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


def _site_packages_units() -> list[_TextFile]:
    """The .py files of the running Python's installed packages (its purelib and platlib folders), named
    site-packages/<relative path>, sorted: tens to hundreds of MB, without a download. Installing or removing
    packages changes the corpus and its held-out split."""
    paths = sysconfig.get_paths()
    units = []
    # one root when platlib is purelib or a link to it (lib64 -> lib in some venvs)
    for root in sorted({Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()}):
        if root.is_dir():
            files = _walk_files(root, lambda name: name == "__pycache__" or name.startswith("."),
                                lambda name: name.endswith(".py"))
            units += [_TextFile(path, f"site-packages/{name}") for name, path in files]
    if not units:
        raise DataError(f"site-packages: no .py files under {paths['purelib']}")
    return units


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

    @property
    def num_documents(self) -> int | None:
        """The part's documents if known without reading the unit; else None."""
        return self.unit.num_documents if self.keep is None else None

    def read(self, cursor: dict) -> Iterator[str]:
        for text in self.unit.read(cursor):
            if self.keep is None or self.keep(cursor["unit_doc"] - 1):  # the unit's index of this document
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
        raise DataError(f"{source}: cannot load the dataset: {first_line(exc)}") from exc
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
            "site-packages": the .py files of the running Python's installed packages (no download;
                usually far larger than stdlib);
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
        elif source == "site-packages":
            file_units += _site_packages_units()
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

    def _ordered(self, split: str, epoch: int, seed: int, shuffle: bool) -> list[_Part]:
        parts = list(self._split(split))
        if shuffle:
            # A string seed is hashed with SHA-512 by random.Random: the same order on every machine.
            random.Random(f"deltanet-data/{seed}/{epoch}").shuffle(parts)
        return parts

    def num_units(self, split: str) -> int:
        """Units (files / dataset splits) of "train" or "valid"; a unit split by document or by line counts
        in both; 0 for "valid" when nothing is held out."""
        return len(self._split(split))

    def unit_names(self, split: str, epoch: int = 0, seed: int = 0, shuffle: bool = False) -> list[str]:
        """The units' names (relative posix paths, or "hf:NAME[split]") in the order `documents` reads them
        with the same arguments: sorted without shuffle."""
        return [part.unit.name for part in self._ordered(split, epoch, seed, shuffle)]

    def documents(
        self, split: str, epoch: int = 0, seed: int = 0, shuffle: bool = False, start: int = 0,
        position: dict | None = None,
    ) -> DocumentStream:
        """The split's documents in a deterministic order, lazily (files are opened when reached).

        Args:
            split: "train" or "valid".
            epoch, seed: with shuffle, the order of the units is a permutation drawn from both (documents
                inside a unit keep their order); without shuffle, units come in sorted order.
            start: begin at the start-th document of that order (to resume).
            position: where that document lies, from `last_position()` or `next_position()` of a stream
                with the same arguments. The stream seeks there: the units before it are not opened, and
                in its unit a .jsonl file is read from the document's line on, a parquet file from its row
                group on, a dataset from its saved stream state (datasets >= 2.18; else from its start).
                None, or a position that no longer names these units (the data changed): the first
                `start` documents are skipped by reading them, except units whose document count is known
                without reading (text files, parquet files), which are skipped unopened.

        Raises:
            DataError: when the split turns out to hold no document at all, or on a bad record.
            ValueError: a malformed position.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        empty = f"{self.description}: the {split} split has no documents"
        return DocumentStream(self._ordered(split, epoch, seed, shuffle), empty, start, position)


POSITION_INTS = ("unit", "unit_doc", "byte", "line")


class DocumentStream:
    """One epoch of a split's documents, an iterator of str, that can say where it stands. From
    Corpus.documents.

    A position is a small JSON-able dict: {"unit": the unit's index in the epoch's order, "name": its name
    (to notice data that changed), and its cursor: "unit_doc": documents of the unit before it, and what the
    unit needs to seek there: "byte" and "line" for .jsonl files, "hf" for a dataset with stream state}.
    """

    def __init__(self, parts: list[_Part], empty_message: str, start: int, position: dict | None):
        self._parts, self._empty_message = parts, empty_message
        self._unit, self._cursor = 0, {"unit_doc": 0}  # where the next document starts
        self._to_skip, self._seen = start, 0
        if position is not None and self._fits(position):
            self._unit = position["unit"]
            self._cursor = {key: value for key, value in position.items() if key not in ("unit", "name")}
            self._to_skip, self._seen = 0, start  # the documents before it exist: the split is not empty
        self._reading: Iterator[str] | None = None  # the current unit's documents from the cursor on
        self._last: dict | None = None  # the position of the document returned last

    def _fits(self, position: dict) -> bool:
        """Whether a position names a unit of this order (the end included); raises if it is malformed."""
        if not isinstance(position, dict):
            raise ValueError(f"position must be a dict or None, got {position!r}")
        for key in POSITION_INTS:
            value = position.get(key, 0)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"position[{key!r}] must be an int >= 0, got {value!r}")
        if "hf" in position and not isinstance(position["hf"], dict):
            raise ValueError(f"position['hf'] must be a dict, got {position['hf']!r}")
        unit = position.get("unit", 0)
        if unit >= len(self._parts):
            return unit == len(self._parts) and "name" not in position
        return position.get("name") == self._parts[unit].unit.name

    def __iter__(self) -> DocumentStream:
        return self

    def __next__(self) -> str:
        while self._unit < len(self._parts):
            part = self._parts[self._unit]
            if self._reading is None:
                known = part.num_documents
                if self._to_skip and known is not None and known <= self._to_skip:  # skipped unopened
                    self._to_skip -= known
                    self._seen += known
                    self._next_unit()
                    continue
                self._reading = part.read(self._cursor)
            before = self.next_position()
            text = next(self._reading, None)
            if text is None:
                self._next_unit()
                continue
            self._seen += 1
            if self._to_skip:
                self._to_skip -= 1
                continue
            self._last = before
            return text
        if self._seen == 0:
            raise DataError(self._empty_message)
        raise StopIteration

    def _next_unit(self) -> None:
        self.close()
        self._unit += 1
        self._cursor = {"unit_doc": 0}

    def next_position(self) -> dict:
        """Where the next document starts: resuming there gives it first. After a unit's last document, the
        unit's end (a resumed stream opens the unit there, finds nothing more and moves on)."""
        if self._unit == len(self._parts):
            return {"unit": self._unit}
        return {"unit": self._unit, "name": self._parts[self._unit].unit.name, **self._cursor}

    def last_position(self) -> dict | None:
        """Where the document returned last starts (None before the first): resuming there gives it again."""
        return self._last

    def close(self) -> None:
        """Close the current unit's file now rather than when garbage-collected."""
        if self._reading is not None:
            self._reading.close()
        self._reading = None
