"""FTRL-Proximal, per coordinate (McMahan et al. 2013, "Ad Click Prediction: a View from the
Trenches", Algorithm 1), as pure functions over explicit state arrays.

State per coordinate is ``(z, n)``; the weight is computed on demand::

    w = 0                                              if |z| <= l1
    w = -(z - sgn(z) l1) / ((beta + sqrt(n)) / alpha + l2)   otherwise

and a gradient ``g`` updates it::

    sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
    z    <- z + g - sigma * w
    n    <- n + g^2

Minibatches. A batch gives a coordinate the sum ``g = sum_i g_i`` of its per-occurrence
gradients. Per-sample FTRL over the same occurrences with the weight frozen within the batch
would add ``sum_i g_i`` to ``z`` (the ``sigma w`` terms telescope to one) and ``sum_i g_i^2``
to ``n``. The rule for ``n`` is ``ftrl.accumulate``:

- ``square_of_sum`` (default): ``n += (sum_i g_i)^2``, a batch is one FTRL step per key (the
  minibatch AdaGrad of DiFacto and TF's FTRL): a coordinate moves at most about ``alpha`` per
  batch, however often it occurs.
- ``sum_of_squares``: ``n += sum_i g_i^2``, exactly the per-sample rule with frozen weights: a
  coordinate seen c times moves up to ``sqrt(c)`` times further. The worker computes the sums of
  squares in its backward pass and pushes them (a float per coordinate more on the wire).
- ``count_scaled``: ``n += (sum_i g_i)^2 / c``, c the key's occurrences in the batch (no extra
  bytes; equals ``sum_of_squares`` when the c gradients are equal).

Measured against the per-sample reference (``tools/compare_reference.py``, FM(8), one pass;
test AUC minus the reference's): with batches of 64, ``sum_of_squares`` is within 0.0015 on
20k- and 100k-row logs and ``square_of_sum`` within 0.01; with batches of 1024 and more,
``sum_of_squares`` diverges on the 39-field Zipf log (-0.04 to -0.10: the head keys of every
field take c-fold steps on the same stale residual at once, which per-sample FTRL would have
corrected row by row), ``count_scaled`` too, while ``square_of_sum`` stays stable and at 1024
rows a batch comes within 0.003 on 1M rows. So ``square_of_sum`` is the default, and what
closes the gap to per-sample FTRL is enough steps per pass: ``data.batch_size = 0`` picks the
batch size from the pass (:mod:`psfm.steps`). The other rules stay selectable for studies.
Small batches stay fast because a worker takes several of them per pull and push, running
these same functions on its copy of the keys' state (:mod:`psfm.ps.local`).

A factor coordinate starts at a random ``v0`` encoded in ``z`` (``n = 0``)::

    z0 = -(v0 (beta/alpha + l2) + sgn(v0) l1)

so the closed form returns ``v0`` and no separate weight array is stored. The state *is* the
checkpoint: a shard saves ``z`` and ``n`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psfm.errors import ConfigError

__all__ = [
    "FtrlParams",
    "ftrl_weight",
    "ftrl_weight_sqrt",
    "ftrl_update",
    "ftrl_step",
    "ftrl_init_z",
]


@dataclass(frozen=True)
class FtrlParams:
    """Hyperparameters of one FTRL-Proximal group (linear part or factors). The class defaults
    are alphaFM's; psfm's own, per group, are ``FtrlConfig``'s (README, "Defaults").

    ``alpha = 0`` means *auto*: the rate is chosen from the batch size before training
    (:func:`psfm.steps.resolve_ftrl`); the update functions below need a resolved rate."""

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.1
    l2: float = 5.0

    def __post_init__(self) -> None:
        for name, low, strict in (
            ("alpha", 0.0, False),
            ("beta", 0.0, True),
            ("l1", 0.0, False),
            ("l2", 0.0, False),
        ):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and np.isfinite(value) and (value > low if strict else value >= low)
            if not ok:
                rule = f"> {low:g}" if strict else f">= {low:g}"
                rule += " (0 = auto)" if name == "alpha" else ""
                raise ConfigError(
                    f"The '{name}' parameter of FtrlParams must be a float {rule}. "
                    f"Got {value!r} instead."
                )


def _weight(z: np.ndarray, sqrt_n: np.ndarray, p: FtrlParams) -> np.ndarray:
    t = z.dtype.type
    # clip(z) - z = -sgn(z) (|z| - l1)_+, exactly 0 where |z| <= l1 (clip, subtract and
    # divide are a third of abs/maximum/copysign's cost in numpy)
    w = np.clip(z, t(-p.l1), t(p.l1))
    w -= z
    denom = sqrt_n + t(p.beta)
    denom *= t(1.0 / p.alpha)
    denom += t(p.l2)
    w /= denom
    return w


def ftrl_weight_sqrt(z: np.ndarray, sqrt_n: np.ndarray, p: FtrlParams) -> np.ndarray:
    """:func:`ftrl_weight` given ``sqrt(n)``."""
    return _weight(z, sqrt_n, p)


def ftrl_weight(z: np.ndarray, n: np.ndarray, p: FtrlParams) -> np.ndarray:
    """The FTRL-Proximal weight for state ``(z, n)``; exactly 0 where ``|z| <= l1``."""
    return _weight(z, np.sqrt(n), p)


def ftrl_update(
    z: np.ndarray,
    n: np.ndarray,
    g: np.ndarray,
    p: FtrlParams,
    g2: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One FTRL-Proximal step with gradient ``g``; returns the new ``(z, n)``.

    ``n`` grows by ``g2`` when given (a minibatch's sum of squared per-occurrence gradients,
    see the module docstring), else by ``g^2``. All arrays share one shape; the update is
    elementwise, so the result for a coordinate does not depend on which other coordinates are
    updated with it.

    >>> p = FtrlParams(alpha=0.1, beta=1.0, l1=1.0, l2=1.0)
    >>> z, n = ftrl_update(np.zeros(2), np.zeros(2), np.array([-3.0, 0.5]), p)
    >>> z.tolist(), n.tolist()          # w was 0: z is the gradient, n its square
    ([-3.0, 0.5], [9.0, 0.25])
    >>> ftrl_weight(z, n, p).round(4).tolist()   # 2 / 41; |z| <= l1 keeps the second at 0
    [0.0488, 0.0]
    """
    sqrt_n = np.sqrt(n)
    return ftrl_step(z, n, sqrt_n, _weight(z, sqrt_n, p), g, p, g2)


def ftrl_step(
    z: np.ndarray,
    n: np.ndarray,
    sqrt_n: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    p: FtrlParams,
    g2: np.ndarray | None = None,
    inplace: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ftrl_update` given ``sqrt(n)`` and the weight ``w`` of ``(z, n)`` already
    computed (a worker that scored with them, :mod:`psfm.ps.local`); ``inplace`` writes the
    new state into ``z`` and ``n`` (the same values, no new arrays)."""
    inc = g * g if g2 is None else g2.astype(n.dtype, copy=True)
    n_new = np.add(n, inc, out=n if inplace else None)
    sigma = np.sqrt(n_new, out=inc)
    sigma -= sqrt_n
    sigma *= z.dtype.type(1.0 / p.alpha)
    sigma *= w  # sigma * w
    z_new = np.add(z, g, out=z if inplace else None)
    z_new -= sigma
    return z_new, n_new


def ftrl_init_z(v0: np.ndarray, p: FtrlParams) -> np.ndarray:
    """The ``z`` whose weight at ``n = 0`` is ``v0`` (random factor initialisation)."""
    dtype = v0.dtype
    scale = dtype.type(p.beta / p.alpha + p.l2)
    return -(v0 * scale + np.sign(v0) * dtype.type(p.l1))
