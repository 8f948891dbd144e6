"""Checkpoints: per-shard ``.npz`` state plus a manifest with checksums (DESIGN §8).

Layout::

    RUN_DIR/checkpoints/day=3/shard-00000.npz
    RUN_DIR/checkpoints/day=3/shard-00001.npz
    RUN_DIR/checkpoints/day=3/MANIFEST.json   <- written last, via a temp file and a rename
    RUN_DIR/checkpoints/pass=2.day=3/...      <- the second pass over the days (train.passes)
    RUN_DIR/checkpoint_journal.json           <- a copy of every kept checkpoint's manifest

Each shard writes its own file (:func:`write_shard_state`, called inside the shard's process)
and returns its size and SHA-256; the driver then writes the manifest. A checkpoint without its
manifest, or whose files do not match the manifest's sizes and SHA-256 sums, is never loaded.
Arrays are read with ``allow_pickle=False``: a checkpoint file cannot run code. Paths go through
``pyarrow.fs``, so run directories may be ``s3://``/``gs://``/``hdfs://`` URIs (the rename is
atomic on local and HDFS file systems; on object stores the manifest is simply written last).

The journal keeps a copy of each kept checkpoint's manifest, rewritten (atomically) after the
manifest. A checkpoint whose manifest was lost, cut or edited is recovered from it on resume
(:func:`recover_manifest`), but only when every shard file matches the size and SHA-256 the
journal recorded: the journal can restore a manifest, never vouch for a damaged shard file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import re
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
    "load_newest_checkpoint",
    "prune_checkpoints",
    "list_checkpoints",
    "read_manifest",
    "recover_manifest",
    "MANIFEST",
    "JOURNAL",
]

MANIFEST = "MANIFEST.json"
JOURNAL = "checkpoint_journal.json"  # in the run directory, beside checkpoints/

log = logging.getLogger(__name__)


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
    """The last write of a checkpoint: names every shard file with its size and checksum;
    then the run's journal records a copy."""
    manifest = {"format": 1, "shards": len(files), "files": files, **meta}
    write_bytes(
        posixpath.join(str(ckpt_dir), MANIFEST),
        json.dumps(manifest, indent=1, sort_keys=True).encode(),
    )
    run_dir, name = _run_and_name(ckpt_dir)
    journal = _read_journal(run_dir)
    journal[name] = manifest
    _write_journal(run_dir, journal)


def _run_and_name(ckpt_dir: str) -> tuple[str, str]:
    """``RUN_DIR/checkpoints/NAME`` -> (RUN_DIR, NAME)."""
    root, name = posixpath.split(str(ckpt_dir).rstrip("/"))
    return posixpath.dirname(root), name


def _read_journal(run_dir: str) -> dict[str, Any]:
    """The checkpoint journal of a run (folder name -> manifest); empty when there is none or
    it cannot be read (a journal only ever adds a way to recover)."""
    try:
        got = json.loads(read_bytes(posixpath.join(run_dir, JOURNAL)))
        return dict(got["checkpoints"]) if got.get("format") == 1 else {}
    except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        if not isinstance(e, CheckpointError):
            log.warning("ignored the unreadable checkpoint journal of '%s': %s", run_dir, e)
        return {}


def _write_journal(run_dir: str, journal: dict[str, Any]) -> None:
    body = {"format": 1, "checkpoints": journal}
    write_bytes(posixpath.join(run_dir, JOURNAL), json.dumps(body, sort_keys=True).encode())


def recover_manifest(ckpt_dir: str) -> bool:
    """Rewrite the manifest of ``ckpt_dir`` from the journal's copy when every shard file it
    names matches the recorded size and SHA-256; False (nothing written) otherwise."""
    run_dir, name = _run_and_name(ckpt_dir)
    manifest = _read_journal(run_dir).get(name)
    if not isinstance(manifest, dict):
        return False
    try:
        files = _manifest_files(ckpt_dir, manifest)
        for fname, size, sha in files:
            data = read_bytes(posixpath.join(str(ckpt_dir), fname))
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                return False
    except CheckpointError:
        return False
    if not files:
        return False
    write_bytes(
        posixpath.join(str(ckpt_dir), MANIFEST),
        json.dumps(manifest, indent=1, sort_keys=True).encode(),
    )
    return True


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


_SHARD_FILE = re.compile(r"shard-\d{5}\.npz")


def _manifest_files(ckpt_dir: str, manifest: Any) -> list[tuple[str, int, str]]:
    """The manifest's shard files as (name, bytes, sha256), or a CheckpointError naming what
    is wrong with it (a manifest is data from disk: nothing in it is trusted)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise CheckpointError(
            f"Checkpoint '{ckpt_dir}' has a manifest without its list of shard files ('files')."
        )
    out = []
    for name, info in sorted(files.items()):
        ok = (
            _SHARD_FILE.fullmatch(str(name))
            and isinstance(info, dict)
            and isinstance(info.get("bytes"), int)
            and isinstance(info.get("sha256"), str)
        )
        if not ok:
            raise CheckpointError(
                f"Checkpoint '{ckpt_dir}' lists {name!r}: {info!r} in its manifest; an entry "
                "must be 'shard-NNNNN.npz': {'bytes': int, 'sha256': str}."
            )
        out.append((str(name), int(info["bytes"]), str(info["sha256"])))
    return out


def load_checkpoint(ckpt_dir: str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Verify and load a checkpoint (every shard's arrays, in shard order, and the manifest)."""
    ckpt_dir = str(ckpt_dir)
    try:
        manifest = json.loads(read_bytes(posixpath.join(ckpt_dir, MANIFEST)))
    except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Checkpoint '{ckpt_dir}' has no readable manifest: {e}") from e
    states = []
    for name, size, sha in _manifest_files(ckpt_dir, manifest):
        data = read_bytes(posixpath.join(ckpt_dir, name))
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise CheckpointError(
                f"Checkpoint file '{posixpath.join(ckpt_dir, name)}' does not match its "
                "manifest (size or SHA-256)."
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                states.append({k: z[k] for k in z.files})
        except (ValueError, OSError, EOFError) as e:  # object arrays need pickle: refused
            raise CheckpointError(
                f"Checkpoint file '{posixpath.join(ckpt_dir, name)}' cannot be read safely: {e}"
            ) from e
    return states, manifest


def list_checkpoints(run_dir: str) -> list[tuple[int, str, str]]:
    """Every checkpoint folder of a run, newest first: (day_index, folder, problem) where
    problem is "" for a readable manifest with a day index (the statistics pass's is -1). A
    checkpoint within a day has the day index of the step before it and ``units_done`` of
    its own step: it sorts after that step's checkpoint and before the next one's."""
    fs, root = resolve(posixpath.join(str(run_dir), "checkpoints"))
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    out = []
    for e in entries:
        if e.type != pafs.FileType.Directory:
            continue
        d = posixpath.join(str(run_dir), "checkpoints", e.base_name)
        try:
            m = json.loads(read_bytes(posixpath.join(d, MANIFEST)))
            out.append((int(m.get("day_index", -1)), int(m.get("units_done", 0)), d, ""))
        except (
            CheckpointError,
            json.JSONDecodeError,
            UnicodeDecodeError,
            ValueError,
            TypeError,
            AttributeError,
        ) as err:
            out.append((-2, 0, d, f"no readable manifest ({err})"))
    return [(i, d, p) for i, _, d, p in sorted(out, reverse=True)]


def resume_checkpoint(run_dir: str) -> str | None:
    """The most recent checkpoint with a readable manifest (highest ``day_index``), if any."""
    return next((d for _, d, problem in list_checkpoints(run_dir) if not problem), None)


def load_newest_checkpoint(
    run_dir: str,
) -> tuple[str, list[dict[str, np.ndarray]], dict[str, Any]] | None:
    """Where a resumed run continues: the newest checkpoint that verifies (manifest, sizes,
    SHA-256, arrays), each newer one that does not skipped with a logged reason; a manifest
    lost, cut or edited is first restored from the journal where the files allow it
    (:func:`recover_manifest`). None when the run has no checkpoint at all. When checkpoints
    exist and none verifies, the error lists every one with its reason."""
    found = list_checkpoints(run_dir)
    # a folder without a readable manifest has no day to sort by: recover those first
    if [d for _, d, problem in found if problem and _recovered(d, problem)]:
        found = list_checkpoints(run_dir)
    skipped: list[str] = []
    for _, d, problem in found:
        got = None if problem else _try_load(d)
        if isinstance(got, str) and _recovered(d, got):
            got = _try_load(d)
        if isinstance(got, tuple):
            for what in skipped:
                log.warning("skipped a damaged checkpoint: %s", what)
            if skipped:
                log.warning("resuming from the newest checkpoint that verifies: %s", d)
            return d, *got
        skipped.append(f"'{d}': {got if isinstance(got, str) else problem}")
    if not found:
        return None
    raise CheckpointError(
        f"No checkpoint of '{run_dir}' verifies: "
        + "; ".join(skipped)
        + ". Restore the damaged files, or start the run over with --overwrite."
    )


def _recovered(d: str, problem: str) -> bool:
    """:func:`recover_manifest`, logged with what was wrong."""
    if not recover_manifest(d):
        return False
    log.warning(
        "recovered the manifest of checkpoint '%s' from the run's checkpoint journal (every "
        "shard file matches its recorded SHA-256); it was: %s",
        d,
        problem,
    )
    return True


def _try_load(d: str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]] | str:
    """:func:`load_checkpoint`, or why it failed."""
    try:
        return load_checkpoint(d)
    except CheckpointError as e:
        return str(e)


def prune_checkpoints(run_dir: str, keep: int, protect: set[str]) -> list[str]:
    """Delete all but the ``keep`` newest verified-manifest checkpoints (0 = keep all) and the
    folders named in ``protect`` (e.g. the best pass's); folders without a readable manifest
    are left alone (they may be a checkpoint being written). Returns the deleted folders."""
    if keep <= 0:
        return []
    complete = [d for _, d, problem in list_checkpoints(run_dir) if not problem]
    gone = [d for d in complete[keep:] if posixpath.basename(d) not in protect]
    for d in gone:
        fs, p = resolve(d)
        fs.delete_dir(p)
    if gone:
        journal = _read_journal(str(run_dir))
        for d in gone:
            journal.pop(posixpath.basename(d), None)
        _write_journal(str(run_dir), journal)
    return gone


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


def read_manifest(ckpt_dir: str) -> dict[str, Any]:
    """A checkpoint's manifest alone (no shard file is read), or a CheckpointError naming
    the folder."""
    try:
        manifest = json.loads(read_bytes(posixpath.join(str(ckpt_dir), MANIFEST)))
    except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Checkpoint '{ckpt_dir}' has no readable manifest: {e}") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"Checkpoint '{ckpt_dir}' has a manifest that is not an object.")
    return manifest
