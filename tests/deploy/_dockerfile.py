"""Reading a Dockerfile and a .dockerignore without a Docker engine (for the deploy tests).

:func:`parse` splits a Dockerfile into instructions as the builder does (``\\`` line
continuations, comment lines dropped, also inside a continued instruction) and groups them
into stages; :func:`context_files` lists the files a build context would hold after
.dockerignore (last matching pattern wins, ``!`` re-includes, a pattern excluding a directory
excludes what is under it, ``*`` and ``?`` stop at ``/``, ``**`` crosses directories).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Instruction", "Stage", "Dockerfile", "parse", "context_files", "ignore_patterns"]


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """``--name=value`` flags at the start (COPY, RUN, HEALTHCHECK) and what follows."""
        flags: dict[str, str] = {}
        rest = self.args
        while True:
            m = re.match(r"--([a-z-]+)=(\S+)\s*", rest)
            if not m:
                return flags, rest
            flags[m.group(1)] = m.group(2)
            rest = rest[m.end():]

    def exec_form(self, text: str | None = None) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD (None for the shell form)."""
        text = self.args if text is None else text
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def env_pairs(self) -> dict[str, str]:
        """``ENV``/``ARG`` ``key=value`` pairs (the legacy ``ENV key value`` form too)."""
        words = shlex.split(self.args)
        if self.keyword == "ENV" and words and "=" not in words[0]:
            return {words[0]: " ".join(words[1:])}
        pairs = {}
        for word in words:
            key, sep, value = word.partition("=")
            pairs[key] = value if sep else ""
        return pairs


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(instruction.env_pairs())
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives) are dropped, also inside a continuation
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the instruction ends with a line continuation")
    return lines


def parse(path: str | Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in _logical_lines(Path(path).read_text()):
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {number}: only ARG may precede the first FROM, got {instruction.keyword}")
            global_args.update(instruction.env_pairs())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def ignore_patterns(path: str | Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per .dockerignore line, in order."""
    patterns = []
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        body = line.lstrip("!").strip().strip("/")
        patterns.append((exclude, re.compile(_glob_regex(body))))
    return patterns


def _glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return "^" + out + "$"


def _excluded(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exclude, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            excluded = exclude
    return excluded


def _may_reinclude(directory: str, dockerignore: Path) -> bool:
    """Whether a ``!`` pattern could name something under an excluded ``directory``."""
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if line.startswith("!"):
            body = line[1:].strip().strip("/")
            if body.startswith(directory + "/") or body.startswith("*"):
                return True
    return False


def context_files(root: str | Path, dockerignore: str | Path | None = None) -> list[str]:
    """Files (relative, '/'-separated) a build context at ``root`` holds after .dockerignore."""
    root = Path(root)
    ignore_file = Path(dockerignore or root / ".dockerignore")
    patterns = ignore_patterns(ignore_file)
    files = []
    for current, dirs, names in os.walk(root):
        base = Path(current).relative_to(root).as_posix()
        base = "" if base == "." else base + "/"
        dirs[:] = sorted(
            d for d in dirs if not _excluded(base + d, patterns) or _may_reinclude(base + d, ignore_file)
        )
        for name in sorted(names):
            if not _excluded(base + name, patterns):
                files.append(base + name)
    return sorted(files)
