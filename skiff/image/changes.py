"""Dockerfile instructions as ``docker commit --change`` and ``docker import --change`` accept them.

``apply_changes`` turns lines such as ``CMD ["nginx"]`` or ``ENV A=1 B=2`` into the image config's
``config`` object, with Docker's word splitting, variable expansion and port/volume forms; the
builder's Dockerfile parser reuses the expansion helpers.
"""

from __future__ import annotations

import json
import posixpath
import re
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping

from skiff.errors import InvalidArgument

_CHANGE_COMMANDS = ("cmd", "entrypoint", "env", "expose", "healthcheck", "label", "onbuild", "stopsignal",
                    "user", "volume", "workdir")
_CONFIG_FIELDS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
                  "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")
_DEFAULT_SHELL = ["/bin/sh", "-c"]


class _ChangeState:
    """The container config being built, plus what Docker's dispatcher tracks beside it."""

    def __init__(self, config: dict | None) -> None:
        self.config = dict(config or {})
        self.cmd_set = False

    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in self.config.get("Env") or [])


def apply_changes(changes: Iterable[str], config: dict | None = None) -> dict:
    """The image's container config (``config`` of the image config) after ``--change`` instructions.

    Parsed and applied as Docker does: the lines form a small Dockerfile (comments, ``\\``
    continuations), only the instructions ``docker import``/``commit`` allow are accepted, and
    values are expanded against the environment set so far. The result is in Docker's field order
    with empty fields left out, as Go's ``omitempty`` writes it. Anything malformed is InvalidArgument.
    """
    state = _ChangeState(config)
    for line in _logical_lines(changes):
        keyword, flags, rest = _split_instruction(line)
        if keyword.lower() not in _CHANGE_COMMANDS:
            raise InvalidArgument(f"{keyword.lower()} is not a valid change command")
        if keyword.lower() != "healthcheck" and flags:
            raise InvalidArgument(f"Unknown flag: {flags[0].lstrip('-').split('=', 1)[0]}")
        _DISPATCH[keyword.lower()](state, rest, flags, line)
    return _ordered_config(state.config)


def _ordered_config(config: dict) -> dict:
    out = {}
    for key in _CONFIG_FIELDS:
        value = config.get(key)
        if value in (None, "", [], {}, False):
            continue
        out[key] = dict(sorted(value.items())) if key in ("ExposedPorts", "Volumes", "Labels") else value
    return out


def _logical_lines(changes: Iterable[str]) -> Iterator[str]:
    if isinstance(changes, str):
        raise InvalidArgument("changes must be a list of instructions, not one string")
    pending = ""
    for raw in "\n".join(changes).split("\n"):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1]
            continue
        line, pending = pending + stripped, ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def _split_instruction(line: str) -> tuple[str, list[str], str]:
    """``KEYWORD [--flag=v ...] rest`` → (keyword, flags, rest), as Docker's parser splits a line."""
    parts = line.split(None, 1)
    keyword, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    flags = []
    while rest.startswith("--"):
        word, rest = _first_word(rest)
        if word == "--":
            break
        flags.append(word)
    return keyword, flags, rest


def _first_word(text: str) -> tuple[str, str]:
    parts = text.split(None, 1)
    return (parts[0] if parts else ""), (parts[1].strip() if len(parts) > 1 else "")


def _require(rest: str, keyword: str) -> None:
    if not rest.strip():
        raise InvalidArgument(f"{keyword} requires at least one argument")


def json_args(rest: str) -> list[str] | None:
    """The exec (JSON array) form's arguments, or None when ``rest`` is the shell form."""
    if not rest.lstrip().startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgument("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _command_line(rest: str, state: _ChangeState) -> list[str]:
    args = json_args(rest)
    if args is not None:
        return args
    return [*(state.config.get("Shell") or _DEFAULT_SHELL), rest]


def _do_cmd(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "CMD")
    state.config["Cmd"] = _command_line(rest, state)
    state.config["ArgsEscaped"] = False  # only Windows images escape arguments
    state.cmd_set = state.cmd_set or bool(state.config["Cmd"])


def _do_entrypoint(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "ENTRYPOINT")
    state.config["Entrypoint"] = _command_line(rest, state)
    state.config["ArgsEscaped"] = False
    if not state.cmd_set:  # Docker: an ENTRYPOINT resets a CMD inherited from before it
        state.config["Cmd"] = None


def _key_values(rest: str, keyword: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``k=v k2="v 2"`` or the legacy ``k v w`` form of ENV and LABEL, expanded against ``env``."""
    _require(rest, keyword)
    words = split_words(rest)
    if "=" not in words[0]:
        parts = rest.split(None, 1)
        if len(parts) < 2:
            raise InvalidArgument(f"{keyword} must have two arguments")
        pairs = [(parts[0], parts[1])]
    else:
        pairs = []
        for word in words:
            if "=" not in word:
                raise InvalidArgument(f"Syntax error - can't find = in {word!r}. Must be of the form: name=value")
            key, value = word.split("=", 1)
            pairs.append((key, value))
    result = []
    for key, value in pairs:
        if not key:
            raise InvalidArgument(f"{keyword} names can not be blank")
        result.append((expand_word(key, env), expand_word(value, env)))
    return result


def _do_env(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    env = list(state.config.get("Env") or [])
    for key, value in _key_values(rest, "ENV", state.env):
        keys = [e.split("=", 1)[0] for e in env]
        if key in keys:
            env[keys.index(key)] = f"{key}={value}"
        else:
            env.append(f"{key}={value}")
    state.config["Env"] = env


def _do_label(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    labels = dict(state.config.get("Labels") or {})
    labels.update(_key_values(rest, "LABEL", state.env))
    state.config["Labels"] = labels


def _do_expose(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "EXPOSE")
    ports = dict(state.config.get("ExposedPorts") or {})
    for raw in rest.split():
        for spec in expand_words(raw, state.env):
            ports.update((p, {}) for p in _port_spec(spec))
    state.config["ExposedPorts"] = ports


def _port_spec(spec: str) -> list[str]:
    """``[ip:[host:]]port[-end][/proto]`` → the container ports it exposes, as ``80/tcp``."""
    container = spec.rsplit(":", 1)[-1] if not spec.startswith("[") else spec.rsplit("]:", 1)[-1].rsplit(":", 1)[-1]
    port, _, proto = container.partition("/")
    proto = (proto or "tcp").lower()
    if not port:
        raise InvalidArgument(f"no port specified: {spec}<empty>")
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"invalid proto: {proto}")
    start, _, end = port.partition("-")
    try:
        first, last = int(start), int(end or start)
    except ValueError:
        raise InvalidArgument(f"invalid containerPort: {port}") from None
    if not 0 <= first <= last <= 65535:
        raise InvalidArgument(f"invalid containerPort: {port}")
    return [f"{p}/{proto}" for p in range(first, last + 1)]


def _do_user(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "USER")
    state.config["User"] = expand_word(rest, state.env)


def _do_workdir(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "WORKDIR")
    requested = expand_word(rest, state.env)
    if not requested:
        raise InvalidArgument("cannot normalize nothing")
    if not requested.startswith("/"):
        requested = posixpath.join("/", state.config.get("WorkingDir") or "", requested)
    state.config["WorkingDir"] = "/" + posixpath.normpath(requested).lstrip("/")


def _do_volume(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "VOLUME")
    args = json_args(rest)
    volumes = dict(state.config.get("Volumes") or {})
    for raw in args if args is not None else rest.split():
        path = expand_word(raw, state.env)
        if not path:
            raise InvalidArgument("VOLUME specified can not be an empty string")
        volumes[path] = {}
    state.config["Volumes"] = volumes


def _do_stopsignal(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "STOPSIGNAL")
    value = expand_word(rest, state.env)
    if not _valid_signal(value):
        raise InvalidArgument(f"Invalid signal: {value}")
    state.config["StopSignal"] = value


def _valid_signal(text: str) -> bool:
    if re.fullmatch(r"-?\d+", text):
        return int(text) != 0
    name = text.upper().removeprefix("SIG")
    if match := re.fullmatch(r"RTMIN(?:\+(\d+))?|RTMAX(?:-(\d+))?", name):
        up, down = int(match.group(1) or 0), int(match.group(2) or 0)
        return signal.SIGRTMIN <= signal.SIGRTMIN + up - down + (signal.SIGRTMAX - signal.SIGRTMIN) * (
            name.startswith("RTMAX")) <= signal.SIGRTMAX
    return ("SIG" + name) in signal.Signals.__members__


def _do_onbuild(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "ONBUILD")
    trigger = rest.split(None, 1)[0].upper()
    if trigger == "ONBUILD":
        raise InvalidArgument("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise InvalidArgument(f"{trigger} isn't allowed as an ONBUILD trigger")
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), re.sub(r"(?i)^\s*ONBUILD\s*", "", line)]


_HEALTH_FLAGS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval"}


def _do_healthcheck(state: _ChangeState, rest: str, flags: list[str], line: str) -> None:
    _require(rest, "HEALTHCHECK")
    kind, command = _first_word(rest)
    kind = kind.upper()
    if kind == "NONE":
        if command:
            raise InvalidArgument("HEALTHCHECK NONE takes no arguments")
        state.config["Healthcheck"] = {"Test": ["NONE"]}
        return
    if kind != "CMD":
        raise InvalidArgument(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    args = json_args(command)
    if not (command if args is None else args):
        raise InvalidArgument("Missing command after HEALTHCHECK CMD")
    health: dict = {"Test": ["CMD", *args] if args is not None else ["CMD-SHELL", command]}
    health.update(_health_flags(flags))
    state.config["Healthcheck"] = {k: health[k] for k in ("Test", "Interval", "Timeout", "StartPeriod",
                                                          "StartInterval", "Retries") if health.get(k)}


def _health_flags(flags: list[str]) -> dict:
    out: dict = {}
    for flag in flags:
        name, _, value = flag[2:].partition("=")
        if name == "retries":
            if value and (not re.fullmatch(r"-?\d+", value) or int(value) < 0):
                raise InvalidArgument("--retries cannot be negative" if value.startswith("-")
                                      else f"invalid --retries {value!r}")
            out["Retries"] = int(value or 0)
        elif name in _HEALTH_FLAGS:
            nanos = go_duration(value) if value else 0
            if 0 < nanos < 1_000_000 or nanos < 0:
                raise InvalidArgument(f'Interval "{name}" cannot be less than 1ms')
            out[_HEALTH_FLAGS[name]] = nanos
        else:
            raise InvalidArgument(f"Unknown flag: {name}")
    return out


_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "h": 3_600_000_000_000}


def go_duration(text: str) -> int:
    """Nanoseconds in a Go duration string (``1m30s``, ``500ms``, ``-2h``), as ``time.ParseDuration``."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
    if body == "0":
        return 0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)", body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise InvalidArgument(f"time: invalid duration {text!r}")
    return sign * round(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


_DISPATCH: dict[str, Callable[[_ChangeState, str, list[str], str], None]] = {
    "cmd": _do_cmd, "entrypoint": _do_entrypoint, "env": _do_env, "expose": _do_expose,
    "healthcheck": _do_healthcheck, "label": _do_label, "onbuild": _do_onbuild, "stopsignal": _do_stopsignal,
    "user": _do_user, "volume": _do_volume, "workdir": _do_workdir,
}


# Word splitting and expansion as Dockerfile instructions do it: the rules of buildkit's shell lexer
# (quotes, escapes, $VAR, ${VAR}, ${VAR:-x} ${VAR-x} ${VAR:+x} ${VAR+x} ${VAR:?x} ${VAR?x}, ${VAR#p}
# ${VAR##p} ${VAR%p} ${VAR%%p}, ${VAR/p/r} ${VAR//p/r}). The Dockerfile parser (skiff.build) uses these
# with its escape token; ``docker commit --change`` uses them with the default one.


def split_words(rest: str, escape: str = "\\") -> list[str]:
    """Split on unquoted whitespace, keeping quotes and escapes in the words (Docker's parseWords).

    An escape token at the very end of the text is dropped; inside single quotes nothing is escaped.
    """
    words: list[str] = []
    current: list[str] = []
    quote, in_word, i = "", False, 0
    while i < len(rest):
        ch = rest[i]
        if not quote and ch.isspace():
            if in_word:
                words.append("".join(current))
            current, in_word = [], False
        elif ch == escape and quote != "'":
            if i + 1 < len(rest):
                current += [ch, rest[i + 1]]
                i += 1
            in_word = True
        else:
            if ch in "'\"" and (not quote or ch == quote):
                quote = "" if quote else ch
            current.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(current))
    return words


def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\", keep_unset: bool = False) -> str:
    """One word with quotes removed and variables expanded (buildkit's ProcessWord).

    With ``keep_unset`` a reference to an unset variable is left as written (``$X``, ``${X:-d}``)
    instead of expanding to the empty string or its default.
    """
    return ShellLexer(escape, keep_unset=keep_unset).process(word, env)[0]


def expand_words(word: str, env: Mapping[str, str], *, escape: str = "\\", keep_unset: bool = False) -> list[str]:
    """Like ``expand_word`` but split on unquoted whitespace, also inside expanded values (ProcessWords)."""
    return ShellLexer(escape, keep_unset=keep_unset).process(word, env)[1]


class ShellLexer:
    """buildkit's shell-word lexer: expands variables and removes quotes, giving the word and its words.

    ``raw_quotes`` and ``raw_escapes`` keep quote characters and escape tokens in the output; the
    Dockerfile parser uses them to find heredoc markers without altering them. With ``process_quotes``
    off, quotes are ordinary characters (how heredoc bodies are expanded).
    """

    def __init__(self, escape: str = "\\", *, keep_unset: bool = False, raw_quotes: bool = False,
                 raw_escapes: bool = False, process_quotes: bool = True) -> None:
        self.escape, self.keep_unset, self.raw_quotes, self.raw_escapes = escape, keep_unset, raw_quotes, raw_escapes
        self.specials = "$<'\"" if process_quotes else "$<"

    def process(self, text: str, env: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
        """(the word, the words) of ``text`` expanded against ``env``; errors name the text as Docker does."""
        try:
            return _LexState(self, text, env or {}).scan("", self.raw_escapes)
        except _LexError as exc:
            raise InvalidArgument(f"failed to process {json.dumps(text, ensure_ascii=False)}: {exc}") from None


class _LexError(Exception):
    """A syntax error inside one word; ShellLexer.process names the word."""


class _Words:
    """Collects the whitespace-separated words of an expansion; quoted or escaped characters never split."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.buf: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if not ch.isspace():
            self.add_raw(ch)
        elif self.in_word and any(self.buf):
            self.words.append("".join(self.buf))
            self.buf, self.in_word = [], False

    def add_text(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def done(self) -> list[str]:
        if "".join(self.buf):
            self.words.append("".join(self.buf))
        return self.words


_SPECIAL_PARAMS = "@*#?-$!0"


class _LexState:
    """One pass of the lexer over ``text``: a recursive-descent scanner."""

    def __init__(self, lexer: ShellLexer, text: str, env: Mapping[str, str]) -> None:
        self.lexer, self.text, self.env, self.pos = lexer, text, env, 0
        self.raw_escapes = lexer.raw_escapes

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def scan(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Up to ``stop`` (consumed) or the end of the text: the expanded text and its words."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._scan(stop)
        finally:
            self.raw_escapes = saved

    def _scan(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while self.pos < len(self.text):
            ch = self.peek()
            if stop and ch == stop:
                self.pos += 1
                return "".join(result), words.done()
            if ch == "$":
                value = self._dollar()
                words.add_text(value)
            elif ch in self.lexer.specials:
                value = {"'": self._single_quoted, '"': self._double_quoted, "<": self._maybe_heredoc}[ch]()
                words.add_raw(value)
            else:
                value = self.take()
                if value == self.lexer.escape:
                    if self.raw_escapes:
                        words.add_raw(value)
                        result.append(value)
                    if self.pos >= len(self.text):
                        break  # an escape token at the end of the word is dropped
                    value = self.take()
                    words.add_raw(value)
                else:
                    words.add_char(value)
            result.append(value)
        if stop:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.done()

    def _single_quoted(self) -> str:
        self.pos += 1
        end = self.text.find("'", self.pos)
        if end < 0:
            raise _LexError("unexpected end of statement while looking for matching single-quote")
        value, self.pos = self.text[self.pos:end], end + 1
        return f"'{value}'" if self.lexer.raw_quotes else value

    def _double_quoted(self) -> str:
        self.pos += 1
        out = ['"'] if self.lexer.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                raise _LexError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                if self.lexer.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self.pos += 1
            if ch == self.lexer.escape:
                if self.raw_escapes:
                    out.append(ch)
                if not self.peek():
                    continue  # the loop then reports the missing quote
                if self.peek() in ('"', "$", self.lexer.escape):
                    ch = self.take()
            out.append(ch)

    def _maybe_heredoc(self) -> str:
        """``<<`` plus the blanks after it stay one raw piece, so ``<< EOF`` is one word."""
        self.pos += 1
        if self.peek() != "<":
            return "<"
        self.pos += 1
        start = self.pos
        while self.peek() and self.peek() in " \t\r":
            self.pos += 1
        return "<<" + self.text[start:self.pos]

    def _name(self) -> str:
        ch = self.peek()
        if ch.isdigit():
            start = self.pos
            while self.peek().isdigit():
                self.pos += 1
            return self.text[start:self.pos]
        if ch and ch in _SPECIAL_PARAMS:
            return self.take()
        start = self.pos
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def _lookup(self, name: str) -> str | None:
        return self.env.get(name)

    def _dollar(self) -> str:
        self.pos += 1
        if self.peek() != "{":
            name = self._name()
            if not name:
                return "$"
            value = self._lookup(name)
            if value is None:
                return f"${name}" if self.lexer.keep_unset else ""
            return value
        self.pos += 1
        if not self.peek():
            raise _LexError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        op = self.take()
        if op == "}":
            value = self._lookup(name)
            if value is None:
                return f"${{{name}}}" if self.lexer.keep_unset else ""
            return value
        if not op:
            raise _LexError("syntax error: missing '}'")
        if op == "/":
            return self._replace(name)
        colon = op == ":"
        if colon:
            op = self.take()
        if not op or op not in "+-?#%" or (colon and op in "#%"):
            raise _LexError(f"unsupported modifier ({':' if colon else ''}{op}) in substitution")
        word = self._scan_to("}", raw_escapes=op in "#%")
        value = self._lookup(name)
        if value is None and self.lexer.keep_unset:
            return f"${{{name}{':' if colon else ''}{op}{word}}}"
        return self._apply(name, value, colon, op, word)

    def _scan_to(self, stop: str, *, raw_escapes: bool) -> str:
        try:
            return self.scan(stop, raw_escapes)[0]
        except _LexError:
            if not self.peek():
                raise _LexError(f"syntax error: missing '{stop}'" + (" in ${}" if stop == "/" else "")) from None
            raise

    def _apply(self, name: str, value: str | None, colon: bool, op: str, word: str) -> str:
        is_set = value is not None and (not colon or value != "")
        if op == "-":
            return value if is_set and value is not None else word
        if op == "+":
            return word if is_set else ""
        if op == "?":
            if value is None:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if not is_set:
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(op)
        return _trim(value or "", word[1:] if greedy else word, suffix=op == "%", greedy=greedy)

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.pos += 1
        pattern = self._scan_to("/", raw_escapes=True)
        replacement = self._scan_to("}", raw_escapes=True)
        value = self._lookup(name)
        if value is None and self.lexer.keep_unset:
            return f"${{{name}/{pattern}/{replacement}}}"
        regex = _shell_pattern(pattern, greedy=True)
        return regex.sub(lambda _: replacement, value or "", count=0 if replace_all else 1)


def _shell_pattern(pattern: str, *, greedy: bool) -> re.Pattern[str]:
    """A ``${VAR#pattern}``-style glob (``*``, ``?``, ``\\`` escapes; no brackets) as a regex."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
            if nxt in ("}", "/") and nxt:
                i += 1
                continue  # the escape only protected the ${} syntax; the next round adds the character
            if nxt not in ("*", "?", "\\"):
                raise _LexError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'")
            out.append(re.escape(nxt))
            i += 1
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _trim(value: str, pattern: str, *, suffix: bool, greedy: bool) -> str:
    """``${VAR#p}`` / ``${VAR##p}`` (prefix) and ``${VAR%p}`` / ``${VAR%%p}`` (suffix) trimming."""
    regex = _shell_pattern(pattern, greedy=greedy)
    cuts = range(len(value), -1, -1) if greedy else range(len(value) + 1)
    for cut in cuts:
        if suffix and regex.fullmatch(value, len(value) - cut):
            return value[:len(value) - cut]
        if not suffix and regex.fullmatch(value, 0, cut):
            return value[cut:]
    return value
