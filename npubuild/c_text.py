"""Text for generated C and JSON: identifiers, comments, string and float literals, canonical JSON.
Pure functions, no project imports: every template user and every kind can use them."""

from __future__ import annotations

import re

import numpy as np

C_KEYWORDS = frozenset((
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert _Thread_local "
    "bool true false alignas alignof static_assert thread_local nullptr typeof").split())


def c_identifier(name: str) -> str:
    """A valid, unreserved C identifier from any name: other characters become '_'; a leading
    digit or underscore (reserved at file scope) gets an 'm' in front; a keyword gets a '_' after."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not ident or ident[0].isdigit() or ident[0] == "_":
        ident = "m" + ident
    return ident + "_" if ident in C_KEYWORDS else ident


def unique_c_identifiers(names: list[str]) -> list[str]:
    """c_identifier of each name, made unique even when upper-cased (macro names): names that
    collide get a suffix from a hash of the original name (stable across builds)."""
    import hashlib

    base = [c_identifier(n) for n in names]
    counts: dict[str, int] = {}
    for b in base:
        counts[b.upper()] = counts.get(b.upper(), 0) + 1
    out = [b if counts[b.upper()] == 1 else f"{b}_{hashlib.sha256(n.encode()).hexdigest()[:8]}"
           for b, n in zip(base, names, strict=True)]
    if len({o.upper() for o in out}) != len(out):  # only with identical names, which recipes reject
        raise ValueError(f"names do not give unique C identifiers: {names}")
    return out


def c_comment(text: str) -> str:
    """Text safe inside a /* */ comment."""
    return text.replace("*/", "* /").replace("/*", "/ *")


def c_string(text: str) -> str:
    """A C string literal for any text (non-ASCII as UTF-8 octal escapes)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F and ch != "?":  # '?' escaped: no trigraphs
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def float_literal(x: float) -> str:
    """A C float literal that reads back as the same float32 value."""
    return _float(x) + "f"


def _float(x: float) -> str:
    return repr(float(np.float32(x)))


def canonical_text(data: dict) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"
