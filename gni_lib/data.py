r"""Generated data sets: nothing is downloaded.

:func:`regression_1d` draws a small, noisy 1-D regression problem,

.. math::

    x_i \sim \mathcal U[a, b), \qquad y_i = g(x_i) + s\, \eta_i, \quad \eta_i \sim \mathcal N(0, 1),

on which a small tanh MLP fits the trend but, with some twenty points, also
fits the noise, so that regularisation has something to do. :func:`grid_1d`
gives evenly spaced points for evaluating and plotting a fitted curve, and
:func:`regression_target` the noise-free :math:`g`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from .seeding import make_generator

__all__ = ["regression_1d", "grid_1d", "regression_target", "TARGETS"]


def _sin_target(x: Tensor) -> Tensor:
    return torch.sin(2.5 * x) + 0.5 * x


#: The noise-free targets :math:`g` by name.
#: ``"sin"``: :math:`g(x) = \sin(2.5 x) + x / 2`, smooth, one and a half bumps on [-1, 1].
TARGETS: dict[str, Callable[[Tensor], Tensor]] = {"sin": _sin_target}


def _check_count(n: object, name: str, minimum: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n}")
    return int(n)


def _check_range(x_range: object) -> tuple[float, float]:
    message = "x_range must be a pair (a, b) of finite reals with a < b"
    try:
        lo, hi = x_range  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{message}, got {x_range!r}") from None
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{message}, got {x_range!r}")
    if not lo < hi:
        raise ValueError(f"{message}, got {x_range!r}")
    return float(lo), float(hi)


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ValueError(
            f"dtype must be a real floating torch.dtype (e.g. torch.float64), got {dtype!r}"
        )
    return dtype


def _check_target(target: object) -> Callable[[Tensor], Tensor]:
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, got {target!r}")
    return TARGETS[target]


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

    for :math:`i = 1, \dots, n`, with :math:`(a, b)` = ``x_range``, :math:`s` =
    ``noise_std`` (a standard deviation) and :math:`g` = ``TARGETS[target]``.

    **Draw order.** A CPU :class:`torch.Generator` seeded with ``seed`` draws
    ``u = torch.rand((n, 1))`` and then ``eta = torch.randn((n, 1))``, both in
    float64; :math:`x` and :math:`y` are computed in float64, then cast to
    ``dtype`` and moved to ``device``. So the same ``seed`` gives the same points
    on every device, and a float32 set is the rounding of the float64 one. The
    points are not sorted, and lie in :math:`[a, b]` (:math:`b` itself only
    through rounding).

    Args:
        n: the number of points, :math:`n \ge 1`.
        noise_std: :math:`s \ge 0`.
        seed: a non-negative int.
        x_range: :math:`(a, b)` with :math:`a < b`.
        target: the name of :math:`g` in :data:`TARGETS` (``"sin"``:
            :math:`g(x) = \sin(2.5x) + x/2`).
        dtype: a real floating dtype.
        device: where the tensors go; ``None`` means the CPU.

    Returns:
        tuple[Tensor, Tensor]: :math:`x` and :math:`y`, each of shape :math:`(n, 1)`.

    Raises:
        TypeError: if ``n``, ``seed`` or ``noise_std`` has the wrong type.
        ValueError: if ``n < 1``, ``noise_std`` is negative or not finite,
            ``seed`` is negative, ``x_range`` is not an increasing pair of finite
            reals, ``target`` is unknown, or ``dtype`` is not a real floating dtype.
    """
    n = _check_count(n, "n", 1)
    if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real):
        raise TypeError(
            f"noise_std must be a finite real number >= 0, got {type(noise_std).__name__}"
        )
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite real number >= 0, got {noise_std!r}")
    lo, hi = _check_range(x_range)
    g = _check_target(target)
    dtype = _check_dtype(dtype)
    generator = make_generator(seed, device="cpu")  # validates seed

    u = torch.rand((n, 1), generator=generator, dtype=torch.float64)
    eta = torch.randn((n, 1), generator=generator, dtype=torch.float64)
    x = lo + (hi - lo) * u
    y = g(x) + float(noise_std) * eta
    device = torch.device("cpu") if device is None else torch.device(device)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def grid_1d(
    n: int,
    x_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Return :math:`n` evenly spaced points from :math:`a` to :math:`b` inclusive, as a column.

    .. math::

        x_j = a + (b - a)\, \frac{j}{n - 1}, \qquad j = 0, \dots, n - 1.

    Args:
        n: the number of points, :math:`n \ge 2`.
        x_range: :math:`(a, b)` with :math:`a < b`.
        dtype: a real floating dtype.
        device: where the tensor goes; ``None`` means the CPU.

    Returns:
        Tensor: shape :math:`(n, 1)`.

    Raises:
        TypeError: if ``n`` is not an int.
        ValueError: if ``n < 2``, ``x_range`` is not an increasing pair of finite
            reals, or ``dtype`` is not a real floating dtype.
    """
    n = _check_count(n, "n", 2)
    lo, hi = _check_range(x_range)
    dtype = _check_dtype(dtype)
    device = torch.device("cpu") if device is None else torch.device(device)
    grid = torch.linspace(lo, hi, n, dtype=torch.float64).unsqueeze(1)
    return grid.to(device=device, dtype=dtype)
