"""`cnngraph zoo`: the zoo's models, one a line: the name, then its parameter count (inference;
with the training-only auxiliary heads in brackets where they add parameters)."""
from __future__ import annotations

from . import about


def register(subparsers) -> None:
    p = subparsers.add_parser("zoo", help="list the zoo's models with their parameter counts",
                              description=about(__doc__))
    p.set_defaults(func=run)


def run(args) -> int:
    import cnngraph
    from cnngraph import zoo

    names = zoo.names()
    width = max(map(len, names))
    for name in names:
        graph = cnngraph.load(name)
        params, train = graph.params_for(False), graph.params_for(True)
        extra = f"  ({train:,} with auxiliary heads)" if train != params else ""
        print(f"{name:<{width}}  {params:>12,}{extra}")
    return 0
