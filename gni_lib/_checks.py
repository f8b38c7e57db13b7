"""Argument checks shared by the gni_lib modules (private).

Each check returns the value in the form the caller needs, or raises a ``TypeError``
(wrong kind) or ``ValueError`` (wrong value) whose message names the argument and
says what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from torch import Tensor


def check_int(value: object, name: str, minimum: int = 1, *, expected: str = "") -> int:
    """An ``int`` (not a ``bool``) of at least ``minimum``; ``expected`` replaces "an int >= minimum" in messages."""
    expected = expected or f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def check_real(value: object, name: str, *, positive: bool = False, what: str = "") -> float:
    """A finite real number, ``>= 0`` (or ``> 0`` with ``positive``); a one-element tensor is accepted.

    ``what`` is appended to the expectation in the message (e.g. ``" (a standard deviation)"``).
    """
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite real number {bound}{what}, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite real number {bound}{what}, got {value!r}")
    return value


def check_tensor(value: object, name: str, *, ndim: int | None = None, finite: bool = True) -> Tensor:
    """A floating-point tensor, with ``ndim`` dimensions if given, and finite unless ``finite=False``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if finite and not bool(value.isfinite().all()):
        raise ValueError(f"{name} must be finite, but it holds NaN or infinite entries")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """One of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_generator(generator: object, device: object = None) -> object:
    """Return ``generator`` unchanged if it is ``None`` (torch's global generator) or a
    :class:`torch.Generator` on the device type of ``device`` (``None``: any device).

    Raises:
        TypeError: if ``generator`` is not a :class:`torch.Generator`.
        ValueError: if it draws on a different device type than ``device``.
    """
    import torch  # here, not at the top: the checks above need only Tensor

    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is not None and torch.device(device).type != generator.device.type:
        raise ValueError(
            f"generator draws on {generator.device.type!r} but the tensors are on "
            f"{torch.device(device).type!r}; make it with make_generator(seed, device=...)"
        )
    return generator


def check_tensor_dict(value: object, name: str, like: dict | None = None, subset: bool = False) -> dict:
    """A dict of tensors by name; with ``like``, with exactly (``subset``: some of) its keys and their shapes."""
    from collections.abc import Mapping

    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of tensors by parameter name, got {type(value).__name__}")
    for key, tensor in value.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}[{key!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    if like is None:
        return value
    keys, other_keys = set(like), set(value)
    if not (other_keys <= keys if subset else other_keys == keys):
        relation = "a subset of" if subset else "exactly"
        missing = [] if subset else sorted(keys - other_keys)
        raise ValueError(
            f"{name} must have {relation} the keys of params; missing {missing}, "
            f"unexpected {sorted(other_keys - keys)}"
        )
    for key, tensor in value.items():
        if tensor.shape != like[key].shape:
            raise ValueError(
                f"{name}[{key!r}] must have the shape of params[{key!r}] "
                f"{tuple(like[key].shape)}, got {tuple(tensor.shape)}"
            )
    return value


def check_interval(low: object, high: object) -> tuple[float, float]:
    """An interval ``(low, high)`` of finite reals with ``low <= high``."""
    values = []
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        values.append(value)
    if values[0] > values[1]:
        raise ValueError(f"low must not exceed high, got low={values[0]!r} > high={values[1]!r}")
    return values[0], values[1]


def check_dtype(dtype: object) -> "torch.dtype":  # noqa: F821 (torch is imported lazily, as above)
    """A real floating-point ``torch.dtype``."""
    import torch

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ValueError(f"dtype must be a real floating torch.dtype (e.g. torch.float64), got {dtype!r}")
    return dtype


def check_positive_int(value: object, name: str) -> int:
    """:func:`check_int` with ``minimum=1`` and the message "must be a positive int"."""
    return check_int(value, name, expected="a positive int")


def check_pair(x: object, y: object, x_name: str, y_name: str) -> tuple[Tensor, Tensor]:
    """Inputs and targets: tensors with the same number :math:`n \\ge 1` of rows, finite if floating."""
    for value, name in ((x, x_name), (y, y_name)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{x_name} must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{y_name} must have as many rows as {x_name} ({x.shape[0]}), got shape {tuple(y.shape)}"
        )
    for value, name in ((x, x_name), (y, y_name)):
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise ValueError(f"{name} must be finite, but it holds NaN or infinite entries")
    return x, y


def check_input(x: object) -> Tensor:
    """A network input: a finite floating tensor of shape (B, ...) with B >= 1."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, d_0), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1 or x.numel() == 0:
        raise ValueError(
            f"x must have shape (B, d_0) (batch first) with B >= 1, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(x.isfinite().all()):
        raise ValueError("x must be finite, but it holds NaN or infinite entries")
    return x


def check_target(y: object, output: Tensor, loss: str) -> Tensor:
    """A target for ``output`` (B, d_L) under ``loss``: the output's shape and dtype, finite
    (``"mse"``), or int64 class indices of shape (B,) in range (``"ce"``)."""
    import torch

    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    batch, d_out = output.shape
    if y.device != output.device:
        raise ValueError(f"y must be on the model's device {output.device}, got {y.device}")
    if loss == "mse":
        if y.shape != output.shape:
            raise ValueError(
                f"y must have the model output's shape (B, d_L) = {tuple(output.shape)} "
                f"for loss='mse', got {tuple(y.shape)}"
            )
        if y.dtype != output.dtype:
            raise ValueError(f"y must have the output's dtype {output.dtype}, got {y.dtype}")
        if not bool(y.isfinite().all()):
            raise ValueError("y must be finite, but it holds NaN or infinite entries")
    else:
        if y.shape != (batch,) or y.dtype != torch.int64:
            raise ValueError(
                f"y must hold int64 class indices of shape (B,) = ({batch},) for loss='ce', "
                f"got shape {tuple(y.shape)} and dtype {y.dtype}"
            )
        if int(y.min()) < 0 or int(y.max()) >= d_out:
            raise ValueError(
                f"y must hold class indices in [0, {d_out - 1}] for loss='ce', got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
    return y


def check_values(value: object, count: int, name: str, check: Callable[[object, str], float], *, per: str) -> list[float]:
    """One real number for all ``count`` items, or a sequence (list, tuple, 1-D array or tensor) of
    ``count`` of them; each value passes ``check(value, name)``. ``per`` names an item in messages."""
    if isinstance(value, Tensor) or (hasattr(value, "tolist") and hasattr(value, "ndim")):
        value = value.tolist()  # tensor or numpy array -> float or list of floats
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [check(value, name)] * count
    expected = f"{name} must be a real number or a sequence of {count} (one per {per})"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{expected}, got {type(value).__name__}")
    if len(value) != count:
        raise ValueError(f"{expected}, got a sequence of length {len(value)}")
    return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]


def check_fraction(value: object, name: str) -> float:
    """A real number strictly between 0 and 1 (not a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1), got {type(value).__name__}")
    if not 0 < value < 1:
        raise ValueError(f"{name} must be a real number in (0, 1), got {value!r}")
    return float(value)


def check_flag(value: object, name: str, *, none: bool = False) -> bool | None:
    """``True`` or ``False`` (a ``bool``, not 0 or 1), or ``None`` too with ``none``."""
    if isinstance(value, bool) or (none and value is None):
        return value
    expected = "True, False or None" if none else "True or False"
    raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
