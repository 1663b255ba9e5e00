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
from collections.abc import Callable, Iterable, Iterator

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


def _json_args(rest: str) -> list[str] | None:
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
    args = _json_args(rest)
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
    words = _split_words(rest)
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
    args = _json_args(rest)
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
    args = _json_args(command)
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


# Word splitting and expansion as Dockerfile instructions do it (buildkit's shell lexer, the subset
# that matters for configs: quotes, escapes, $VAR, ${VAR}, ${VAR:-x} ${VAR-x} ${VAR:+x} ${VAR+x} ${VAR:?x}).


def _split_words(rest: str) -> list[str]:
    """Split on unquoted whitespace, keeping quotes and escapes in the words (Docker's parseWords)."""
    words, current, quote, i, in_word = [], [], "", 0, False
    while i < len(rest):
        ch = rest[i]
        if not quote and ch.isspace():
            if in_word:
                words.append("".join(current))
            current, in_word = [], False
        elif ch == "\\" and quote != "'" and i + 1 < len(rest):
            current += [ch, rest[i + 1]]
            in_word, i = True, i + 1
        else:
            if ch in "'\"" and (not quote or ch == quote):
                quote = "" if quote else ch
            current.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(current))
    return words


def expand_word(word: str, env: dict[str, str]) -> str:
    """One word with quotes removed and variables expanded (buildkit's ProcessWord)."""
    return "".join(ch for ch, _ in _Expander(word, env).run())


def expand_words(word: str, env: dict[str, str]) -> list[str]:
    """Like ``expand_word`` but split on unquoted whitespace, also inside expanded values (ProcessWords)."""
    words, current, started = [], [], False
    for ch, quoted in _Expander(word, env).run():
        if ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    return words


class _Expander:
    """A tiny recursive-descent lexer yielding (character, was_quoted) pairs."""

    def __init__(self, text: str, env: dict[str, str]) -> None:
        self.text, self.pos, self.env = text, 0, env

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def run(self, stop: str = "") -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        while self.pos < len(self.text) and self.peek() != stop:
            ch = self.take()
            if ch == "'":
                out += [(c, True) for c in self._single_quoted()]
            elif ch == '"':
                out += self._double_quoted()
            elif ch == "\\":
                if self.pos < len(self.text):
                    out.append((self.take(), True))
            elif ch == "$":
                out += [(c, False) for c in self._dollar()]
            else:
                out.append((ch, False))
        return out

    def _single_quoted(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise InvalidArgument("unexpected end of statement while looking for matching single-quote")
        value, self.pos = self.text[self.pos:end], end + 1
        return value

    def _double_quoted(self) -> list[tuple[str, bool]]:
        out = []
        while True:
            if self.pos >= len(self.text):
                raise InvalidArgument("unexpected end of statement while looking for matching double-quote")
            ch = self.take()
            if ch == '"':
                return out
            if ch == "\\" and self.peek() in ('"', "$", "\\"):
                out.append((self.take(), True))
            elif ch == "$":
                out += [(c, True) for c in self._dollar()]
            else:
                out.append((ch, True))

    def _dollar(self) -> str:
        if self.peek() != "{":
            name = self._name()
            return self.env.get(name, "") if name else "$"
        self.take()
        name = self._name()
        if not name:
            raise InvalidArgument(f"bad substitution in {self.text!r}")
        if self.peek() == "}":
            self.take()
            return self.env.get(name, "")
        return self._modifier(name)

    def _modifier(self, name: str) -> str:
        colon = self.peek() == ":"
        if colon:
            self.take()
        op = self.take()
        if op not in "-+?":
            raise InvalidArgument(f"unsupported modifier ({op}) in substitution in {self.text!r}")
        word = "".join(ch for ch, _ in self.run(stop="}"))
        if self.take() != "}":
            raise InvalidArgument(f"missing '}}' in {self.text!r}")
        is_set = name in self.env and (not colon or self.env[name] != "")
        if op == "-":
            return self.env[name] if is_set else word
        if op == "+":
            return word if is_set else ""
        if not is_set:
            raise InvalidArgument(f"{name}: {word or 'is not allowed to be unset'}")
        return self.env[name]

    def _name(self) -> str:
        match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]").match(self.text, self.pos)
        if not match:
            return ""
        self.pos = match.end()
        return match.group()
