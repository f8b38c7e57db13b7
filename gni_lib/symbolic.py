r"""SymPy helpers for deriving noise-injection results by computer algebra.

The chapters derive their results the way the papers did by hand, in three
steps: Taylor-expand the noisy quantity in the noise, take its Gaussian
expectation monomial by monomial, and drop the terms of high order in
:math:`\sigma`. For example, Bishop (1995) expands, for the plain squared error,
:math:`\mathbb{E}[(f(x + \varepsilon) - y)^2]` for
:math:`\varepsilon \sim \mathcal{N}(0, \sigma^2)`:

.. code-block:: python

    f, (x, y, eps), sigma = Function("f"), symbols("x y eps"), Symbol("sigma", positive=True)
    taylor = taylor_polynomial(f(x + eps), [eps], 4)
    loss = truncate((taylor - y) ** 2, eps, 4)
    risk = truncate(gaussian_expectation(loss, {eps: sigma}), sigma, 2)
    # (f(x) - y)**2 + sigma**2 * (f'(x)**2 + (f(x) - y) * f''(x))

Expressions may hold undefined functions (``Function("f")``); their
derivatives come back as ``Derivative(f(x), x)`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import sympy

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
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"{name} must be a non-negative int, got {type(order).__name__}")
    if order < 0:
        raise ValueError(f"{name} must be a non-negative int, got {order}")
    return order


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
        raise ValueError(
            f"expr must be a polynomial in {gens_name} {list(gens)}, got {expr}"
        ) from None


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
    :math:`\alpha! = \prod_i \alpha_i!` and
    :math:`(v - a)^\alpha = \prod_i (v_i - a_i)^{\alpha_i}`. This is the
    expansion of the noisy loss in the noise, as in Bishop (1995).

    Each derivative is taken from one of order one lower, so the cost grows
    with the number of multi-indices, :math:`\binom{n + K}{K}`. Derivatives of
    undefined functions come back as ``Derivative(f(x), x)``: the ``Subs``
    objects that substitution leaves are evaluated with ``.doit()``. A ``Subs``
    remains only where a derivative is taken in a variable that is itself an
    argument, as in ``f(eps)`` expanded at ``eps = 0``.

    Args:
        expr: a scalar sympy expression.
        variables: the :math:`n` distinct Symbols :math:`v` to expand in.
        order: the total degree :math:`K \ge 0`.
        point: the :math:`n` expressions :math:`a` to expand about; zeros by
            default.

    Returns:
        The polynomial in ``variables`` (not expanded).

    Raises:
        TypeError: if ``expr`` is not a sympy expression, ``variables`` is not a
            sequence of Symbols, ``order`` is not an int, or ``point`` is not a
            sequence.
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
        raise ValueError(
            f"point must have {len(variables)} entries, like variables, got {len(point)}"
        )
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

    so :math:`\mathbb{E}[z^2] = \sigma^2`, :math:`\mathbb{E}[z^4] = 3\sigma^4`.

    Args:
        power: the non-negative int :math:`p`.
        sigma: the standard deviation, a sympy expression or number.

    Raises:
        TypeError: if ``power`` is not an int or ``sigma`` not an expression.
        ValueError: if ``power`` is negative or ``sigma`` is a negative number.
    """
    power = _check_order(power, "power")
    sigma = _check_sigma(sigma, "sigma")
    if power % 2:
        return sympy.S.Zero
    return sigma**power * sympy.factorial2(power - 1)


def _isserlis(exponents: tuple[int, ...], covariance: sympy.Matrix, cache: dict) -> sympy.Expr:
    r"""E[prod_i z_i^{k_i}] for z ~ N(0, C), by Isserlis' recursion.

    Pair one copy of the first z_i present with each remaining copy of each z_j:
    E[z^k] = sum_j C_ij m_j E[z^{k - e_i - e_j}], m_j = k_j - [i = j].
    """
    if exponents in cache:
        return cache[exponents]
    if sum(exponents) % 2:
        value = sympy.S.Zero
    elif not any(exponents):
        value = sympy.S.One
    else:
        i = next(index for index, k in enumerate(exponents) if k)
        rest = list(exponents)
        rest[i] -= 1
        value = sympy.S.Zero
        for j, copies in enumerate(rest):
            if copies and covariance[i, j] != 0:
                lower = list(rest)
                lower[j] -= 1
                value += copies * covariance[i, j] * _isserlis(tuple(lower), covariance, cache)
    cache[exponents] = value
    return value


def gaussian_expectation(
    expr: sympy.Expr,
    noise: Mapping[sympy.Symbol, sympy.Expr] | Sequence[sympy.Symbol],
    covariance: sympy.Matrix | Sequence[Sequence[sympy.Expr]] | None = None,
) -> sympy.Expr:
    r"""Expectation of a polynomial in zero-mean Gaussian noise.

    Write ``expr`` as :math:`\sum_\alpha c_\alpha z^\alpha` with coefficients
    :math:`c_\alpha` free of the noise :math:`z`; they may hold other symbols
    and functions, such as ``Derivative(f(x), x)``. Then
    :math:`\mathbb{E}[\text{expr}] = \sum_\alpha c_\alpha \, \mathbb{E}[z^\alpha]`.

    *Independent noise* (``covariance=None``): ``noise`` maps each
    :math:`z_i` to its standard deviation :math:`\sigma_i`, and
    :math:`\mathbb{E}[z^\alpha] = \prod_i \mathbb{E}[z_i^{\alpha_i}]`, with the
    moments of :func:`gaussian_moment`.

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
        covariance: ``None``, or the symmetric :math:`n \times n` covariance
            :math:`C`, a sympy Matrix or nested list.

    Returns:
        The expectation, a sum of coefficient times moment (not simplified).

    Raises:
        TypeError: if ``expr`` is not an expression; if ``noise`` is not a
            mapping (without ``covariance``) or not a sequence (with it), or its
            keys or entries are not Symbols; if ``covariance`` is not a matrix.
        ValueError: if ``noise`` is empty or repeats a symbol, a standard
            deviation is a negative number or holds a noise symbol,
            ``covariance`` is not :math:`n \times n`, not symmetric or has a
            negative number on its diagonal, or ``expr`` is not a polynomial in
            the noise symbols (``exp(z)``, ``1/z``, ``f(x + z)``).
    """
    expr = _check_expr(expr)
    if covariance is None:
        if not isinstance(noise, Mapping):
            raise TypeError(
                f"noise must be a mapping {{symbol: sigma}} when covariance is None, "
                f"got {type(noise).__name__}"
            )
        symbols = _check_symbols(list(noise), "noise")
        sigmas = [_check_sigma(noise[s], f"noise[{s}]") for s in symbols]
        for s, sigma in zip(symbols, sigmas):
            if sigma.has(*symbols):
                raise ValueError(f"noise[{s}] must not depend on the noise symbols, got {sigma}")
        moments = [{} for _ in symbols]

        def moment(alpha: tuple[int, ...]) -> sympy.Expr:
            factors = []
            for i, k in enumerate(alpha):
                if k not in moments[i]:
                    moments[i][k] = gaussian_moment(k, sigmas[i])
                factors.append(moments[i][k])
            return sympy.Mul(*factors)

    else:
        if isinstance(noise, Mapping):
            raise TypeError(
                "noise must be a sequence of Symbols when covariance is given, got a mapping"
            )
        symbols = _check_symbols(noise, "noise")
        try:
            matrix = sympy.Matrix(covariance)
        except Exception:  # sympy raises several types for non-matrices
            raise TypeError(
                f"covariance must be a sympy Matrix or nested list, got {type(covariance).__name__}"
            ) from None
        n = len(symbols)
        if matrix.shape != (n, n):
            raise ValueError(
                f"covariance must be {n}x{n} for {n} noise symbols, got {matrix.shape}"
            )
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

    that is, drop :math:`O(s^{K+1})`, for example the :math:`O(\sigma^4)` terms
    of Bishop's (1995) expansion with ``truncate(risk, sigma, 2)``.

    Args:
        expr: a sympy expression, polynomial in ``symbol``.
        symbol: the Symbol :math:`s`.
        order: the highest degree :math:`K \ge 0` to keep.

    Returns:
        The expanded, truncated polynomial.

    Raises:
        TypeError: if ``expr`` is not an expression, ``symbol`` not a Symbol,
            or ``order`` not an int.
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
