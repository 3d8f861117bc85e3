"""The model zoo: the spec files in this folder. A zoo name is a variant of a family file
(`resnet50` in resnet.yaml) or, for a file without variants, its stem (`lenet5`)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from ..errors import SpecError

FOLDER = Path(__file__).parent


@cache
def _index() -> dict[str, tuple[Path, str | None]]:
    """name -> (file, variant or None), in file order."""
    index: dict[str, tuple[Path, str | None]] = {}
    for file in sorted(FOLDER.glob("*.yaml")):
        with open(file, encoding="utf-8") as f:
            variants = (yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
                        or {}).get("variants") or {}
        for name in variants or [file.stem]:
            index[name] = (file, name if variants else None)
    return index


def names() -> list[str]:
    """Every model of the zoo, one name each."""
    return list(_index())


def find(name: str) -> tuple[Path, str | None] | None:
    """(spec file, variant) of a zoo name or of a family file's stem (variant None then)."""
    if name in _index():
        return _index()[name]
    path = FOLDER / f"{name}.yaml"
    return (path, None) if path.is_file() else None


def path(name: str) -> Path:
    """The spec file that defines the zoo model `name`."""
    found = find(name)
    if found is None:
        from difflib import get_close_matches

        near = get_close_matches(name, names(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SpecError(f"'{name}' is neither a spec file nor a zoo model{hint}: "
                        "`cnngraph zoo` lists the models")
    return found[0]
