"""The automatic batch size and the few-steps warning (psfm.steps)."""

from __future__ import annotations

import doctest

import psfm.steps
from psfm.steps import (
    AUTO_MAX_BATCH,
    AUTO_MIN_BATCH,
    AUTO_MIN_STEPS,
    auto_batch_size,
    steps_warning,
)


def test_auto_batch_is_a_power_of_two_with_enough_steps_within_bounds():
    for rows in (1, 100, 20_000, 64 * AUTO_MIN_STEPS - 1, 100_000, 777_777, 2_000_000, 10**10):
        b = auto_batch_size(rows)
        assert AUTO_MIN_BATCH <= b <= AUTO_MAX_BATCH and b & (b - 1) == 0
        if AUTO_MIN_BATCH < b < AUTO_MAX_BATCH:  # the largest such power of two
            assert rows // b >= AUTO_MIN_STEPS and rows // (2 * b) < AUTO_MIN_STEPS
    assert auto_batch_size(10**10) == AUTO_MAX_BATCH and auto_batch_size(10) == AUTO_MIN_BATCH


def test_few_steps_warning_names_the_setting_and_the_auto_size():
    msg = steps_warning(20_000, 4096)
    assert msg is not None and "data.batch_size = 4096" in msg and "5 FTRL steps" in msg
    assert f"auto: {auto_batch_size(20_000)} here" in msg
    assert steps_warning(20_000, 64) is None and steps_warning(10**9, 4096) is None


def test_docstring_examples():
    assert doctest.testmod(psfm.steps).failed == 0


def test_auto_rates_fall_with_the_batch_and_explicit_rates_stay():
    from psfm.config import FtrlConfig
    from psfm.optim.ftrl import FtrlParams
    from psfm.steps import AUTO_ALPHA, auto_alpha, resolve_ftrl

    assert auto_alpha(64) == (0.1, 0.1) and auto_alpha(4096) == AUTO_ALPHA[-1][1:]
    rates = [auto_alpha(b) for b in (64, 128, 256, 512, 1024, 2048, 4096, 8192)]
    assert all(a >= b for x, y in zip(rates, rates[1:]) for a, b in zip(x, y))
    ftrl = FtrlConfig()
    assert ftrl.linear.alpha == 0 and ftrl.factor.alpha == 0  # the defaults are auto
    small, large = resolve_ftrl(ftrl, 64), resolve_ftrl(ftrl, 0)  # 0: the largest size
    assert (small.linear.alpha, small.factor.alpha) == auto_alpha(64)
    assert (large.linear.alpha, large.factor.alpha) == auto_alpha(4096)
    assert small.linear.l1 == ftrl.linear.l1 and small.accumulate == ftrl.accumulate
    mine = FtrlConfig(linear=FtrlParams(0.3, 1.0, 1.0, 1.0), factor=FtrlParams(0.0, 1.0, 0.1, 1.0))
    got = resolve_ftrl(mine, 64)
    assert got.linear.alpha == 0.3 and got.factor.alpha == 0.1  # only the auto one moves
