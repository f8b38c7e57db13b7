"""Tests for gni_lib.symbolic.

Oracles: moments from tables, Gaussian integrals done directly by
``sympy.integrate``, correlated noise written as ``z = L u`` with ``L`` the
Cholesky factor and ``u`` independent, ``sympy.series``, and expansions written
out by hand.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.symbolic import gaussian_expectation, gaussian_moment, taylor_polynomial, truncate

oo = sympy.oo
x, y, a, b, c, r = sympy.symbols("x y a b c r", real=True)
z, z1, z2, z3, eps, e1, e2 = sympy.symbols("z z1 z2 z3 eps e1 e2")
u1, u2 = sympy.symbols("u1 u2", real=True)
sigma, s1, s2 = sympy.symbols("sigma s1 s2", positive=True)
f = sympy.Function("f")


def density(variable: sympy.Symbol, std: sympy.Expr) -> sympy.Expr:
    """Density of N(0, std^2) in ``variable``."""
    return sympy.exp(-(variable**2) / (2 * std**2)) / (sympy.sqrt(2 * sympy.pi) * std)


def integral_expectation(expr: sympy.Expr, noise: dict) -> sympy.Expr:
    """E[expr] for independent Gaussians, by integrating against their density."""
    integrand = sympy.expand(expr) * sympy.Mul(*(density(v, s) for v, s in noise.items()))
    return sympy.integrate(integrand, *((v, -oo, oo) for v in noise))


def same(left: sympy.Expr, right: sympy.Expr) -> bool:
    return sympy.simplify(sympy.expand(left - right)) == 0


# --------------------------------------------------------------------------- moments


@pytest.mark.parametrize(
    ("power", "expected"),
    [(0, 1), (1, 0), (2, sigma**2), (3, 0), (4, 3 * sigma**4), (5, 0), (6, 15 * sigma**6), (7, 0)],
)
def test_gaussian_moment_table(power, expected):
    assert gaussian_moment(power, sigma) == expected
    assert gaussian_expectation(z**power, {z: sigma}) == expected


@functools.cache
def integral_moment(power: int) -> sympy.Expr:
    return integral_expectation(z**power, {z: sigma})


@settings(max_examples=20, deadline=None)
@given(
    power=st.integers(min_value=0, max_value=8),
    std=st.fractions(min_value=Fraction(1, 10), max_value=10, max_denominator=20),
)
def test_moment_property(power, std):
    std = sympy.Rational(std.numerator, std.denominator)
    moment = gaussian_expectation(z**power, {z: std})
    assert moment == gaussian_moment(power, std)
    if power <= 6:
        assert moment == integral_moment(power).subs(sigma, std)


@pytest.mark.parametrize(
    "polynomial",
    [
        a + b * z,
        (a + b * z) ** 2,
        (a + z) ** 3 * b,
        c * z**4 - a * z**2 + z,
        (y - a * z - b * z**2 / 2) ** 2,  # a squared-error loss, Taylor-expanded
    ],
)
def test_expectation_one_variable_matches_integral(polynomial):
    noise = {z: sigma}
    assert same(gaussian_expectation(polynomial, noise), integral_expectation(polynomial, noise))


@pytest.mark.parametrize(
    "polynomial",
    [
        a * z1 * z2 + b,
        (a + z1 + z2) ** 2,
        z1**2 * z2**2 + c * z1**3 * z2,
        (b * z1 + z2**2) ** 2,
    ],
)
def test_expectation_two_variables_matches_integral(polynomial):
    noise = {z1: s1, z2: s2}
    assert same(gaussian_expectation(polynomial, noise), integral_expectation(polynomial, noise))


def test_expectation_keeps_function_coefficients():
    derivative = sympy.Derivative(f(x), x)
    polynomial = (f(x) + eps * derivative - y) ** 2
    expected = (f(x) - y) ** 2 + sigma**2 * derivative**2
    assert same(gaussian_expectation(polynomial, {eps: sigma}), expected)


# --------------------------------------------------------------------------- correlated noise

COVARIANCE = sympy.Matrix([[s1**2, r * s1 * s2], [r * s1 * s2, s2**2]])
# Cholesky factor of COVARIANCE: z = L u with u ~ N(0, I) has covariance L L^T.
# q stands for sqrt(1 - r^2) while integrating, which keeps sympy.integrate fast.
q = sympy.Symbol("q", positive=True)
CHOLESKY = sympy.Matrix([[s1, 0], [r * s2, s2 * q]])


def test_cholesky_oracle_is_a_factor():
    product = (CHOLESKY * CHOLESKY.T).subs(q, sympy.sqrt(1 - r**2))
    assert (product - COVARIANCE).applyfunc(sympy.expand) == sympy.zeros(2, 2)


def test_correlated_fourth_moment():
    moment = gaussian_expectation(z1**2 * z2**2, [z1, z2], COVARIANCE)
    assert same(moment, s1**2 * s2**2 * (1 + 2 * r**2))


@pytest.mark.parametrize(
    "polynomial",
    [z1 * z2, z1**3 * z2, z1**3 * z2**3, (a * z1 + z2) ** 2 + b * z1 * z2**3, z1**2 * z2 + z2**3],
)
def test_correlated_matches_cholesky_integral(polynomial):
    z_of_u = CHOLESKY * sympy.Matrix([u1, u2])
    transformed = polynomial.subs({z1: z_of_u[0], z2: z_of_u[1]})
    expected = integral_expectation(transformed, {u1: 1, u2: 1}).subs(q, sympy.sqrt(1 - r**2))
    assert same(gaussian_expectation(polynomial, [z1, z2], COVARIANCE), expected)


def test_diagonal_covariance_reproduces_independent():
    polynomial = (a + z1 + b * z2) ** 4 + c * z1 * z2**3
    independent = gaussian_expectation(polynomial, {z1: s1, z2: s2})
    correlated = gaussian_expectation(polynomial, [z1, z2], [[s1**2, 0], [0, s2**2]])
    assert same(independent, correlated)


def test_three_variable_isserlis_by_hand():
    cov = sympy.Matrix(3, 3, lambda i, j: sympy.Symbol(f"C{min(i, j) + 1}{max(i, j) + 1}"))
    c11, c12, c13, c22, c23 = (sympy.Symbol(n) for n in ("C11", "C12", "C13", "C22", "C23"))
    # the three pairings of (z1, z1, z2, z3)
    assert same(gaussian_expectation(z1**2 * z2 * z3, [z1, z2, z3], cov), c11 * c23 + 2 * c12 * c13)
    # z1 pairs with one of the three copies of z2, which leaves a pair of z2
    assert same(gaussian_expectation(z1 * z2**3, [z1, z2, z3], cov), 3 * c12 * c22)
    assert gaussian_expectation(z1 * z2 * z3, [z1, z2, z3], cov) == 0


# --------------------------------------------------------------------------- Taylor


@pytest.mark.parametrize("order", [0, 1, 3, 5])
def test_taylor_matches_series(order):
    for expr in (sympy.exp(a * x), sympy.sin(x) + sympy.cos(2 * x)):
        expected = sympy.series(expr, x, 0, order + 1).removeO()
        assert same(taylor_polynomial(expr, [x], order), expected)


def test_taylor_about_a_point_matches_series():
    expected = sympy.series(sympy.exp(x), x, 1, 4).removeO()
    assert same(taylor_polynomial(sympy.exp(x), [x], 3, point=[1]), expected)


def test_taylor_of_a_polynomial_is_exact():
    polynomial = 3 + a * x - x**2 * y + b * y**3 + x * y**2
    for point in ([0, 0], [1, c]):
        assert same(taylor_polynomial(polynomial, [x, y], 3, point=point), polynomial)
    assert same(taylor_polynomial(polynomial, [x, y], 2), 3 + a * x)  # degree-3 terms dropped


def test_taylor_multivariate_by_hand():
    # exp(x) sin(y) = (1 + x + x^2/2 + ...)(y - y^3/6 + ...), total degree <= 3
    expected = y + x * y + x**2 * y / 2 - y**3 / 6
    assert same(taylor_polynomial(sympy.exp(x) * sympy.sin(y), [x, y], 3), expected)


def test_taylor_undefined_function_gives_derivatives():
    result = taylor_polynomial(f(x + eps), [eps], 4)
    assert not result.has(sympy.Subs)
    expected = sum(eps**k * sympy.diff(f(x), x, k) / sympy.factorial(k) for k in range(5))
    assert same(result, expected)


def test_taylor_undefined_function_two_variables():
    g = sympy.Function("g")
    x1, x2 = sympy.symbols("x1 x2")
    result = taylor_polynomial(g(x1 + e1, x2 + e2), [e1, e2], 2)
    assert not result.has(sympy.Subs)
    d = functools.partial(sympy.Derivative, g(x1, x2))
    expected = (
        g(x1, x2)
        + e1 * d(x1)
        + e2 * d(x2)
        + e1**2 / 2 * d((x1, 2))
        + e1 * e2 * d(x1, x2)
        + e2**2 / 2 * d((x2, 2))
    )
    assert same(result, expected)


# --------------------------------------------------------------------------- truncate


def test_truncate_keeps_low_orders():
    expr = (1 + a * sigma) ** 3 + b * sigma**5
    assert same(truncate(expr, sigma, 1), 1 + 3 * a * sigma)
    assert same(truncate(expr, sigma, 3), sympy.expand((1 + a * sigma) ** 3))
    assert same(truncate(expr, sigma, 9), expr)
    assert truncate(expr, sigma, 0) == 1


# --------------------------------------------------------------------------- Bishop (1995)


def test_bishop_regulariser():
    """E[(f(x + eps) - y)^2] = (f - y)^2 + sigma^2 (f'^2 + (f - y) f'') + O(sigma^4)."""
    taylor = taylor_polynomial(f(x + eps), [eps], 4)
    loss = truncate(sympy.expand((taylor - y) ** 2), eps, 4)
    risk = truncate(gaussian_expectation(loss, {eps: sigma}), sigma, 2)
    f1, f2 = sympy.diff(f(x), x), sympy.diff(f(x), x, 2)
    assert same(risk, (f(x) - y) ** 2 + sigma**2 * (f1**2 + (f(x) - y) * f2))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: taylor_polynomial("x", [x], 2), TypeError, "expr"),
        (lambda: taylor_polynomial(x, x, 2), TypeError, "variables"),
        (lambda: taylor_polynomial(x, [x**2], 2), TypeError, "variables"),
        (lambda: taylor_polynomial(x, [], 2), ValueError, "variables"),
        (lambda: taylor_polynomial(x, [x, x], 2), ValueError, "variables"),
        (lambda: taylor_polynomial(x, [x], 2.0), TypeError, "order"),
        (lambda: taylor_polynomial(x, [x], True), TypeError, "order"),
        (lambda: taylor_polynomial(x, [x], -1), ValueError, "order"),
        (lambda: taylor_polynomial(x, [x], 2, point=0), TypeError, "point"),
        (lambda: taylor_polynomial(x, [x], 2, point=[0, 1]), ValueError, "point"),
        (lambda: gaussian_moment(-2, sigma), ValueError, "power"),
        (lambda: gaussian_moment(2.0, sigma), TypeError, "power"),
        (lambda: gaussian_moment(2, -1), ValueError, "sigma"),
        (lambda: gaussian_moment(2, "s"), TypeError, "sigma"),
        (lambda: gaussian_expectation(object(), {z: sigma}), TypeError, "expr"),
        (lambda: gaussian_expectation(z, {}), ValueError, "noise"),
        (lambda: gaussian_expectation(z, [z]), TypeError, "noise"),
        (lambda: gaussian_expectation(z, {z**2: sigma}), TypeError, "noise"),
        (lambda: gaussian_expectation(z, {z: -2}), ValueError, "noise"),
        (lambda: gaussian_expectation(z, {z: z**2}), ValueError, "noise"),
        (lambda: gaussian_expectation(sympy.exp(z), {z: sigma}), ValueError, "expr"),
        (lambda: gaussian_expectation(1 / z, {z: sigma}), ValueError, "expr"),
        (lambda: gaussian_expectation(f(x + z), {z: sigma}), ValueError, "expr"),
        (lambda: gaussian_expectation(sympy.sqrt(z), {z: sigma}), ValueError, "expr"),
        (lambda: gaussian_expectation(z1, {z1: sigma}, [[1]]), TypeError, "noise"),
        (lambda: gaussian_expectation(z1, [z1, z2], [[1, 0]]), ValueError, "covariance"),
        (lambda: gaussian_expectation(z1, [z1, z2], sympy.eye(3)), ValueError, "covariance"),
        (lambda: gaussian_expectation(z1, [z1, z2], [[1, a], [b, 1]]), ValueError, "covariance"),
        (lambda: gaussian_expectation(z1, [z1, z2], [[-1, 0], [0, 1]]), ValueError, "covariance"),
        (lambda: gaussian_expectation(z1, [z1, z2], [[z1, 0], [0, 1]]), ValueError, "covariance"),
        (lambda: gaussian_expectation(z1, [z1, z2], object()), TypeError, "covariance"),
        (lambda: gaussian_expectation(sympy.exp(z1), [z1, z2], sympy.eye(2)), ValueError, "expr"),
        (lambda: truncate(1 / sigma, sigma, 2), ValueError, "expr"),
        (lambda: truncate(sympy.sqrt(sigma), sigma, 2), ValueError, "expr"),
        (lambda: truncate(sigma, sigma**2, 2), TypeError, "symbol"),
        (lambda: truncate(sigma, sigma, -1), ValueError, "order"),
        (lambda: truncate(sigma, sigma, 1.5), TypeError, "order"),
    ],
)
def test_bad_input_raises_and_names_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()
