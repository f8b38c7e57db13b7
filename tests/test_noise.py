"""Tests for gni_lib.noise: the GaussianNoise site, noise_sites and set_noise."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gni_lib.noise import GaussianNoise, noise_sites, set_noise, sigma_list, standard_noise
from _shared import DEVICES, seeded_generator as _generator



# --- identity where the noise is off -------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_eval_mode_returns_input_object(device, mode):
    site = GaussianNoise(0.5, mode=mode).eval()
    h = torch.randn(4, 3, device=device)
    assert site(h) is h


@pytest.mark.parametrize("device", DEVICES)
def test_sigma_zero_in_training_returns_input_and_draws_nothing(device):
    g = _generator(0, device)
    state = g.get_state()
    site = GaussianNoise(0.0, generator=g).train()
    h = torch.randn(5, 2, device=device)
    assert site(h) is h
    assert torch.equal(g.get_state(), state)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    sigma=st.floats(0.0, 10.0),
    mode=st.sampled_from(["additive", "multiplicative"]),
)
def test_property_eval_is_identity(shape, sigma, mode):
    site = GaussianNoise(sigma, mode=mode)
    site.eval()
    h = torch.randn(*shape, dtype=torch.float64)
    out = site(h)
    assert out is h


# --- the noise itself -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_additive_equals_h_plus_sigma_z(device, dtype):
    h = torch.randn(6, 4, device=device, dtype=dtype)
    out = GaussianNoise(0.3, generator=_generator(7, device))(h)
    z = torch.randn(h.shape, generator=_generator(7, device), device=device, dtype=dtype)
    assert out.dtype == dtype and out.device == h.device
    torch.testing.assert_close(out, h + 0.3 * z, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_multiplicative_is_activation_scaled_additive_eq6(device):
    h = torch.randn(6, 4, device=device, dtype=torch.float64)
    out = GaussianNoise(0.3, mode="multiplicative", generator=_generator(3, device))(h)
    z = torch.randn(h.shape, generator=_generator(3, device), device=device, dtype=torch.float64)
    torch.testing.assert_close(out, h * (1 + 0.3 * z), rtol=0, atol=0)
    # Camuto et al. eq. 6: h(1 + sigma z) = h + sigma (h * z), additive noise scaled by h.
    torch.testing.assert_close(out, h + 0.3 * (h * z), rtol=1e-14, atol=1e-14)


def test_fresh_noise_each_call_and_reproducible_with_seed():
    h = torch.zeros(100)
    site = GaussianNoise(1.0, generator=_generator(1, "cpu"))
    first, second = site(h), site(h)
    assert not torch.equal(first, second)
    again = GaussianNoise(1.0, generator=_generator(1, "cpu"))
    assert torch.equal(again(h), first)


def test_global_generator_when_none():
    site = GaussianNoise(1.0)
    h = torch.zeros(50)
    torch.manual_seed(11)
    a = site(h)
    torch.manual_seed(11)
    b = site(h)
    assert torch.equal(a, b)


def test_gradient_through_additive_site_is_identity():
    h = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    GaussianNoise(0.7, generator=_generator(0, "cpu"))(h).sum().backward()
    torch.testing.assert_close(h.grad, torch.ones_like(h), rtol=0, atol=0)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(sigma=st.floats(0.01, 5.0), seed=st.integers(0, 2**31))
def test_property_additive_noise_mean_and_variance(sigma, seed):
    """The added noise has mean 0 and variance sigma^2 within k = 5 standard errors.

    For n draws, the sample mean has SE sigma / sqrt(n) and the sample variance has
    SE sigma^2 sqrt(2 / (n - 1)) (Gaussian fourth moment). At k = 5 a correct
    implementation fails with probability below 1e-6 per example; using sigma as a
    variance (noise std sqrt(sigma)) is off by hundreds of SE unless sigma is
    within about 2% of 1 (the fixed case sigma = 0.3 is checked below).
    """
    n = 20_000
    h = torch.full((n,), 2.0, dtype=torch.float64)
    noise = GaussianNoise(sigma, generator=_generator(seed, "cpu"))(h) - h
    mean_se = sigma / math.sqrt(n)
    var_se = sigma**2 * math.sqrt(2.0 / (n - 1))
    assert abs(noise.mean().item()) < 5 * mean_se
    assert abs(noise.var().item() - sigma**2) < 5 * var_se


def test_sigma_is_a_standard_deviation():
    """With sigma = 0.3 the noise variance is 0.09 (not 0.3), within 5 SE (see above)."""
    n = 20_000
    noise = GaussianNoise(0.3, generator=_generator(2, "cpu"))(torch.zeros(n, dtype=torch.float64))
    assert abs(noise.var().item() - 0.09) < 5 * 0.09 * math.sqrt(2.0 / (n - 1))


def test_multiplicative_noise_std_scales_with_activation():
    """Var[h(1 + sigma z) - h] = sigma^2 h^2: checked at |h| = 3, within 5 SE (see above)."""
    n, sigma = 20_000, 0.2
    h = torch.full((n,), -3.0, dtype=torch.float64)
    noise = GaussianNoise(sigma, mode="multiplicative", generator=_generator(5, "cpu"))(h) - h
    var = (sigma * 3.0) ** 2
    assert abs(noise.var().item() - var) < 5 * var * math.sqrt(2.0 / (n - 1))


def test_extra_repr_shows_sigma_and_mode():
    text = repr(GaussianNoise(0.25, mode="multiplicative"))
    assert "sigma=0.25" in text and "mode='multiplicative'" in text


def test_sigma_is_a_float():
    site = GaussianNoise(np.float32(0.5))
    assert type(site.sigma) is float and site.sigma == 0.5
    assert GaussianNoise(1).sigma == 1.0


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_sigma_value(bad):
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(bad)


@pytest.mark.parametrize("bad", ["0.1", None, True, torch.tensor([0.1, 0.2])])
def test_bad_sigma_type(bad):
    with pytest.raises(TypeError, match="sigma"):
        GaussianNoise(bad)


def test_assigning_bad_sigma_raises_and_keeps_value():
    site = GaussianNoise(0.1)
    with pytest.raises(ValueError, match="sigma"):
        site.sigma = -1.0
    assert site.sigma == 0.1


@pytest.mark.parametrize("bad", ["add", "Additive", None, 1])
def test_bad_mode(bad):
    with pytest.raises(ValueError, match="mode"):
        GaussianNoise(0.1, mode=bad)


@pytest.mark.parametrize("bad", [0, "cpu", np.random.default_rng(0)])
def test_bad_generator_type(bad):
    with pytest.raises(TypeError, match="generator"):
        GaussianNoise(0.1, generator=bad)


def test_generator_on_other_device_type_raises_at_forward():
    site = GaussianNoise(0.1, generator=_generator(0, "cpu"))
    h = torch.empty(3, 2, device="meta")  # any non-CPU device type
    with pytest.raises(ValueError, match="generator"):
        site(h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_generator_with_cuda_input_raises():
    site = GaussianNoise(0.1, generator=_generator(0, "cpu"))
    with pytest.raises(ValueError, match="generator"):
        site(torch.zeros(3, device="cuda"))


# --- noise_sites and set_noise --------------------------------------------------------------


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = GaussianNoise(0.1)
        self.block = nn.Sequential(nn.Linear(2, 2), GaussianNoise(0.2), nn.Tanh())
        self.last = GaussianNoise(0.3)


def test_noise_sites_in_module_order():
    model = _Nested()
    sites = noise_sites(model)
    assert [s.sigma for s in sites] == [0.1, 0.2, 0.3]
    assert sites[1] is model.block[1]
    assert noise_sites(nn.Linear(2, 2)) == []


def test_noise_sites_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        noise_sites([GaussianNoise()])


def test_set_noise_scalar_and_sequence():
    model = _Nested()
    assert set_noise(model, 0.5) is model
    assert [s.sigma for s in noise_sites(model)] == [0.5, 0.5, 0.5]
    set_noise(model, [0.0, 1.0, 2.0])
    assert [s.sigma for s in noise_sites(model)] == [0.0, 1.0, 2.0]
    set_noise(model, torch.tensor([0.25, 0.5, 0.75]))
    assert [s.sigma for s in noise_sites(model)] == [0.25, 0.5, 0.75]
    set_noise(model, np.array([1.0, 2.0, 3.0]))
    assert [s.sigma for s in noise_sites(model)] == [1.0, 2.0, 3.0]


def test_set_noise_length_mismatch_names_sigma():
    with pytest.raises(ValueError, match="sigma"):
        set_noise(_Nested(), [0.1, 0.2])


def test_set_noise_is_atomic_on_error():
    model = _Nested()
    with pytest.raises(ValueError, match=r"sigma\[2\]"):
        set_noise(model, [0.5, 0.5, -1.0])
    assert [s.sigma for s in noise_sites(model)] == [0.1, 0.2, 0.3]


def test_set_noise_needs_sites():
    with pytest.raises(ValueError, match="noise sites|GaussianNoise"):
        set_noise(nn.Linear(2, 2), 0.1)


@pytest.mark.parametrize("bad", ["0.1", {0.1}, None])
def test_set_noise_bad_type(bad):
    with pytest.raises(TypeError, match="sigma"):
        set_noise(_Nested(), bad)


def test_sigma_list():
    assert sigma_list(0.5, 3) == [0.5, 0.5, 0.5]
    assert sigma_list((1, 2), 2) == [1.0, 2.0]
    assert sigma_list(torch.tensor(0.5), 2) == [0.5, 0.5]
    with pytest.raises(ValueError, match="sigma"):
        sigma_list([1.0], 2)


def test_deepcopy_copies_generator_state():
    site = GaussianNoise(1.0, generator=_generator(8, "cpu"))
    twin = copy.deepcopy(site)
    h = torch.zeros(10)
    assert twin.generator is not site.generator
    assert torch.equal(site(h), twin(h))


# --- standard_noise: the one drawer ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_standard_noise_is_the_documented_buffer(device, dtype):
    """randn, or 2 randint(0, 2) - 1 cast to dtype; a flat draw viewed as the shape is the same
    numbers (the optimisers draw flat, GaussianNoise draws shaped: one stream either way)."""
    shape = (7, 13, 5)
    z = standard_noise(shape, _generator(9, device), dtype=dtype, device=device)
    assert z.shape == shape and z.dtype == dtype and z.device.type == device
    assert torch.equal(z, torch.randn(shape, generator=_generator(9, device), dtype=dtype, device=device))
    flat = standard_noise(math.prod(shape), _generator(9, device), dtype=dtype, device=device)
    assert torch.equal(flat.view(shape), z)
    signs = standard_noise(shape, _generator(9, device), dtype=dtype, device=device, distribution="rademacher")
    bits = torch.randint(0, 2, shape, generator=_generator(9, device), device=device)
    assert torch.equal(signs, (2 * bits - 1).to(dtype))
    assert torch.equal(signs.abs(), torch.ones_like(signs))
    flat_signs = standard_noise(math.prod(shape), _generator(9, device), dtype=dtype, device=device,
                                distribution="rademacher")
    assert torch.equal(flat_signs.view(shape), signs)


def test_standard_noise_bad_distribution():
    with pytest.raises(ValueError, match="distribution"):
        standard_noise(3, None, dtype=torch.float32, device="cpu", distribution="uniform")

