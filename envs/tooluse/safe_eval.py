"""A safe arithmetic evaluator: ``ast`` with an allow-list, never ``eval``/``exec``.

:func:`safe_eval` parses the text with ``ast.parse(mode="eval")`` and walks the tree itself,
accepting only numbers, ``+ - * / // % **``, unary signs, parentheses, the constants ``pi`` and
``e`` and the functions ``sqrt abs round min max floor ceil``. Arithmetic is exact
(``fractions.Fraction``) until a float enters (``sqrt`` of a non-square, ``pi``, a fractional
power). Guards: at most :data:`MAX_CHARS` characters and :data:`MAX_NODES` syntax nodes, integer
exponents up to :data:`MAX_EXPONENT`, and every intermediate value at most
:data:`MAX_MAGNITUDE` in size, so ``9**9**9`` or ``10**10**10`` fail fast instead of hanging.
An exact value whose numerator or denominator would pass :data:`MAX_EXACT_BITS` bits (a tiny
number such as ``((1/7)**200)**200``) continues as a float instead, and a float that underflows
to 0 inside an operation (a division by it, a negative power of it) is an
:class:`UnsafeExpressionError` like every other failure: model text never raises anything else.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from fractions import Fraction

__all__ = [
    "MAX_CHARS",
    "MAX_EXACT_BITS",
    "MAX_EXPONENT",
    "MAX_MAGNITUDE",
    "MAX_NODES",
    "Number",
    "UnsafeExpressionError",
    "format_number",
    "safe_eval",
]

Number = Fraction | float
MAX_CHARS = 300
MAX_NODES = 120
MAX_EXPONENT = 200
MAX_MAGNITUDE = 1e100
MAX_EXACT_BITS = 4_096


class UnsafeExpressionError(ValueError):
    """The expression is malformed, uses something outside the allow-list, or is too big."""


def _log2_abs(x: Number) -> float:
    """``log2(|x|)`` of a nonzero number, exact enough for bounds and free of float underflow."""
    if isinstance(x, Fraction):
        return math.log2(abs(x.numerator)) - math.log2(x.denominator)
    return math.log2(abs(x))


def _pow(base: Number, exp: Number) -> Number:
    if base == 0 and exp < 0:
        raise UnsafeExpressionError("division by zero")
    if isinstance(exp, Fraction) and exp.denominator == 1:
        if abs(exp) > MAX_EXPONENT:
            raise UnsafeExpressionError(f"exponent {exp} is too large (limit {MAX_EXPONENT})")
        if base != 0 and int(exp) * _log2_abs(base) > math.log2(MAX_MAGNITUDE):
            raise UnsafeExpressionError("result is too large")
        if isinstance(base, Fraction):
            size = max(base.numerator.bit_length(), base.denominator.bit_length())
            if size * abs(int(exp)) > MAX_EXACT_BITS:  # too many digits to stay exact
                return float(base) ** int(exp)  # the bound above: no overflow (may underflow)
        return base ** int(exp)
    if base < 0:
        raise UnsafeExpressionError("fractional power of a negative number")
    if abs(float(exp)) > MAX_EXPONENT:
        raise UnsafeExpressionError(f"exponent {float(exp):g} is too large (limit {MAX_EXPONENT})")
    return float(base) ** float(exp)


def _div(fn: Callable[[Number, Number], Number]) -> Callable[[Number, Number], Number]:
    def op(a: Number, b: Number) -> Number:
        if b == 0:
            raise UnsafeExpressionError("division by zero")
        return fn(a, b)

    return op


def _floordiv(a: Number, b: Number) -> Number:
    q = a // b  # an int for two fractions: keep it a Fraction like every exact value
    return Fraction(q) if isinstance(q, int) else q


_BINOPS: dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _div(operator.truediv),
    ast.FloorDiv: _div(_floordiv),
    ast.Mod: _div(operator.mod),
    ast.Pow: _pow,
}
_UNARY: dict[type, Callable[[Number], Number]] = {ast.UAdd: lambda x: x, ast.USub: lambda x: -x}
_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e}


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise UnsafeExpressionError("square root of a negative number")
    if isinstance(x, Fraction):
        n, d = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if n * n == x.numerator and d * d == x.denominator:
            return Fraction(n, d)
    return math.sqrt(x)


def _round(x: Number, ndigits: Number = Fraction(0)) -> Number:
    if not (isinstance(ndigits, Fraction) and ndigits.denominator == 1 and 0 <= ndigits <= 15):
        raise UnsafeExpressionError("round() takes a whole number of digits between 0 and 15")
    return Fraction(round(Fraction(x), int(ndigits)))


_FUNCTIONS: dict[
    str, tuple[Callable[..., Number], int, int]
] = {  # name -> (fn, min args, max args)
    "sqrt": (_sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, 10),  # min(x) of one number is x, not "not iterable"
    "max": (lambda *xs: max(xs), 1, 10),
    "floor": (lambda x: Fraction(math.floor(x)), 1, 1),
    "ceil": (lambda x: Fraction(math.ceil(x)), 1, 1),
}


def safe_eval(expression: str) -> Number:
    """Evaluate an arithmetic ``expression``; raises :class:`UnsafeExpressionError` on anything
    else. ``safe_eval("2 * (3 + 4) / 4") == Fraction(7, 2)``."""
    if not isinstance(expression, str):
        raise UnsafeExpressionError("the expression must be a string")
    if len(expression) > MAX_CHARS:
        raise UnsafeExpressionError(f"expression too long (over {MAX_CHARS} characters)")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise UnsafeExpressionError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeExpressionError(f"cannot parse {expression!r} as arithmetic") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise UnsafeExpressionError(f"expression too complex (over {MAX_NODES} syntax nodes)")
    return _eval(tree.body)


_MAX_BITS = int(math.log2(MAX_MAGNITUDE))


def _check(value: Number) -> Number:
    if isinstance(value, int):  # e.g. floor() of a float
        value = Fraction(value)
    if isinstance(value, Fraction):  # cheap bound: |n/d| < 2**(bits(n) - bits(d) + 1)
        n_bits, d_bits = value.numerator.bit_length(), value.denominator.bit_length()
        if n_bits - d_bits > _MAX_BITS:
            raise UnsafeExpressionError("result is too large")
        if max(n_bits, d_bits) <= MAX_EXACT_BITS:
            return value
        value = value.numerator / value.denominator  # correctly rounded; |value| < 2**(_MAX_BITS+1)
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise UnsafeExpressionError("result is too large")
    return value


def _apply(fn: Callable[..., Number], *args: Number) -> Number:
    """``fn(*args)`` checked, with float failures (0 from an underflow, overflow, a math domain
    error) turned into :class:`UnsafeExpressionError`."""
    try:
        return _check(fn(*args))
    except ZeroDivisionError as exc:
        raise UnsafeExpressionError("division by zero (a number too small for a float)") from exc
    except OverflowError as exc:
        raise UnsafeExpressionError("result is too large") from exc
    except (ValueError, TypeError) as exc:  # an UnsafeExpressionError keeps its own message
        if isinstance(exc, UnsafeExpressionError):
            raise
        raise UnsafeExpressionError(f"math error: {str(exc)[:80]}") from exc


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise UnsafeExpressionError(f"only numbers are allowed, not {node.value!r}"[:120])
        return _check(Fraction(node.value) if isinstance(node.value, int) else _decimal(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _apply(_BINOPS[type(node.op)], _eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
    ):
        fn, lo, hi = _FUNCTIONS[node.func.id]
        if node.keywords or not lo <= len(node.args) <= hi:
            raise UnsafeExpressionError(f"{node.func.id}() takes {lo} to {hi} positional arguments")
        return _apply(fn, *(_eval(a) for a in node.args))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        what = f"function {node.func.id[:30]!r}"
    elif isinstance(node, ast.Name):
        what = f"name {node.id[:30]!r}"
    else:
        what = f"syntax {type(node).__name__!r}"
    raise UnsafeExpressionError(
        f"{what} is not allowed; use numbers, + - * / // % ** and "
        "sqrt, abs, round, min, max, floor, ceil"
    )


def _decimal(value: float) -> Number:
    """A float literal as the exact decimal it was written as (``0.1 -> 1/10``)."""
    if not math.isfinite(value):
        raise UnsafeExpressionError("result is too large")
    return Fraction(repr(value))


def format_number(value: Number) -> str:
    """``Fraction(7, 2) -> "3.5"``, ``Fraction(4) -> "4"``, ``1/3 -> "0.3333333333"``."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"
