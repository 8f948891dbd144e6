"""What the run loop does with a failed day: a :class:`FailurePolicy` returns an explicit
:class:`Decision` with a logged reason (DESIGN §8)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from psfm.errors import user_message

__all__ = ["Decision", "FailurePolicy", "MAX_RETRIES_PER_DAY"]

log = logging.getLogger("psfm.runloop")

MAX_RETRIES_PER_DAY = 2  # replays of one day after lost actors before the run gives up


class Decision(enum.Enum):
    """What the loop does with a failed day."""

    RETRY_DAY = "retry_day"  # start the backend afresh, restore the last checkpoint, replay
    GIVE_UP = "give_up"  # re-raise the error


@dataclass(frozen=True)
class FailurePolicy:
    """Decides a failed day: :attr:`Decision.RETRY_DAY` when ``lost(error)`` names a lost
    shard or worker, the run has checkpoints to restore from, and the day has failed at most
    ``max_retries_per_day`` times before; else :attr:`Decision.GIVE_UP`.

    Why per day: a long run on preemptible nodes may lose an actor on many days, and each
    loss costs one day's replay; a day that keeps failing (a node that always dies on it)
    must still end the run. Why only lost actors: bad input or a bug fails the same way
    again, and replaying it only hides the error for a while."""

    lost: Callable[[BaseException], str | None]
    max_retries_per_day: int = MAX_RETRIES_PER_DAY
    can_restore: bool = True

    def decide(self, error: BaseException, day: str, attempt: int) -> Decision:
        """``attempt``: how many times ``day`` has failed, this failure included (1, 2, …)."""
        what = user_message(error)
        reason = self.lost(error)
        if reason is None:
            # the caller shows the error itself (psfm train: one line)
            log.debug("%s: %s; not a lost shard or worker: giving up", day, what)
            return Decision.GIVE_UP
        if not self.can_restore:
            log.error(
                "%s: %s (%s); no run directory with checkpoints to restore from: giving up",
                day,
                reason,
                what,
            )
            return Decision.GIVE_UP
        if attempt > self.max_retries_per_day:
            log.error(
                "%s: %s (%s) on attempt %d; %d retries per day or phase spent: giving up",
                day,
                reason,
                what,
                attempt,
                self.max_retries_per_day,
            )
            return Decision.GIVE_UP
        log.warning(
            "%s: %s (%s); restarting, restoring the last checkpoint and running it again "
            "(retry %d of %d)",
            day,
            reason,
            what,
            attempt,
            self.max_retries_per_day,
        )
        return Decision.RETRY_DAY
