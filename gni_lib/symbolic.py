r"""SymPy helpers for deriving noise-injection results by computer algebra.

Three steps, as the papers take them by hand: Taylor-expand the noisy quantity
in the noise, take its Gaussian expectation monomial by monomial, and drop the
terms of high order in :math:`\sigma`. Bishop's (1995) expansion of
:math:`\mathbb{E}[(f(x + \varepsilon) - y)^2]`,
:math:`\varepsilon \sim \mathcal{N}(0, \sigma^2)`, derived in lecture 01
(``book/01-bishop-expansion.md``):

.. code-block:: python

    f, (x, y, eps), sigma = Function("f"), symbols("x y eps"), Symbol("sigma", positive=True)
    taylor = taylor_polynomial(f(x + eps), [eps], 4)
    loss = truncate((taylor - y) ** 2, eps, 4)
    risk = truncate(gaussian_expectation(loss, {eps: sigma}), sigma, 2)
    # (f(x) - y)**2 + sigma**2 * (f'(x)**2 + (f(x) - y) * f''(x))

Expressions may hold undefined functions; their derivatives come back as
``Derivative(f(x), x)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import sympy

from ._checks import check_int

__all__ = ["taylor_polynomial", "gaussian_moment", "gaussian_expectation", "truncate"]


# --------------------------------------------------------------------------- checks


def _check_expr(expr: object, name: str = "expr") -> sympy.Expr:
    try:
        value = sympy.sympify(expr, strict=True)
    except sympy.SympifyError:
        raise TypeError(f"{name} must be a sympy expression, got {type(expr).__name__}") from None
    if not isinstance(value, sympy.Expr):
        raise TypeError(f"{name} must be a sympy expression, got {type(value).__name__}")
    return value


def _check_order(order: object, name: str) -> int:
    return check_int(order, name, 0, expected="a non-negative int")


def _check_symbols(symbols: object, name: str) -> list[sympy.Symbol]:
    if isinstance(symbols, (str, sympy.Basic)) or not isinstance(symbols, Sequence):
        raise TypeError(f"{name} must be a sequence of sympy Symbols, got {type(symbols).__name__}")
    for symbol in symbols:
        if not isinstance(symbol, sympy.Symbol):
            raise TypeError(f"{name} must hold sympy Symbols, got {type(symbol).__name__}")
    if not symbols:
        raise ValueError(f"{name} must not be empty")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"{name} must not repeat a symbol, got {list(symbols)}")
    return list(symbols)


def _polynomial(expr: sympy.Expr, gens: Sequence[sympy.Symbol], gens_name: str) -> sympy.Poly:
    """``expr`` as a polynomial in ``gens``, anything else being a coefficient."""
    try:
        return sympy.Poly(expr, *gens, domain="EX")
    except sympy.PolynomialError:
        raise ValueError(f"expr must be a polynomial in {gens_name} {list(gens)}, got {expr}") from None


# --------------------------------------------------------------------------- Taylor


def taylor_polynomial(
    expr: sympy.Expr,
    variables: Sequence[sympy.Symbol],
    order: int,
    point: Sequence[sympy.Expr] | None = None,
) -> sympy.Expr:
    r"""Multivariate Taylor polynomial of ``expr`` of total degree at most ``order``.

    .. math::

        T_K[g](v) = \sum_{|\alpha| \le K}
            \frac{\partial^\alpha g(a)}{\alpha!} (v - a)^\alpha,

    with multi-indices :math:`\alpha \in \mathbb{N}^n`,
    :math:`\alpha! = \prod_i \alpha_i!`, :math:`(v - a)^\alpha = \prod_i (v_i - a_i)^{\alpha_i}`:
    the expansion of the noisy loss in the noise (Bishop 1995).

    Each derivative is taken from one of order one lower, so the cost grows with
    the number of multi-indices, :math:`\binom{n + K}{K}`. A ``Subs`` remains only
    where a derivative is taken in a variable that is itself an argument, as in
    ``f(eps)`` expanded at ``eps = 0``.

    Args:
        expr: a scalar sympy expression.
        variables: the :math:`n` distinct Symbols :math:`v` to expand in.
        order: the total degree :math:`K \ge 0`.
        point: the :math:`n` expressions :math:`a` to expand about; zeros by default.

    Returns:
        The polynomial in ``variables`` (not expanded).

    Raises:
        TypeError: if ``expr``, ``variables``, ``order`` or ``point`` has the wrong type.
        ValueError: if ``variables`` is empty or repeats a symbol, ``order`` is
            negative, or ``point`` has another length than ``variables``.
    """
    expr = _check_expr(expr)
    variables = _check_symbols(variables, "variables")
    order = _check_order(order, "order")
    if point is None:
        point = [sympy.S.Zero] * len(variables)
    if isinstance(point, (str, sympy.Basic)) or not isinstance(point, Sequence):
        raise TypeError(f"point must be a sequence of expressions, got {type(point).__name__}")
    if len(point) != len(variables):
        raise ValueError(f"point must have {len(variables)} entries, like variables, got {len(point)}")
    point = [_check_expr(value, "point") for value in point]
    at_point = dict(zip(variables, point))
    shifts = [v - a for v, a in zip(variables, point)]

    # frontier maps each multi-index alpha of the current degree to d^alpha expr.
    # A child is its parent differentiated in a coordinate at or after the
    # parent's last non-zero one, so each multi-index is made exactly once.
    frontier = {(0,) * len(variables): expr}
    terms = []
    for degree in range(order + 1):
        if degree > 0:
            next_frontier = {}
            for alpha, derivative in frontier.items():
                last = max((i for i, a in enumerate(alpha) if a), default=0)
                for i in range(last, len(variables)):
                    child = alpha[:i] + (alpha[i] + 1,) + alpha[i + 1 :]
                    next_frontier[child] = sympy.diff(derivative, variables[i])
            frontier = next_frontier
        for alpha, derivative in frontier.items():
            value = derivative.subs(at_point).doit()
            if value == 0:
                continue
            monomial = sympy.Mul(*(s**a for s, a in zip(shifts, alpha)))
            denominator = math.prod(math.factorial(a) for a in alpha)
            terms.append(value * monomial / denominator)
    return sympy.Add(*terms)


# --------------------------------------------------------------------------- moments


def _check_sigma(sigma: object, name: str) -> sympy.Expr:
    sigma = _check_expr(sigma, name)
    if sigma.is_negative:
        raise ValueError(f"{name} must be a standard deviation (not negative), got {sigma}")
    return sigma


def gaussian_moment(power: int, sigma: sympy.Expr) -> sympy.Expr:
    r"""The moment :math:`\mathbb{E}[z^p]` of :math:`z \sim \mathcal{N}(0, \sigma^2)`.

    .. math::

        \mathbb{E}[z^p] =
        \begin{cases} \sigma^p \, (p - 1)!! & p \text{ even}, \\
                      0 & p \text{ odd}, \end{cases}

    so :math:`\mathbb{E}[z^2] = \sigma^2`, :math:`\mathbb{E}[z^4] = 3\sigma^4`;
    ``power`` is :math:`p \ge 0`, ``sigma`` a sympy expression or number.

    Raises:
        TypeError: if ``power`` is not an int or ``sigma`` not an expression.
        ValueError: if ``power`` is negative or ``sigma`` is a negative number.
    """
    power = _check_order(power, "power")
    sigma = _check_sigma(sigma, "sigma")
    if power % 2:
        return sympy.S.Zero
    return sigma**power * sympy.factorial2(power - 1)


def _isserlis(k: tuple[int, ...], covariance: sympy.Matrix, cache: dict) -> sympy.Expr:
    r"""E[z^k], z ~ N(0, C), pairing one z_i (first i with k_i > 0) with the other copies m_j = k_j - [i = j]:
    E[z^k] = sum_j C_ij m_j E[z^{k - e_i - e_j}]."""
    if sum(k) % 2:
        return sympy.S.Zero
    if not any(k):
        return sympy.S.One
    if k not in cache:
        i = next(index for index, k_i in enumerate(k) if k_i)
        m = k[:i] + (k[i] - 1,) + k[i + 1 :]
        cache[k] = sympy.Add(*(
            m_j * covariance[i, j] * _isserlis(m[:j] + (m_j - 1,) + m[j + 1 :], covariance, cache)
            for j, m_j in enumerate(m) if m_j and covariance[i, j] != 0
        ))
    return cache[k]


def gaussian_expectation(
    expr: sympy.Expr,
    noise: Mapping[sympy.Symbol, sympy.Expr] | Sequence[sympy.Symbol],
    covariance: sympy.Matrix | Sequence[Sequence[sympy.Expr]] | None = None,
) -> sympy.Expr:
    r"""Expectation of a polynomial in zero-mean Gaussian noise.

    With ``expr`` :math:`= \sum_\alpha c_\alpha z^\alpha`, coefficients :math:`c_\alpha`
    free of the noise :math:`z` (they may hold other symbols and ``Derivative(f(x), x)``),
    :math:`\mathbb{E}[\text{expr}] = \sum_\alpha c_\alpha \, \mathbb{E}[z^\alpha]`.

    *Independent noise* (``covariance=None``): ``noise`` maps each :math:`z_i` to its
    standard deviation :math:`\sigma_i`, and :math:`\mathbb{E}[z^\alpha] = \prod_i
    \mathbb{E}[z_i^{\alpha_i}]` (:func:`gaussian_moment`).

    *Correlated noise*: ``noise`` lists :math:`z_1, \dots, z_n` and
    :math:`z \sim \mathcal{N}(0, C)`. By Isserlis' theorem (Wick's rule),

    .. math::

        \mathbb{E}[z_{i_1} \cdots z_{i_{2k}}] =
            \sum_{\text{pairings } P} \prod_{\{a, b\} \in P} C_{i_a i_b},
        \qquad \mathbb{E}[z_{i_1} \cdots z_{i_{2k+1}}] = 0,

    for example :math:`\mathbb{E}[z_1^2 z_2^2] = C_{11} C_{22} + 2 C_{12}^2`.

    Args:
        expr: a sympy expression, polynomial in the noise symbols.
        noise: a mapping ``{z_i: sigma_i}`` (independent case) or a sequence of
            the :math:`n` noise Symbols (with ``covariance``).
        covariance: ``None``, or the symmetric :math:`n \times n` :math:`C`, a sympy
            Matrix or nested list.

    Returns:
        The expectation, a sum of coefficient times moment (not simplified).

    Raises:
        TypeError: if ``expr``, ``noise`` (a mapping without ``covariance``, a
            sequence with it, of Symbols) or ``covariance`` has the wrong type.
        ValueError: if ``noise`` is empty or repeats a symbol, a standard deviation
            is negative or holds a noise symbol, ``covariance`` is not a symmetric
            :math:`n \times n` matrix with non-negative diagonal free of the noise,
            or ``expr`` is not a polynomial in the noise (``exp(z)``, ``1/z``, ``f(x + z)``).
    """
    expr = _check_expr(expr)
    if covariance is None:
        if not isinstance(noise, Mapping):
            kind = type(noise).__name__
            raise TypeError(f"noise must be a mapping {{symbol: sigma}} when covariance is None, got {kind}")
        symbols = _check_symbols(list(noise), "noise")
        sigmas = [_check_sigma(noise[s], f"noise[{s}]") for s in symbols]
        for s, sigma in zip(symbols, sigmas):
            if sigma.has(*symbols):
                raise ValueError(f"noise[{s}] must not depend on the noise symbols, got {sigma}")

        def moment(alpha: tuple[int, ...]) -> sympy.Expr:
            return sympy.Mul(*(gaussian_moment(k, sigma) for k, sigma in zip(alpha, sigmas)))

    else:
        if isinstance(noise, Mapping):
            raise TypeError("noise must be a sequence of Symbols when covariance is given, got a mapping")
        symbols = _check_symbols(noise, "noise")
        try:
            matrix = sympy.Matrix(covariance)
        except Exception:  # sympy raises several types for non-matrices
            kind = type(covariance).__name__
            raise TypeError(f"covariance must be a sympy Matrix or nested list, got {kind}") from None
        n = len(symbols)
        if matrix.shape != (n, n):
            raise ValueError(f"covariance must be {n}x{n} for {n} noise symbols, got {matrix.shape}")
        if not (matrix - matrix.T).applyfunc(sympy.simplify).is_zero_matrix:
            raise ValueError(f"covariance must be symmetric, got {matrix.tolist()}")
        if any(matrix[i, i].is_negative for i in range(n)):
            variances = [matrix[i, i] for i in range(n)]
            raise ValueError(f"covariance must have non-negative variances, got {variances}")
        if matrix.has(*symbols):
            raise ValueError("covariance must not depend on the noise symbols")
        cache: dict = {}

        def moment(alpha: tuple[int, ...]) -> sympy.Expr:
            return _isserlis(alpha, matrix, cache)

    polynomial = _polynomial(expr, symbols, "noise")
    return sympy.Add(*(coeff * moment(alpha) for alpha, coeff in polynomial.terms()))


# --------------------------------------------------------------------------- orders


def truncate(expr: sympy.Expr, symbol: sympy.Symbol, order: int) -> sympy.Expr:
    r"""Keep the terms of ``expr`` of degree at most ``order`` in ``symbol``.

    .. math::

        \sum_{k \ge 0} c_k s^k \;\mapsto\; \sum_{k \le K} c_k s^k,

    that is, drop :math:`O(s^{K+1})`: ``truncate(risk, sigma, 2)`` drops the
    :math:`O(\sigma^4)` terms of Bishop's (1995) expansion. ``expr`` must be a
    polynomial in the Symbol ``symbol``; ``order`` is :math:`K \ge 0`.

    Returns:
        The expanded, truncated polynomial.

    Raises:
        TypeError: if ``expr``, ``symbol`` or ``order`` has the wrong type.
        ValueError: if ``order`` is negative or ``expr`` is not a polynomial in
            ``symbol`` (``1/s``, ``sqrt(s)``, ``exp(s)``).
    """
    expr = _check_expr(expr)
    if not isinstance(symbol, sympy.Symbol):
        raise TypeError(f"symbol must be a sympy Symbol, got {type(symbol).__name__}")
    order = _check_order(order, "order")
    polynomial = _polynomial(expr, [symbol], "symbol")
    kept = (coeff * symbol**k for (k,), coeff in polynomial.terms() if k <= order)
    return sympy.expand(sympy.Add(*kept))
