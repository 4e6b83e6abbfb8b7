"""Helpers shared by the tests of deltanet.train's tokenizers, corpus and packed rows."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_texts(directory: Path, texts: dict[str, str]) -> Path:
    for name, text in texts.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory


def byte_tokens(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def expected_stream(documents: list[str], encode=byte_tokens) -> tuple[list[int], list[int]]:
    """Tokens and position ids of documents laid end to end, empty ones dropped."""
    tokens, positions = [], []
    for document in documents:
        ids = encode(document)
        tokens += ids
        positions += range(len(ids))
    return tokens, positions


def assert_one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value), str(error.value)
