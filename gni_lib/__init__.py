r"""gni_lib: Gaussian noise injection as regularisation, the library behind the book.

Small modules, one concept each, readable next to the equations they implement:

* :mod:`gni_lib.device`, :mod:`gni_lib.seeding`, :mod:`gni_lib.scale`: where to
  compute, reproducible generators, and the quick/paper presets;
* :mod:`gni_lib.symbolic`: SymPy Taylor polynomials and Gaussian (Isserlis) moments;
* :mod:`gni_lib.noise`, :mod:`gni_lib.models`: noise sites and the MLP built from them;
* :mod:`gni_lib.losses`: the ½-MSE and cross-entropy conventions;
* :mod:`gni_lib.penalties`: the input-Jacobian (Tikhonov) penalty, with optional input noise,
  and derivatives of a function of one input;
* :mod:`gni_lib.jacobians`: the layer Jacobians :math:`J_k` at every noise site;
* :mod:`gni_lib.accumulated`: the noise that reaches the output, order by order (Camuto et al., Prop. 1);
* :mod:`gni_lib.regularisers`: the explicit regulariser :math:`R` (Camuto et al., eq. 9)
  and the full second-order term it is the Gauss-Newton part of;
* :mod:`gni_lib.gap`: the Monte Carlo noise gap :math:`\mathbb{E}[\Delta L]` with its standard error;
* :mod:`gni_lib.spectral`: Fourier spectra and the Sobolev seminorm on a periodic grid (Camuto et al., Thm. 2);
* :mod:`gni_lib.layer_norms`: layer-to-layer Jacobian norms and traces of square layers (Camuto et al., Fig. 5);
* :mod:`gni_lib.curvature`: the trace of the parameter Hessian;
* :mod:`gni_lib.calibration`: expected calibration error, reliability diagrams and classification margins;
* :mod:`gni_lib.optim`: PGD, Anti-PGD and perturbed gradient descent, and their pure updates;
* :mod:`gni_lib.train`: the training loop the chapters share (:func:`gni_lib.train.train`);
* :mod:`gni_lib.ensemble`: many models trained at once with ``torch.func.vmap``;
* :mod:`gni_lib.perturbation`: models and variance of gradients at a perturbed point (Orvieto et al., 2023);
* :mod:`gni_lib.proximal`: reference solvers: the group lasso, and singular-value thresholding for nuclear-norm regression;
* :mod:`gni_lib.stats`: standard errors, intervals over seeds and log-log slopes for the asserts;
* :mod:`gni_lib.verdicts`: the verdict on an empirical claim, computed from an interval, and its glue for the ledger;
* :mod:`gni_lib.data`: generated problems and scikit-learn's bundled sets; nothing is downloaded.
* helpers of single lectures, tested like the rest: :mod:`gni_lib.tikhonov` (01-02),
  :mod:`gni_lib.remainder` (03), :mod:`gni_lib.explicit` (05-06), :mod:`gni_lib.fourier` (08-09),
  :mod:`gni_lib.margins` (10-11), :mod:`gni_lib.closed_forms` (12-13), :mod:`gni_lib.valley` (14-15),
  :mod:`gni_lib.layerwise` (16-17).

See ``book/notation.md`` for the notation.
"""

from . import optim
from .accumulated import (
    accumulated_noise,
    noise_taylor_terms,
    noisy_output,
    second_order_noise,
)
from .calibration import (
    ReliabilityDiagram,
    expected_calibration_error,
    input_margin,
    logit_margin,
    margin_lower_bound,
    reliability_diagram,
)
from .curvature import hessian_trace
from .data import grid_1d, regression_1d
from .device import get_device
from .ensemble import train_ensemble
from .gap import noisy_loss_gap
from .jacobians import layer_jacobians
from .layer_norms import layer_jacobian_norms, layer_to_layer_jacobians, square_layer_traces
from .losses import ce_loss, get_loss, mse_loss
from .models import MLP
from .noise import GaussianNoise, noise_sites, replace_site_outputs, set_noise
from .perturbation import balanced_factors, orthonormal_design, perturbed_gradient_variance
from .penalties import (
    input_derivatives,
    input_hessian_norm,
    jacobian_laplacian_cross,
    jacobian_penalty,
    per_example_jacobians,
)
from .proximal import group_lasso, singular_value_threshold
from .regularisers import explicit_regularizer, second_order_term
from .scale import by_scale, get_scale
from .seeding import get_stream, make_generator, spawn_generators, stream_seed
from .spectral import fourier_spectrum, sobolev_seminorm_fourier
from .stats import loglog_slope, mean_and_se, t_interval
from .train import History
from .verdicts import VERDICTS, Judgement, combine, joint_verdict, judge, record_claim, verdict

__version__ = "0.1.0"

__all__ = [
    "get_device",
    "get_scale",
    "by_scale",
    "make_generator",
    "spawn_generators",
    "get_stream",
    "stream_seed",
    "VERDICTS",
    "Judgement",
    "verdict",
    "judge",
    "combine",
    "joint_verdict",
    "record_claim",
    "GaussianNoise",
    "noise_sites",
    "set_noise",
    "replace_site_outputs",
    "MLP",
    "mse_loss",
    "ce_loss",
    "get_loss",
    "jacobian_penalty",
    "per_example_jacobians",
    "input_derivatives",
    "input_hessian_norm",
    "jacobian_laplacian_cross",
    "mean_and_se",
    "t_interval",
    "loglog_slope",
    "layer_jacobians",
    "noisy_output",
    "accumulated_noise",
    "noise_taylor_terms",
    "second_order_noise",
    "explicit_regularizer",
    "second_order_term",
    "noisy_loss_gap",
    "hessian_trace",
    "fourier_spectrum",
    "sobolev_seminorm_fourier",
    "layer_to_layer_jacobians",
    "layer_jacobian_norms",
    "square_layer_traces",
    "expected_calibration_error",
    "reliability_diagram",
    "ReliabilityDiagram",
    "logit_margin",
    "input_margin",
    "margin_lower_bound",
    "optim",
    "History",
    "train_ensemble",
    "perturbed_gradient_variance",
    "balanced_factors",
    "orthonormal_design",
    "singular_value_threshold",
    "group_lasso",
    "regression_1d",
    "grid_1d",
]
