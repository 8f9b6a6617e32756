"""Reading the Dockerfile as Docker does (no Docker engine runs on these machines).

Comments and blank lines are dropped and ``\\`` continuations joined; each instruction is its
keyword and the rest of its text, in order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    text: str  # what follows the keyword, continuations joined with a space

    def exec_form(self) -> list[str]:
        """The JSON array form (``["a", "b"]``) of ENTRYPOINT, CMD or HEALTHCHECK's command."""
        text = self.text
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1]
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.text}"
        return [str(v) for v in value]


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    found: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        found.append(Instruction(keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def of(keyword: str, path: Path = DOCKERFILE) -> list[Instruction]:
    return [i for i in instructions(path) if i.keyword == keyword]


def arg_default(name: str, path: Path = DOCKERFILE) -> str | None:
    """The default of ``ARG name=default`` (None when it has none or is not declared)."""
    for arg in of("ARG", path):
        key, eq, value = arg.text.partition("=")
        if key == name:
            return value.strip('"') if eq else None
    return None


def env_values(path: Path = DOCKERFILE) -> dict[str, str]:
    """Every ``ENV KEY=value`` the image sets (the last one wins)."""
    values: dict[str, str] = {}
    for env in of("ENV", path):
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", env.text):
            values[key] = value
    return values
