"""Training checkpoints: written atomically, the last N kept, enough to resume a run exactly.

A checkpoint is a folder out_dir/checkpoints/step-NNNNNNN holding
    model.safetensors, config.json   the model (save_pretrained: `from_pretrained(folder)` loads it)
    trainer_state.pt                 optimizer, scheduler, RNG states, step (torch.save; loaded weights_only)
    data_state.json                  where the training data continues (PackedRows.state_dict)
    train_config.json                the run's settings
It is first written under a temporary name in the same folder, flushed to disk, then renamed: a run killed at
any moment leaves either the whole checkpoint or none of it (and a temporary folder, which the next run
removes).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

STEP_PATTERN = re.compile(r"^step-(\d+)$")
TEMP_PREFIX = ".tmp-"


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints, oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may draw from (torch CPU and CUDA, Python's)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    data_state: dict[str, Any], train_config: dict[str, Any], keep: int) -> Path:
    """Write the checkpoint of `step` atomically, then delete all but the `keep` latest; -> its folder.

    model: the unwrapped model (a PreTrainedModel). trainer_state: tensors, numbers, strings, lists, dicts
    (what torch.load(weights_only=True) reads back)."""
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    temp = root / f"{TEMP_PREFIX}step-{step:07d}-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar would cut through ours
    try:
        model.save_pretrained(temp, safe_serialization=True)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    torch.save(trainer_state, temp / "trainer_state.pt")
    (temp / "data_state.json").write_text(json.dumps(data_state))
    (temp / "train_config.json").write_text(json.dumps(train_config, indent=1))
    _fsync_tree(temp)
    if final.exists():  # this step's checkpoint is there already (the run resumed from it): keep that one
        shutil.rmtree(temp)
        return final
    temp.rename(final)
    _fsync_dir(root)
    for _, path in list_checkpoints(out_dir)[:-keep]:
        # out of the step-* names first: a kill halfway through the deletion must not leave a partial
        # checkpoint that looks complete
        doomed = root / f"{TEMP_PREFIX}old-{path.name}-{os.getpid()}"
        path.rename(doomed)
        shutil.rmtree(doomed)
    return final


def remove_temporaries(out_dir: str | Path) -> None:
    """Delete the partial checkpoints left by a run that was killed while writing one."""
    root = checkpoint_dir(out_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(trainer_state, data_state, train_config) of a checkpoint folder; the model is loaded separately."""
    trainer_state = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=True)
    data_state = json.loads((folder / "data_state.json").read_text())
    train_config = json.loads((folder / "train_config.json").read_text())
    return trainer_state, data_state, train_config
