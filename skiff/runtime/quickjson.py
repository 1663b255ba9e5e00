"""JSON without importing ``json``: the C scanner and encoder of ``_json``, used directly.

Why: ``import json`` pulls in ``re`` and ``enum`` (about 12 ms here), a quarter of runc's whole
start-to-exit time, and the runtime reads and writes JSON on every command. The C accelerator is
what ``json`` itself uses; only the error path falls back to the full module.
"""

from __future__ import annotations

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict = {}


_WHITESPACE = " \t\n\r"
_scanner = _json.make_scanner(_Context()) if _json else None
_encoder = (_json.make_encoder(None, None, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)
            if _json else None)


def loads(text: str | bytes):
    if isinstance(text, bytes):
        text = text.decode()
    if _scanner is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scanner(text, start)
    except (StopIteration, SystemError):
        # On bad input the C scanner needs json.decoder loaded to build its error: let json report it.
        value, end = None, -1
    if end < 0 or text[end:].strip(_WHITESPACE):
        import json

        return json.loads(text)  # raises json.JSONDecodeError with the position, as callers expect
    return value


def dumps(value) -> str:
    if _encoder is None:
        import json

        return json.dumps(value)
    return "".join(_encoder(value, 0))
