""".dockerignore: which files of a build context are left out, with Docker's pattern semantics.

The rules are those of Docker's ignore-file reader and pattern matcher (moby/patternmatcher):

- one pattern a line; a line starting with ``#`` is a comment; blanks around a pattern are dropped;
- each pattern is cleaned like Go's ``filepath.Clean`` (``./a//b/`` is ``a/b``) and a leading ``/`` is
  dropped, so every pattern is relative to the context root;
- ``*`` matches within one path component, ``?`` one character other than ``/``, ``[...]`` a class
  (``[^...]`` negated), ``\\`` escapes the next character, ``**`` any number of directories (also none);
- a pattern that matches a directory also excludes everything under it;
- ``!pattern`` re-includes what it matches; the last pattern that matches a path decides.

The context walker asks ``skip_dir`` to leave a whole directory out: Docker's client does so unless an
exception pattern spells out a path below that directory, so ``dir`` followed by ``!dir/keep`` sends
``dir/keep`` while ``!**/keep`` cannot bring anything back from inside an excluded ``dir``.

Docker's client always sends the Dockerfile and ``.dockerignore`` (it adds exceptions for them, see
``keeping``); the daemon reads the Dockerfile and then drops both from the context when the patterns
exclude them, so ``COPY . /app`` does not copy them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from skiff.errors import InvalidArgument

# Characters that mean something to a regular expression but nothing to a path pattern.
_REGEX_ONLY = set(".+()|{}$")


def clean(path: str) -> str:
    """Go's ``filepath.Clean`` for ``/``-separated paths: no ``.``, ``..`` resolved, one ``/`` at a time."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def read_patterns(text: str) -> list[str]:
    """The patterns of a .dockerignore file, normalised as Docker's reader does (``!`` kept in front)."""
    patterns = []
    for number, line in enumerate(text.split("\n")):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


@dataclass(frozen=True)
class _Pattern:
    """One compiled pattern: how it matches (exact, prefix, suffix or regex) and whether it is an exception."""

    text: str
    exception: bool
    kind: str
    regex: re.Pattern[str] | None

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _compile(text: str, exception: bool) -> _Pattern:
    """Translate a cleaned pattern; plain text and leading/trailing ``**`` get cheap string matches."""
    _check_syntax(text)
    regex, kind, i, first = "^", "exact", 0, True
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "*" and text[i:i + 1] == "*":
            i += 1
            if text[i:i + 1] == "/":
                i += 1
            if i == len(text):  # a trailing ** matches everything below, like .gitignore
                if kind == "exact":
                    kind = "prefix"
                else:
                    regex, kind = regex + ".*", "regex"
            else:
                regex, kind = regex + "(.*/)?", "regex"
            if first:
                kind = "suffix"
        elif ch == "*":
            regex, kind = regex + "[^/]*", "regex"
        elif ch == "?":
            regex, kind = regex + "[^/]", "regex"
        elif ch in _REGEX_ONLY:
            regex += "\\" + ch
        elif ch == "\\":
            if i < len(text):
                regex, kind, i = regex + re.escape(text[i]), "regex", i + 1
            else:
                regex += "\\\\"
        elif ch == "[":
            end = _class_end(text, i)
            regex, kind, i = regex + _class_regex(text, i, end), "regex", end + 1
        elif ch == "]":
            regex, kind = regex + "\\]", "regex"
        else:
            regex += ch
        first = False
    if kind != "regex":
        return _Pattern(text, exception, kind, None)
    try:
        return _Pattern(text, exception, kind, re.compile(regex + "$"))
    except re.error:
        raise InvalidArgument(f"syntax error in pattern: {text}") from None


def _check_syntax(text: str) -> None:
    """Refuse what Go's ``filepath.Match`` calls a bad pattern: an open ``[``, an empty class, a bad range."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 == len(text):
                raise InvalidArgument(f"syntax error in pattern: {text}")
            i += 2
            continue
        if ch == "[":
            i = _class_end(text, i + 1)
        i += 1


def _class_end(text: str, i: int) -> int:
    """The index of the ``]`` closing the class that starts at ``i`` (after ``[``)."""
    if text[i:i + 1] == "^":
        i += 1
    count = 0
    while True:
        if i >= len(text):
            raise InvalidArgument(f"syntax error in pattern: {text}")
        if text[i] == "]" and count:
            return i
        low, i = _class_char(text, i)
        if text[i:i + 1] == "-":
            high, i = _class_char(text, i + 1)
            if high < low:
                raise InvalidArgument(f"syntax error in pattern: {text}")
        count += 1


def _class_regex(text: str, start: int, end: int) -> str:
    """The regex for the class ``text[start:end]`` (between the brackets, already checked).

    Inside a class every character stands for itself, as in Go's ``filepath.Match`` (moby's translation
    would turn ``[a*]`` into a broken regex; no one relies on that).
    """
    out, i = ["["], start
    if text[i] == "^":
        out.append("^")
        i += 1
    while i < end:
        low, i = _class_char(text, i)
        out.append(re.escape(low))
        if text[i] == "-":
            high, i = _class_char(text, i + 1)
            out.append("-" + re.escape(high))
    return "".join(out) + "]"


def _class_char(text: str, i: int) -> tuple[str, int]:
    if i >= len(text) or text[i] in "-]":
        raise InvalidArgument(f"syntax error in pattern: {text}")
    if text[i] == "\\":
        i += 1
        if i >= len(text):
            raise InvalidArgument(f"syntax error in pattern: {text}")
    return text[i], i + 1


class IgnoreMatcher:
    """The patterns of one .dockerignore, answering which context paths are left out."""

    def __init__(self, text: str = "") -> None:
        self._set(read_patterns(text))

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> IgnoreMatcher:
        """A matcher from patterns already read (``!`` in front for exceptions)."""
        matcher = cls()
        matcher._set(list(patterns))
        return matcher

    def _set(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self._compiled: list[_Pattern] = []
        for raw in patterns:
            raw = raw.strip()
            if not raw:
                continue
            text = clean(raw)
            exception = text.startswith("!")
            if exception:
                if len(text) == 1:
                    raise InvalidArgument('illegal exclusion pattern: "!"')
                text = text[1:]
            self._compiled.append(_compile(text, exception))
        self.has_exceptions = any(p.exception for p in self._compiled)

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, ``/``-separated) is left out.

        The last pattern matching the path or one of its parent directories decides; the context
        root itself is never excluded.
        """
        path = clean(path.strip("/")) if path.strip("/") else "."
        if path == "." or not self._compiled:
            return False
        parents = _parents(path)
        verdict = False
        for pattern in self._compiled:
            if pattern.exception != verdict:
                continue  # it could not change the verdict
            if pattern.matches(path) or any(pattern.matches(parent) for parent in parents):
                verdict = not pattern.exception
        return verdict

    def skip_dir(self, path: str) -> bool:
        """Whether the walker may leave out the directory ``path`` and everything under it, as Docker does.

        True when the directory is excluded and no exception pattern names a path inside it literally.
        """
        if not self.excluded(path):
            return False
        prefix = clean(path.strip("/")) + "/"
        return not any((p.text + "/").startswith(prefix) for p in self._compiled if p.exception)

    def keeping(self, *paths: str) -> IgnoreMatcher:
        """This matcher plus an exception for each of ``paths`` it excludes (the client's rule for the
        Dockerfile and .dockerignore, which it always sends)."""
        # Unlike Docker's client, glob characters in the names are escaped: a file named "[x]" is kept too.
        extra = ["!" + re.sub(r"([\\*?\[\]])", r"\\\1", clean(p.strip("/"))) for p in paths if self.excluded(p)]
        return IgnoreMatcher.from_patterns([*self.patterns, *extra]) if extra else self


def _parents(path: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
