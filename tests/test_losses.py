"""Tests for gni_lib.losses: values and output Hessians against brute-force float64 oracles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.losses import LOSSES, ce_loss, get_loss, mse_loss


def _mse_oracle(pred, target):
    B, d = pred.shape
    total = 0.0
    for b in range(B):
        total += 0.5 * sum((target[b, i].item() - pred[b, i].item()) ** 2 for i in range(d))
    return total / B


def _ce_oracle(logits, target):
    B, C = logits.shape
    total = 0.0
    for b in range(B):
        row = [logits[b, i].item() for i in range(C)]
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_norm - row[target[b].item()]
    return total / B


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 6), dim=st.integers(1, 5), seed=st.integers(0, 1000))
def test_property_mse_matches_oracle(batch, dim, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    target = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    assert mse_loss(pred, target).item() == pytest.approx(_mse_oracle(pred, target), rel=1e-13)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 6), classes=st.integers(2, 5), seed=st.integers(0, 1000))
def test_property_ce_matches_oracle(batch, classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)
    target = torch.randint(classes, (batch,), generator=g)
    assert ce_loss(logits, target).item() == pytest.approx(_ce_oracle(logits, target), rel=1e-12)


def test_mse_output_hessian_is_identity_over_batch():
    """Hessian of the batch mean w.r.t. the (B*d) outputs is I / B, i.e. H_L = I per example."""
    B, d = 3, 4
    pred = torch.randn(B, d, dtype=torch.float64)
    target = torch.randn(B, d, dtype=torch.float64)
    H = torch.autograd.functional.hessian(lambda p: mse_loss(p, target), pred).reshape(B * d, B * d)
    torch.testing.assert_close(H, torch.eye(B * d, dtype=torch.float64) / B, rtol=0, atol=1e-14)


def test_ce_output_hessian_is_label_free_softmax_covariance():
    """Per-example H_L = diag(p) - p p^T, the same for every label (Camuto et al. eq. 13)."""
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.1]], dtype=torch.float64)
    p = torch.softmax(logits[0], dim=0)
    expected = torch.diag(p) - torch.outer(p, p)
    for label in range(4):
        target = torch.tensor([label])
        H = torch.autograd.functional.hessian(lambda z: ce_loss(z, target), logits).reshape(4, 4)
        torch.testing.assert_close(H, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    pred = torch.randn(4, 2, dtype=dtype)
    assert mse_loss(pred, torch.zeros(4, 2, dtype=dtype)).dtype == dtype
    assert ce_loss(pred, torch.tensor([0, 1, 1, 0])).dtype == dtype


def test_get_loss():
    assert get_loss("mse") is mse_loss and get_loss("ce") is ce_loss
    assert set(LOSSES) == {"mse", "ce"}


@pytest.mark.parametrize("bad", ["MSE", "l1", "cross_entropy", None])
def test_get_loss_unknown(bad):
    with pytest.raises(ValueError, match="loss"):
        get_loss(bad)


# --- errors -------------------------------------------------------------------------------


def test_mse_target_must_match_shape_exactly():
    pred = torch.zeros(5, 1)
    with pytest.raises(ValueError, match="target"):
        mse_loss(pred, torch.zeros(5))
    with pytest.raises(ValueError, match="target"):
        mse_loss(pred, torch.zeros(5, 2))


def test_mse_target_dtype():
    with pytest.raises(ValueError, match="target"):
        mse_loss(torch.zeros(3, 1), torch.zeros(3, 1, dtype=torch.float64))


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(2, 2, 2), torch.zeros(3, 1, dtype=torch.int64)])
def test_mse_pred_shape_and_dtype(bad):
    with pytest.raises(ValueError, match="pred"):
        mse_loss(bad, bad.clone())


def test_mse_non_tensor():
    with pytest.raises(TypeError, match="target"):
        mse_loss(torch.zeros(2, 1), [[0.0], [0.0]])
    with pytest.raises(TypeError, match="pred"):
        mse_loss([[0.0]], torch.zeros(1, 1))


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([[0], [1], [2]]),  # (B, 1)
        torch.tensor([0, 1]),  # wrong B
        torch.tensor([0.0, 1.0, 2.0]),  # float labels
        torch.tensor([0, 1, 2], dtype=torch.int32),
        torch.tensor([0, 1, 3]),  # out of range
        torch.tensor([0, -1, 2]),
    ],
)
def test_ce_bad_target(bad):
    with pytest.raises(ValueError, match="target"):
        ce_loss(torch.zeros(3, 3), bad)


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(3, 3, dtype=torch.int64)])
def test_ce_bad_logits(bad):
    with pytest.raises(ValueError, match="logits"):
        ce_loss(bad, torch.tensor([0, 1, 2]))


def test_ce_hessian_root_squares_to_the_output_hessian() -> None:
    from gni_lib.losses import ce_hessian_diag_root, ce_hessian_root

    logits = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for b in range(4):
        oracle = torch.func.hessian(lambda z: torch.nn.functional.cross_entropy(z[None], torch.tensor([1])))(logits[b])
        c = ce_hessian_root(logits[b])
        torch.testing.assert_close(c.T @ c, oracle, atol=1e-14, rtol=0)
        torch.testing.assert_close(ce_hessian_diag_root(logits[b]) ** 2, torch.diagonal(oracle), atol=1e-14, rtol=0)


def test_ce_hessian_roots_have_finite_gradients_when_the_softmax_saturates() -> None:
    """softmax(z).sqrt() has an infinite derivative where p underflows to 0 (or 1 - p does): NaN gradients."""
    from gni_lib.losses import ce_hessian_diag_root, ce_hessian_root

    logits = torch.tensor([[0.0, 200.0, -200.0]], requires_grad=True)  # p = (e^-200, 1, e^-400) -> 0, 1, 0 in float32
    assert (torch.softmax(logits, 1) == 0).any()
    for root in (ce_hessian_root, ce_hessian_diag_root):
        (grad,) = torch.autograd.grad(root(logits).square().sum(), logits)
        assert torch.isfinite(grad).all(), root.__name__


@pytest.mark.parametrize("bad", [torch.tensor([1, 2]), torch.zeros(())])
def test_ce_hessian_root_bad_logits(bad: torch.Tensor) -> None:
    from gni_lib.losses import ce_hessian_root

    with pytest.raises(ValueError, match="logits"):
        ce_hessian_root(bad)


def test_ce_hessian_diag_root_needs_two_classes() -> None:
    from gni_lib.losses import ce_hessian_diag_root

    with pytest.raises(ValueError, match="logits"):
        ce_hessian_diag_root(torch.zeros(3, 1))


def test_per_example_loss_matches_the_batch_losses_and_takes_a_model_axis():
    """The unchecked per-example core: its mean is mse_loss / ce_loss, and a leading model
    axis on the output broadcasts against one batch of targets."""
    import torch.nn.functional as F

    from gni_lib.gap import per_example_loss as from_gap
    from gni_lib.losses import per_example_loss

    assert from_gap is per_example_loss  # the chapters import it from gni_lib.gap
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)  # (models, B, d)
    labels = torch.randint(0, 4, (5,), generator=g)
    target = torch.randn(5, 4, dtype=torch.float64, generator=g)
    ce = per_example_loss(out, labels, "ce")
    mse = per_example_loss(out, target, "mse")
    assert ce.shape == mse.shape == (3, 5)
    for m in range(3):
        torch.testing.assert_close(ce[m], F.cross_entropy(out[m], labels, reduction="none"))
        torch.testing.assert_close(ce[m].mean(), ce_loss(out[m], labels))
        torch.testing.assert_close(mse[m].mean(), mse_loss(out[m], target))
    with pytest.raises(ValueError, match="loss"):
        per_example_loss(out[0], target, "l1")
