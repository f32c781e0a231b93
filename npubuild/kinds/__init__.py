"""Model kinds: one folder each (its data, front end, evaluation and extras), one registry.

A recipe names its kind (`kind = "keyword_spotting"`); `get_kind` returns the object the generic
stages call. A kind of your own is a dotted path to a `ModelKind` subclass
(`kind = "mypackage.kinds:Mine"`), importable where the build runs.
"""

from __future__ import annotations

import importlib
from functools import cache

from npubuild.errors import BuildError

DEFAULT = "keyword_spotting"  # a recipe that names no kind
KINDS = {
    "keyword_spotting": "npubuild.kinds.kws.kind:KeywordSpotting",
    "image_quality": "npubuild.kinds.quality.kind:ImageQuality",
    "keras": "npubuild.kinds.keras.kind:KerasClassifier",
}


@cache
def get_kind(name: str):
    """The kind object for a recipe's `kind` value: a registered name or "module:Class"."""
    from npubuild.kinds.base import ModelKind

    target = KINDS.get(name, name)
    if ":" not in target:
        raise BuildError(f"kind {name!r} is unknown (known: {', '.join(KINDS)}, or module:Class)")
    module_name, cls_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise BuildError(f"kind {name!r}: cannot import {target} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, ModelKind)):
        raise BuildError(f"kind {name!r}: {target} is not a ModelKind subclass")
    kind = cls()
    kind.name = kind.name or name
    return kind
