"""A growable ``uint64`` key -> dense slot map for parameter-server shards.

:class:`KeyTable` gives every feature key a dense slot number ``0..len-1`` so that per-key
state (weights, optimizer accumulators) can live in plain numpy arrays indexed by slot.
Every operation is vectorized over a batch of keys; Python only loops over probe *rounds*.

Layout
------
Two arrays:

* ``keys``: ``uint64[key_capacity]``, dense; slot ``i`` holds ``keys[i]`` for ``i < len``.
  Grown by doubling (amortized O(1) per insert).
* ``index``: ``int32[capacity]``, open addressing with linear probing; each entry is a slot
  number or ``-1`` (empty). ``capacity`` is any size >= 8 and the load ``len / capacity``
  never exceeds 1/2; when an insert would pass it, the index grows by at least half and every
  key is rehashed (vectorized, in chunks).

The home position of a key comes from Fibonacci (multiplicative) hashing of *all* its bits:
the high 32 bits of ``key * 0x9E3779B97F4A7C15 mod 2**64``, scaled to ``[0, capacity)``
(``(h >> 32) * capacity >> 32``), so keys of one shard that share their low bits (say all
multiples of 4) still spread over the whole index, and the index need not be a power of two.
A lookup reads ``index[pos]``, compares ``keys[slot]`` with the key, and moves to ``pos + 1``
(mod capacity) until it finds the key or an empty entry. Memory is 8 bytes per key slot plus
4 bytes per index entry: while keys arrive, 8 to 12 bytes for ``keys`` and 8 to 12 bytes for
``index`` (growth by half), and after :meth:`KeyTable.trim` (the shards call it at day end)
about ``slack`` x 16 bytes; see :attr:`KeyTable.nbytes`.

Worked example (``capacity=4`` gives an index of 8 entries; the home positions are
``42 -> 7``, ``7 -> 2``, ``8 -> 7``, ``5 -> 0``)::

    >>> t = KeyTable(capacity=4)
    >>> t.insert(np.array([42, 7, 42], dtype=np.uint64))  # new keys numbered by first occurrence
    array([0, 1, 0])
    >>> t.insert(np.array([8], dtype=np.uint64))  # home 7 is taken by 42: probe wraps to 0
    array([2])
    >>> t.keys
    array([42,  7,  8], dtype=uint64)
    >>> t._index  # doctest: +NORMALIZE_WHITESPACE
    array([ 2, -1,  1, -1, -1, -1, -1,  0], dtype=int32)
    >>> t.lookup(np.array([8, 5], dtype=np.uint64))  # 5: home 0 holds key 8, then empty
    array([ 2, -1])
    >>> t.retain(np.array([False, True, True]))  # old slots of the survivors
    array([1, 2])
    >>> t.keys
    array([7, 8], dtype=uint64)

Slot numbers depend only on the sequence of calls, never on the index layout, so a table
restored from :meth:`KeyTable.snapshot` hands out exactly the slots the original would.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from psfm.errors import CheckpointError, ConfigError, DataError, PsfmError

__all__ = ["KeyTable"]

_FIB: Final = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, odd
_EMPTY: Final = -1
_MIN_INDEX_CAPACITY: Final = 8
_MAX_KEYS: Final = 2**31 - 1  # slots are stored as int32 in the index
GROWTH_SLACK: Final = 1.125  # room kept at a day end for keys to come: capacity / stored
_REHASH_CHUNK: Final = 1 << 20  # keys per chunk when rebuilding the index (bounds temporaries)
_HI: Final = np.uint64(32)


def _index_capacity_for(n: int) -> int:
    """Smallest index size ``>= _MIN_INDEX_CAPACITY`` whose half holds ``n`` keys."""
    return max(_MIN_INDEX_CAPACITY, 2 * n)


def _home(keys: np.ndarray, size: int) -> np.ndarray:
    """Home positions (int64) of uint64 ``keys`` in an index of ``size`` (< 2**32) entries:
    the high 32 bits of the Fibonacci hash, scaled to ``[0, size)``."""
    h = keys * _FIB  # uint64 wraparound on arrays: silent, no warning
    h >>= _HI
    h *= np.uint64(size)
    h >>= _HI
    return h.view(np.int64)  # < size after the scaling, so the view is exact


def _next(pos: np.ndarray, size: int) -> None:
    """Advance probe positions by one entry, wrapping at ``size`` (in place)."""
    pos += 1
    pos[pos == size] = 0


def _place(
    index: np.ndarray,
    key_buf: np.ndarray,
    keys: np.ndarray,
    slots: np.ndarray,
    check_duplicates: bool,
) -> None:
    """Write ``slots`` (int32) for distinct ``keys`` absent from ``index``, in probe rounds.

    Conflicts inside the batch (two keys wanting one empty entry) are settled by writing all
    candidates and reading back who won; the losers probe on. With ``check_duplicates`` a
    loser whose key equals the winner's (the keys ``key_buf[slots]``) raises
    :class:`CheckpointError`; duplicates always meet this way, since equal keys walk the same
    probe sequence in lockstep.
    """
    size = index.size
    pos = _home(keys, size)
    while pos.size:
        free = index[pos] < 0
        free_pos = pos[free]
        free_slots = slots[free]
        index[free_pos] = free_slots
        retry = ~free
        retry[free] = index[free_pos] != free_slots
        if not retry.any():
            return
        pos = pos[retry]
        slots = slots[retry]
        if check_duplicates:
            occupant = index[pos]
            same = key_buf[occupant] == key_buf[slots]
            if same.any():
                dup = int(key_buf[slots[same][0]])
                raise CheckpointError(
                    f"The 'keys' array of a KeyTable snapshot must hold distinct keys. "
                    f"Got key {dup} more than once instead."
                )
        _next(pos, size)


def _as_keys(keys: np.ndarray) -> np.ndarray:
    """``keys`` as a flat uint64 array (no copy when already flat uint64)."""
    arr = np.asarray(keys)
    if arr.dtype == np.uint64:
        return arr.reshape(-1)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"KeyTable keys must be uint64 or another integer dtype with non-negative values. "
            f"Got dtype {arr.dtype} instead."
        )
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and int(arr.min()) < 0:
        raise DataError(
            f"KeyTable keys must be uint64 or another integer dtype with non-negative values. "
            f"Got dtype {arr.dtype} with negative value {int(arr.min())} instead."
        )
    return arr.reshape(-1).astype(np.uint64)


class KeyTable:
    """Growable map from ``uint64`` keys to dense ``int64`` slots ``0..len-1``.

    Args:
        capacity: expected number of keys; sizes both arrays so that this many keys fit
            without growing. The table grows past it as needed.

    Slots are stable until :meth:`retain`, which compacts them. New keys get consecutive
    slots in order of their first occurrence in the :meth:`insert` call.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise ConfigError(
                f"The 'capacity' parameter of KeyTable must be an int >= 0. "
                f"Got {capacity!r} instead."
            )
        capacity = int(capacity)
        if capacity < 0 or capacity > _MAX_KEYS:
            raise ConfigError(
                f"The 'capacity' parameter of KeyTable must be an int in [0, {_MAX_KEYS}]. "
                f"Got {capacity} instead."
            )
        self._n = 0
        self._keys = np.empty(max(1, capacity), dtype=np.uint64)
        self._set_index_capacity(_index_capacity_for(capacity))

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"KeyTable(len={self._n}, capacity={self._index.size}, nbytes={self.nbytes})"

    @property
    def keys(self) -> np.ndarray:
        """Read-only ``uint64 [len]`` view; slot ``i`` holds ``keys[i]``.

        The view is valid until the next :meth:`insert` or :meth:`retain`; copy it to keep it.
        """
        view = self._keys[: self._n]
        view.flags.writeable = False
        return view

    @property
    def index_capacity(self) -> int:
        """Number of index entries; at most half of them hold keys."""
        return int(self._index.size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays (allocated capacity, not only ``len``)."""
        return int(self._keys.nbytes + self._index.nbytes)

    # ------------------------------------------------------------------ queries

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Slots of ``keys`` (int64, same shape), ``-1`` where a key is absent."""
        arr = np.asarray(keys)
        slots, _ = self._probe(_as_keys(arr), want_end=False)
        return slots.reshape(arr.shape)

    def _probe(self, flat: np.ndarray, want_end: bool) -> tuple[np.ndarray, np.ndarray]:
        """Slots of uint64 ``flat`` (-1 if absent) and, if ``want_end``, the positions.

        The positions (int64) are, for the absent keys, the empty index entry where their
        probe stopped, i.e. where they would be inserted; other entries are meaningless.
        """
        index = self._index
        key_buf = self._keys  # size >= 1, so slot -1 (empty) reads a valid, ignored entry
        size = index.size
        end = _home(flat, size)
        slot = index[end]
        hit = key_buf[slot] == flat
        # A "hit" on an empty entry (slot -1) yields -1, which is the right answer anyway.
        out = np.where(hit, slot, _EMPTY).astype(np.int64)
        hit |= slot < 0
        act = np.flatnonzero(~hit)
        if act.size == 0:
            return out, end
        pending = flat[act]
        pos = end[act]
        while True:
            _next(pos, size)
            slot = index[pos]
            hit = key_buf[slot] == pending
            out[act[hit]] = slot[hit]
            empty = slot < 0
            if want_end:
                end[act[empty]] = pos[empty]
            hit |= empty
            if hit.all():
                return out, end
            more = ~hit
            act = act[more]
            pending = pending[more]
            pos = pos[more]

    # ------------------------------------------------------------------ updates

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Slots of ``keys`` (int64, same shape), creating the absent ones.

        Duplicates within the call map to one slot; new keys get slots ``len, len+1, ...``
        in order of their first occurrence in ``keys`` (flattened in C order).
        """
        arr = np.asarray(keys)
        flat = _as_keys(arr)
        slots, end = self._probe(flat, want_end=True)
        missing = np.flatnonzero(slots < 0)
        if missing.size == 0:
            return slots.reshape(arr.shape)
        new = flat[missing]  # absent keys in input order, duplicates included
        n0 = self._n
        if n0 + new.size > _MAX_KEYS:
            raise PsfmError(
                f"A KeyTable holds at most {_MAX_KEYS} keys. Got {n0} keys and an insert of "
                f"{new.size} absent keys (duplicates counted) instead."
            )
        start = end[missing]
        known_free = True  # the probes stopped on empty entries, nothing written since
        if n0 + new.size > self._index.size // 2:
            ordered = np.sort(new)
            n1 = n0 + 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1]))  # exact count
            if n1 > self._index.size // 2:  # grow by half at least: amortized O(1) rehash
                self._set_index_capacity(
                    max(_index_capacity_for(n1), self._index.size + self._index.size // 2)
                )
                self._rebuild_index(check_duplicates=False)
                start = _home(new, self._index.size)
                known_free = False
        slots[missing] = self._claim(new, start, known_free)
        return slots.reshape(arr.shape)

    def _claim(self, new: np.ndarray, start: np.ndarray, known_free: bool) -> np.ndarray:
        """Give the absent keys ``new`` (duplicates allowed) slots by first occurrence.

        Each key ``new[j]`` probes from ``start[j]`` and claims an empty entry with the
        tentative value ``len + j``: all claim, read back, and the winners hold the entry.
        A loser whose winner has the same key is a duplicate and takes the winner's slot
        (equal keys walk the same probe sequence in lockstep, so they always meet this way).
        Then groups of equal keys are numbered in order of their first occurrence, and the
        winners' entries are rewritten if that changed their value. Returns int64 slots.
        """
        index = self._index
        size = index.size
        n0 = self._n
        m = int(new.size)
        ids = np.arange(m, dtype=np.int64)
        rep = np.empty(m, dtype=np.int64)  # j of the winner holding new[j]'s entry
        won_at = np.empty(m, dtype=np.int64)  # entry position, valid for winners
        act = ids
        pos = start.copy()
        while True:
            free = np.ones(act.size, dtype=bool) if known_free else index[pos] < 0
            known_free = False
            f_act = act[free]
            f_pos = pos[free]
            tentative = (f_act + n0).astype(np.int32)
            index[f_pos] = tentative
            holder = index[f_pos]
            won = holder == tentative
            winners = f_act[won]
            rep[winners] = winners
            won_at[winners] = f_pos[won]
            lost = ~won
            retry = ~free
            if lost.any():
                l_act = f_act[lost]
                l_rep = holder[lost].astype(np.int64) - n0
                same = new[l_rep] == new[l_act]
                rep[l_act[same]] = l_rep[same]
                lost[lost] = ~same
                retry[free] = lost
            if not retry.any():
                break
            act = act[retry]
            pos = pos[retry]
            _next(pos, size)
        dup = rep != ids
        if not dup.any():
            slots = ids + n0  # the tentative values are final
            fresh = new
        else:
            first = ids.copy()
            np.minimum.at(first, rep[dup], ids[dup])  # first occurrence of each group
            group_first = first[rep]
            is_first = group_first == ids
            rank = np.cumsum(is_first) - 1
            slots = rank[group_first] + n0
            fresh = new[is_first]
            holders = np.flatnonzero(~dup)
            index[won_at[holders]] = slots[holders].astype(np.int32)
        n1 = n0 + int(fresh.size)
        if n1 > self._keys.size:
            grown = np.empty(max(n1, self._keys.size + self._keys.size // 2), dtype=np.uint64)
            grown[:n0] = self._keys[:n0]
            self._keys = grown
        self._keys[n0:n1] = fresh
        self._n = n1
        return slots

    def retain(self, keep: np.ndarray) -> np.ndarray:
        """Keep the keys where ``keep`` (bool ``[len]``) is true; drop the others.

        Survivors get slots ``0..k-1`` in their old order. Returns their old slots (int64), so
        callers compact per-slot arrays with ``arr = arr[old]``. Rebuilds the index (cost
        proportional to the table) and shrinks the arrays when at most 1/4 of them is used.
        """
        mask = np.asarray(keep)
        if mask.dtype != np.bool_ or mask.shape != (self._n,):
            raise DataError(
                f"The 'keep' argument of KeyTable.retain must be a bool array of shape "
                f"({self._n},). Got dtype {mask.dtype} and shape {mask.shape} instead."
            )
        old = np.flatnonzero(mask).astype(np.int64, copy=False)
        k = int(old.size)
        survivors = self._keys[old]
        if 4 * k <= self._keys.size and self._keys.size > 1:
            self._keys = np.empty(max(1, 2 * k), dtype=np.uint64)
        self._keys[:k] = survivors
        self._n = k
        target = _index_capacity_for(k)
        if 4 * target <= self._index.size:
            self._set_index_capacity(2 * target)  # load <= 1/4 after shrinking
        else:
            self._index.fill(_EMPTY)
        self._rebuild_index(check_duplicates=False)
        return old

    def trim(self, slack: float = GROWTH_SLACK, index_slack: float | None = None) -> None:
        """Give back growth room: at most ``slack`` x ``len`` key slots and an index of
        ``2 x index_slack x len`` entries (``index_slack``: ``slack`` unless given; rebuilt
        when it shrinks; slots do not change)."""
        want = max(1, int(self._n * slack))
        if self._keys.size > want * 1.05:
            self._keys = self._keys[:want].copy()
        if index_slack is None:
            index_slack = slack
        cap = _index_capacity_for(max(1, int(self._n * index_slack)))
        if self._index.size > cap * 1.05:
            self._set_index_capacity(cap)
            self._rebuild_index(check_duplicates=False)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (``np.savez``-safe, no pickle) that :meth:`restore` accepts.

        ``keys`` (uint64 ``[len]``, a copy), ``index_capacity`` and ``key_capacity`` (int64
        scalars). The index itself is not stored; it is rebuilt on restore.
        """
        return {
            "keys": self._keys[: self._n].copy(),
            "index_capacity": np.array(self._index.size, dtype=np.int64),
            "key_capacity": np.array(self._keys.size, dtype=np.int64),
        }

    @classmethod
    def restore(cls, state: dict[str, np.ndarray]) -> KeyTable:
        """Rebuild a table from :meth:`snapshot` output (e.g. an ``np.load``-ed npz file).

        The result has the same keys in the same slots and the same capacities, and hands out
        the same slots for further inserts as the original. Raises :class:`CheckpointError`
        when the arrays are malformed.
        """
        if "keys" not in state:
            raise CheckpointError(
                f"A KeyTable snapshot must contain a 'keys' array. "
                f"Got entries {sorted(state)} instead."
            )
        keys = np.asarray(state["keys"])
        if keys.dtype != np.uint64 or keys.ndim != 1:
            raise CheckpointError(
                f"The 'keys' array of a KeyTable snapshot must be 1-d uint64. "
                f"Got dtype {keys.dtype} and shape {keys.shape} instead."
            )
        n = int(keys.size)
        if n > _MAX_KEYS:
            raise CheckpointError(
                f"A KeyTable snapshot holds at most {_MAX_KEYS} keys. Got {n} instead."
            )
        index_cap = cls._scalar(state, "index_capacity", _index_capacity_for(n))
        key_cap = cls._scalar(state, "key_capacity", max(1, n))
        if index_cap < max(_MIN_INDEX_CAPACITY, 2 * n) or index_cap >= 2**32:
            raise CheckpointError(
                f"The 'index_capacity' of a KeyTable snapshot must be in "
                f"[max({_MIN_INDEX_CAPACITY}, 2 * len(keys)) = "
                f"{max(_MIN_INDEX_CAPACITY, 2 * n)}, 2**32). Got {index_cap} instead."
            )
        if key_cap < max(1, n):
            raise CheckpointError(
                f"The 'key_capacity' of a KeyTable snapshot must be >= max(1, len(keys)) = "
                f"{max(1, n)}. Got {key_cap} instead."
            )
        table = cls.__new__(cls)
        table._n = n
        table._keys = np.empty(key_cap, dtype=np.uint64)
        table._keys[:n] = keys
        table._set_index_capacity(index_cap)
        table._rebuild_index(check_duplicates=True)
        return table

    @staticmethod
    def _scalar(state: dict[str, np.ndarray], name: str, default: int) -> int:
        if name not in state:
            return default
        value = np.asarray(state[name])
        if value.shape != () or not np.issubdtype(value.dtype, np.integer):
            raise CheckpointError(
                f"The '{name}' entry of a KeyTable snapshot must be an integer scalar. "
                f"Got dtype {value.dtype} and shape {value.shape} instead."
            )
        return int(value)

    # ------------------------------------------------------------------ internals

    def _set_index_capacity(self, capacity: int) -> None:
        """Allocate an empty index of ``capacity`` entries."""
        self._index = np.full(capacity, _EMPTY, dtype=np.int32)

    def _rebuild_index(self, check_duplicates: bool) -> None:
        """Insert keys ``0..len-1`` into the index, which must be all empty, chunk by chunk."""
        for start in range(0, self._n, _REHASH_CHUNK):
            stop = min(self._n, start + _REHASH_CHUNK)
            slots = np.arange(start, stop, dtype=np.int32)
            _place(
                self._index,
                self._keys,
                self._keys[start:stop],
                slots,
                check_duplicates,
            )

    def _displacements(self) -> np.ndarray:
        """Probe distance (int64 ``[len]``) of every key from its home position; for tests."""
        size = self._index.size
        occupied = np.flatnonzero(self._index >= 0)
        slots = self._index[occupied]
        home = _home(self._keys[slots], size)
        dist = np.empty(self._n, dtype=np.int64)
        dist[slots] = (occupied - home) % size
        return dist
