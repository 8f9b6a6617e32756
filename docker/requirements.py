"""Print what robot-sac and the given extras require, one requirement per line, from pyproject.

The Docker image installs these in a layer of their own before it copies the code, so a change
to the code does not reinstall every dependency. Extras that name other extras
(``robot-sac[service,learner]``) are followed; an unknown extra is an error.

    python docker/requirements.py pyproject.toml service,learner,postgres > requirements.txt
"""

from __future__ import annotations

import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the images run Python 3.11
    import tomli as tomllib

SELF = re.compile(r"^robot-sac\[(?P<extras>[^\]]*)\]\s*$")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The project's dependencies and those of ``extras`` (followed through self-references),
    in first-seen order without repeats."""
    project = pyproject["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"no extra {extra!r} in pyproject.toml (it has {sorted(optional)})")
        seen.add(extra)
        for requirement in optional[extra]:
            if m := SELF.match(requirement):
                todo += [e.strip() for e in m["extras"].split(",") if e.strip()]
            else:
                found.append(requirement)
    return list(dict.fromkeys(found))


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: requirements.py PYPROJECT EXTRA[,EXTRA...]")
    with open(sys.argv[1], "rb") as f:
        pyproject = tomllib.load(f)
    extras = [e.strip() for e in sys.argv[2].split(",") if e.strip()]
    print("\n".join(requirements(pyproject, extras)))


if __name__ == "__main__":
    main()
