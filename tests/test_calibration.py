"""gni_lib.calibration: hand-computed examples, loop oracles, exact geometry, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _shared import DEVICES, CountingSyncs, one_thread, seeded_generator  # noqa: F401  (one_thread is autouse)
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.calibration import (
    confidence_and_prediction,
    confidence_bins,
    expected_calibration_error,
    input_margin,
    logit_margin,
    margin_lower_bound,
    reliability_diagram,
)


def _logits_from_probabilities(rows: list[list[float]], device: str = "cpu") -> torch.Tensor:
    """Logits log p, so that softmax gives back p (up to round-off)."""
    return torch.tensor(rows, dtype=torch.float64, device=device).log()


def _ece_oracle(logits: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """ECE by a plain Python loop over examples and bins (edges b/M, bins closed on the right)."""
    probabilities = torch.softmax(logits.double(), dim=1).cpu().tolist()
    labels = labels.cpu().tolist()
    members: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, label in zip(probabilities, labels):
        confidence = max(p)
        prediction = p.index(confidence)
        b = 0
        while b < bins - 1 and confidence > (b + 1) / bins:
            b += 1
        members[b].append((confidence, prediction == label))
    total = 0.0
    for bucket in members:
        if bucket:
            accuracy = sum(ok for _, ok in bucket) / len(bucket)
            confidence = sum(c for c, _ in bucket) / len(bucket)
            total += len(bucket) / len(labels) * abs(accuracy - confidence)
    return total


# --- calibration: hand-computed -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_ece_hand_example(device: str) -> None:
    # confidences and correctness, 5 bins of width 0.2:
    #   bin (0.8, 1]:   0.95 right, 0.85 wrong          -> acc 1/2, conf 0.90, gap 0.40, weight 2/6
    #   bin (0.6, 0.8]: 0.70 right, 0.65 right, 0.75 wrong -> acc 2/3, conf 0.70, gap 1/30, weight 3/6
    #   bin (0.4, 0.6]: 0.55 right                      -> acc 1,   conf 0.55, gap 0.45, weight 1/6
    # ECE = 0.4 * 2/6 + (1/30) * 3/6 + 0.45 * 1/6 = 0.225
    rows = [[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.65, 0.35], [0.75, 0.25], [0.45, 0.55]]
    labels = torch.tensor([0, 1, 1, 0, 1, 1], device=device)
    logits = _logits_from_probabilities(rows, device)
    ece = expected_calibration_error(logits, labels, bins=5)
    assert ece.item() == pytest.approx(0.225, abs=1e-12)
    diagram = reliability_diagram(logits, labels, bins=5)
    assert diagram.count.tolist() == [0, 0, 1, 3, 2]
    torch.testing.assert_close(
        diagram.accuracy[2:], torch.tensor([1.0, 2 / 3, 0.5], dtype=torch.float64, device=device)
    )
    torch.testing.assert_close(
        diagram.confidence[2:], torch.tensor([0.55, 0.70, 0.90], dtype=torch.float64, device=device)
    )
    assert torch.isnan(diagram.accuracy[:2]).all() and torch.isnan(diagram.confidence[:2]).all()
    torch.testing.assert_close(
        diagram.edges, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64, device=device)
    )


def test_ece_of_a_calibrated_bin_is_zero_and_one_bin_is_accuracy_minus_confidence() -> None:
    # ten predictions at confidence 0.8, eight of them right: perfectly calibrated
    logits = _logits_from_probabilities([[0.8, 0.1, 0.1]] * 10)
    labels = torch.tensor([0] * 8 + [1, 2])
    assert expected_calibration_error(logits, labels, bins=10).item() == pytest.approx(0.0, abs=1e-12)
    # one bin: |accuracy - mean confidence|
    rows = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]
    labels = torch.tensor([1, 0, 1])
    expected = abs(2 / 3 - (0.9 + 0.6 + 0.8) / 3)
    assert expected_calibration_error(_logits_from_probabilities(rows), labels, bins=1).item() == (
        pytest.approx(expected, abs=1e-12)
    )


def test_bin_edges_go_to_the_lower_bin() -> None:
    confidence = torch.tensor([0.0, 0.1, 0.2, 0.2000001, 0.4, 0.5, 0.99, 1.0], dtype=torch.float64)
    assert confidence_bins(confidence, 5).tolist() == [0, 0, 0, 1, 1, 2, 4, 4]
    assert confidence_bins(confidence, 1).tolist() == [0] * 8
    assert confidence_bins(torch.tensor([0.3, 0.7], dtype=torch.float32), 10).tolist() == [2, 6]


def test_confidence_and_prediction_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]], dtype=torch.float64)
    confidence, prediction = confidence_and_prediction(logits)
    torch.testing.assert_close(confidence, torch.tensor([0.75, 0.5], dtype=torch.float64))
    assert prediction.tolist() == [1, 0]  # ties go to the first index


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    classes=st.integers(2, 6),
    bins=st.integers(1, 20),
    scale=st.floats(0.1, 8.0),
    seed=st.integers(0, 10_000),
)
def test_ece_matches_loop_oracle(n: int, classes: int, bins: int, scale: float, seed: int) -> None:
    g = seeded_generator(seed)
    logits = scale * torch.randn(n, classes, generator=g, dtype=torch.float64)
    labels = torch.randint(classes, (n,), generator=g)
    ece = expected_calibration_error(logits, labels, bins=bins).item()
    assert ece == pytest.approx(_ece_oracle(logits, labels, bins), abs=1e-12)
    assert 0.0 <= ece <= 1.0
    diagram = reliability_diagram(logits, labels, bins=bins)
    assert int(diagram.count.sum()) == n
    filled = diagram.count > 0
    lower, upper = diagram.edges[:-1][filled], diagram.edges[1:][filled]
    assert bool(((diagram.confidence[filled] >= lower - 1e-12) & (diagram.confidence[filled] <= upper)).all())


def test_ece_is_differentiable_free_and_keeps_dtype() -> None:
    logits = torch.randn(8, 3, generator=seeded_generator(0)).float()
    labels = torch.zeros(8, dtype=torch.int64)
    ece = expected_calibration_error(logits, labels)
    assert ece.dtype == torch.float32 and ece.ndim == 0


# --- margins ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_logit_margin_by_hand(device: str) -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0]] * 3 + [[0.5, 0.5, 0.0]], dtype=torch.float64, device=device)
    labels = torch.tensor([0, 1, 2, 0], device=device)
    torch.testing.assert_close(
        logit_margin(logits, labels),
        torch.tensor([1.0, -1.0, -3.0, 0.0], dtype=torch.float64, device=device),
    )


def test_input_margin_by_hand_two_dimensions() -> None:
    # z = W x with rows W_0 = (1, 0), W_1 = (0, 1), W_2 = (-1, -1), at x = (2, 1), label 0:
    # z = (2, 1, -3); pair (0, 1): (2 - 1)/|(1, -1)| = 1/sqrt2; pair (0, 2): (2 + 3)/|(2, 1)| = 5/sqrt5
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    logits, jacobian, labels = x @ W.T, W.unsqueeze(0), torch.tensor([0])
    assert input_margin(logits, jacobian, labels).item() == pytest.approx(1 / math.sqrt(2), rel=1e-14)
    # the bound: margin 1 over sqrt2 * ||W||_2
    spectral = float(np.linalg.norm(W.numpy(), 2))
    assert margin_lower_bound(logits, jacobian, labels).item() == pytest.approx(
        1 / (math.sqrt(2) * spectral), rel=1e-14
    )
    # misclassified (label 1): signed, negative distance to the (1, 0) boundary
    assert input_margin(logits, jacobian, torch.tensor([1])).item() == pytest.approx(-1 / math.sqrt(2))


def test_bound_is_tight_for_antisymmetric_two_class_rows() -> None:
    # J_1 = -J_0: ||J_0 - J_1|| = 2||J_0|| = sqrt2 * ||J||_2, so the two estimates coincide
    row = torch.tensor([0.3, -1.2, 0.4], dtype=torch.float64)
    jacobian = torch.stack([row, -row]).unsqueeze(0)
    logits = torch.tensor([[0.7, -0.7]], dtype=torch.float64)
    labels = torch.tensor([0])
    assert margin_lower_bound(logits, jacobian, labels).item() == pytest.approx(
        input_margin(logits, jacobian, labels).item(), rel=1e-13
    )


@settings(max_examples=25, deadline=None)
@given(classes=st.integers(2, 5), dim=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_input_margin_is_the_exact_distance_for_an_affine_classifier(classes: int, dim: int, seed: int) -> None:
    """Independent route: step along the closest normal; the class changes just past the margin."""
    g = seeded_generator(seed)
    W = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    b = torch.randn(classes, generator=g, dtype=torch.float64)
    x = torch.randn(64, dim, generator=g, dtype=torch.float64)
    logits = x @ W.T + b
    labels = logits.argmax(dim=1)  # every point correctly classified
    gamma = input_margin(logits, W.expand(64, classes, dim), labels)
    assert bool((gamma >= 0).all())
    assert bool((margin_lower_bound(logits, W.expand(64, classes, dim), labels) <= gamma * (1 + 1e-12)).all())
    # a ball of radius 0.999 * gamma keeps the class: its worst point for pair (y, j) is at distance
    # gamma_j >= gamma along -(W_y - W_j); check all pairs at once
    for j in range(classes):
        direction = W[labels] - W[j]  # (64, dim)
        norm = direction.norm(dim=1, keepdim=True)
        keep = labels != j
        if not bool(keep.any()) or bool((norm[keep] == 0).any()):
            continue
        inside = x - 0.999 * gamma.unsqueeze(1) * direction / norm
        assert bool(((inside @ W.T + b).argmax(dim=1)[keep] == labels[keep]).all())
    # and just past gamma along the closest pair's normal, the class changes
    gaps = (logits.gather(1, labels.unsqueeze(1)) - logits) / (W[labels].unsqueeze(1) - W).norm(dim=2)
    gaps = gaps.scatter(1, labels.unsqueeze(1), math.inf)
    closest = gaps.argmin(dim=1)
    direction = W[labels] - W[closest]
    outside = x - 1.001 * gamma.unsqueeze(1) * direction / direction.norm(dim=1, keepdim=True)
    assert bool(((outside @ W.T + b).argmax(dim=1) != labels).all())


def test_margins_on_a_network_use_layer_jacobians() -> None:
    from gni_lib.jacobians import layer_jacobians
    from gni_lib.models import MLP

    torch.manual_seed(0)
    model = MLP([4, 8, 3], sigma=0.1).double().eval()
    x = torch.randn(5, 4, generator=seeded_generator(1), dtype=torch.float64)
    logits = model(x)
    jacobian = layer_jacobians(model, x)[0]
    brute = torch.stack([torch.autograd.functional.jacobian(model, x[i : i + 1])[0, :, 0] for i in range(5)])
    torch.testing.assert_close(jacobian, brute)
    labels = logits.argmax(dim=1)
    assert bool((input_margin(logits, jacobian, labels) >= margin_lower_bound(logits, jacobian, labels)).all())


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_names_the_argument() -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    jacobian = torch.randn(4, 3, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="logits"):
        expected_calibration_error([[0.0, 1.0]], labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.randn(4, 1, dtype=torch.float64), labels)
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.randn(4, dtype=torch.float64), labels)
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.ones(4, 3, dtype=torch.int64), labels)
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.full((4, 3), math.nan, dtype=torch.float64), labels)
    with pytest.raises(TypeError, match="labels"):
        expected_calibration_error(logits, [0, 1, 2, 0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(logits, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(logits, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(logits, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(TypeError, match="bins"):
        expected_calibration_error(logits, labels, bins=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bins"):
        reliability_diagram(logits, labels, bins=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bins"):
        reliability_diagram(logits, labels, bins=0)
    with pytest.raises(ValueError, match="confidence"):
        confidence_bins(torch.tensor([0.5, 1.5], dtype=torch.float64), 10)
    with pytest.raises(ValueError, match="confidence"):
        confidence_bins(torch.tensor([[0.5]], dtype=torch.float64), 10)
    with pytest.raises(TypeError, match="confidence"):
        confidence_bins([0.5], 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        logit_margin(logits, torch.tensor([0, 1, 5, 0]))
    with pytest.raises(TypeError, match="jacobian"):
        input_margin(logits, jacobian.numpy(), labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jacobian"):
        input_margin(logits, torch.randn(4, 2, 2, dtype=torch.float64), labels)
    with pytest.raises(ValueError, match="jacobian"):
        input_margin(logits, jacobian.float(), labels)
    with pytest.raises(ValueError, match="jacobian"):
        margin_lower_bound(logits, torch.full((4, 3, 2), math.inf, dtype=torch.float64), labels)



def test_label_check_reads_the_labels_back_once() -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    CountingSyncs.syncs = 0
    logit_margin(logits, torch.tensor([0, 1, 2, 0]).as_subclass(CountingSyncs))
    assert CountingSyncs.syncs == 1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], got values in \[-1, 3\]"):
        logit_margin(logits, torch.tensor([0, -1, 3, 0]))
