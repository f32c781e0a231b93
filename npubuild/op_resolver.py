"""The operators firmware registers with TFLM's op resolver, read from the Vela-compiled file itself
(its operator codes): the Ethos-U custom operator plus whatever Vela left on the CPU, so the resolver
registers exactly what the model calls ("Failed to get registration from op code CUSTOM" cannot
happen, and no unused kernel is linked)."""

from __future__ import annotations

from pathlib import Path

from npubuild.errors import BuildError


def compiled_operators(vela_tflite: Path) -> list[tuple[str, str | None]]:
    """(builtin name, custom code) of every operator code in a (Vela-compiled) TFLite file."""
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator
    from ethosu.vela.tflite.Model import Model

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = Model.GetRootAsModel(vela_tflite.read_bytes(), 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        ops.append((names.get(builtin, f"BUILTIN_{builtin}"), custom.decode() if custom else None))
    return ops


def tflm_method(builtin: str) -> str:
    """TFLM's MicroMutableOpResolver method for a builtin operator: CONV_2D -> AddConv2D."""
    parts = builtin.split("_")
    return "Add" + "".join(p.upper() if p[:1].isdigit() else p[:1] + p[1:].lower() for p in parts)


def resolver_entries(vela_tflite: Path) -> list[dict]:
    entries = []
    for builtin, custom in compiled_operators(vela_tflite):
        if builtin == "CUSTOM":
            if custom != "ethos-u":
                raise BuildError(f"{vela_tflite}: custom operator {custom!r} has no TFLM kernel to register")
            entries.append({"method": "AddEthosU", "op": "ethos-u (custom: the NPU command stream)"})
        else:
            entries.append({"method": tflm_method(builtin), "op": f"{builtin} (on the CPU)"})
    return entries
