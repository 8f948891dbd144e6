"""Day-partitioned Parquet logs: days, work units and a resumable batch reader.

Layout (Hive style)::

    root/day=1/part-00000.parquet
    root/day=1/part-00001.parquet
    root/day=2/...

Days sort numerically when every value is an integer, lexicographically otherwise. A work unit is
(day, file, row-group range); the reader yields ``(table, cursor)`` pairs where the cursor names
the next unread row (file, row group, offset), so a unit can be resumed mid-way. Paths go through
``pyarrow.fs``, so ``s3://``, ``gs://`` and ``hdfs://`` roots work where pyarrow has them.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from psfm.errors import DataError

__all__ = [
    "row_group_starts",
    "Cursor",
    "WorkUnit",
    "UnitQueue",
    "list_days",
    "day_sort_key",
    "select_days",
    "split_days",
    "day_roles",
    "DayRoles",
    "day_files",
    "open_parquet",
    "work_units",
    "read_unit",
]

_DAY_RE = re.compile(r"^day=(.+)$")


@dataclass(frozen=True)
class Cursor:
    """The next unread row of a unit: ``file``'s row group ``row_group``, row ``offset``."""

    file: str
    row_group: int
    offset: int


@dataclass(frozen=True)
class WorkUnit:
    """Rows ``[rg_start, rg_end)`` row groups of one file of one day."""

    day: str
    file: str
    rg_start: int
    rg_end: int
    rows: int

    @property
    def uid(self) -> str:
        return f"{self.day}:{self.file}:{self.rg_start}-{self.rg_end}"


def _fs(root: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), posixpath.abspath(root) if "://" not in root else root


def day_sort_key(day: str) -> tuple[int, int | str]:
    return (0, int(day)) if re.fullmatch(r"-?\d+", day) else (1, day)


def list_days(root: str) -> list[str]:
    """The ``day=`` partition values under ``root``, sorted."""
    fs, path = _fs(root)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise DataError(f"Data root '{root}' is not a directory.")
    days = []
    for entry in fs.get_file_info(pafs.FileSelector(path)):
        m = _DAY_RE.match(entry.base_name)
        if m and entry.type == pafs.FileType.Directory:
            days.append(m.group(1))
    if not days:
        raise DataError(f"Data root '{root}' has no 'day=...' partitions.")
    return _check_days(root, days)


def _check_days(root: str, days: list[str]) -> list[str]:
    """Sorted days; refused: numbered days mixed with others (a stray ``day=latest`` would
    become the test day) and two spellings of one number (``day=2`` and ``day=02`` would both
    be trained)."""
    numbered = [d for d in days if day_sort_key(d)[0] == 0]
    if numbered and len(numbered) < len(days):
        other = sorted(set(days) - set(numbered))
        raise DataError(
            f"Data root '{root}' mixes numbered days with others: "
            f"{', '.join(f'day={d}' for d in other)} beside day={numbered[0]}...; the days of a "
            "log must be all numbers or all names (move the other partitions out of the root)."
        )
    seen: dict[int, str] = {}
    for d in numbered:
        if int(d) in seen:
            raise DataError(
                f"Data root '{root}' has day={seen[int(d)]} and day={d}, two spellings of day "
                f"{int(d)}: keep one partition per day."
            )
        seen[int(d)] = d
    return sorted(days, key=day_sort_key)


def _select(days: Sequence[str], spec: str, what: str) -> list[str]:
    """Days named by ``spec`` in the order named, a day named twice listed twice."""
    chosen: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise DataError(
                f"The {what} SPEC {spec!r} has an empty item: a SPEC is a comma list of days "
                "and/or inclusive ranges a..b, e.g. '1..7' or '1,2,3'."
            )
        if ".." in part:
            lo, hi = (s.strip() for s in part.split("..", 1))
            for d in (lo, hi):
                if d not in days:
                    raise DataError(
                        f"The {what} range '{part}' names day '{d}', which is not in the data "
                        f"(days: {', '.join(days)})."
                    )
            i, j = days.index(lo), days.index(hi)
            if j < i:
                raise DataError(f"The {what} range '{part}' is empty: '{lo}' comes after '{hi}'.")
            chosen.extend(days[i : j + 1])
        elif part in days:
            chosen.append(part)
        else:
            raise DataError(
                f"The {what} list names day '{part}', which is not in the data "
                f"(days: {', '.join(days)})."
            )
    return chosen


def select_days(days: Sequence[str], spec: str, what: str = "days") -> list[str]:
    """Days named by ``spec``: a comma list and/or inclusive ranges ``a..b`` of partition values."""
    return list(dict.fromkeys(_select(days, spec, what)))


@dataclass(frozen=True)
class DayRoles:
    """The days a run trains on (in order), validates on after each pass, and tests on."""

    train: list[str]
    valid: list[str]
    test: list[str]


def day_roles(
    days: Sequence[str], train_spec: str, test_spec: str, valid_spec: str = ""
) -> DayRoles:
    """Train, validation and test days. Defaults: train on every day but the last (and but
    the validation days), test on the last, validate on none.

    A training spec that names a day twice is refused: it used to be reduced to one day
    silently, and a user who writes ``1,1,1`` wants three passes (``train.passes``).
    Validation days must not overlap the train or test days: a validation metric measured on
    trained rows would reward overfitting, and early stopping on the test days would leak
    them into the model choice."""
    if not days:
        raise DataError("No days to split.")
    valid = select_days(days, valid_spec, "valid_days") if valid_spec else []
    if train_spec:
        named = _select(days, train_spec, "train_days")
        twice = [d for d, n in Counter(named).items() if n > 1]
        if twice:
            raise DataError(
                f"The 'train_days' parameter of DataConfig must name each day once; to train "
                f"on the days more than once set train.passes (--passes N). Got "
                f"{train_spec!r} instead (day {', '.join(repr(d) for d in twice)} "
                f"named more than once)."
            )
        train = named
    else:
        train = [d for d in days[:-1] if d not in valid]
        if not train and len(days) > 1:
            raise DataError(
                f"No training days: every day but the last is a validation day "
                f"({valid_spec!r}); name train_days explicitly."
            )
    test = select_days(days, test_spec, "test_days") if test_spec else [days[-1]]
    if not train_spec and len(days) == 1:
        raise DataError(
            f"Only one day ('{days[0]}') in the data: name train_days and test_days explicitly."
        )
    leak = [d for d in test if d in train]
    if leak:
        raise DataError(
            f"The 'test_days' parameter of DataConfig must not overlap the train days: a test "
            f"on trained rows measures memory, not prediction. Got {test_spec!r} instead (day "
            f"{', '.join(repr(d) for d in leak)} is also a train day; to score trained days use "
            "psfm evaluate)."
        )
    for role, other in (("train", train), ("test", test)):
        both = [d for d in valid if d in other]
        if both:
            raise DataError(
                f"The 'valid_days' parameter of DataConfig must not overlap the {role} days. "
                f"Got {valid_spec!r} instead (day {', '.join(repr(d) for d in both)} is also "
                f"a {role} day)."
            )
    return DayRoles(train, valid, test)


def split_days(days: Sequence[str], train_spec: str, test_spec: str) -> tuple[list[str], list[str]]:
    """Train and test days; defaults: train on every day but the last, test on the last
    (:func:`day_roles` without validation days)."""
    roles = day_roles(days, train_spec, test_spec)
    return roles.train, roles.test


def day_files(root: str, day: str) -> list[str]:
    """The data files of one day (names starting with '.' or '_' are skipped), sorted."""
    fs, path = _fs(root)
    sel = pafs.FileSelector(posixpath.join(path, f"day={day}"), recursive=True)
    try:
        entries = fs.get_file_info(sel)
    except FileNotFoundError as e:
        raise DataError(f"Day '{day}' does not exist under '{root}'.") from e
    files = sorted(
        e.path
        for e in entries
        if e.type == pafs.FileType.File and not e.base_name.startswith((".", "_"))
    )
    if not files:
        raise DataError(f"Day '{day}' under '{root}' is empty: no data files in 'day={day}/'.")
    return files


def open_parquet(file: str) -> pq.ParquetFile:
    """Open one Parquet file; a file that is not Parquet gets a DataError naming it."""
    fs, path = _fs(file)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"File '{file}' is not a readable Parquet file: {e}") from e


def row_group_starts(pf: pq.ParquetFile) -> list[int]:
    """The file row at which each row group starts (plus the row count at the end)."""
    md = pf.metadata
    starts = [0]
    for i in range(md.num_row_groups):
        starts.append(starts[-1] + md.row_group(i).num_rows)
    return starts


def work_units(root: str, day: str, rows_per_unit: int = 1 << 20) -> list[WorkUnit]:
    """Split a day into units of whole row groups, about ``rows_per_unit`` rows each."""
    units = []
    for f in day_files(root, day):
        md = open_parquet(f).metadata
        start, rows = 0, 0
        for rg in range(md.num_row_groups):
            rows += md.row_group(rg).num_rows
            if rows >= rows_per_unit or rg == md.num_row_groups - 1:
                units.append(WorkUnit(day, f, start, rg + 1, rows))
                start, rows = rg + 1, 0
    if not any(u.rows for u in units):
        raise DataError(f"Day '{day}' under '{root}' has no rows.")
    return units


def split_tail(units: list[WorkUnit], parts: int) -> list[WorkUnit]:
    """Guided scheduling: ``parts`` units (the final round over ``parts`` workers) split into
    units of one row group each and handed out last, so that workers handed units as they free
    up finish within about a row group of each other instead of one worker training the last
    whole unit alone; a day of fewer units than workers (a small day: one unit) is all cut, so
    every worker has some of it. The units split are the last ``parts`` in file order,
    whatever the order given (a pass's shuffle): every pass splits the same units, so a unit's
    batches are the same in every pass and a worker's pass cache holds them
    (:mod:`psfm.data.cache`)."""
    if parts <= 1:
        return list(units)
    by_file = sorted(range(len(units)), key=lambda i: (units[i].file, units[i].rg_start))
    last = set(by_file[-parts:])
    out = [u for i, u in enumerate(units) if i not in last]
    for u in (units[i] for i in sorted(last)):
        if u.rg_end - u.rg_start <= 1:
            out.append(u)
            continue
        starts = row_group_starts(open_parquet(u.file))
        out += [
            WorkUnit(u.day, u.file, rg, rg + 1, starts[rg + 1] - starts[rg])
            for rg in range(u.rg_start, u.rg_end)
        ]
    return out


class UnitQueue:
    """Units handed to workers as they free up, where their batches are: a free worker takes
    the next unit it read before (its pass cache may hold it), else the next unit no worker
    read, else the next one left. ``home`` (unit id -> worker) is updated as units are taken
    and outlives the queue: the first pass goes in order to whoever is free, later passes
    and the pass after the statistics pass replay where the batches are kept."""

    def __init__(self, units: Sequence[WorkUnit], home: dict[str, int], workers: int) -> None:
        self.units, self.home = list(units), home
        self.own: dict[int, deque[int]] = {w: deque() for w in range(workers)}
        self.nobody: deque[int] = deque()
        for i, u in enumerate(self.units):
            w = home.get(u.uid)
            if w is None:
                self.nobody.append(i)
            elif w in self.own:
                self.own[w].append(i)
        self.order = deque(range(len(self.units)))
        self.taken = [False] * len(self.units)

    def take(self, worker: int) -> WorkUnit | None:
        for q in (self.own.get(worker, deque()), self.nobody, self.order):
            while q:
                i = q.popleft()
                if not self.taken[i]:
                    self.taken[i] = True
                    self.home[self.units[i].uid] = worker
                    return self.units[i]
        return None


def read_unit(
    unit: WorkUnit,
    batch_size: int,
    columns: Sequence[str] | None = None,
    start: Cursor | None = None,
    pf: pq.ParquetFile | None = None,
) -> Iterator[tuple[pa.Table, Cursor, int]]:
    """Yield ``(table, cursor, first_row)`` batches of ``batch_size`` rows over a unit.

    Batches span row-group boundaries (leftovers carry over), so only the unit's last batch is
    short. ``cursor`` names the next unread row; ``first_row`` is the file row of the batch's
    first row (for error messages). ``start`` resumes from a cursor; ``pf`` reuses an open file.
    """
    pf = pf or open_parquet(unit.file)
    rg_first = row_group_starts(pf)
    rg0, off0 = (start.row_group, start.offset) if start else (unit.rg_start, 0)
    pending: list[pa.Table] = []
    pending_rows = 0
    pending_first = 0
    for rg in range(rg0, unit.rg_end):
        try:
            table = pf.read_row_group(rg, columns=list(columns) if columns else None)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"File '{unit.file}', row group {rg}: cannot be read: {e}") from e
        pos = off0 if rg == rg0 else 0
        while pos < table.num_rows:
            take = min(batch_size - pending_rows, table.num_rows - pos)
            if not pending:
                pending_first = rg_first[rg] + pos
            pending.append(table.slice(pos, take))
            pending_rows += take
            pos += take
            if pending_rows == batch_size:
                out = pending[0] if len(pending) == 1 else pa.concat_tables(pending)
                yield out, Cursor(unit.file, rg, pos), pending_first
                pending, pending_rows = [], 0
    if pending_rows:
        out = pending[0] if len(pending) == 1 else pa.concat_tables(pending)
        yield out, Cursor(unit.file, unit.rg_end, 0), pending_first
