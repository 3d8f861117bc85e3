"""One module per `cnngraph` command, each with `register(subparsers)`; see cnngraph/cli.py."""


def about(doc: str) -> str:
    """A command's --help description: the first paragraph of its module docstring."""
    return " ".join(doc.split("\n\n")[0].split())
