"""Parameters of HTTP header values: splitting outside quoted strings, unquoting (RFC 9110 5.6)."""

from __future__ import annotations


def split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside double-quoted strings (backslash escapes honoured)."""
    pieces: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif in_quotes and ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == sep and not in_quotes:
            pieces.append("".join(current))
            current = []
            continue
        current.append(ch)
    pieces.append("".join(current))
    return pieces


def unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    # An unterminated quote is tolerated: everything after it is the value.
    inner = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
    out: list[str] = []
    chars = iter(inner)
    for ch in chars:
        out.append(next(chars, "") if ch == "\\" else ch)
    return "".join(out)


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_token(text: str) -> bool:
    """An RFC 9110 token (a media type, a parameter name, a boundary without quotes)."""
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)
