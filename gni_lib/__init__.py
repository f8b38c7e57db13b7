"""gni_lib: Gaussian noise injection as regularisation, the library behind the book.

Small modules, one concept each, readable next to the equations they implement:

* :mod:`gni_lib.device`, :mod:`gni_lib.seeding`, :mod:`gni_lib.scale`: where to
  compute, reproducible generators, and the quick/paper presets;
* :mod:`gni_lib.symbolic`: SymPy Taylor polynomials and Gaussian (Isserlis) moments;
* :mod:`gni_lib.noise`, :mod:`gni_lib.models`: noise sites and the MLP built from them;
* :mod:`gni_lib.losses`: the ½-MSE and cross-entropy conventions;
* :mod:`gni_lib.penalties`: the input-Jacobian (Tikhonov) penalty, with optional input noise;
* :mod:`gni_lib.train`: the training loop the chapters share (:func:`gni_lib.train.train`);
* :mod:`gni_lib.data`: generated problems; nothing is downloaded.

See ``book/notation.md`` for the notation.
"""

from .data import grid_1d, regression_1d
from .device import get_device
from .penalties import jacobian_penalty, per_example_jacobians
from .losses import ce_loss, get_loss, mse_loss
from .models import MLP
from .noise import GaussianNoise, noise_sites, set_noise
from .scale import by_scale, get_scale
from .seeding import make_generator, spawn_generators
from .train import History

__version__ = "0.1.0"

__all__ = [
    "get_device",
    "get_scale",
    "by_scale",
    "make_generator",
    "spawn_generators",
    "GaussianNoise",
    "noise_sites",
    "set_noise",
    "MLP",
    "mse_loss",
    "ce_loss",
    "get_loss",
    "jacobian_penalty",
    "per_example_jacobians",
    "History",
    "regression_1d",
    "grid_1d",
]
