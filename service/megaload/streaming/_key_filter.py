"""The ``keys`` filter of a shard plan: regular expressions run in time linear in the key.

Patterns are compiled by RE2 (``google-re2``), an automaton engine: a match costs time
linear in the length of the key, whatever the pattern, where Python's backtracking ``re``
takes time exponential in the pattern for some (``(?:.|.){1,26}!`` tries 2**26 ways to split
every key). The syntax is Python's ``re`` less what needs backtracking; refused, with RE2's
reason, are back-references (``\\1``), look-around (``(?=``, ``(?<!``...), atomic groups and
possessive quantifiers; ``\\Z`` is spelled ``\\z``. ``\\Q...\\E`` quoting (RE2's, not Python's)
is refused too, since it could swallow the parenthesis that closes a pattern below.

Each pattern is checked on its own, so an error names it; then all of them are compiled as
one alternation ``(?:p1)|(?:p2)|...`` matched at the start of each key (``re.match``
semantics), so filtering costs one match per key however many patterns there are. Memory
is bounded too: a compiled filter may use at most :data:`MAX_PROGRAM_BYTES` (RE2's
``max_mem``: its program and its DFA cache; past the cache RE2 falls back to its NFA, still
linear), and a pattern set whose program does not fit is refused.
"""

from __future__ import annotations

from typing import Any

import re2

from ._errors import InvalidKeyPatternError

__all__ = ["KeyFilter", "MAX_PROGRAM_BYTES"]

MAX_PROGRAM_BYTES = 2 << 20


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors come back as exceptions; RE2 would also print them to stderr
    options.never_capture = True  # groups only group: nothing is extracted from a key
    options.max_mem = MAX_PROGRAM_BYTES
    return options


def _compile(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _options())
    finally:
        re2.purge()  # re2.compile keeps what it compiles in a module cache; the filter keeps its own


def _reason(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.startswith("pattern too large"):
        return f"it compiles to a program larger than {MAX_PROGRAM_BYTES} bytes"
    return text


def _shown(pattern: str) -> str:
    return repr(pattern) if len(pattern) <= 120 else repr(pattern[:120]) + f" (and {len(pattern) - 120} more characters)"


def _quotes(pattern: str) -> bool:
    """Whether ``pattern`` has an unescaped ``\\Q``."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if pattern[i + 1 : i + 2] == "Q":
                return True
            i += 2
        else:
            i += 1
    return False


class KeyFilter:
    """``KeyFilter(patterns).matches(name)``: whether any pattern matches at the start of
    ``name``. No patterns: everything matches. Raises :class:`InvalidKeyPatternError` for a
    pattern RE2 refuses, or for a set of patterns too large to compile together."""

    __slots__ = ("patterns", "_regexp")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._regexp = None
        if not patterns:
            return
        for pattern in patterns:
            if _quotes(pattern):
                raise InvalidKeyPatternError(
                    f"keys pattern {_shown(pattern)} is refused: \\Q...\\E quoting is not supported (escape with re.escape)",
                    pattern=pattern,
                )
            try:
                _compile(pattern)
            except re2.error as e:
                raise InvalidKeyPatternError(
                    f"keys pattern {_shown(pattern)} is refused: {_reason(e)} (the syntax is Python's re without "
                    "back-references and look-around, run in linear time)",
                    pattern=pattern,
                ) from None
        combined = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
        try:
            self._regexp = _compile(combined)
        except re2.error as e:
            raise InvalidKeyPatternError(
                f"the {len(patterns)} keys patterns together are refused: {_reason(e)}; give fewer or simpler ones",
                pattern=combined[:64] + "...",
            ) from None

    def matches(self, name: str) -> bool:
        if self._regexp is None:
            return True
        return self._regexp.match(name.encode("utf-8", "surrogatepass")) is not None
