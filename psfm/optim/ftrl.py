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

- ``sum_of_squares`` (default): ``n += sum_i g_i^2``, exactly the per-sample rule with frozen
  weights. A coordinate seen c times in a batch then moves about as far as c per-sample steps
  (up to ``sqrt(c)`` times a single step), and its rate decays per occurrence, as in McMahan et
  al. 2013. The worker computes the sums of squares in the backward pass and pushes them.
- ``square_of_sum``: ``n += (sum_i g_i)^2``, a batch is one FTRL step whatever its size. A
  4096-row batch then moves a frequent coordinate about as far as one sample would, and on
  small logs (few steps) this learns far worse than per-sample FTRL.
- ``count_scaled``: ``n += (sum_i g_i)^2 / c`` with c the key's occurrences in the batch: no
  extra message bytes; equals ``sum_of_squares`` when the c gradients are equal and is below it
  otherwise (Cauchy-Schwarz).

The choice was made by measurement against a per-sample reference (``tools/compare_reference.py``,
README "Defaults").

A factor coordinate starts at a random ``v0`` encoded in ``z`` (``n = 0``)::

    z0 = -(v0 (beta/alpha + l2) + sgn(v0) l1)

so the closed form returns ``v0`` and no separate weight array is stored. The state *is* the
checkpoint: a shard saves ``z`` and ``n`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psfm.errors import ConfigError

__all__ = ["FtrlParams", "ftrl_weight", "ftrl_update", "ftrl_init_z"]


@dataclass(frozen=True)
class FtrlParams:
    """Hyperparameters of one FTRL-Proximal group (linear part or factors)."""

    alpha: float = 0.1
    beta: float = 1.0
    l1: float = 0.1
    l2: float = 1.0

    def __post_init__(self) -> None:
        for name, low, strict in (("alpha", 0.0, True), ("beta", 0.0, True),
                                  ("l1", 0.0, False), ("l2", 0.0, False)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and np.isfinite(value) and (value > low if strict else value >= low)
            if not ok:
                rule = f"> {low:g}" if strict else f">= {low:g}"
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


def ftrl_weight(z: np.ndarray, n: np.ndarray, p: FtrlParams) -> np.ndarray:
    """The FTRL-Proximal weight for state ``(z, n)``; exactly 0 where ``|z| <= l1``."""
    return _weight(z, np.sqrt(n), p)


def ftrl_update(
    z: np.ndarray, n: np.ndarray, g: np.ndarray, p: FtrlParams,
    g2: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One FTRL-Proximal step with gradient ``g``; returns the new ``(z, n)``.

    ``n`` grows by ``g2`` when given (a minibatch's sum of squared per-occurrence gradients,
    see the module docstring), else by ``g^2``. All arrays share one shape; the update is
    elementwise, so the result for a coordinate does not depend on which other coordinates are
    updated with it.
    """
    sqrt_n = np.sqrt(n)
    w = _weight(z, sqrt_n, p)
    n_new = g * g if g2 is None else g2.astype(n.dtype, copy=True)
    n_new += n
    sigma = np.sqrt(n_new)
    sigma -= sqrt_n
    sigma *= z.dtype.type(1.0 / p.alpha)
    sigma *= w  # sigma * w
    z_new = z + g
    z_new -= sigma
    return z_new, n_new


def ftrl_init_z(v0: np.ndarray, p: FtrlParams) -> np.ndarray:
    """The ``z`` whose weight at ``n = 0`` is ``v0`` (random factor initialisation)."""
    dtype = v0.dtype
    scale = dtype.type(p.beta / p.alpha + p.l2)
    return -(v0 * scale + np.sign(v0) * dtype.type(p.l1))
