"""C generation helpers: identifiers, string literals and hex rows are exact."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npubuild.assets import c_identifier, c_string, hex_rows, padded_size


def test_hex_rows_round_trip():
    data = bytes(range(256)) * 3 + b"\x01\x02"
    text = hex_rows(data)
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", text)) == data
    assert text.count("\n") == (len(data) + 15) // 16 - 1
    assert hex_rows(b"") == ""


@pytest.mark.parametrize(("name", "ident"), [("kws", "kws"), ("my-model v2", "my_model_v2"), ("3d", "m3d"),
                                             ("", "m"), ("_silence_", "m_silence_"), ("int", "int_")])
def test_c_identifier(name, ident):
    assert c_identifier(name) == ident


def test_padded_size():
    assert [padded_size(n) for n in (0, 1, 16, 17)] == [0, 16, 16, 32]


def test_c_string_survives_a_real_compiler(tmp_path):
    texts = ['plain', 'quote " and \\ backslash', "*/ /* comment", "??= trigraph", "naïve café", "tab\tnew\nline"]
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is required"
    src = tmp_path / "s.c"
    body = "\n".join(f"    fputs({c_string(t)}, stdout); putchar(0);" for t in texts)
    src.write_text(f"#include <stdio.h>\nint main(void) {{\n{body}\n    return 0;\n}}\n")
    exe = tmp_path / "s"
    proc = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-std=c99", str(src), "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], capture_output=True).stdout
    assert out.split(b"\0")[:-1] == [t.encode() for t in texts]


def _decode_c_string(literal: str) -> bytes:
    """Undo c_string: a C string literal (only the escapes it uses) back to its bytes."""
    assert literal.startswith('"') and literal.endswith('"')
    body, out, i = literal[1:-1], bytearray(), 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] in '"\\':
                out.append(ord(body[i + 1]))
                i += 2
            else:
                out.append(int(body[i + 1:i + 4], 8))
                i += 4
        else:
            assert body[i] not in '"?', body  # no bare quote, no trigraph start
            out.append(ord(body[i]))
            i += 1
    return bytes(out)


IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=8, unique=True))
def test_any_names_give_valid_unique_identifiers_and_literals(names):
    from npubuild.c_text import C_KEYWORDS, unique_c_identifiers

    idents = unique_c_identifiers(names)
    assert len({i.upper() for i in idents}) == len(names)
    for name, ident in zip(names, idents, strict=True):
        assert IDENT.match(ident) and ident not in C_KEYWORDS, (name, ident)
        literal = c_string(name)
        assert _decode_c_string(literal) == name.encode("utf-8")
        assert all(32 <= ord(c) < 127 for c in literal)  # printable ASCII only: no raw newline or UTF-8
