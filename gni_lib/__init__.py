"""gni_lib: Gaussian noise injection as regularisation, the library behind the book.

Small modules, one concept each, readable next to the equations they implement.
See the book's API page and ``book/notation.md`` for the notation.
"""

from .device import get_device
from .scale import by_scale, get_scale
from .seeding import make_generator, spawn_generators

__version__ = "0.1.0"

__all__ = [
    "get_device",
    "get_scale",
    "by_scale",
    "make_generator",
    "spawn_generators",
]
