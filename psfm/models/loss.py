"""The loss of the model family (DESIGN §2): one object per loss owns everything that depends on it.

A :class:`Loss` has a name (``model.loss``), a link ``s`` from the logit ``y`` to the prediction
(sigmoid for ``logistic``, identity for ``squared``), ``dloss/dy = s(y) - t`` (both links are
canonical), the per-sample and summed loss, the rule a label must follow (with the text of the
bad-row error) and its metric family (classification: AUC and logloss; regression: RMSE and
MAE). The torch model, the worker, the serving model, the batch builder and the config ask it
instead of comparing names.

Leaf module: numpy and :mod:`psfm.errors` only. The ``*_torch`` methods import torch when they
run (``import psfm.models.loss`` never does), so the config and the data layer can use it.

>>> import numpy as np
>>> loss_by_name("logistic").link(np.array([0.0])).tolist()
[0.5]
>>> SQUARED.dloss(np.array([3.0]), np.array([1.0])).tolist()
[2.0]
>>> LOGISTIC.bad_labels(np.array([0.0, 1.0, 0.5])).tolist()
[False, False, True]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from psfm.errors import ConfigError

__all__ = [
    "Loss",
    "LOGISTIC",
    "SQUARED",
    "LOSSES",
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "loss_by_name",
]

Tensor = Any  # a torch.Tensor (torch is imported lazily, never for annotations)
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

CLASSIFICATION_METRICS = ("auc", "logloss")
REGRESSION_METRICS = ("rmse", "mae")


@dataclass(frozen=True)
class Loss:
    """A loss of the model family; use :data:`LOGISTIC`, :data:`SQUARED` or
    :func:`loss_by_name`. The numpy methods work in the inputs' dtype (float64 in serving)."""

    name: str
    metrics: tuple[str, ...]  # the metric family: CLASSIFICATION_METRICS or REGRESSION_METRICS
    label_rule: str  # the bad-row error text of a label that breaks :meth:`bad_labels`

    @property
    def classification(self) -> bool:
        """True when the predictions are probabilities of 0/1 labels (AUC, logloss)."""
        return self.metrics == CLASSIFICATION_METRICS

    def bad_labels(self, labels: npt.NDArray[Any]) -> BoolArray:
        """Which labels break the rule (nan included)."""
        raise NotImplementedError

    def link(self, y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The prediction of a logit (numpy)."""
        raise NotImplementedError

    def link_torch(self, y: Tensor) -> Tensor:
        """The prediction of a logit (torch)."""
        raise NotImplementedError

    def losses(self, y: npt.NDArray[Any], labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The per-sample loss (numpy)."""
        raise NotImplementedError

    def losses_and_grad_torch(self, y: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The per-sample loss and ``dloss/dy`` of a batch (torch, one vectorized op each)."""
        raise NotImplementedError

    def dloss(self, y: npt.NDArray[Any], labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``dloss/dy = s(y) - t`` (numpy)."""
        return self.link(y) - labels

    def total(
        self,
        y: npt.NDArray[Any],
        labels: npt.NDArray[Any],
        weights: npt.NDArray[Any] | None = None,
    ) -> float:
        """The summed (weighted) loss (numpy)."""
        ll = self.losses(y, labels)
        return float((ll if weights is None else ll * weights).sum())


class _Logistic(Loss):
    def bad_labels(self, labels: npt.NDArray[Any]) -> BoolArray:
        return ~((labels == 0) | (labels == 1))

    def link(self, y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        with np.errstate(over="ignore"):  # exp(-y) = inf for y << 0: s(y) = 0, as it should
            return 1 / (1 + np.exp(-y))

    def link_torch(self, y: Tensor) -> Tensor:
        import torch

        return torch.sigmoid(y)

    def losses(self, y: npt.NDArray[Any], labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.logaddexp(0, y) - labels * y  # log(1 + e^y) - t y, stable

    def losses_and_grad_torch(self, y: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        import torch

        losses = torch.nn.functional.binary_cross_entropy_with_logits(y, labels, reduction="none")
        return losses, torch.sigmoid(y) - labels


class _Squared(Loss):
    def bad_labels(self, labels: npt.NDArray[Any]) -> BoolArray:
        return ~np.isfinite(labels)

    def link(self, y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return y

    def link_torch(self, y: Tensor) -> Tensor:
        return y

    def losses(self, y: npt.NDArray[Any], labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return 0.5 * (y - labels) ** 2

    def losses_and_grad_torch(self, y: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return 0.5 * (y - labels) ** 2, y - labels


LOGISTIC: Loss = _Logistic("logistic", CLASSIFICATION_METRICS, "labels must be 0 or 1")
SQUARED: Loss = _Squared("squared", REGRESSION_METRICS, "labels must be finite")
LOSSES: dict[str, Loss] = {f.name: f for f in (LOGISTIC, SQUARED)}


def loss_by_name(name: str | Loss) -> Loss:
    """The loss called ``name`` (a :class:`Loss` is returned as is)."""
    if isinstance(name, Loss):
        return name
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(n) for n in LOSSES)
        raise ConfigError(f"Unknown loss {name!r}: the losses are {choices}.") from None
