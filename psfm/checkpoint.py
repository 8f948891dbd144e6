"""Checkpoints: per-shard ``.npz`` state plus a manifest with checksums (DESIGN §8).

Layout::

    RUN_DIR/checkpoints/day=3/shard-00000.npz
    RUN_DIR/checkpoints/day=3/shard-00001.npz
    RUN_DIR/checkpoints/day=3/MANIFEST.json   <- written last, via a temp file and a rename
    RUN_DIR/checkpoints/pass=2.day=3/...      <- the second pass over the days (train.passes)

Each shard writes its own file (:func:`write_shard_state`, called inside the shard's process)
and returns its size and SHA-256; the driver then writes the manifest. A checkpoint without its
manifest, or whose files do not match the manifest's sizes and SHA-256 sums, is never loaded.
Arrays are read with ``allow_pickle=False``: a checkpoint file cannot run code. Paths go through
``pyarrow.fs``, so run directories may be ``s3://``/``gs://``/``hdfs://`` URIs (the rename is
atomic on local and HDFS file systems; on object stores the manifest is simply written last).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from psfm.errors import CheckpointError

__all__ = [
    "resolve",
    "write_bytes",
    "read_bytes",
    "write_shard_state",
    "write_manifest",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "resume_checkpoint",
    "MANIFEST",
]

MANIFEST = "MANIFEST.json"


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """File system and path for a local path or a ``pyarrow.fs`` URI."""
    path = str(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), posixpath.abspath(path)


def write_bytes(path: str, data: bytes, atomic: bool = True) -> None:
    """Write ``data`` to ``path`` (parent folders created), via a temp file and a rename."""
    fs, p = resolve(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    tmp = posixpath.join(posixpath.dirname(p), f".{posixpath.basename(p)}.tmp") if atomic else p
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if atomic:
        fs.move(tmp, p)


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
        raise CheckpointError(f"Cannot read '{path}': {e}") from e


def write_shard_state(path: str, state: dict[str, np.ndarray]) -> dict[str, Any]:
    """Save one shard's arrays as ``.npz``; returns ``{"bytes", "sha256"}`` for the manifest."""
    buf = io.BytesIO()
    np.savez(buf, **state)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    data = buf.getvalue()
    write_bytes(path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(ckpt_dir: str, files: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    """The last write of a checkpoint: names every shard file with its size and checksum."""
    manifest = {"format": 1, "shards": len(files), "files": files, **meta}
    write_bytes(
        posixpath.join(str(ckpt_dir), MANIFEST),
        json.dumps(manifest, indent=1, sort_keys=True).encode(),
    )


def save_checkpoint(
    ckpt_dir: str, shard_states: list[dict[str, np.ndarray]], meta: dict[str, Any]
) -> str:
    """Write every shard's state from this process, then the manifest."""
    files = {
        f"shard-{i:05d}.npz": write_shard_state(
            posixpath.join(str(ckpt_dir), f"shard-{i:05d}.npz"), s
        )
        for i, s in enumerate(shard_states)
    }
    write_manifest(ckpt_dir, files, meta)
    return str(ckpt_dir)


def load_checkpoint(ckpt_dir: str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Verify and load a checkpoint (every shard's arrays, in shard order, and the manifest)."""
    ckpt_dir = str(ckpt_dir)
    try:
        manifest = json.loads(read_bytes(posixpath.join(ckpt_dir, MANIFEST)))
    except (CheckpointError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Checkpoint '{ckpt_dir}' has no readable manifest: {e}") from e
    states = []
    for name, info in sorted(manifest["files"].items()):
        data = read_bytes(posixpath.join(ckpt_dir, name))
        if len(data) != info["bytes"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise CheckpointError(
                f"Checkpoint file '{posixpath.join(ckpt_dir, name)}' does not match its "
                "manifest (size or SHA-256)."
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            states.append({k: z[k] for k in z.files})
    return states, manifest


def resume_checkpoint(run_dir: str) -> str | None:
    """The most recent complete checkpoint (highest ``day_index`` with a manifest), if any:
    where a resumed run continues."""
    fs, root = resolve(posixpath.join(str(run_dir), "checkpoints"))
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    best, best_i = None, None  # the statistics pass's checkpoint has day_index -1
    for e in entries:
        if e.type != pafs.FileType.Directory:
            continue
        d = posixpath.join(str(run_dir), "checkpoints", e.base_name)
        try:
            i = int(json.loads(read_bytes(posixpath.join(d, MANIFEST))).get("day_index", -1))
        except (CheckpointError, json.JSONDecodeError, ValueError):
            continue
        if best_i is None or i > best_i:
            best, best_i = d, i
    return best


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint that holds the run's model (what ``psfm export`` and ``psfm evaluate``
    read): the most recent complete one (:func:`resume_checkpoint`), or the one its manifest
    names as ``best_checkpoint``.

    A run with early stopping (``train.early_stop``) records in every checkpoint written
    after a validated pass the folder (under ``checkpoints/``) of the best pass's end-of-pass
    checkpoint; when later passes were worse, that earlier checkpoint is the model the run
    tested and reports. A field of the manifest rather than a separate marker file: it is
    written with the checkpoint in one atomic step, so the two can never disagree."""
    last = resume_checkpoint(run_dir)
    if last is None:
        return None
    name = json.loads(read_bytes(posixpath.join(last, MANIFEST))).get("best_checkpoint")
    if not name or name == posixpath.basename(last):
        return last
    best = posixpath.join(str(run_dir), "checkpoints", name)
    try:
        json.loads(read_bytes(posixpath.join(best, MANIFEST)))
    except (CheckpointError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"Checkpoint '{last}' names '{name}' as the run's best "
            f"checkpoint, which has no readable manifest: {e}"
        ) from e
    return best
