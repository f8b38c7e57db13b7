r"""Generated data sets and the toy problems the chapters share: nothing is downloaded.

:func:`regression_1d` draws a small, noisy 1-D regression problem,
:math:`x_i \sim \mathcal U[a, b)`, :math:`y_i = g(x_i) + s\, \eta_i`, on which a
small tanh MLP with some twenty points fits the trend and also the noise, so that
regularisation has something to do; :func:`grid_1d` gives points to plot a fit on.

The later chapters' problems, each with its loss and, where it has a closed form,
the trace of its Hessian (the quantity noise injection penalises; for the diagonal
network, stated in :func:`diagonal_network_loss`'s docstring): the widening
valley of Orvieto et al. (2022), Thm. 3.1; sparse regression with
:math:`\beta = w \odot w` (Orvieto et al. 2022, Sec. 4) or :math:`\beta = u \odot v`
(Orvieto et al. 2023); the sum of sines of Rahaman et al. (2019); and
scikit-learn's bundled digits and diabetes sets and the generated MNIST-1D, with a
seeded split and training-set standardisation.

All are deterministic given ``seed``: a CPU generator draws in float64 in a
documented order, and the result is then cast to ``dtype`` and moved to ``device``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_choice, check_dtype, check_fraction, check_int, check_real, check_tensor
from .seeding import make_generator

__all__ = [
    "regression_1d",
    "grid_1d",
    "regression_target",
    "TARGETS",
    "widening_valley_loss",
    "widening_valley_hessian_trace",
    "SparseRegression",
    "quadratic_sparse_regression",
    "quadratic_regression_loss",
    "quadratic_regression_hessian_trace",
    "diagonal_linear_regression",
    "diagonal_network_loss",
    "SumOfSines",
    "sum_of_sines",
    "Split",
    "load_digits_split",
    "load_diabetes_split",
    "load_mnist1d_split",
]


def _sin_target(x: Tensor) -> Tensor:
    return torch.sin(2.5 * x) + 0.5 * x


#: The noise-free targets :math:`g` by name.
#: ``"sin"``: :math:`g(x) = \sin(2.5 x) + x / 2`, smooth, one and a half bumps on [-1, 1].
TARGETS: dict[str, Callable[[Tensor], Tensor]] = {"sin": _sin_target}


def _is_finite_real(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)


def _check_range(x_range: object) -> tuple[float, float]:
    message = f"x_range must be a pair (a, b) of finite reals with a < b, got {x_range!r}"
    try:
        lo, hi = x_range  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not (_is_finite_real(lo) and _is_finite_real(hi) and lo < hi):
        raise ValueError(message)
    return float(lo), float(hi)


def _check_target(target: object) -> Callable[[Tensor], Tensor]:
    return TARGETS[check_choice(target, "target", tuple(TARGETS))]


def regression_target(x: Tensor, target: str = "sin") -> Tensor:
    r"""Return the noise-free target :math:`g(x)` elementwise (``"sin"``: :math:`\sin(2.5x) + x/2`).

    Shapes:
        any shape in, the same shape, dtype and device out.

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: if ``target`` is not a name in :data:`TARGETS`.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _check_target(target)(x)


def regression_1d(
    n: int,
    *,
    noise_std: float = 0.1,
    seed: int = 0,
    x_range: tuple[float, float] = (-1.0, 1.0),
    target: str = "sin",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Draw a noisy 1-D regression data set.

    .. math::

        x_i = a + (b - a)\, u_i, \quad u_i \sim \mathcal U[0, 1), \qquad
        y_i = g(x_i) + s\, \eta_i, \quad \eta_i \sim \mathcal N(0, 1),

    for :math:`i = 1, \dots, n \ge 1`, with :math:`(a, b)` = ``x_range`` (:math:`a < b`),
    :math:`s` = ``noise_std`` :math:`\ge 0` (a standard deviation) and :math:`g` =
    ``TARGETS[target]``; ``seed`` is a non-negative int, ``dtype`` a real floating
    dtype, ``device`` ``None`` for the CPU.

    **Draw order.** A CPU :class:`torch.Generator` seeded with ``seed`` draws
    ``u = torch.rand((n, 1))`` and then ``eta = torch.randn((n, 1))``, both in
    float64; :math:`x` and :math:`y` are computed in float64, then cast to
    ``dtype`` and moved to ``device``. So the same ``seed`` gives the same points
    on every device, and a float32 set is the rounding of the float64 one. The
    points are not sorted, and lie in :math:`[a, b]` (:math:`b` itself only
    through rounding).

    Returns:
        tuple[Tensor, Tensor]: :math:`x` and :math:`y`, each of shape :math:`(n, 1)`.

    Raises:
        TypeError: if ``n``, ``seed`` or ``noise_std`` has the wrong type.
        ValueError: if ``n < 1``, ``noise_std`` or ``seed`` is negative, ``noise_std`` is not
            finite, or ``x_range``, ``target`` or ``dtype`` is bad.
    """
    n = check_int(n, "n")
    noise_std = check_real(noise_std, "noise_std")
    lo, hi = _check_range(x_range)
    g = _check_target(target)
    dtype = check_dtype(dtype)
    generator = make_generator(seed, device="cpu")  # validates seed

    u = torch.rand((n, 1), generator=generator, dtype=torch.float64)
    eta = torch.randn((n, 1), generator=generator, dtype=torch.float64)
    x = lo + (hi - lo) * u
    y = g(x) + noise_std * eta
    return _place((x, y), dtype, device)


def grid_1d(
    n: int,
    x_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Return :math:`n` evenly spaced points from :math:`a` to :math:`b` inclusive, as a column.

    .. math::

        x_j = a + (b - a)\, \frac{j}{n - 1}, \qquad j = 0, \dots, n - 1.

    Args, as :func:`regression_1d`, with :math:`n \ge 2`.

    Returns:
        Tensor: shape :math:`(n, 1)`.

    Raises:
        TypeError: if ``n`` is not an int.
        ValueError: if ``n < 2``, or ``x_range`` or ``dtype`` is bad.
    """
    n = check_int(n, "n", 2)
    lo, hi = _check_range(x_range)
    dtype = check_dtype(dtype)
    return _place((torch.linspace(lo, hi, n, dtype=torch.float64).unsqueeze(1),), dtype, device)[0]


# --- the later chapters' problems: generated like regression_1d ---------------------------------


class SparseRegression(NamedTuple):
    """A regression problem with a sparse truth, ``y = x @ beta_star + noise``.

    Shapes: ``x`` :math:`(n, d)`, ``y`` :math:`(n,)`, ``beta_star`` :math:`(d,)`.
    """

    x: Tensor
    y: Tensor
    beta_star: Tensor


class SumOfSines(NamedTuple):
    r"""Samples ``y`` of :math:`f(x) = \sum_k A_k \sin(2\pi f_k x + \varphi_k)` on a grid ``x``.

    Shapes: ``x``, ``y`` :math:`(N, 1)`; ``frequencies`` (:math:`f_k`), ``phases``
    (:math:`\varphi_k`), ``amplitudes`` (:math:`A_k`) :math:`(K,)`.
    """

    x: Tensor
    y: Tensor
    frequencies: Tensor
    phases: Tensor
    amplitudes: Tensor


class Split(NamedTuple):
    """A fixed train/test split: ``x_train, y_train, x_test, y_test``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _check_tensor(value: object, name: str) -> Tensor:
    return check_tensor(value, name, finite=False)


def _place(tensors: tuple[Tensor, ...], dtype: torch.dtype, device: object) -> tuple[Tensor, ...]:
    """Move to ``device`` (the CPU if ``None``); floating tensors are cast to ``dtype``, labels stay int64."""
    device = torch.device("cpu") if device is None else torch.device(device)
    return tuple(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for t in tensors)


# --- widening valley (Orvieto et al. 2022, Sec. 3) -----------------------------------------------


def _check_valley(u: object, v: object) -> tuple[Tensor, Tensor]:
    u, v = _check_tensor(u, "u"), _check_tensor(v, "v")
    if u.ndim < 1:
        raise ValueError(f"u must have shape (..., d) with d >= 1, got {tuple(u.shape)}")
    if v.shape != u.shape[:-1]:
        raise ValueError(f"v must have shape u.shape[:-1] = {tuple(u.shape[:-1])}, got {tuple(v.shape)}")
    return u, v


def widening_valley_loss(u: Tensor, v: Tensor) -> Tensor:
    r"""The widening valley :math:`L(u, v) = \tfrac12 v^2 \lVert u \rVert^2` (Orvieto et al. 2022, Sec. 3).

    Every point with :math:`v = 0` or :math:`u = 0` is a minimum; the valley floor
    :math:`v = 0` is flatter the smaller :math:`\lVert u \rVert` is, since
    :math:`\operatorname{Tr} \nabla^2 L = d v^2 + \lVert u \rVert^2`
    (:func:`widening_valley_hessian_trace`).

    Shapes:
        ``u``: :math:`(\dots, d)`; ``v``: :math:`(\dots)`; result :math:`(\dots)` (a
        scalar for a single point), so a batch of points works too.

    Raises:
        TypeError: if ``u`` or ``v`` is not a tensor.
        ValueError: if they are not floating point or ``v.shape != u.shape[:-1]``.
    """
    u, v = _check_valley(u, v)
    return 0.5 * v.pow(2) * u.pow(2).sum(dim=-1)


def widening_valley_hessian_trace(u: Tensor, v: Tensor) -> Tensor:
    r"""The trace of the Hessian of the widening valley, :math:`d v^2 + \lVert u \rVert^2`.

    From :math:`\partial^2 L / \partial u_i^2 = v^2` (:math:`d` of them) and
    :math:`\partial^2 L / \partial v^2 = \lVert u \rVert^2`. Then for
    :math:`\xi \sim \mathcal N(0, \sigma^2 I_{d+1})`, exactly,
    :math:`\mathbb E\, L(u + \xi_u, v + \xi_v) = L + \tfrac{\sigma^2}{2}
    \operatorname{Tr} \nabla^2 L + \tfrac{d \sigma^4}{2}`.

    Shapes, Raises: as :func:`widening_valley_loss`.
    """
    u, v = _check_valley(u, v)
    return u.shape[-1] * v.pow(2) + u.pow(2).sum(dim=-1)


# --- sparse regression, quadratically parametrised (Orvieto et al. 2022, Sec. 4) ---------------


def _sparse_truth(generator: torch.Generator, d: int, k: int, signs: bool) -> Tensor:
    support = torch.randperm(d, generator=generator)[:k]
    beta = torch.zeros(d, dtype=torch.float64)
    values = torch.ones(k, dtype=torch.float64)
    if signs:
        heads = torch.rand(k, generator=generator, dtype=torch.float64) < 0.5
        values = torch.where(heads, -values, values)
    beta[support] = values
    return beta


def _sparse_problem(n: object, d: object, k: object, noise_std: object, seed: object, dtype: object,
                    device: object, *, standardise: bool) -> SparseRegression:
    """The draws of :func:`quadratic_sparse_regression` (``standardise=False``) and
    :func:`diagonal_linear_regression` (``True``: centred unit-variance columns, signed truth)."""
    n, d, k = check_int(n, "n"), check_int(d, "d"), check_int(k, "k", 0)
    if k > d:
        raise ValueError(f"k must be an int in [0, d] = [0, {d}], got {k}")
    if standardise and n < 2:
        raise ValueError(f"n must be an int >= 2 to standardise the columns, got {n}")
    noise_std = check_real(noise_std, "noise_std")
    dtype = check_dtype(dtype)
    generator = make_generator(seed, device="cpu")
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    if standardise:
        x = (x - x.mean(dim=0)) / x.std(dim=0, correction=0)
    beta = _sparse_truth(generator, d, k, signs=standardise)
    eta = torch.randn(n, generator=generator, dtype=torch.float64)
    return SparseRegression(*_place((x, x @ beta + noise_std * eta, beta), dtype, device))


def quadratic_sparse_regression(
    n: int = 40,
    d: int = 100,
    k: int = 5,
    *,
    noise_std: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> SparseRegression:
    r"""The sparse regression problem on which Anti-PGD finds the sparse solution.

    Orvieto et al. (2022), Sec. 4 (after HaoChen et al. 2021): :math:`n = 40`
    observations in :math:`d = 100` dimensions, so the problem is underdetermined,
    and a :math:`k`-sparse non-negative truth that the quadratic parametrisation
    :math:`\beta = w \odot w` can represent:

    .. math::

        x_{ij} \sim \mathcal N(0, 1), \qquad
        \beta^\star_j = 1 \ (j \in S), \ 0 \text{ otherwise}, \quad |S| = k, \qquad
        y = x \beta^\star + s \eta, \quad \eta \sim \mathcal N(0, I_n),

    with :math:`n, d \ge 1`, :math:`0 \le k \le d` and :math:`s` = ``noise_std``
    :math:`\ge 0` (0 gives an exact fit); ``seed``, ``dtype``, ``device`` as
    :func:`regression_1d`. Train it with :func:`quadratic_regression_loss`.

    **Draw order.** A CPU generator seeded with ``seed`` draws ``x`` :math:`(n, d)`,
    then the support ``randperm(d)[:k]``, then :math:`\eta`, all in float64.

    Returns:
        SparseRegression: ``x`` :math:`(n, d)`, ``y`` :math:`(n,)`, ``beta_star`` :math:`(d,)`.

    Raises:
        TypeError: if a size, ``seed`` or ``noise_std`` has the wrong type.
        ValueError: if a size, ``noise_std``, ``seed`` or ``dtype`` is out of range.
    """
    return _sparse_problem(n, d, k, noise_std, seed, dtype, device, standardise=False)


def _check_regression(x: object, y: object, width: int, name: str = "w") -> tuple[Tensor, Tensor]:
    x, y = _check_tensor(x, "x"), _check_tensor(y, "y")
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"x must have shape (n, d) with d = {name}'s length {width}, got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape (n,) = ({x.shape[0]},), got {tuple(y.shape)}")
    return x, y


def _check_vector(w: object, name: str) -> Tensor:
    w = _check_tensor(w, name)
    if w.ndim != 1:
        raise ValueError(f"{name} must have shape (d,), got {tuple(w.shape)}")
    return w


def quadratic_regression_loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r"""The quadratically parametrised least-squares loss of Orvieto et al. (2022), Sec. 4.

    .. math::

        L(w) = \frac{1}{4n} \lVert x (w \odot w) - y \rVert^2 .

    Shapes:
        ``w`` :math:`(d,)`, ``x`` :math:`(n, d)`, ``y`` :math:`(n,)`; a scalar out.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on non-floating tensors or mismatched shapes.
    """
    w = _check_vector(w, "w")
    x, y = _check_regression(x, y, w.shape[0])
    return (x @ (w * w) - y).pow(2).sum() / (4 * x.shape[0])


def quadratic_regression_hessian_trace(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r"""The trace of the Hessian of :func:`quadratic_regression_loss`.

    With :math:`\beta = w \odot w`, :math:`r = x\beta - y` and :math:`G = x^\top x / n`,

    .. math::

        \operatorname{Tr} \nabla^2 L(w) = 2 \sum_j G_{jj} w_j^2 + \frac1n \sum_j (x^\top r)_j ,

    which at an interpolating solution (:math:`r = 0`) is the weighted L1 norm
    :math:`2 \sum_j G_{jj} \beta_j`: the regulariser of Anti-PGD favours sparse
    :math:`\beta`.

    Shapes, Raises: as :func:`quadratic_regression_loss`.
    """
    w = _check_vector(w, "w")
    x, y = _check_regression(x, y, w.shape[0])
    n = x.shape[0]
    residual = x @ (w * w) - y
    return 2 * (x.pow(2).sum(dim=0) / n * w.pow(2)).sum() + (x.T @ residual).sum() / n


# --- diagonal linear network (Orvieto et al. 2023) -------------------------------------------------


def diagonal_linear_regression(
    n: int = 40,
    d: int = 100,
    k: int = 5,
    *,
    noise_std: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> SparseRegression:
    r"""A sparse regression problem with standardised features, for diagonal linear networks.

    .. math::

        \tilde x_{ij} \sim \mathcal N(0, 1), \qquad
        x_{ij} = \frac{\tilde x_{ij} - \bar x_j}{s_j}, \qquad
        \beta^\star_j = \pm 1 \ (j \in S), \ 0 \text{ otherwise}, \qquad
        y = x \beta^\star + s \eta,

    where :math:`\bar x_j` and :math:`s_j` are the column mean and (population,
    :math:`1/n`) standard deviation, so every column has mean 0 and
    :math:`(x^\top x / n)_{jj} = 1`, and the signs are :math:`\pm 1` with probability
    :math:`\tfrac12`. With these features, the balanced stationary points of
    perturbed gradient descent on :func:`diagonal_network_loss` solve the lasso with
    :math:`\lambda = \sigma^2` in scikit-learn's convention
    (``Lasso(alpha=sigma**2, fit_intercept=False)``; Orvieto et al. 2023).

    **Draw order.** A CPU generator seeded with ``seed`` draws :math:`\tilde x`
    :math:`(n, d)`, the support ``randperm(d)[:k]``, the signs ``rand(k)``, then
    :math:`\eta`, all in float64.

    Args, Returns, Raises: as :func:`quadratic_sparse_regression`; :math:`n \ge 2`
    (a standard deviation needs two rows).
    """
    return _sparse_problem(n, d, k, noise_std, seed, dtype, device, standardise=True)


def _check_factors(u: object, v: object) -> tuple[Tensor, Tensor]:
    u, v = _check_vector(u, "u"), _check_vector(v, "v")
    if u.shape != v.shape:
        raise ValueError(f"v must have the shape of u {tuple(u.shape)}, got {tuple(v.shape)}")
    return u, v


def diagonal_network_loss(u: Tensor, v: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r"""Least squares for the diagonal linear network :math:`\beta = u \odot v`.

    .. math::

        L(u, v) = \frac{1}{2n} \lVert x (u \odot v) - y \rVert^2 ,

    whose Hessian trace :math:`\sum_j (x^\top x / n)_{jj} (u_j^2 + v_j^2)` lecture 16
    (``book/16-perturbed-gradients.md``) derives.

    Shapes:
        ``u``, ``v`` :math:`(d,)`, ``x`` :math:`(n, d)`, ``y`` :math:`(n,)`; a scalar out.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: on non-floating tensors or mismatched shapes.
    """
    u, v = _check_factors(u, v)
    x, y = _check_regression(x, y, u.shape[0], "u")
    return (x @ (u * v) - y).pow(2).sum() / (2 * x.shape[0])


# --- sum of sines (Rahaman et al. 2019, as in Camuto et al. 2020, Figs. 4-5) ---------------------


def sum_of_sines(
    n: int = 200,
    frequencies: Sequence[float] = tuple(range(5, 55, 5)),
    amplitudes: Sequence[float] | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> SumOfSines:
    r"""The spectral-bias regression target of Rahaman et al. (2019) on an even grid.

    .. math::

        x_j = j / N \ (j = 0, \dots, N - 1), \qquad
        f(x) = \sum_{k=1}^{K} A_k \sin(2\pi f_k x + \varphi_k), \quad
        \varphi_k \sim \mathcal U[0, 2\pi),

    with by default :math:`N` = ``n`` :math:`= 200` points on :math:`[0, 1)`, :math:`K \ge 1`
    frequencies :math:`f_k = 5, 10, \dots, 50` and unit amplitudes (``amplitudes=None``),
    as in the code of Camuto et al. (2020) for their Figs. 4 and 5. On this grid
    frequency :math:`f_k` is FFT bin :math:`f_k` exactly (for :math:`f_k < N / 2`).
    ``seed``, ``dtype``, ``device`` as :func:`regression_1d`.

    **Draw order.** A CPU generator seeded with ``seed`` draws the phases
    ``2 * pi * torch.rand(K)`` in float64; nothing else is random.

    Returns:
        SumOfSines: ``x`` and ``y`` of shape :math:`(N, 1)`, and the frequencies,
        phases and amplitudes, each of shape :math:`(K,)`.

    Raises:
        TypeError: if ``n`` or ``seed`` has the wrong type.
        ValueError: if ``n < 2``, ``frequencies`` is empty or not finite reals,
            ``amplitudes`` does not match it, or ``dtype`` is bad.
    """
    n = check_int(n, "n", 2)
    freqs = _check_reals(frequencies, "frequencies")
    if amplitudes is None:
        amps = [1.0] * len(freqs)
    else:
        amps = _check_reals(amplitudes, "amplitudes")
        if len(amps) != len(freqs):
            raise ValueError(
                f"amplitudes must have one entry per frequency ({len(freqs)}), got {len(amps)}"
            )
    dtype = check_dtype(dtype)
    generator = make_generator(seed, device="cpu")
    phases = 2 * math.pi * torch.rand(len(freqs), generator=generator, dtype=torch.float64)
    f = torch.tensor(freqs, dtype=torch.float64)
    a = torch.tensor(amps, dtype=torch.float64)
    x = torch.arange(n, dtype=torch.float64) / n
    y = (a * torch.sin(2 * math.pi * f * x.unsqueeze(1) + phases)).sum(dim=1)
    placed = _place((x.unsqueeze(1), y.unsqueeze(1), f, phases, a), dtype, device)
    return SumOfSines(*placed)


def _check_reals(values: object, name: str) -> list[float]:
    if isinstance(values, Tensor):
        values = values.tolist()
    if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0
            or not all(_is_finite_real(v) for v in values)):
        raise ValueError(f"{name} must be a non-empty sequence of finite reals, got {values!r}")
    return [float(v) for v in values]


# --- scikit-learn's bundled data sets ----------------------------------------------------------------


def _check_split_args(test_fraction: object, seed: object, dtype: object) -> tuple[float, torch.dtype]:
    test_fraction = check_fraction(test_fraction, "test_fraction")
    dtype = check_dtype(dtype)
    make_generator(seed, device="cpu")  # validates seed before any work
    return test_fraction, dtype


def _split_and_standardise(x: object, y: object, test_fraction: float, seed: int, dtype: torch.dtype,
                           device: object, *, regression: bool = False) -> Split:
    """The recipe of every bundled set: a seeded permutation, then the training set's mean and std
    (of ``y`` too, a column, if ``regression``; else ``y`` holds int64 labels)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).unsqueeze(1) if regression else torch.as_tensor(y, dtype=torch.int64)
    n = x.shape[0]
    n_test = max(1, min(n - 2, round(test_fraction * n)))
    order = torch.randperm(n, generator=make_generator(seed, device="cpu"))
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(dim=0)
    std = x[train].std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant pixels stay 0
    y_train, y_test = y[train], y[test]
    if regression:
        y_mean, y_std = y_train.mean(), y_train.std(correction=0)
        y_train, y_test = (y_train - y_mean) / y_std, (y_test - y_mean) / y_std
    return Split(*_place(((x[train] - mean) / std, y_train, (x[test] - mean) / std, y_test), dtype, device))


def load_digits_split(
    test_fraction: float = 0.25,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Split:
    r"""scikit-learn's bundled 8×8 digits (1797 images, 10 classes), split and standardised.

    The book's stand-in for MNIST and USPS (Rifai et al. 2011). Nothing is
    downloaded: the data ship with scikit-learn.

    **Split.** ``torch.randperm(1797)`` from a CPU generator seeded with ``seed``;
    the first :math:`\operatorname{round}(1797 \cdot` ``test_fraction``:math:`)`
    indices are the test set, the rest the training set (in permuted order).

    **Standardisation.** Each of the 64 pixels is centred and divided by its
    population standard deviation, both computed **on the training set only**
    and applied to both sets; pixels that are constant on the training set
    (always 0 at the border) are only centred.

    ``test_fraction`` is in :math:`(0, 1)`; ``seed``, a non-negative int, fixes the
    split; ``dtype`` is for the inputs (the labels are int64 on ``device``).

    Returns:
        Split: ``x_train`` :math:`(n_\text{train}, 64)`, ``y_train``
        :math:`(n_\text{train},)` int64 in :math:`\{0, \dots, 9\}`, and the same for the test set.

    Raises:
        TypeError, ValueError: on a bad ``test_fraction``, ``seed`` or ``dtype``.
        ImportError: if scikit-learn is not installed.
    """
    from sklearn.datasets import load_digits

    test_fraction, dtype = _check_split_args(test_fraction, seed, dtype)
    data = load_digits()
    return _split_and_standardise(data.data, data.target, test_fraction, seed, dtype, device)


def load_diabetes_split(
    test_fraction: float = 0.25,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Split:
    r"""scikit-learn's bundled diabetes regression (442 patients, 10 features), split and standardised.

    The book's stand-in for the house-price regression. The raw features
    (``load_diabetes(scaled=False)``) and the target (disease progression after
    one year) are each centred and divided by their population standard deviation
    computed **on the training set only**, so the training targets have mean 0 and
    variance 1 and a constant predictor has MSE loss about ½. The split is as in
    :func:`load_digits_split`.

    Returns:
        Split: ``x_train`` :math:`(n_\text{train}, 10)`, ``y_train``
        :math:`(n_\text{train}, 1)`, and the same for the test set, all ``dtype``.

    Raises:
        TypeError, ValueError: on a bad ``test_fraction``, ``seed`` or ``dtype``.
        ImportError: if scikit-learn is not installed.
    """
    from sklearn.datasets import load_diabetes

    test_fraction, dtype = _check_split_args(test_fraction, seed, dtype)
    data = load_diabetes(scaled=False)
    return _split_and_standardise(data.data, data.target, test_fraction, seed, dtype, device, regression=True)


def load_mnist1d_split(
    test_fraction: float = 0.25,
    *,
    samples: int = 4000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Split:
    r"""MNIST-1D (Greydanus 2020): 10 classes of 40-sample 1-D signals, generated, split and standardised.

    A harder stand-in for MNIST than the 8×8 digits, on which small MLPs stay
    far from perfect. The ``mnist1d`` package *generates* the examples from ten
    built-in templates (padding, shear, translation, correlated and i.i.d.
    noise); nothing is downloaded. The generator's own settings are the
    package's defaults, its own seed included, so ``samples`` fixes the data
    set; ``seed`` only chooses the split.

    **Split and standardisation** as :func:`load_digits_split`, on the 40 features.
    Python's and NumPy's global random states, which the package reseeds, are
    restored afterwards.

    ``samples`` is the number of examples in all, an int :math:`\ge 10` (the package
    draws ``samples // 10`` of each class); the other arguments as :func:`load_digits_split`.

    Returns:
        Split: as :func:`load_digits_split`, with 40 features.

    Raises:
        TypeError, ValueError: on a bad ``test_fraction``, ``samples``, ``seed`` or ``dtype``.
        ImportError: if the ``mnist1d`` package is not installed.
    """
    import random

    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    test_fraction, dtype = _check_split_args(test_fraction, seed, dtype)
    samples = check_int(samples, "samples", 10)
    args = get_dataset_args()
    args.num_samples = samples
    args.train_split = 1.0  # one pool; the split is ours
    states = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return _split_and_standardise(data["x"], data["y"], test_fraction, seed, dtype, device)
