r"""The calibration-and-margins experiment of Camuto et al. (2020), Sec. 4, as library code.

The book's lectures on calibration and on margins (``book/10-calibration.md``,
``book/11-margins.md``) train the same networks and measure them on the same
test sets: a second data set (:func:`load_breast_cancer_split`), one arm of the
experiment for many seeds with its test statistics (:func:`train_noise_arm`), the
ECE of given outcomes and its distribution under a calibrated model
(:func:`ece_of_outcomes`, :func:`calibrated_ece_draws`), and the walk from a test
point to a change of class (:func:`walk_ratios`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gni_lib._checks import check_choice, check_fraction, check_int, check_real, check_tensor
from gni_lib.calibration import (
    confidence_and_prediction,
    confidence_bins,
    expected_calibration_error,
    input_margin,
    logit_margin,
    reliability_diagram,
)
from gni_lib.data import Split
from gni_lib.seeding import make_generator, stream_seed

__all__ = [
    "ARMS",
    "load_breast_cancer_split",
    "train_noise_arm",
    "ece_of_outcomes",
    "calibrated_ece_draws",
    "walk_ratios",
]

#: The arms of the experiment, in the order the pages draw them.
ARMS = ("baseline", "noise", "hidden", "R")


def load_breast_cancer_split(
    test_fraction: float = 0.25,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Split:
    r"""scikit-learn's bundled Wisconsin breast-cancer set (569 tumours, 30 features, 2 classes), split and standardised.

    **Split.** ``sklearn.model_selection.train_test_split`` with
    ``test_size=test_fraction``, stratified by the label, and
    ``random_state = seed mod 2**32`` (a stream seed of
    :func:`gni_lib.seeding.stream_seed` may exceed the 32 bits scikit-learn accepts).

    **Standardisation.** ``StandardScaler`` fitted on the training set only
    (each feature centred and divided by its population standard deviation, in
    float64) and applied to both sets; then cast to ``dtype``.

    ``test_fraction`` is in :math:`(0, 1)`, ``seed`` a non-negative int, ``dtype`` a
    floating dtype for the inputs, ``device`` for inputs and labels (CPU if ``None``).

    Returns:
        Split: ``x_train`` :math:`(n_\text{train}, 30)`, ``y_train`` :math:`(n_\text{train},)`
        int64 in :math:`\{0, 1\}`, and the same for the test set (143 tumours at
        the default fraction).

    Raises:
        TypeError, ValueError: if ``test_fraction`` is not a real in :math:`(0, 1)`,
            ``seed`` not a non-negative int, or ``dtype`` not a floating dtype.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    test_fraction = check_fraction(test_fraction, "test_fraction")
    seed = check_int(seed, "seed", minimum=0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=test_fraction, stratify=data.target, random_state=seed % 2**32
    )
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = (torch.as_tensor(scaler.transform(a), dtype=dtype, device=device) for a in (x_tr, x_te))
    y_tr, y_te = (torch.as_tensor(a, dtype=torch.int64, device=device) for a in (y_tr, y_te))
    return Split(x_tr, y_tr, x_te, y_te)


def _check_split(data: object) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if not isinstance(data, Sequence) or len(data) != 4:
        raise TypeError("data must be a (x_train, y_train, x_test, y_test) tuple, e.g. a gni_lib.data.Split")
    x_tr, y_tr, x_te, y_te = data
    for value, name in ((x_tr, "data.x_train"), (x_te, "data.x_test")):
        check_tensor(value, name, ndim=2)
    for value, name in ((y_tr, "data.y_train"), (y_te, "data.y_test")):
        if not isinstance(value, Tensor) or value.dtype != torch.int64 or value.ndim != 1:
            raise ValueError(f"{name} must be a 1-D int64 tensor of class labels")
    if x_tr.shape[1] != x_te.shape[1] or len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError(
            f"data has inconsistent shapes: x_train {tuple(x_tr.shape)}, y_train {tuple(y_tr.shape)}, "
            f"x_test {tuple(x_te.shape)}, y_test {tuple(y_te.shape)}"
        )
    return x_tr, y_tr, x_te, y_te


def train_noise_arm(
    arm: str,
    data: Sequence[Tensor],
    seeds: Sequence[int],
    *,
    steps: int,
    variance: float = 0.1,
    lr: float = 0.2,
    batch_size: int = 64,
    hidden: int = 64,
    bins: int = 10,
) -> list[dict[str, Any]]:
    r"""Train one arm of the calibration-and-margins experiment, one network per seed, all at once.

    The network is ``MLP([d, hidden, hidden, C], activation="elu")`` with noise
    sites at the input and both hidden layers, trained by minibatch gradient
    descent on the cross-entropy with :func:`gni_lib.ensemble.train_ensemble`.
    With :math:`s = \sqrt{\texttt{variance}}` the arms are

    - ``"baseline"``: no noise, plain cross-entropy;
    - ``"noise"``: :math:`\xi_k \sim \mathcal N(0, s^2 I)` at all three sites, fresh every step;
    - ``"hidden"``: the same noise on the two hidden layers only, the input clean;
    - ``"R"``: the clean network trained on cross-entropy :math:`+\,R`, the exact
      explicit regulariser (Camuto et al. 2020, eq. 10) for :math:`\sigma_k = s` at every site.

    Seed ``k`` draws the initial weights from ``stream_seed(k)``, the minibatches
    from ``stream_seed(2000 + k)`` and the noise from ``stream_seed(1000 + k)``,
    so the arms of one seed start from the same weights and see the same batches.

    Args:
        arm: one of :data:`ARMS`.
        data: ``(x_train, y_train, x_test, y_test)`` (a :class:`gni_lib.data.Split`).
        seeds: at least one non-negative int.
        steps, batch_size, hidden, bins: positive ints (``bins`` for the ECE).
        variance: the noise variance :math:`s^2 \ge 0`.
        lr: the step size, > 0.

    Returns:
        list of dict, one per seed, with ``model`` (the trained MLP, on the data's
        device), ``logits`` :math:`(n_\text{test}, C)`, ``train_accuracy`` (the last
        recorded one), ``ece`` (``bins`` bins), ``diagram``
        (:class:`gni_lib.calibration.ReliabilityDiagram`), ``accuracy``,
        ``confidence`` (mean), ``gamma`` (numpy :math:`(n_\text{test},)`,
        :math:`\gamma_\text{lin}`) and ``logit_margin`` (numpy :math:`(n_\text{test},)`).

    Raises:
        ValueError: if ``arm`` is not one of :data:`ARMS`, ``seeds`` is empty or
            ``data`` is malformed; TypeError/ValueError on a bad number.
    """
    from gni_lib.ensemble import train_ensemble
    from gni_lib.jacobians import layer_jacobians
    from gni_lib.models import MLP

    check_choice(arm, "arm", ARMS)
    x_tr, y_tr, x_te, y_te = _check_split(data)
    seeds = [check_int(k, "seeds", minimum=0) for k in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    steps, batch_size = check_int(steps, "steps"), check_int(batch_size, "batch_size")
    hidden, bins = check_int(hidden, "hidden"), check_int(bins, "bins")
    s = math.sqrt(check_real(variance, "variance"))
    lr = check_real(lr, "lr", positive=True)
    device = x_tr.device
    sigma = {"baseline": 0.0, "noise": s, "hidden": [0.0, s, s], "R": s}[arm]  # sites: input, hidden 1, 2
    widths = [x_tr.shape[1], hidden, hidden, int(y_tr.max()) + 1]
    models = [MLP(widths, activation="elu", sigma=sigma, seed=stream_seed(k)).to(device, x_tr.dtype) for k in seeds]
    noisy = arm in ("noise", "hidden")
    result = train_ensemble(
        models, x_tr, y_tr, steps=steps, lr=lr, loss="ce", batch_size=batch_size, record_every=steps,
        batch_generator=[make_generator(stream_seed(2_000 + k), device=device) for k in seeds],
        inject_noise={"baseline": None, "R": False}.get(arm, True), progress=False,
        site_generators=[make_generator(stream_seed(1_000 + k), device=device) for k in seeds] if noisy else None,
        penalty="explicit_regularizer" if arm == "R" else None,
    )
    records = []
    for model, history in zip(models, result.histories):
        with torch.no_grad():
            logits = model.eval()(x_te)
        jacobian = layer_jacobians(model, x_te)[0].detach()
        records.append(dict(
            model=model, logits=logits, train_accuracy=history.train_accuracy[-1],
            ece=expected_calibration_error(logits, y_te, bins=bins).item(),
            diagram=reliability_diagram(logits, y_te, bins=bins),
            accuracy=(logits.argmax(dim=1) == y_te).float().mean().item(),
            confidence=confidence_and_prediction(logits)[0].mean().item(),
            gamma=input_margin(logits, jacobian, y_te).cpu().numpy(),
            logit_margin=logit_margin(logits, y_te).cpu().numpy(),
        ))
    return records


def ece_of_outcomes(confidence: Tensor, right: Tensor, bins: int = 10) -> Tensor:
    r"""The ECE of predictions with confidences ``confidence`` and outcomes ``right``, over any leading draws.

    .. math::

        \operatorname{ECE} = \frac1n \sum_{b=1}^{M} \Bigl\lvert \sum_{k \in B_b} (r_k - \hat p_k) \Bigr\rvert ,

    which is :func:`gni_lib.calibration.expected_calibration_error` written with
    the outcomes :math:`r_k \in \{0, 1\}` in place of labels (the bins are those of
    :func:`gni_lib.calibration.confidence_bins`). Vectorised over the leading
    dimensions of ``right``, so thousands of simulated outcome vectors cost one matmul.

    Shapes:
        ``confidence`` :math:`(n,)` in :math:`[0, 1]`; ``right`` :math:`(..., n)` bool
        (or 0/1); returns :math:`(...)` in the confidences' dtype.

    Raises:
        TypeError: if ``confidence`` or ``right`` is not a tensor, or ``bins`` not an int.
        ValueError: if the last dimension of ``right`` is not :math:`n`, or as
            :func:`gni_lib.calibration.confidence_bins`.
    """
    members = torch.nn.functional.one_hot(confidence_bins(confidence, bins), bins).to(confidence.dtype)
    if not isinstance(right, Tensor):
        raise TypeError(f"right must be a torch.Tensor of shape (..., n), got {type(right).__name__}")
    if right.ndim == 0 or right.shape[-1] != confidence.shape[0]:
        raise ValueError(
            f"right must have shape (..., {confidence.shape[0]}) to match confidence, got {tuple(right.shape)}"
        )
    return ((right.to(confidence.dtype) - confidence) @ members).abs().sum(dim=-1) / confidence.shape[0]


def calibrated_ece_draws(
    confidence: Tensor, bin_counts: Sequence[int], draws: int, generator: torch.Generator
) -> Tensor:
    r"""The ECE a perfectly calibrated model would show with these confidences, in ``draws`` simulations.

    A calibrated model is right with probability equal to its confidence: each
    draw sets :math:`r_k \sim \operatorname{Bernoulli}(\hat p_k)` independently, and
    the same draws serve every number of bins :math:`M` in ``bin_counts``
    (:func:`ece_of_outcomes`). The mean over draws is the bias of the ECE of a
    test set of this size and these confidences.

    Shapes:
        ``confidence`` :math:`(n,)`; returns ``(len(bin_counts), draws)`` in the
        confidences' dtype.

    Raises:
        TypeError: if ``generator`` is not a ``torch.Generator``.
        ValueError: if ``bin_counts`` is empty, ``draws < 1``, or as :func:`ece_of_outcomes`.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    draws = check_int(draws, "draws")
    bin_counts = [check_int(m, "bin_counts") for m in bin_counts]
    if not bin_counts:
        raise ValueError("bin_counts must hold at least one number of bins")
    check_tensor(confidence, "confidence", ndim=1)
    uniform = torch.rand(draws, len(confidence), generator=generator, dtype=confidence.dtype,
                         device=generator.device)
    right = uniform.to(confidence.device) < confidence
    return torch.stack([ece_of_outcomes(confidence, right, m) for m in bin_counts])


def walk_ratios(model: nn.Module, x: Tensor, y: Tensor, *, resolution: int = 20, max_steps: int = 80) -> Tensor:
    r"""Walk length to a change of class, in units of :math:`\gamma_\text{lin}`, from each correctly classified point.

    For each correctly classified :math:`x` with label :math:`y` let :math:`j^*` be
    the class of the nearest linearised pairwise boundary (the minimiser in
    :math:`\gamma_\text{lin} = \min_{j\ne y}(z_y - z_j)/\lVert\nabla_x(z_y - z_j)\rVert_2`,
    :func:`gni_lib.calibration.input_margin`) and :math:`u` the unit vector
    along :math:`-\nabla_x(z_y - z_{j^*})`. The result is the smallest
    :math:`t = k / r` (:math:`r` = ``resolution``, :math:`k = 1, \dots,` ``max_steps``)
    with :math:`\arg\max z(x + t\gamma_\text{lin}u) \ne y`, or ``inf`` if there is none.
    For an affine classifier it is 1 up to one step, ``1 / resolution`` (the linearisation is exact);
    the walk length :math:`t\gamma_\text{lin}` is an upper bound on the distance to the boundary.

    Shapes:
        ``x`` :math:`(n, d)`, ``y`` :math:`(n,)` int64; returns :math:`(n_\text{correct},)`.

    Raises:
        TypeError, ValueError: if ``x`` is not a finite 2-D floating tensor, ``y``
            not a matching int64 vector, or ``resolution`` or ``max_steps`` not an int >= 1.
    """
    from gni_lib.jacobians import layer_jacobians

    x = check_tensor(x, "x", ndim=2)
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},) to match x")
    resolution = check_int(resolution, "resolution")
    max_steps = check_int(max_steps, "max_steps")
    with torch.no_grad():
        z = model(x)
    jacobian = layer_jacobians(model, x)[0].detach()
    keep = z.argmax(dim=1) == y
    x_k, y_k, z_k, J_k = x[keep], y[keep], z[keep], jacobian[keep]
    rows = torch.arange(len(y_k), device=x.device)
    normals = J_k[rows, y_k].unsqueeze(1) - J_k  # (n, C, d): gradients of z_y - z_j
    ratios = ((z_k.gather(1, y_k[:, None]) - z_k) / normals.norm(dim=2)).scatter(1, y_k[:, None], math.inf)
    direction = -normals[rows, ratios.argmin(dim=1)]
    direction = direction / direction.norm(dim=1, keepdim=True)
    gamma_k = input_margin(z_k, J_k, y_k)
    walk = torch.full_like(gamma_k, math.inf)
    with torch.no_grad():
        for k in range(1, max_steps + 1):
            moved = model(x_k + (k / resolution) * gamma_k.unsqueeze(1) * direction)
            changed = (moved.argmax(dim=1) != y_k) & walk.isinf()
            walk[changed] = k / resolution
    return walk
