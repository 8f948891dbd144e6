"""How many rows one update takes: ``data.batch_size``, and what ``0`` (auto) resolves to.

A batch of B rows is one FTRL step per key on weights frozen within the batch. Per-sample FTRL
(B = 1) corrects itself within what would be a batch; a minibatch cannot, so a pass needs enough
steps, and the larger the batch the more it needs. Measured against the per-sample reference
(``tools/compare_reference.py``; FM(8), one pass, test AUC minus the reference's, README
"Defaults"): on 20k- and 100k-row logs, batches of 64 (300-1500 steps) come within 0.002 and
batches of 1024 (20-100 steps) fall 0.01-0.06 short; on 1M-row logs, 1024 (977 steps) is within
0.003 and 4096 (244 steps) 0.008 short on a 10-field log and 0.04 on a 39-field Zipf log. Large
*messages* are what makes psfm fast: every message pays a pull and a push per shard, so a worker
takes ``ps.local_steps`` batches' steps per message (:mod:`psfm.ps.local`,
:func:`auto_local_steps`).

``data.batch_size = 0`` (the default) therefore picks the largest power of two with at least
:data:`AUTO_MIN_STEPS` steps per pass, between :data:`AUTO_MIN_BATCH` and
:data:`AUTO_MAX_BATCH` rows::

    >>> auto_batch_size(20_000), auto_batch_size(300_000), auto_batch_size(1_000_000)
    (64, 256, 512)
    >>> auto_batch_size(2_000_000), auto_batch_size(5_000_000), auto_batch_size(10**9)
    (1024, 4096, 4096)

A batch size given explicitly is kept; :func:`steps_warning` says when it leaves a pass too few
steps.
"""

from __future__ import annotations

import dataclasses
import logging

from psfm.config import Config, FtrlConfig

# its lines belong to the run loop's story (resolved before any worker starts)
log = logging.getLogger("psfm.runloop")

__all__ = [
    "resolve_steps",
    "AUTO_ALPHA",
    "AUTO_MAX_BATCH",
    "AUTO_MIN_BATCH",
    "AUTO_MIN_STEPS",
    "FEW_STEPS",
    "auto_alpha",
    "auto_batch_size",
    "local_steps",
    "auto_local_steps",
    "AUTO_MESSAGE_ROWS",
    "AUTO_MIN_MESSAGES",
    "resolve_ftrl",
    "steps_warning",
]

AUTO_MIN_STEPS = 1000  # steps per pass that data.batch_size = 0 aims for
AUTO_MIN_BATCH = 64  # smaller batches cost more in calls than they gain (close to per-sample)
AUTO_MAX_BATCH = 4096  # the throughput plateau: bigger batches gain little speed
FEW_STEPS = 100  # under this many steps per pass a minibatch clearly falls short
# ps.local_steps = 0: a worker's pull and push cover up to this many rows, and a pass has at
# least AUTO_MIN_MESSAGES of them per worker-visible update (another worker's steps reach a
# worker once per message, so a pass of few messages would be trained mostly apart)
AUTO_MESSAGE_ROWS = 16384
AUTO_MIN_MESSAGES = 128

# The FTRL rates (linear alpha, factor alpha) that ftrl.*.alpha = 0 takes, by batch size: the
# largest batch each row covers. With square_of_sum a batch is one step of about alpha per
# key, and the larger the batch the less noisy (the more aligned) its gradient sums, so the
# same alpha moves further per step: the best rate falls as the batch grows. Measured (README,
# "How the defaults were chosen"): up to 512 rows by tools/tune_defaults.py on six logs; 1024
# and 4096 on a 2M-row day of the 39-field log (2048: between them, not measured on its own).
AUTO_ALPHA = ((512, 0.1, 0.1), (2048, 0.05, 0.05), (AUTO_MAX_BATCH, 0.05, 0.03))


def auto_batch_size(rows_per_pass: int) -> int:
    """The batch size ``data.batch_size = 0`` resolves to for a pass of ``rows_per_pass``."""
    target = max(rows_per_pass // AUTO_MIN_STEPS, 1)
    b = 1 << (target.bit_length() - 1)  # largest power of two <= target
    return min(max(b, AUTO_MIN_BATCH), AUTO_MAX_BATCH)


def auto_alpha(batch_size: int) -> tuple[float, float]:
    """(linear alpha, factor alpha) for a batch size; sizes above the table take its last row.

    >>> auto_alpha(64), auto_alpha(1024), auto_alpha(4096)
    ((0.1, 0.1), (0.05, 0.05), (0.05, 0.03))
    """
    for upto, lin, fac in AUTO_ALPHA:
        if batch_size <= upto:
            return lin, fac
    return AUTO_ALPHA[-1][1:]


def resolve_ftrl(ftrl: FtrlConfig, batch_size: int) -> FtrlConfig:
    """``ftrl`` with every ``alpha = 0`` (auto) replaced by :func:`auto_alpha` of the batch
    size (0, a batch size left to the run loop, counts as :data:`AUTO_MAX_BATCH`)."""
    lin, fac = auto_alpha(batch_size or AUTO_MAX_BATCH)
    groups = {}
    for name, alpha in (("linear", lin), ("factor", fac)):
        p = getattr(ftrl, name)
        groups[name] = dataclasses.replace(p, alpha=alpha) if p.alpha == 0 else p
    return dataclasses.replace(ftrl, **groups)


def auto_local_steps(rows_per_pass: int, batch_size: int) -> int:
    """The ``ps.local_steps`` that 0 (auto) resolves to: as many batches as fill a message of
    :data:`AUTO_MESSAGE_ROWS` rows, but at least :data:`AUTO_MIN_MESSAGES` messages a pass.

    >>> auto_local_steps(2_000_000, 1024), auto_local_steps(1_000_000, 512)
    (15, 15)
    >>> auto_local_steps(20_000, 64), auto_local_steps(10**9, 4096), auto_local_steps(5000, 64)
    (2, 4, 1)
    """
    rows = min(AUTO_MESSAGE_ROWS, rows_per_pass // AUTO_MIN_MESSAGES)
    return max(1, rows // batch_size)


def local_steps(cfg: Config, batch_size: int) -> int:
    """Batches per worker message (:mod:`psfm.ps.local`): ``ps.local_steps`` as set (the run
    loop resolves 0, :func:`resolve_steps`); 0 outside a run: a message of
    :data:`AUTO_MESSAGE_ROWS` rows; always 1 in sync mode.

    >>> from psfm.config import Config
    >>> local_steps(Config(), 1024), local_steps(Config(), 4096), local_steps(Config(), 32768)
    (16, 4, 1)
    """
    if cfg.ps.mode == "sync":
        return 1
    return cfg.ps.local_steps or max(1, AUTO_MESSAGE_ROWS // batch_size)


def steps_warning(rows_per_pass: int, batch_size: int) -> str | None:
    """A warning naming the setting to change when a pass has fewer than :data:`FEW_STEPS`
    updates, else None."""
    steps = -(-rows_per_pass // batch_size)
    if steps >= FEW_STEPS:
        return None
    return (
        f"A pass over the training days is {rows_per_pass:,} rows: with data.batch_size = "
        f"{batch_size} that is {steps} FTRL steps, fewer than {FEW_STEPS}, and the model will "
        f"learn clearly worse than a per-sample FTRL trainer. Set data.batch_size = 0 (auto: "
        f"{auto_batch_size(rows_per_pass)} here) or a smaller batch size."
    )


def resolve_steps(cfg: Config, rows: int) -> Config:
    """``cfg`` with what it leaves to the size of a pass of ``rows`` rows settled (and
    logged): ``data.batch_size = 0`` becomes :func:`auto_batch_size`, ``alpha = 0`` the
    automatic rates for that batch size; a set batch size with too few steps is warned
    about (:func:`steps_warning`)."""
    data = cfg.data
    if data.batch_size == 0:
        data = dataclasses.replace(data, batch_size=auto_batch_size(rows))
        log.info(
            "data.batch_size = 0 (auto): %d rows per update for a pass of %d rows",
            data.batch_size,
            rows,
        )
    else:
        warning = steps_warning(rows, data.batch_size)
        if warning:
            log.warning("%s", warning)
    ps = cfg.ps
    if ps.local_steps == 0 and ps.mode == "async":
        ps = dataclasses.replace(ps, local_steps=auto_local_steps(rows, data.batch_size))
        log.info(
            "ps.local_steps = 0 (auto): %d batches of FTRL steps per worker pull and push",
            ps.local_steps,
        )
    ftrl = resolve_ftrl(cfg.ftrl, data.batch_size)
    if ftrl != cfg.ftrl:
        log.info(
            "ftrl alpha = 0 (auto): linear %g, factor %g for batches of %d rows",
            ftrl.linear.alpha,
            ftrl.factor.alpha,
            data.batch_size,
        )
    return dataclasses.replace(cfg, data=data, ftrl=ftrl, ps=ps)
