"""Spec values: `$name`, `${expr}` and "text ${expr} text", evaluated without running code.

An expression is parsed with Python's `ast` and walked here over a whitelist of node kinds
(numbers, strings, lists, names, arithmetic, comparisons, boolean logic, conditionals,
subscripts and the functions min, max, int, len, sum, ceil and make_divisible); anything else
is refused. `eval` is never
called, so a spec from anywhere is safe to load.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Mapping

from . import limits
from .limits import MAX_EXPONENT, MAX_ITEMS, describe

NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
TEMPLATE = re.compile(r"\$\{(.*?)\}")
UNCLOSED = re.compile(r"\$\{[^}]*$")  # a ${ with no } after it

MAX_INT_TEXT = 100  # characters int() reads from a string; ±(2**63-1) has 19 digits


def _int(value: Any, *base: Any) -> int:
    """int(...), with a string's length bounded first: Python itself refuses 4,300+ digits
    and advises raising its own limit, which a spec cannot do."""
    if isinstance(value, str) and len(value) > MAX_INT_TEXT:
        raise limits.LimitError(f"int() of a string of {len(value):,} characters (integers "
                                f"are limited to ±2**63-1)")
    return int(value, *base)


def make_divisible(value: Any, divisor: Any) -> int:
    """A channel count as MobileNet, EfficientNet and MnasNet round one (TF-slim's rule, kept by
    torchvision): the nearest multiple of `divisor`, at least `divisor`, and never more than
    10% below `value` (else one `divisor` more)."""
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (value, divisor)) \
            or divisor < 1:
        raise ExprError(f"make_divisible needs a number and a divisor >= 1, got "
                        f"{describe(value)} and {describe(divisor)}")
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


FUNCTIONS = {"min": min, "max": max, "int": _int, "len": len, "sum": sum, "ceil": math.ceil,
             "make_divisible": make_divisible}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b}


class ExprError(ValueError):
    """A value that cannot be evaluated; the loader adds file, line and layer path."""


def resolve(value: Any, env: Mapping[str, Any]) -> Any:
    """`value` with every `$name` / `${expr}` string (at any depth) replaced by its value."""
    if isinstance(value, str):
        return resolve_string(value, env)
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    return value


def resolve_string(text: str, env: Mapping[str, Any]) -> Any:
    if "$" not in text:
        return text
    name = NAME.fullmatch(text)
    if name:
        return lookup(name.group(1), env)
    whole = TEMPLATE.fullmatch(text)
    if whole:
        return evaluate(whole.group(1), env)
    if UNCLOSED.search(text):
        raise ExprError(f"unclosed ${{...}} expression in {describe(text)}: end it with }}, "
                        "e.g. ${width * 2}")
    if "${" in text:
        made = [len(text)]  # characters so far: each part may be MAX_ITEMS long, not their sum

        def part(match: re.Match) -> str:
            value = str(evaluate(match.group(1), env))
            made[0] += len(value)
            if made[0] > MAX_ITEMS:
                raise ExprError(f"the text {describe(text)} becomes longer than {MAX_ITEMS:,} "
                                "characters")
            return value

        return TEMPLATE.sub(part, text)
    raise ExprError(f"{describe(text)} is neither $name nor ${{expression}}: write $name for a "
                    "parameter, ${...} for an expression")


def lookup(name: str, env: Mapping[str, Any]) -> Any:
    if name in env:
        return env[name]
    from difflib import get_close_matches

    near = get_close_matches(name, list(env), n=1)
    hint = f"did you mean '{near[0]}'?" if near else "declare it under `params`"
    names = sorted(env)
    known = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "") \
        if names else "none"
    raise ExprError(f"unknown parameter {describe(name)}: {hint} (parameters here: {known})")


def evaluate(source: str, env: Mapping[str, Any]) -> Any:
    """The value of one expression (the text inside `${...}`). Its length, the depth of its
    syntax tree and every intermediate value are bounded (see `limits`), so no expression can
    recurse, hang or build a huge number."""
    shown = source if len(source) <= 60 else source[:57] + "..."
    if len(source) > limits.MAX_EXPR_CHARS:
        raise ExprError(f"expression of {len(source):,} characters, more than "
                        f"{limits.MAX_EXPR_CHARS:,}: split it over parameters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"bad expression '${{{shown}}}': {exc.msg}: write a complete "
                        "expression, e.g. ${width * 2} or ${width // 2}") from None
    except (RecursionError, MemoryError):
        raise ExprError(f"expression '${{{shown}}}' is nested too deep: split it over "
                        "parameters") from None
    if _depth(tree) > limits.MAX_EXPR_DEPTH:
        raise ExprError(f"expression '${{{shown}}}' is nested more than "
                        f"{limits.MAX_EXPR_DEPTH} levels deep (e.g. a long chain of + or "
                        "parentheses): split it over parameters")
    try:
        return _eval(tree.body, env)
    except limits.LimitError as exc:
        raise ExprError(f"bad expression '${{{shown}}}': {exc}: keep values within range") \
            from None
    except ExprError as exc:
        raise ExprError(f"bad expression '${{{shown}}}': {exc}") from None
    except ZeroDivisionError:
        raise ExprError(f"bad expression '${{{shown}}}': division by zero: make the divisor "
                        "non-zero (e.g. max(d, 1))") from None
    except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
        raise ExprError(f"bad expression '${{{shown}}}': {type(exc).__name__}: {exc}: check "
                        "the values and types of its parameters") from None


def _depth(tree: ast.AST) -> int:
    """Depth of a syntax tree, walked without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _checked(value: Any) -> Any:
    """An intermediate value, refused when out of range: ints within ±2**63-1, finite floats,
    strings and lists of at most MAX_ITEMS."""
    if isinstance(value, (str, list)) and len(value) > MAX_ITEMS:
        raise ExprError(f"result longer than {MAX_ITEMS:,}")
    if isinstance(value, complex):
        raise ExprError("the result is not a real number")
    return limits.number(value)


def _repetition(left: Any, right: Any) -> int:
    """The length of `left * right` when it repeats a string or list (else 0)."""
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list)) and isinstance(n, int):
            return len(seq) * n
    return 0


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                  type(None))):
        return _checked(node.value)
    if isinstance(node, ast.Name):
        return lookup(node.id, env)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left, env), _eval(node.right, env)
        if (isinstance(node.op, ast.Pow) and isinstance(right, (int, float))
                and abs(right) > MAX_EXPONENT):
            raise ExprError(f"exponent above {MAX_EXPONENT}")
        if isinstance(node.op, ast.Mult) and _repetition(left, right) > MAX_ITEMS:
            raise ExprError(f"result longer than {MAX_ITEMS:,}")
        return _checked(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return _checked(UNARY[type(node.op)](_eval(node.operand, env)))
    if isinstance(node, ast.BoolOp):
        value = _eval(node.values[0], env)
        for operand in node.values[1:]:
            if bool(value) == isinstance(node.op, ast.Or):
                break
            value = _eval(operand, env)
        return value
    if isinstance(node, ast.Compare) and all(type(op) in COMPARE for op in node.ops):
        left = _eval(node.left, env)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, env)
            if not COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Subscript):
        target = _eval(node.value, env)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else _eval(p, env)
                     for p in (node.slice.lower, node.slice.upper, node.slice.step)]
            return target[slice(*parts)]
        return target[_eval(node.slice, env)]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in FUNCTIONS and not node.keywords):
        return _checked(FUNCTIONS[node.func.id](*(_eval(a, env) for a in node.args)))
    raise ExprError(f"'{ast.unparse(node)}' is not allowed (numbers, strings, lists, parameters, arithmetic, "
                    "comparisons, and/or/not, a if c else b, x[i], min max int len sum ceil "
                    "make_divisible)")
