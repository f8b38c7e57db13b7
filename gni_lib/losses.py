r"""The two losses of the book, with the conventions the regulariser relies on.

Both are averaged over the batch. Their Hessians with respect to the network
output :math:`\hat y = h_L` are the :math:`H_L` of Camuto et al. (2020), Thm. 1:

- ``"mse"``: :math:`\ell = \tfrac12 \lVert y - \hat y \rVert^2`, so :math:`H_L = I`
  (eq. 11);
- ``"ce"``: :math:`\ell = -\log \operatorname{softmax}(\hat y)_y`, so
  :math:`H_L = \operatorname{diag}(p) - p p^\top` with :math:`p = \operatorname{softmax}(\hat y)`,
  which does not depend on the label (eq. 13).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_choice

__all__ = [
    "mse_loss", "ce_loss", "get_loss", "LOSSES", "per_example_loss", "ce_hessian_root",
    "ce_hessian_diag_root",
]


def _check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_pred(pred: object, name: str) -> Tensor:
    pred = _check_tensor(pred, name)
    if pred.ndim != 2:
        raise ValueError(f"{name} must have shape (B, d), got shape {tuple(pred.shape)}")
    if not pred.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {pred.dtype}")
    return pred


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    r"""Half the squared error, summed over outputs and averaged over the batch.

    .. math::

        L(\hat y, y) = \frac{1}{B} \sum_{b=1}^{B} \tfrac12 \lVert y_b - \hat y_b \rVert_2^2,
        \qquad H_L = \nabla^2_{\hat y_b}\, \tfrac12 \lVert y_b - \hat y_b \rVert^2 = I.

    The :math:`\tfrac12` makes :math:`H_L = I`, the form of Camuto et al. (2020), eq. 11.
    This is *not* ``F.mse_loss``, which averages over outputs too and has no :math:`\tfrac12`.

    Args:
        pred: the network output :math:`\hat y`, shape :math:`(B, d)`.
        target: :math:`y`, the same shape, dtype and device as ``pred``.

    Returns:
        Tensor: a scalar, on ``pred``'s device and dtype.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if ``pred`` is not a 2-D floating tensor, or ``target`` does not
            have exactly ``pred``'s shape and dtype (no broadcasting: a
            :math:`(B,)` target for a :math:`(B, 1)` prediction is an error).
    """
    pred = _check_pred(pred, "pred")
    target = _check_tensor(target, "target")
    if target.shape != pred.shape:
        raise ValueError(
            f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if target.dtype != pred.dtype:
        raise ValueError(f"target must have pred's dtype {pred.dtype}, got {target.dtype}")
    return 0.5 * (pred - target).pow(2).sum(dim=1).mean()


def ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    r"""Softmax cross-entropy averaged over the batch.

    .. math::

        L(\hat y, y) = \frac{1}{B} \sum_{b=1}^{B} \Bigl( -\hat y_{b, y_b}
        + \log \sum_{i=1}^{C} e^{\hat y_{b,i}} \Bigr), \qquad
        H_L = \operatorname{diag}(p_b) - p_b p_b^\top, \quad p_b = \operatorname{softmax}(\hat y_b).

    :math:`H_L` does not depend on the label :math:`y_b` (Camuto et al. 2020, eq. 13).

    Args:
        logits: :math:`\hat y`, shape :math:`(B, C)`, floating point.
        target: class indices :math:`y_b \in \{0, \dots, C-1\}`, shape :math:`(B,)`,
            dtype ``torch.int64``, on ``logits``' device.

    Returns:
        Tensor: a scalar, on ``logits``' device and dtype.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if ``logits`` is not a 2-D floating tensor, ``target`` is not an
            int64 tensor of shape :math:`(B,)`, or a class index is out of range.
    """
    logits = _check_pred(logits, "logits")
    target = _check_tensor(target, "target")
    batch, classes = logits.shape
    if target.shape != (batch,):
        raise ValueError(
            f"target must have shape (B,) = ({batch},) of class indices, got {tuple(target.shape)}"
        )
    if target.dtype != torch.int64:
        raise ValueError(f"target must hold int64 class indices, got dtype {target.dtype}")
    if batch > 0 and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ValueError(
            f"target must hold class indices in [0, {classes - 1}], got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    return F.cross_entropy(logits, target, reduction="mean")


#: The losses by name, as accepted by ``loss=`` arguments across the library.
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": mse_loss, "ce": ce_loss}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    r"""Return the loss called ``name``: ``"mse"`` (:func:`mse_loss`) or ``"ce"`` (:func:`ce_loss`).

    Raises:
        ValueError: for any other ``name`` (the message names ``loss``, the argument
            it comes from across the library).
    """
    return LOSSES[check_choice(name, "loss", tuple(LOSSES))]


def per_example_loss(output: Tensor, y: Tensor, loss: str) -> Tensor:
    r"""The loss of each example, before the batch mean, without checks on the values.

    .. math::

        \ell_b = \tfrac12 \lVert y_b - \hat y_b \rVert^2 \ (\texttt{"mse"}), \qquad
        \ell_b = -\log \operatorname{softmax}(\hat y_b)_{y_b} \ (\texttt{"ce"}).

    The unchecked core of :func:`~gni_lib.losses.mse_loss` and :func:`~gni_lib.losses.ce_loss`: no data-dependent
    checks, so it composes with :func:`torch.func.vmap` and the other transforms.
    Leading axes broadcast: a model axis on ``output`` (and, for ``"ce"``, labels
    of the batch shape) works.

    Shapes:
        ``output`` :math:`(\dots, N, d_L)`; ``y`` the same shape (``"mse"``) or int64
        labels :math:`(\dots, N)` (``"ce"``); returns :math:`(\dots, N)`.

    Raises:
        ValueError: for a ``loss`` other than ``"mse"`` or ``"ce"``.
    """
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    if loss == "mse":
        return 0.5 * (output - y).pow(2).sum(dim=-1)
    log_p = torch.log_softmax(output, dim=-1)
    index = y.expand(output.shape[:-1]).unsqueeze(-1)
    return -log_p.gather(-1, index).squeeze(-1)


def _check_logits_any_batch(logits: object) -> Tensor:
    logits = _check_tensor(logits, "logits")
    if logits.ndim < 1 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating tensor of shape (..., C), got dtype {logits.dtype} "
            f"and shape {tuple(logits.shape)}"
        )
    return logits


def ce_hessian_root(logits: Tensor) -> Tensor:
    r"""A square root :math:`C` of the cross-entropy output Hessian, :math:`C^\top C = H_L`.

    .. math::

        C = \operatorname{diag}(r) - r p^\top, \qquad r = \sqrt p
          = \exp\bigl(\tfrac12 \log\operatorname{softmax}(\hat y)\bigr),

    so row :math:`j` of :math:`C` is :math:`\sqrt{p_j}(e_j - p)` and
    :math:`C^\top C = \operatorname{diag}(p) - 2pp^\top + p\,(r^\top r)\,p^\top
    = \operatorname{diag}(p) - pp^\top` because :math:`r^\top r = \sum_j p_j = 1`
    (Camuto et al. 2020, eq. 13). :math:`r` is taken from the log-softmax, not as
    ``softmax(...).sqrt()``: the square root has an infinite derivative at 0, so
    once a probability underflows to 0 (a saturated softmax) the latter gives NaN
    gradients, while :math:`\partial r = \tfrac12 r\, \partial \log p` stays finite.

    Shapes:
        ``logits`` :math:`(\dots, C)`; returns :math:`(\dots, C, C)`.

    Raises:
        TypeError: if ``logits`` is not a tensor.
        ValueError: if it is not floating point or has no class axis.
    """
    logits = _check_logits_any_batch(logits)
    log_p = torch.log_softmax(logits, dim=-1)
    p, r = log_p.exp(), (0.5 * log_p).exp()
    return torch.diag_embed(r) - r.unsqueeze(-1) * p.unsqueeze(-2)


def ce_hessian_diag_root(logits: Tensor) -> Tensor:
    r""":math:`\sqrt{p(1-p)}`, the square root of the diagonal of :math:`H_L` (Camuto et al. 2020, eq. 14).

    Computed as :math:`\exp\bigl(\tfrac12(\log p_i + \log(1 - p_i))\bigr)` with
    :math:`\log(1 - p_i) = \operatorname{logsumexp}_{j \ne i} \hat y_j -
    \operatorname{logsumexp}_j \hat y_j`, so that its gradient stays finite when
    :math:`p_i` rounds to 0 or to 1.

    Shapes:
        ``logits`` :math:`(\dots, C)` with :math:`C \ge 2`; returns :math:`(\dots, C)`.

    Raises:
        TypeError: if ``logits`` is not a tensor.
        ValueError: if it is not floating point or has fewer than two classes.
    """
    logits = _check_logits_any_batch(logits)
    classes = logits.shape[-1]
    if classes < 2:
        raise ValueError(f"logits must have at least 2 classes on the last axis, got {classes}")
    log_p = torch.log_softmax(logits, dim=-1)
    others = logits.unsqueeze(-2).expand(*logits.shape, classes)  # (..., i, j) = logit j
    eye = torch.eye(classes, dtype=torch.bool, device=logits.device)
    masked = others.masked_fill(eye, float("-inf"))
    log_one_minus_p = torch.logsumexp(masked, dim=-1) - torch.logsumexp(logits, dim=-1, keepdim=True)
    return (0.5 * (log_p + log_one_minus_p)).exp()
