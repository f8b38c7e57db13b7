"""Where tensors live: one function, :func:`get_device`, used by every chapter.

The book runs unchanged on a laptop CPU and on a CUDA GPU. Chapters never write
``"cuda"`` or ``"cpu"`` themselves; they ask :func:`get_device`.
"""

from __future__ import annotations

import os
import re

import torch

__all__ = ["get_device", "DEVICE_ENV_VAR"]

#: Environment variable that overrides the automatic choice.
DEVICE_ENV_VAR = "GNI_DEVICE"

_VALID = re.compile(r"^(cpu|cuda(:\d+)?)$")


def get_device() -> torch.device:
    r"""Return the device the book computes on.

    ``cuda`` when a CUDA GPU is available, otherwise ``cpu``. The environment
    variable ``GNI_DEVICE`` overrides the choice; it accepts ``cpu``, ``cuda``
    or ``cuda:N``.

    Raises:
        ValueError: if ``GNI_DEVICE`` is set to anything else, or asks for a
            CUDA device that this machine does not have.
    """
    requested = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _VALID.match(requested):
        raise ValueError(
            f"{DEVICE_ENV_VAR}={requested!r} is not a device; expected 'cpu', 'cuda' or 'cuda:N'"
        )
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{DEVICE_ENV_VAR}={requested!r} asks for CUDA, but torch finds no CUDA device "
                "on this machine; unset it or set it to 'cpu'"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"{DEVICE_ENV_VAR}={requested!r} names CUDA device {index}, but only "
                f"{torch.cuda.device_count()} device(s) exist"
            )
    return device
