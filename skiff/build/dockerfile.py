"""Dockerfiles read as Docker reads them: parser directives, lines, instructions, heredocs and stages.

``parse`` follows buildkit's Dockerfile parser (which Docker's legacy builder also uses): ``# escape=``
/ ``# syntax=`` / ``# check=`` directives only before anything else, continuation lines with the escape
token (comment and blank lines inside a continuation skipped), per-instruction argument forms (JSON exec
form, shell form, ``k=v`` pairs, whitespace-separated words), ``--flag`` validation, heredocs for RUN,
COPY and ADD, and the grouping into stages. Errors are InvalidArgument naming the line, in Docker's words
(``dockerfile parse error on line 3: unknown instruction: FOO``).

Nothing is expanded while parsing: ``expand``/``expand_words`` (the shell-word rules in
``skiff.image.changes``) are applied by the builder with the environment of each step, to the
instructions in ``EXPANDING_INSTRUCTIONS``; FROM sees only the global ARGs (``stage_bases``).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from skiff.errors import InvalidArgument
from skiff.image.changes import ShellLexer, expand_word, go_duration, json_args, split_words
from skiff.image.changes import expand_words as _expand_words

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")

# The instructions whose arguments get variable substitution (Docker's legacy builder: those that
# implement buildkit's SupportsSingleWordExpansion, plus EXPOSE, which alone splits into several words).
# FROM is expanded too, but only with the global ARGs (see ``stage_bases``); RUN only in its --mount values.
EXPANDING_INSTRUCTIONS = frozenset({"ADD", "ARG", "COPY", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
                                    "WORKDIR"})

# Build args every Dockerfile may use without declaring them (Docker's builtinAllowedBuildArgs).
PROXY_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                        "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})

DIRECTIVES = ("syntax", "escape", "check")

_BOOL, _STRING, _STRINGS = "bool", "string", "strings"
# The --flags each instruction accepts and their kinds (buildkit's BFlags per instruction).
_FLAGS: dict[str, dict[str, str]] = {
    "ADD": {"chown": _STRING, "chmod": _STRING, "link": _BOOL, "keep-git-dir": _BOOL, "checksum": _STRING,
            "unpack": _BOOL, "exclude": _STRINGS},
    "COPY": {"chown": _STRING, "chmod": _STRING, "from": _STRING, "link": _BOOL, "exclude": _STRINGS,
             "parents": _BOOL},
    "FROM": {"platform": _STRING},
    "RUN": {"mount": _STRINGS, "network": _STRING, "security": _STRING, "device": _STRINGS},
    "HEALTHCHECK": {"interval": _STRING, "timeout": _STRING, "start-period": _STRING, "start-interval": _STRING,
                    "retries": _STRING},
}
# Docker never checks the flags of these (their parsers do not call BFlags.Parse).
_FLAGS_UNCHECKED = frozenset({"ARG", "STOPSIGNAL"})
_HEREDOC_INSTRUCTIONS = frozenset({"ADD", "COPY", "RUN"})
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
_BLANKS = re.compile(r"[\t\v\f\r ]+")
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC_WORD = re.compile(r"(\d*)<<(-?)\s*([^<]*)", re.DOTALL)


@dataclass
class Heredoc:
    """A here-document attached to RUN, COPY or ADD: ``<<EOF`` ... ``EOF``.

    ``content`` is the body with its line endings, ending with the newline before the terminator; for
    ``<<-EOF`` (``chomp``) the leading tabs are already removed from each line. ``expand`` is False when
    the delimiter was quoted (``<<"EOF"``, ``<<'EOF'``): then ``$VAR`` stays as written.
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclass
class Instruction:
    """One instruction as written. See the module docstring for the argument forms.

    ``args``: for the JSON (exec) form the parsed array; for RUN/CMD/ENTRYPOINT/SHELL in shell form one
    element, the rest of the line; for ENV/LABEL ``k=v`` strings (``ENV k v w`` becomes ``k=v w``; quotes
    are kept for expansion to remove); for ARG the words (``name`` or ``name=default``); for HEALTHCHECK
    the type (``CMD``/``NONE`` as written) then the command like RUN's; for ADD/COPY/EXPOSE/FROM/VOLUME the
    whitespace-separated words; for USER/WORKDIR/STOPSIGNAL/MAINTAINER the rest of the line; for ONBUILD
    the trigger's text (also parsed, in ``trigger``).

    ``flags`` holds each flag given, its last value (booleans as ``"true"``/``"false"``); ``flag_values``
    every value of the repeatable ones (``--mount``, ``--exclude``, ``--device``) in order.
    ``original`` is the instruction line with continuations joined and outer blanks removed: what Docker
    prints in ``Step N/M : ...``.
    """

    keyword: str
    args: list[str]
    json_form: bool = False
    flags: dict[str, str] = field(default_factory=dict)
    heredocs: list[Heredoc] = field(default_factory=list)
    original: str = ""
    line: int = 0
    trigger: Instruction | None = None
    flag_values: dict[str, list[str]] = field(default_factory=dict)
    end_line: int = 0

    def pairs(self) -> list[tuple[str, str | None]]:
        """ENV/LABEL/ARG arguments as (key, value) before expansion; an ARG without default has None."""
        return [(k, v if sep else None) for k, sep, v in (a.partition("=") for a in self.args)]


@dataclass
class Stage:
    """One ``FROM`` and the instructions after it, up to the next FROM."""

    index: int
    name: str | None
    base: str
    platform: str | None
    instructions: list[Instruction]
    from_instruction: Instruction


@dataclass
class Dockerfile:
    """A parsed Dockerfile: directives, the ARGs before the first FROM, and the stages in order."""

    directives: dict[str, str]
    global_args: list[Instruction]
    stages: list[Stage]
    escape: str = "\\"
    warnings: list[str] = field(default_factory=list)

    def stage(self, name_or_index: str) -> Stage | None:
        """The stage a ``--from``/``--target``/FROM word names: a stage name (any case) or an index."""
        for stage in self.stages:
            if stage.name is not None and stage.name == name_or_index.lower():
                return stage
        if name_or_index.isdigit() and int(name_or_index) < len(self.stages):
            return self.stages[int(name_or_index)]
        return None


class _LineError(Exception):
    """A parse error at a line; ``parse`` turns it into InvalidArgument with Docker's prefix."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    """The Dockerfile in ``text``; InvalidArgument naming the line for anything Docker would reject."""
    if not text:
        raise InvalidArgument(f"the Dockerfile ({name}) cannot be empty")
    try:
        return _parse(text)
    except _LineError as exc:
        raise InvalidArgument(f"dockerfile parse error on line {exc.line}: {exc}") from None


def _parse(text: str) -> Dockerfile:
    reader = _Reader(text.removeprefix("\ufeff"))
    instructions = list(reader.instructions())
    if not instructions:
        raise InvalidArgument("file with no instructions")
    dockerfile = Dockerfile(reader.directives.values, [], [], reader.escape, reader.warnings)
    for instruction in instructions:
        if instruction.keyword == "FROM":
            dockerfile.stages.append(_stage(dockerfile, instruction))
        elif dockerfile.stages:
            dockerfile.stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            dockerfile.global_args.append(instruction)
        else:
            raise _LineError(instruction.line, "no build stage in current context")
    if not dockerfile.stages:  # only global ARGs: Docker's legacy builder ends with this
        raise InvalidArgument("No image was generated. Is your Dockerfile empty?")
    return dockerfile


def _stage(dockerfile: Dockerfile, from_: Instruction) -> Stage:
    name = from_.args[2].lower() if len(from_.args) == 3 else None
    if name is not None and any(s.name == name for s in dockerfile.stages):
        raise _LineError(from_.line, f"{name} stage name already used")
    return Stage(len(dockerfile.stages), name, from_.args[0], from_.flags.get("platform"), [], from_)


class _Directives:
    """Parser directives: ``# key=value`` lines, only before any instruction, comment or blank line."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.done = False

    def feed(self, line: str, number: int) -> str | None:
        """The directive name when ``line`` is one (its value recorded), else None (and no more follow)."""
        if self.done:
            return None
        match = _DIRECTIVE.match(line[1:].lstrip()) if line.startswith("#") else None
        key = match.group(1).lower() if match else ""
        if key not in DIRECTIVES:
            self.done = True
            return None
        if key in self.values:
            raise _LineError(number, f"only one {key} parser directive can be used")
        if key == "escape" and match.group(2) not in ("\\", "`"):
            raise _LineError(number, f"invalid escape token '{match.group(2)}' does not match ` or \\")
        self.values[key] = match.group(2)
        return key


class _Reader:
    """Turns the text into logical lines (continuations joined) and those into instructions."""

    def __init__(self, text: str) -> None:
        self.lines = _split_lines(text)
        self.pos = 0
        self.directives = _Directives()
        self.warnings: list[str] = []
        self.escape = "\\"
        self._set_continuation()

    def _set_continuation(self) -> None:
        e = re.escape(self.escape)
        self.continuation = re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")

    def _next_raw(self, *, first: bool) -> str:
        """The next line without its line ending (and leading blanks, for the first line of an instruction)."""
        raw = self.lines[self.pos]
        self.pos += 1
        token = raw.rstrip("\r\n")
        if first:
            token = token.lstrip()
        if self.directives.feed(token, self.pos) == "escape":
            self.escape = self.directives.values["escape"]
            self._set_continuation()
        return token

    def _trim_continuation(self, token: str) -> tuple[str, bool]:
        """(the line without its continuation token, whether the logical line ends here)."""
        if self.continuation.search(token):
            return self.continuation.sub(lambda m: m.group(1) or "", token), False
        return token, True

    def instructions(self) -> Iterator[Instruction]:
        while self.pos < len(self.lines):
            token = self._next_raw(first=True)
            if _is_comment(token):
                token = ""
            start = self.pos
            text, ended = self._trim_continuation(token)
            if ended and not text:
                continue
            parts = [text]
            blank_continuation = False
            while not ended and self.pos < len(self.lines):
                token = self._next_raw(first=False)
                if _is_comment(token):
                    continue
                if not token.strip():
                    blank_continuation = True
                    continue
                text, ended = self._trim_continuation(token)
                parts.append(text)
            line = "".join(parts)
            if blank_continuation:
                self.warnings.append(f"Empty continuation line found in: {line}")
            instruction = _instruction(line, self.escape, start, self.pos)
            if _can_have_heredocs(instruction) and "<<" in line:
                self._read_heredocs(instruction, start)
            yield instruction

    def _read_heredocs(self, instruction: Instruction, start: int) -> None:
        for heredoc in _heredocs_in(instruction.original):
            body: list[str] = []
            while True:
                if self.pos >= len(self.lines):
                    raise _LineError(start, "unterminated heredoc")
                raw = self.lines[self.pos]
                self.pos += 1
                candidate = raw.rstrip("\r\n")
                if (candidate.lstrip("\t") if heredoc.chomp else candidate) == heredoc.name:
                    break
                body.append(raw.lstrip("\t") if heredoc.chomp else raw)
            heredoc.content = "".join(body)
            instruction.heredocs.append(heredoc)
        instruction.end_line = self.pos
        if instruction.trigger is not None:
            instruction.trigger.heredocs = instruction.heredocs


def _split_lines(text: str) -> list[str]:
    """Lines with their ``\\n`` endings, as Go's line scanner gives them (a lone ``\\r`` is no line break)."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _can_have_heredocs(instruction: Instruction) -> bool:
    target = instruction.trigger if instruction.keyword == "ONBUILD" else instruction
    return target is not None and target.keyword in _HEREDOC_INSTRUCTIONS and not target.json_form


def _heredocs_in(line: str) -> list[Heredoc]:
    """The heredoc markers among the words of ``line`` (``<<EOF``, ``<<-EOF``, ``<<"EOF"``, ``3<<EOF``)."""
    try:
        words = ShellLexer("\\", keep_unset=True, raw_quotes=True, raw_escapes=True).process(line)[1]
    except InvalidArgument:
        return []  # Docker ignores a line its lexer cannot split here; the instruction keeps its text
    return [doc for doc in map(heredoc_marker, words) if doc is not None]


def heredoc_marker(word: str) -> Heredoc | None:
    """The heredoc a word such as ``<<-"EOF"`` opens (content still empty), or None for any other word."""
    match = _HEREDOC_WORD.fullmatch(word)
    if not match or not match.group(3):
        return None
    rest = match.group(3)
    try:
        plain = ShellLexer("\\", keep_unset=True).process(rest)[1]
        raw = ShellLexer("\\", keep_unset=True, raw_quotes=True).process(rest)[1]
    except InvalidArgument:
        return None
    if len(plain) != 1 or len(raw) != 1:
        return None
    quotes = (plain[0].count("'") + plain[0].count('"'), raw[0].count("'") + raw[0].count('"'))
    return Heredoc(name=plain[0], content="", expand=quotes[0] == quotes[1], chomp=match.group(2) == "-",
                   fd=int(match.group(1) or 0))


# -- one logical line into an Instruction ---------------------------------------------------------------------


def _instruction(line: str, escape: str, start: int, end: int) -> Instruction:
    """Parse and check one logical line, as buildkit's parser and instruction parser do together."""
    try:
        instruction = _split_instruction(line, escape)
        _check(instruction)
    except _ArgError as exc:
        raise _LineError(start, str(exc)) from None
    instruction.line, instruction.end_line = start, end
    if instruction.trigger is not None:
        instruction.trigger.line, instruction.trigger.end_line = start, end
    return instruction


class _ArgError(Exception):
    """A problem with one instruction; the reader adds the line."""


def parse_instruction(text: str, escape: str = "\\") -> Instruction:
    """One instruction on its own (an ONBUILD trigger read from an image config), checked like ``parse``."""
    try:
        return _instruction(text, escape, 1, 1)
    except _LineError as exc:
        raise InvalidArgument(str(exc)) from None


def _split_instruction(line: str, escape: str) -> Instruction:
    parts = _BLANKS.split(line.strip(), maxsplit=1)
    word = parts[0]
    rest, raw_flags = _extract_flags(parts[1], escape) if len(parts) == 2 else ("", [])
    rest = rest.strip()
    keyword = word.upper()
    if keyword not in INSTRUCTIONS:
        raise _ArgError(f"unknown instruction: {word}" + _suggestion(word, INSTRUCTIONS))
    instruction = Instruction(keyword=keyword, args=[], original=line.strip())
    _parse_flags(instruction, raw_flags)
    _ARG_PARSERS[keyword](instruction, rest, escape)
    return instruction


def _extract_flags(text: str, escape: str) -> tuple[str, list[str]]:
    """Leading ``--name[=value]`` words (quotes and escapes removed), and the text after them."""
    flags: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if not text.startswith("--", pos):
            return text[pos:], flags
        flag, pos, quoted = _flag_word(text, pos, escape)
        if flag == "--":
            return text[pos:], flags
        if flag or quoted:
            flags.append(flag)


def _flag_word(text: str, pos: int, escape: str) -> tuple[str, int, bool]:
    out: list[str] = []
    quote, quoted = "", False
    while pos < len(text):
        ch = text[pos]
        if not quote and ch.isspace():
            break
        pos += 1
        if not quote and ch in "'\"":
            quote, quoted = ch, True
            continue
        if quote and ch == quote:
            quote = ""
            continue
        if ch == escape:
            if pos == len(text):
                quote = ""
                continue
            ch, pos = text[pos], pos + 1
        out.append(ch)
    return "".join(out), pos, quoted


def _parse_flags(instruction: Instruction, raw_flags: list[str]) -> None:
    """Check the flags against what the instruction accepts (buildkit's BFlags.Parse) and record them."""
    keyword = instruction.keyword
    if keyword in _FLAGS_UNCHECKED:
        instruction.flags = dict(f[2:].partition("=")[::2] for f in raw_flags)
        return
    accepted = _FLAGS.get(keyword, {})
    for raw in raw_flags:
        name, has_value, value = raw[2:].partition("=")
        kind = accepted.get(name)
        if kind is None:
            raise _ArgError(f"unknown flag: --{name}" + _suggestion(name, list(accepted), case_sensitive=True))
        if name in instruction.flags and kind != _STRINGS:
            raise _ArgError(f"duplicate flag specified: --{name}")
        if kind == _BOOL:
            if has_value and not value:
                raise _ArgError(f"missing a value on flag: --{name}")
            if value.lower() not in ("", "true", "false"):
                raise _ArgError(f"expecting boolean value for flag --{name}, not: {value}")
            value = "false" if value.lower() == "false" else "true"
        elif not has_value:
            raise _ArgError(f"missing a value on flag: --{name}")
        instruction.flags[name] = value
        if kind == _STRINGS:
            instruction.flag_values.setdefault(name, []).append(value)


def _suggestion(word: str, options: list[str] | tuple[str, ...], *, case_sensitive: bool = False) -> str:
    """`` (did you mean X?)`` for a near miss (edit distance below 3), as buildkit's suggest package."""
    needle = word if case_sensitive else word.lower()
    best, best_distance = "", 3
    for option in options:
        candidate = option if case_sensitive else option.lower()
        if candidate == needle:
            return ""
        distance = _levenshtein(needle, candidate)
        if distance < best_distance:
            best, best_distance = candidate, distance
    if not best:
        return ""
    if not case_sensitive and word == word.upper():
        best = best.upper()
    return f" (did you mean {best}?)"


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


# Argument forms (buildkit's line parsers).


def _json_array(rest: str) -> list[str] | None:
    """The exec form's array, or None when ``rest`` is not a JSON array (then it is the shell form)."""
    try:
        return json_args(rest)
    except InvalidArgument as e:  # re-raised with the instruction's line by the caller
        raise _ArgError(str(e)) from None


def _args_maybe_json(ins: Instruction, rest: str, escape: str) -> None:
    array = _json_array(rest)
    if array is not None:
        ins.args, ins.json_form = array, True
    elif rest:
        ins.args = [rest]


def _args_maybe_json_list(ins: Instruction, rest: str, escape: str) -> None:
    array = _json_array(rest)
    if array is not None:
        ins.args, ins.json_form = array, True
    else:
        _args_blank_separated(ins, rest, escape)


def _args_blank_separated(ins: Instruction, rest: str, escape: str) -> None:
    ins.args = _BLANKS.split(rest) if rest else []


def _args_string(ins: Instruction, rest: str, escape: str) -> None:
    ins.args = [rest] if rest else []


def _args_words(ins: Instruction, rest: str, escape: str) -> None:
    ins.args = split_words(rest, escape)


def _args_key_values(ins: Instruction, rest: str, escape: str) -> None:
    """``ENV k=v k2="v 2"`` or the old ``ENV k v w`` (one pair, the value is the rest of the line)."""
    words = split_words(rest, escape)
    if not words:
        return
    if "=" not in words[0]:
        parts = _BLANKS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _ArgError(f"{ins.keyword} must have two arguments")
        ins.args = [f"{parts[0]}={parts[1]}"]
        return
    for word in words:
        if "=" not in word:
            raise _ArgError(f"Syntax error - can't find = in {json.dumps(word)}. Must be of the form: name=value")
    ins.args = words


def _args_healthcheck(ins: Instruction, rest: str, escape: str) -> None:
    """``HEALTHCHECK CMD ...``: the type word, then the command in exec or shell form."""
    if not rest:
        return
    kind, _, command = rest.partition(next((ch for ch in rest if ch.isspace()), "\0"))
    _args_maybe_json(ins, command.lstrip(), escape)
    ins.args.insert(0, kind)


def _args_onbuild(ins: Instruction, rest: str, escape: str) -> None:
    if rest:
        ins.args = [rest]
        ins.trigger = _split_instruction(rest, escape)


_ARG_PARSERS = {
    "ADD": _args_maybe_json_list, "ARG": _args_words, "CMD": _args_maybe_json, "COPY": _args_maybe_json_list,
    "ENTRYPOINT": _args_maybe_json, "ENV": _args_key_values, "EXPOSE": _args_blank_separated,
    "FROM": _args_blank_separated, "HEALTHCHECK": _args_healthcheck, "LABEL": _args_key_values,
    "MAINTAINER": _args_string, "ONBUILD": _args_onbuild, "RUN": _args_maybe_json, "SHELL": _args_maybe_json,
    "STOPSIGNAL": _args_string, "USER": _args_string, "VOLUME": _args_maybe_json_list, "WORKDIR": _args_string,
}


# Checks per instruction (buildkit's instructions package), run at parse time so errors name the line.


def _check(ins: Instruction) -> None:
    checker = _CHECKS.get(ins.keyword)
    if checker is not None:
        checker(ins)


def _at_least_one(ins: Instruction) -> None:
    if not ins.args:
        raise _ArgError(f"{ins.keyword} requires at least one argument")


def _exactly_one(ins: Instruction) -> None:
    if len(ins.args) != 1:
        raise _ArgError(f"{ins.keyword} requires exactly one argument")


def _check_key_values(ins: Instruction) -> None:
    _at_least_one(ins)
    if any(not key for key, _ in ins.pairs()):
        raise _ArgError(f"{ins.keyword} names can not be blank")


def _check_copy(ins: Instruction) -> None:
    if len(ins.args) < 2:
        raise _ArgError(f"{ins.keyword} requires at least two arguments, but only one was provided. "
                        "Destination could not be determined")
    if not ins.json_form and heredoc_marker(ins.args[-1]) is not None:
        raise _ArgError(f"{ins.keyword} cannot accept a heredoc as a destination")


def _check_from(ins: Instruction) -> None:
    if len(ins.args) == 3 and ins.args[1].lower() == "as":
        if not _STAGE_NAME.fullmatch(ins.args[2].lower()):
            raise _ArgError(f"invalid name for build stage: {json.dumps(ins.args[2])}, "
                            "name can't start with a number or contain symbols")
    elif len(ins.args) != 1:
        raise _ArgError("FROM requires either one or three arguments")


def _check_onbuild(ins: Instruction) -> None:
    _at_least_one(ins)
    assert ins.trigger is not None
    if ins.trigger.keyword == "ONBUILD":
        raise _ArgError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if ins.trigger.keyword in ("MAINTAINER", "FROM"):
        raise _ArgError(f"{ins.trigger.keyword} isn't allowed as an ONBUILD trigger")
    _check(ins.trigger)


def _check_run(ins: Instruction) -> None:
    _at_least_one(ins)
    network = ins.flags.get("network")
    if network is not None and network not in ("default", "none", "host"):
        raise _ArgError(f"invalid network mode {json.dumps(network)}")
    security = ins.flags.get("security")
    if security is not None and security not in ("sandbox", "insecure"):
        raise _ArgError(f"security {json.dumps(security)} is not valid")
    for mount in ins.flag_values.get("mount", []):
        try:
            mount_options(mount)
        except InvalidArgument as exc:
            raise _ArgError(str(exc)) from None


def _check_shell(ins: Instruction) -> None:
    _at_least_one(ins)
    if not ins.json_form:
        raise _ArgError("SHELL requires the arguments to be in JSON form")


def _check_volume(ins: Instruction) -> None:
    _at_least_one(ins)
    if any(not v.strip() for v in ins.args):
        raise _ArgError("VOLUME specified can not be an empty string")


def _check_arg(ins: Instruction) -> None:
    _at_least_one(ins)
    if any(not key for key, _ in ins.pairs()):
        raise _ArgError("ARG names can not be blank")


def _check_healthcheck(ins: Instruction) -> None:
    _at_least_one(ins)
    kind, command = ins.args[0].upper(), ins.args[1:]
    if kind == "NONE":
        if command:
            raise _ArgError("HEALTHCHECK NONE takes no arguments")
        return  # Docker reads no flags for NONE, so none are refused either
    if kind != "CMD":
        raise _ArgError(f"Unknown type {json.dumps(kind)} in HEALTHCHECK (try CMD)")
    if not command:
        raise _ArgError("Missing command after HEALTHCHECK CMD")
    for name in ("interval", "timeout", "start-period", "start-interval"):
        if ins.flags.get(name):
            try:
                nanos = go_duration(ins.flags[name])
            except InvalidArgument as exc:
                raise _ArgError(str(exc)) from None
            if 0 < abs(nanos) < 1_000_000 or nanos < 0:
                raise _ArgError(f"Interval {json.dumps(name)} cannot be less than 1ms")
    retries = ins.flags.get("retries")
    if retries:
        if not re.fullmatch(r"[+-]?\d+", retries):
            raise _ArgError(f'strconv.ParseInt: parsing {json.dumps(retries)}: invalid syntax')
        if int(retries) < 0:
            raise _ArgError(f"--retries cannot be negative ({int(retries)})")


_CHECKS = {
    "ADD": _check_copy, "ARG": _check_arg, "COPY": _check_copy, "ENV": _check_key_values, "EXPOSE": _at_least_one,
    "FROM": _check_from, "HEALTHCHECK": _check_healthcheck, "LABEL": _check_key_values, "MAINTAINER": _exactly_one,
    "ONBUILD": _check_onbuild, "RUN": _check_run, "SHELL": _check_shell, "STOPSIGNAL": _exactly_one,
    "USER": _exactly_one, "VOLUME": _check_volume, "WORKDIR": _exactly_one,
}


# -- expansion -------------------------------------------------------------------------------------------------


def expand(word: str, env: Mapping[str, str], *, keep_unset: bool = False, escape: str = "\\") -> str:
    """Docker's shell-word substitution of one word: quotes removed, ``$VAR``/``${VAR...}`` expanded."""
    return expand_word(word, env, escape=escape, keep_unset=keep_unset)


def expand_words(word: str, env: Mapping[str, str], *, keep_unset: bool = False, escape: str = "\\") -> list[str]:
    """Like ``expand``, then split on unquoted blanks (EXPOSE ``$PORTS`` with ``PORTS="80 443"``)."""
    return _expand_words(word, env, escape=escape, keep_unset=keep_unset)


def expand_heredoc(content: str, env: Mapping[str, str]) -> str:
    """A heredoc body with ``$VAR`` expanded as buildkit does it: quotes are plain text, ``\\`` escapes."""
    return ShellLexer("\\", process_quotes=False).process(content, env)[0]


def run_script(instruction: Instruction) -> tuple[str, Heredoc | None]:
    """What a shell-form RUN hands to its shell, heredocs included (buildkit's rules).

    ``RUN <<EOF`` alone runs the heredoc's body as the script; when that body starts with ``#!`` the
    answer is ``("", heredoc)``: the builder writes it to a file (mode 0755) and executes the file. Other
    heredocs are appended after the command line, each with its terminator, for the shell to read.
    """
    command = instruction.args[0] if instruction.args else ""
    if not instruction.heredocs:
        return command, None
    first = instruction.heredocs[0]
    if heredoc_marker(command) is not None:
        return ("", first) if first.content.startswith("#!") else (first.content, None)
    return command + "".join(f"\n{doc.content}{doc.name}" for doc in instruction.heredocs), None


def onbuild_expression(instruction: Instruction) -> str:
    """The trigger an ONBUILD stores in the image config (``OnBuild``), heredoc bodies included, so that
    ``parse_instruction``/``parse`` read it back whole in the child build."""
    text = re.sub(r"(?i)^\s*ONBUILD\s*", "", instruction.original)
    return text + "".join(f"\n{doc.content}{doc.name}" for doc in instruction.heredocs)


def mount_options(value: str) -> dict[str, str]:
    """``--mount=type=cache,target=/x,ro`` as a dict (a bare word such as ``ro`` maps to ``"true"``)."""
    try:
        fields = next(csv.reader([value]), [])
    except csv.Error as exc:
        raise InvalidArgument(f"invalid mount {value}: {exc}") from None
    options: dict[str, str] = {}
    for item in fields:
        key, has_value, val = item.partition("=")
        key = key.strip().lower()
        if not has_value and key not in ("ro", "readonly", "rw", "readwrite", "required"):
            raise InvalidArgument(f"invalid field '{item}' must be a key=value pair")
        options[key] = val if has_value else "true"
    kind = options.get("type", "bind")
    if kind not in ("bind", "cache", "tmpfs", "secret", "ssh"):
        raise InvalidArgument(f"unsupported mount type {json.dumps(kind)}")
    return options


# -- stages and their bases ------------------------------------------------------------------------------------


def meta_args(dockerfile: Dockerfile, build_args: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The global ARGs' values (a ``--build-arg`` wins over the default), plus proxy args given as build args.

    Each default is expanded with the global ARGs before it, as Docker does; an ARG without a value
    and without a build arg stays unset.
    """
    given = dict(build_args or {})
    values = {k: v for k, v in given.items() if k in PROXY_ARGS and v is not None}
    for instruction in dockerfile.global_args:
        for key, default in instruction.pairs():
            key = expand(key, values, escape=dockerfile.escape)
            value = expand(default, values, escape=dockerfile.escape) if default is not None else None
            if given.get(key) is not None:
                value = given[key]
            if value is not None:
                values[key] = value
            else:
                values.pop(key, None)
    return values


def stage_bases(dockerfile: Dockerfile, build_args: Mapping[str, str | None] | None = None) -> list[str]:
    """Each stage's FROM image with the global ARGs expanded (FROM sees no other variables)."""
    env = meta_args(dockerfile, build_args)
    bases = []
    for stage in dockerfile.stages:
        base = expand(stage.base, env, escape=dockerfile.escape)
        if not base:
            raise InvalidArgument(f"dockerfile parse error on line {stage.from_instruction.line}: "
                                  f"base name ({stage.base}) should not be blank")
        bases.append(base)
    return bases


def stages_needed(dockerfile: Dockerfile, target: str | None,
                  build_args: Mapping[str, str | None] | None = None) -> list[Stage]:
    """The stages the target (default: the last stage) needs, itself included, in build order.

    A stage needs the earlier stage its FROM names, and those its ``COPY --from`` and ``RUN --mount
    from=`` name (by name or index), transitively. FROM and ``--from`` are read after expanding the
    global ARGs with ``build_args``.
    """
    if target:
        found = [s for s in dockerfile.stages if s.name is not None and s.name == target.lower()]
        if not found:
            raise InvalidArgument(f"target stage {json.dumps(target)} could not be found")
        goal = found[0]
    else:
        goal = dockerfile.stages[-1]
    env = meta_args(dockerfile, build_args)
    needed, todo = {goal.index}, [goal]
    while todo:
        for dependency in _dependencies(dockerfile, todo.pop(), env):
            if dependency.index not in needed:
                needed.add(dependency.index)
                todo.append(dependency)
    return [s for s in dockerfile.stages if s.index in needed]


def _dependencies(dockerfile: Dockerfile, stage: Stage, env: Mapping[str, str]) -> Iterator[Stage]:
    refs = [stage.base]
    for instruction in stage.instructions:
        if instruction.keyword == "COPY" and instruction.flags.get("from"):
            refs.append(instruction.flags["from"])
        if instruction.keyword == "RUN":
            refs += [m["from"] for m in map(mount_options, instruction.flag_values.get("mount", [])) if m.get("from")]
    for ref in refs:
        try:
            name = expand(ref, env, escape=dockerfile.escape)
        except InvalidArgument:
            continue  # the builder reports it when it runs the step
        earlier = dockerfile.stage(name)
        if earlier is not None and earlier.index < stage.index:
            yield earlier
