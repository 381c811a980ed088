"""The program JSON of a ``.pt2`` file: what PyTorch turns into calls, Python source and sympy expressions.

``torch.export.load`` resolves a node's target as any attribute reachable from ``torch`` (``torch.os.system``
included) and calls it when the model runs; it parses symbolic sizes with ``sympy.sympify``, which evaluates Python;
``program.module()`` pastes ``guards_code`` strings, string inputs and parameter names into Python source and
executes it. :func:`check_program` allows only registered operators, sympy's own classes, size comparisons and names
without quotes, backslashes or control characters (nothing that could end a string literal or a comment).
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import torch

SAFE_TEXT = re.compile(r"[^\"'\\\x00-\x1f\x7f]*")  # no quotes, backslashes or control characters
_SPEC_TEXT = re.compile(r"[\w.\-: ]*")
_OP_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+")  # torch's size symbols: s0, u3, ps2, zuf0
_SYMPY_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|('[\w.+\-]*')|([A-Za-z_][A-Za-z0-9_]*)(\s*=(?!=))?|"
                          r"(\*\*|//|==|!=|<=|>=|[-+*/%()<>,&|~]))")  # fmt: skip
# sympy's classes as ``sympy.srepr`` writes them (torch serializes symbolic sizes that way); none evaluates text
_SYMPY_NAMES = frozenset({"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
                          "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality",
                          "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not",
                          "Piecewise", "ExprCondPair", "ITE", "BooleanTrue", "BooleanFalse", "true", "false", "True",
                          "False", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "NaN", "ComplexInfinity",
                          "One", "Zero", "NegativeOne", "Half"})  # fmt: skip
_GUARD_NAMES = frozenset({"L", "math", "inf", "int", "float", "bool", "abs", "min", "max", "round"})
_GUARD_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "isnan", "isinf", "isfinite", "floor",
                          "ceil", "trunc", "sqrt", "inf", "nan", "pi", "e", "log", "log2", "exp", "fabs",
                          "gcd"})  # fmt: skip
_GUARD_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Call, ast.Attribute,
                ast.Subscript, ast.Name, ast.Constant, ast.Tuple, ast.Load, ast.boolop, ast.operator, ast.unaryop,
                ast.cmpop)  # fmt: skip
# values that go into node.meta only (never into generated code, except stack traces: FX writes them as comments)
_META_KEYS = frozenset({"metadata", "stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom"})


class Unsafe(Exception):  # noqa: N818 -- internal: (member, what is wrong), turned into a ModelLoadError
    """A member of a model file that would run code or exhaust memory: (member, what is wrong)."""


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key, value, the dict or list holding it) for every value in a JSON tree, not descending into metadata."""
    if isinstance(node, dict):
        for k, v in node.items():
            if not isinstance(k, str) or not SAFE_TEXT.fullmatch(k):
                raise Unsafe("", f"has a key with quotes or control characters ({str(k)[:40]!r})")
            yield k, v, node
            if k not in _META_KEYS:
                yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield key, v, node
            yield from _walk(v, key)


def check_program(program: Any, member: str) -> None:
    try:
        for key, value, holder in _walk(program):
            _check_value(key, value, holder, member)
    except Unsafe as exc:
        raise Unsafe(member, exc.args[1]) from None


def _check_value(key: str, value: Any, holder: Any, member: str) -> None:
    if key in ("target", "as_operator"):  # a node's callee, or an operator passed as an argument
        _check_target(value, member)
    elif key == "expr_str":
        _check_sympy(value, member)
    elif key == "guards_code":
        if not isinstance(value, list):
            _check_guard(value, member)
    elif key in ("in_spec", "out_spec"):
        _check_spec(value, member)
    elif key in _META_KEYS:
        if "\r" in json.dumps(value, ensure_ascii=False):
            raise Unsafe(member, "has a carriage return in node metadata (it would end a comment in code)")
    elif isinstance(value, str) and not SAFE_TEXT.fullmatch(value):
        raise Unsafe(member, f"has a string with quotes or control characters ({value[:40]!r})")


@functools.cache
def _sym_targets() -> frozenset[str]:
    from torch._export.serde.serialize import _SYM_OPS

    return frozenset({f"{op.__module__}.{op.__name__}" for op in _SYM_OPS} | {"_operator.getitem"})


def _check_target(target: Any, member: str) -> None:
    """A node may call a registered operator (``torch.ops.ns.op[.overload]``) or a symbolic-shape function.

    The name is resolved as torch's deserializer resolves it (``getattr`` part by part from ``torch``), so a dunder
    operator such as ``torch.ops.aten.__and__.Tensor`` is the operator it names; every step must land on an operator
    namespace, an operator packet and an overload, so nothing else reachable from ``torch`` can be called.
    """
    if not isinstance(target, str):
        raise Unsafe(member, f"has a node target that is not a name ({target!r})")
    if target in _sym_targets():
        return
    parts = target.split(".")
    if parts[:2] != ["torch", "ops"] or not 4 <= len(parts) <= 5 or not all(_OP_PART.fullmatch(p) for p in parts):
        raise Unsafe(member, f"calls {target[:80]!r}, which is not a PyTorch operator")
    ops = torch._ops
    steps: list[tuple[type, ...]] = [(ops._OpNamespace, ops._HigherOrderNamespace),
                                     (ops.OpOverloadPacket, ops.HigherOrderOperator), (ops.OpOverload,)]  # fmt: skip
    obj: Any = torch.ops
    for part, kinds in zip(parts[2:], steps, strict=False):
        if part.startswith("__") and (part in vars(type(obj)) or any(part in vars(k) for k in type(obj).__mro__)):
            raise Unsafe(member, f"calls {target[:80]!r}, which is not a PyTorch operator")
        try:
            obj = getattr(obj, part)
        except (AttributeError, RuntimeError):
            raise Unsafe(member, f"calls {target[:80]!r}, an operator this PyTorch does not have") from None
        if not isinstance(obj, kinds):
            raise Unsafe(member, f"calls {target[:80]!r}, which is not a PyTorch operator")


# a power whose exponent is not a one- or two-digit integer (that is not itself raised to a power), or a literal of
# more than 20 digits
_HUGE_NUMBER = re.compile(r"\*\*\s*(?!\d{1,2}\b(?!\s*\*\*))|\d{21,}")


def _check_sympy(expr: Any, member: str) -> None:
    """A symbolic size expression: numbers, size symbols, arithmetic and sympy's classes; no name that runs text.

    torch parses it with ``sympy.sympify``, which evaluates Python with the builtins in scope.
    """
    text = expr if isinstance(expr, str) else "("
    if _HUGE_NUMBER.search(text):  # sympify computes powers and literals exactly: 10**10**10 never returns
        raise Unsafe(member, f"has a symbolic expression with a huge number ({text[:60]!r})")
    pos, names = 0, _SYMPY_NAMES | _sympy_functions()
    while pos < len(text.rstrip()):
        m = _SYMPY_TOKEN.match(text, pos)
        ident, keyword = (m.group(3), m.group(4)) if m else (None, None)
        if m is None or m.end() == pos or ident and not (
            keyword and ident.islower() or _SYMBOL.fullmatch(ident) or ident in names
        ):
            raise Unsafe(member, f"has a symbolic expression deepslim does not accept ({str(expr)[:60]!r})")
        pos = m.end()


@functools.cache
def _sympy_functions() -> frozenset[str]:
    import sympy
    import torch.utils._sympy.functions as functions

    return frozenset(n for n, obj in vars(functions).items()
                     if isinstance(obj, type) and issubclass(obj, sympy.Basic) and obj.__module__ == functions.__name__)


def _check_guard(guard: Any, member: str) -> None:
    """A shape guard torch pastes into Python source: comparisons of input sizes with numbers, nothing else."""
    try:
        tree = ast.parse(guard, mode="eval") if isinstance(guard, str) and "\n" not in guard else None
    except (SyntaxError, ValueError):
        tree = None
    if tree is None or not all(_guard_node_ok(node) for node in ast.walk(tree)):
        raise Unsafe(member, f"has a guard that is not a size comparison ({str(guard)[:60]!r})")


def _guard_node_ok(node: ast.AST) -> bool:
    if not isinstance(node, _GUARD_NODES):
        return False
    if isinstance(node, ast.Name):
        return node.id in _GUARD_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in _GUARD_ATTRS
    if isinstance(node, ast.Constant):
        value = node.value
        return isinstance(value, (int, float, bool, type(None))) or isinstance(value, str) and bool(
            _SPEC_TEXT.fullmatch(value))
    return True


def _check_spec(spec: Any, member: str) -> None:
    """A pytree spec (JSON in a string): type names and keys only, no characters that could end a literal."""

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            try:
                inner = json.loads(node)
            except ValueError:
                inner = None
            if isinstance(inner, (dict, list)):
                yield from strings(inner)
            else:
                yield node
        elif isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)

    for text in strings(spec):
        if not _SPEC_TEXT.fullmatch(text):
            raise Unsafe(member, f"has an input or output spec with an unexpected name ({text[:40]!r})")
