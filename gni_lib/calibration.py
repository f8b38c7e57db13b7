r"""Calibration and classification margins of a softmax classifier (Camuto et al. 2020, Sec. 4).

The measurements behind the claim that Gaussian noise injections give better calibration and
larger margins, as pure functions of the logits :math:`z = h_L(x)` and, for input-space margins,
of the input Jacobian :math:`J_0 = \partial z / \partial x`
(``gni_lib.jacobians.layer_jacobians(model, x)[0]``). The key measure is the expected
calibration error over :math:`M` equal-width bins :math:`B_b` of the confidence
:math:`\hat p = \max_i \operatorname{softmax}(z)_i` (Guo et al. 2017, eq. 3; lecture 10,
book/10-calibration.md),

.. math::

    \operatorname{ECE} = \sum_{b=1}^{M} \frac{\lvert B_b\rvert}{n}
        \bigl\lvert \operatorname{acc}(B_b) - \operatorname{conf}(B_b) \bigr\rvert ;

the margins of Sokolić et al. (2017) are derived in lecture 11 (book/11-margins.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_int, check_tensor

__all__ = [
    "ReliabilityDiagram", "confidence_and_prediction", "confidence_bins", "reliability_diagram",
    "expected_calibration_error", "logit_margin", "input_margin", "margin_lower_bound",
]


class ReliabilityDiagram(NamedTuple):
    r"""Per-bin data of a reliability diagram, :math:`M` equal-width confidence bins.

    Attributes:
        edges: :math:`(M + 1,)`, the bin edges :math:`0, \tfrac1M, \dots, 1`.
        accuracy: :math:`(M,)`, :math:`\operatorname{acc}(B_b)`; NaN for an empty bin.
        confidence: :math:`(M,)`, :math:`\operatorname{conf}(B_b)`; NaN for an empty bin.
        count: :math:`(M,)` int64, :math:`\lvert B_b \rvert`.
    """

    edges: Tensor
    accuracy: Tensor
    confidence: Tensor
    count: Tensor


# --- input checks -----------------------------------------------------------------------------


def _check_logits(logits: object) -> Tensor:
    logits = check_tensor(logits, "logits")
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(
            f"logits must have shape (n, C) with n >= 1 and C >= 2 classes, got {tuple(logits.shape)}"
        )
    return logits


def _check_labels(labels: object, logits: Tensor) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of int64 class indices, got {type(labels).__name__}")
    n, classes = logits.shape
    if labels.shape != (n,) or labels.dtype != torch.int64:
        raise ValueError(
            f"labels must hold int64 class indices of shape (n,) = ({n},), "
            f"got shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )
    if labels.device != logits.device:
        raise ValueError(f"labels must be on the logits' device {logits.device}, got {labels.device}")
    low, high = torch.stack(torch.aminmax(labels)).tolist()  # one host sync
    if low < 0 or high >= classes:
        raise ValueError(f"labels must lie in [0, {classes - 1}], got values in [{low}, {high}]")
    return labels


def _check_jacobian(jacobian: object, logits: Tensor) -> Tensor:
    jacobian = check_tensor(jacobian, "jacobian")
    n, classes = logits.shape
    if jacobian.ndim != 3 or jacobian.shape[:2] != (n, classes) or jacobian.shape[2] < 1:
        raise ValueError(
            f"jacobian must have shape (n, C, d) = ({n}, {classes}, d) with d >= 1, "
            f"got {tuple(jacobian.shape)}"
        )
    if jacobian.dtype != logits.dtype or jacobian.device != logits.device:
        raise ValueError(
            f"jacobian must have the logits' dtype {logits.dtype} and device {logits.device}, "
            f"got {jacobian.dtype} on {jacobian.device}"
        )
    return jacobian


# --- calibration ------------------------------------------------------------------------------


def confidence_and_prediction(logits: Tensor) -> tuple[Tensor, Tensor]:
    r"""Return the confidence :math:`\hat p_n = \max_i \operatorname{softmax}(z_n)_i` and the prediction.

    The prediction is :math:`\hat y_n = \arg\max_i z_{n,i}` (the first index on
    ties, as :func:`torch.argmax`).

    Shapes:
        ``logits`` :math:`(n, C)` in, :math:`(n,)` floating and :math:`(n,)` int64 out.

    Raises:
        TypeError: if ``logits`` is not a tensor.
        ValueError: if ``logits`` is not a finite floating tensor of shape (n, C), C >= 2.
    """
    logits = _check_logits(logits)
    probabilities = torch.softmax(logits, dim=1)
    confidence, prediction = probabilities.max(dim=1)
    return confidence, prediction


def confidence_bins(confidence: Tensor, bins: int = 10) -> Tensor:
    r"""Return the 0-based bin index of each confidence, for ``bins`` equal-width bins of :math:`[0, 1]`.

    Bin :math:`b` (0-based) is :math:`(\tfrac bM, \tfrac{b+1}M]`, and bin 0 also
    holds 0: a confidence equal to an edge :math:`b/M` goes to the bin *below*
    it. The edges are ``torch.arange(M + 1) / M`` in the confidences' dtype, so
    an edge equals the literal ``b / M`` of the same dtype.

    Shapes:
        ``confidence`` :math:`(n,)` in :math:`[0, 1]`; returns :math:`(n,)` int64 in
        :math:`\{0, \dots, M-1\}`.

    Raises:
        TypeError: if ``confidence`` is not a tensor or ``bins`` not an int.
        ValueError: if ``confidence`` is not a 1-D floating tensor with values in
            :math:`[0, 1]`, or ``bins < 1``.
    """
    bins = check_int(bins, "bins")
    confidence = check_tensor(confidence, "confidence", ndim=1, finite=False)
    if not bool(((confidence >= 0) & (confidence <= 1)).all()):  # NaN fails this too
        raise ValueError("confidence must hold values in [0, 1]")
    edges = torch.arange(bins + 1, dtype=confidence.dtype, device=confidence.device) / bins
    # bucketize(right=False) returns i with edges[i-1] < c <= edges[i]; over the inner edges this is
    # the 0-based bin of (b/M, (b+1)/M], with c = 0 in bin 0.
    return torch.bucketize(confidence, edges[1:-1], right=False)


def reliability_diagram(logits: Tensor, labels: Tensor, *, bins: int = 10) -> ReliabilityDiagram:
    r"""Return per-bin accuracy, mean confidence and count (the data of a reliability diagram).

    With :math:`\hat p_n`, :math:`\hat y_n` from :func:`confidence_and_prediction`
    and the bins of :func:`confidence_bins`,

    .. math::

        \operatorname{acc}(B_b) = \frac{1}{\lvert B_b\rvert} \sum_{n \in B_b} \mathbb 1[\hat y_n = y_n],
        \qquad
        \operatorname{conf}(B_b) = \frac{1}{\lvert B_b\rvert} \sum_{n \in B_b} \hat p_n

    (Guo et al. 2017, Sec. 2), NaN for empty bins.

    Args:
        logits: :math:`(n, C)`, finite, floating, :math:`C \ge 2`.
        labels: :math:`(n,)` int64 in :math:`\{0, \dots, C-1\}`, on the logits' device.
        bins: :math:`M \ge 1`.

    Returns:
        ReliabilityDiagram: in the logits' dtype, ``count`` in int64.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: on a bad shape, dtype or device, non-finite logits, a label out of range, or ``bins < 1``.
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits)
    bins = check_int(bins, "bins")
    confidence, prediction = confidence_and_prediction(logits)
    index = confidence_bins(confidence, bins)
    correct = (prediction == labels).to(logits.dtype)
    count = torch.bincount(index, minlength=bins)
    hits = torch.zeros(bins, dtype=logits.dtype, device=logits.device).index_add_(0, index, correct)
    mass = torch.zeros(bins, dtype=logits.dtype, device=logits.device).index_add_(0, index, confidence)
    size = count.to(logits.dtype)  # 0 / 0 = NaN for an empty bin
    accuracy, mean_confidence = hits / size, mass / size
    edges = torch.arange(bins + 1, dtype=logits.dtype, device=logits.device) / bins
    return ReliabilityDiagram(edges, accuracy, mean_confidence, count)


def expected_calibration_error(logits: Tensor, labels: Tensor, *, bins: int = 10) -> Tensor:
    r"""Return the expected calibration error with ``bins`` equal-width confidence bins.

    .. math::

        \operatorname{ECE} = \sum_{b=1}^{M} \frac{\lvert B_b\rvert}{n}
            \bigl\lvert \operatorname{acc}(B_b) - \operatorname{conf}(B_b) \bigr\rvert

    (Naeini et al. 2015; Guo et al. 2017, eq. 3), with the bins of
    :func:`confidence_bins` and empty bins contributing 0: the calibration measure
    of Camuto et al. (2020), Sec. 4 and Fig. F.7. It lies in :math:`[0, 1]`;
    ``bins=1`` gives :math:`\lvert \text{accuracy} - \text{mean confidence}\rvert`.

    Args, Raises: as :func:`reliability_diagram`.

    Returns:
        Tensor: a scalar in the logits' dtype and device.
    """
    diagram = reliability_diagram(logits, labels, bins=bins)
    filled = diagram.count > 0
    weights = diagram.count[filled].to(logits.dtype) / logits.shape[0]
    gaps = (diagram.accuracy[filled] - diagram.confidence[filled]).abs()
    return (weights * gaps).sum()


# --- margins ----------------------------------------------------------------------------------


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Return the logit (score) margin :math:`m_n = z_{n,y_n} - \max_{j \ne y_n} z_{n,j}`.

    Positive when the example is classified correctly, negative when it is not
    (zero on a tie). Sokolić et al. (2017) call :math:`\sqrt2\, m` the score of
    the example; Camuto et al. (2020), App. D, use it for the margin bound.

    Shapes:
        ``logits`` :math:`(n, C)`, ``labels`` :math:`(n,)`; returns :math:`(n,)`.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on a bad shape, dtype or device, non-finite logits, or a label out of range.
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits)
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), -math.inf)
    return true - others.max(dim=1).values


def input_margin(logits: Tensor, jacobian: Tensor, labels: Tensor) -> Tensor:
    r"""Return the linearised input-space margin :math:`\gamma_\text{lin}` of every example.

    .. math::

        \gamma_\text{lin}(x_n) = \min_{j \ne y_n}
            \frac{z_{n,y_n} - z_{n,j}}{\lVert (e_{y_n} - e_j)^\top J_0(x_n) \rVert_2},

    the distance from :math:`x_n` to the nearest hyperplane :math:`z_y - z_j = 0` of
    the network linearised at :math:`x_n` (Sokolić et al. 2017; Camuto et al. 2020,
    App. D). Exact for logits affine in the input and a correctly classified
    example; negative for a misclassified one; a zero gradient gives
    :math:`\pm\infty` (NaN on an exact tie) by IEEE division.

    Args:
        logits: :math:`z`, shape :math:`(n, C)`.
        jacobian: :math:`J_0 = \partial z / \partial x`, shape :math:`(n, C, d)`,
            e.g. ``layer_jacobians(model, x)[0]``; same dtype and device as ``logits``.
        labels: :math:`(n,)` int64.

    Returns:
        Tensor: :math:`(n,)`, in the units of the input :math:`x`.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on a bad shape, dtype or device, non-finite values, or a label out of range.
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits)
    jacobian = _check_jacobian(jacobian, logits)
    rows = torch.arange(logits.shape[0], device=logits.device)
    gaps = logits[rows, labels].unsqueeze(1) - logits  # (n, C): z_y - z_j
    slopes = torch.linalg.vector_norm(jacobian[rows, labels].unsqueeze(1) - jacobian, dim=2)  # (n, C)
    distances = (gaps / slopes).scatter(1, labels.unsqueeze(1), math.inf)  # j = y is no competitor
    return distances.min(dim=1).values


def margin_lower_bound(logits: Tensor, jacobian: Tensor, labels: Tensor) -> Tensor:
    r"""Return :math:`\gamma_\text{bound}(x_n) = m_n / (\sqrt2\, \lVert J_0(x_n) \rVert_2)`.

    :math:`m_n` is the logit margin (:func:`logit_margin`) and
    :math:`\lVert\cdot\rVert_2` the spectral norm. With the supremum of
    :math:`\lVert J_0 \rVert_2` over the segment from :math:`x_n` to the decision
    boundary in place of its value at :math:`x_n` this is a lower bound on the
    classification margin (Sokolić et al. 2017, Thm. 4; Camuto et al. 2020,
    App. D): along a path of length :math:`\delta`, :math:`z_y - z_j` changes by
    at most :math:`\sqrt2 \sup\lVert J_0\rVert_2\, \delta`. With the local value it
    is an estimate, and for a correctly classified example never larger than
    :func:`input_margin`.

    Args, Returns, Raises: as :func:`input_margin`.
    """
    margin = logit_margin(logits, labels)
    jacobian = _check_jacobian(jacobian, logits)
    spectral = torch.linalg.matrix_norm(jacobian, ord=2)
    return margin / (math.sqrt(2.0) * spectral)
