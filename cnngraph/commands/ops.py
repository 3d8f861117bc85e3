"""`cnngraph ops [OP ...]`: the ops a spec can use, each with its inputs, attributes (kind,
default, meaning) and documentation, read from the op registry."""
from __future__ import annotations

from . import about
from ..errors import SpecError
from ..expand import suggest


def register(subparsers) -> None:
    p = subparsers.add_parser("ops", help="list the ops with their attributes and defaults",
                              description=about(__doc__))
    p.add_argument("names", nargs="*", metavar="OP", help="only these ops (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ops import REGISTRY

    for name in args.names:
        if name not in REGISTRY:
            raise SpecError(f"unknown op '{name}'{suggest(name, REGISTRY)}: `cnngraph ops` "
                            "lists the ops")
    print("\n\n".join(describe(REGISTRY[name]) for name in args.names or REGISTRY))
    return 0


def describe(op) -> str:
    from ..ops import REQUIRED

    lo, hi = op.min_inputs, op.max_inputs
    inputs = (f"{lo} input{'s' if lo != 1 else ''}" if lo == hi else
              f"{lo}+ inputs" if hi is None else f"{lo}-{hi} inputs")
    doc = " ".join((op.doc or type(op).__doc__ or "").split())
    lines = [f"{op.name}  ({inputs})", f"    {doc}"]
    width = max((len(k) for k in op.attrs), default=0)
    for key, attr in op.attrs.items():
        default = "required" if attr.default is REQUIRED else _plain(attr.default)
        doc = attr.doc + (f" (one of: {', '.join(attr.choices)})" if attr.choices else "")
        doc += f" [{attr.bounds()}]" if attr.bounds() else ""
        lines.append(f"    {key:<{width}}  {attr.kind:<7}  default {default:<16}  {doc}".rstrip())
    return "\n".join(lines)


def _plain(value) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
