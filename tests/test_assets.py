"""C generation helpers: identifiers, string literals and hex rows are exact."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from npubuild.assets import c_identifier, c_string, hex_rows, padded_size


def test_hex_rows_round_trip():
    data = bytes(range(256)) * 3 + b"\x01\x02"
    text = hex_rows(data)
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", text)) == data
    assert text.count("\n") == (len(data) + 15) // 16 - 1
    assert hex_rows(b"") == ""


@pytest.mark.parametrize(("name", "ident"), [("kws", "kws"), ("my-model v2", "my_model_v2"), ("3d", "_3d"),
                                             ("", "_")])
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
