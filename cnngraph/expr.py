"""Spec values: `$name`, `${expr}` and "text ${expr} text", evaluated without running code.

An expression is parsed with Python's `ast` and walked here over a whitelist of node kinds
(numbers, strings, lists, names, arithmetic, comparisons, boolean logic, conditionals,
subscripts and the functions min, max, int, len); anything else is refused. `eval` is never
called, so a spec from anywhere is safe to load.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Any, Mapping

NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
TEMPLATE = re.compile(r"\$\{(.*?)\}")

FUNCTIONS = {"min": min, "max": max, "int": int, "len": len}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b}
MAX_SIZE = 100_000  # longest list or string an expression may build (guards `"x" * 10**9`)


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
    if "${" in text:
        return TEMPLATE.sub(lambda m: str(evaluate(m.group(1), env)), text)
    raise ExprError(f"'{text}' is neither $name nor ${{expression}}: write $name for a "
                    "parameter, ${...} for an expression")


def lookup(name: str, env: Mapping[str, Any]) -> Any:
    if name in env:
        return env[name]
    from difflib import get_close_matches

    near = get_close_matches(name, list(env), n=1)
    hint = f"did you mean '{near[0]}'?" if near else "declare it under `params`"
    known = ", ".join(sorted(env)) or "none"
    raise ExprError(f"unknown parameter '{name}': {hint} (parameters here: {known})")


def evaluate(source: str, env: Mapping[str, Any]) -> Any:
    """The value of one expression (the text inside `${...}`)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"bad expression '${{{source}}}': {exc.msg}: write a complete "
                        "expression, e.g. ${width * 2} or ${width // 2}") from None
    try:
        return _eval(tree.body, env)
    except ExprError as exc:
        raise ExprError(f"bad expression '${{{source}}}': {exc}") from None
    except ZeroDivisionError:
        raise ExprError(f"bad expression '${{{source}}}': division by zero: make the divisor "
                        "non-zero (e.g. max(d, 1))") from None
    except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
        raise ExprError(f"bad expression '${{{source}}}': {type(exc).__name__}: {exc}: check "
                        "the values and types of its parameters") from None


def _repetition(left: Any, right: Any) -> int:
    """The length of `left * right` when it repeats a string or list (else 0)."""
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list)) and isinstance(n, int):
            return len(seq) * n
    return 0


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool,
                                                                  type(None))):
        return node.value
    if isinstance(node, ast.Name):
        return lookup(node.id, env)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise ExprError("exponent above 64")
        if isinstance(node.op, ast.Mult) and _repetition(left, right) > MAX_SIZE:
            raise ExprError(f"result longer than {MAX_SIZE}")
        return BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand, env))
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
        return FUNCTIONS[node.func.id](*(_eval(a, env) for a in node.args))
    raise ExprError(f"'{ast.unparse(node)}' is not allowed (numbers, strings, lists, parameters, arithmetic, "
                    "comparisons, and/or/not, a if c else b, x[i], min max int len)")
