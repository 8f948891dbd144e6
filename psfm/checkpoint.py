"""Checkpoints: per-shard ``.npz`` state plus a manifest with checksums (DESIGN §8).

Layout::

    RUN_DIR/checkpoints/day=3/shard-00000.npz
    RUN_DIR/checkpoints/day=3/shard-00001.npz
    RUN_DIR/checkpoints/day=3/MANIFEST.json   <- written last, by temp file + atomic rename

A checkpoint without its manifest, or whose files do not match the manifest's sizes and SHA-256
sums, is never loaded. Arrays are read with ``allow_pickle=False``: a checkpoint file cannot run
code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from psfm.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "atomic_write_text"]

MANIFEST = "MANIFEST.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    ckpt_dir: Path, shard_states: list[dict[str, np.ndarray]], meta: dict[str, Any]
) -> Path:
    """Write every shard's state, then the manifest; returns the checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, state in enumerate(shard_states):
        name = f"shard-{i:05d}.npz"
        tmp = ckpt_dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **state)
        os.replace(tmp, ckpt_dir / name)
        files[name] = {"bytes": (ckpt_dir / name).stat().st_size,
                       "sha256": _sha256(ckpt_dir / name)}
    manifest = {"format": 1, "shards": len(shard_states), "files": files, **meta}
    atomic_write_text(ckpt_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return ckpt_dir


def load_checkpoint(ckpt_dir: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Verify and load a checkpoint written by :func:`save_checkpoint`."""
    ckpt_dir = Path(ckpt_dir)
    mpath = ckpt_dir / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Checkpoint '{ckpt_dir}' has no readable manifest: {e}") from e
    states = []
    for name, info in sorted(manifest["files"].items()):
        path = ckpt_dir / name
        if not path.exists() or path.stat().st_size != info["bytes"] or _sha256(
            path) != info["sha256"]:
            raise CheckpointError(
                f"Checkpoint file '{path}' does not match its manifest (size or SHA-256)."
            )
        with np.load(path, allow_pickle=False) as z:
            states.append({k: z[k] for k in z.files})
    return states, manifest


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent complete checkpoint (by its manifest's ``day_index``), if any."""
    root = Path(run_dir) / "checkpoints"
    best, best_i = None, -1
    if not root.exists():
        return None
    for d in root.iterdir():
        m = d / MANIFEST
        if m.exists():
            try:
                i = int(json.loads(m.read_text()).get("day_index", -1))
            except (json.JSONDecodeError, ValueError):
                continue
            if i > best_i:
                best, best_i = d, i
    return best
