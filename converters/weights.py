"""Weights into a model of your own, by module name: the transfer-learning path that every
converter shares. Rename the last layer of your model and it keeps its fresh initialisation while
everything else is copied in.

A converter reads its file into ``{source module name: payload}`` and passes an ``assign(module,
payload, where)`` that copies one payload into one module (checking shapes, fixing layouts); this
module does the matching, the renaming and the report.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from kindling.runtime.module import Module

from .graph import ConversionError


def load_by_name(model: Module, weights: Mapping[str, Any], assign: Callable[[Module, Any, str], None], *,
                 source, match_all: bool = False, rename: Mapping[str, str] | None = None,
                 error: type[ConversionError] = ConversionError) -> dict[str, list[str]]:
    """Copies each payload into the module of ``model`` with the same name (after ``rename``:
    source name -> model name). Returns ``{"loaded": [...], "skipped": [...], "unused": [...]}``:
    modules that got weights, modules with parameters that kept theirs, and source names no module
    matched. With ``match_all`` a skipped module is an error; a shape that differs always is, naming
    the file, the module and both shapes."""
    rename = dict(rename or {})
    by_name = {m.name: m for m in model.modules()}
    unknown = [k for k in rename if k not in weights]
    if unknown:
        raise error(f"{source}: rename names {', '.join(map(repr, unknown))}, which the file does not hold")
    loaded, unused = [], []
    for name, payload in weights.items():
        target = rename.get(name, name)
        module = by_name.get(target)
        if module is None:
            unused.append(name)
            continue
        try:
            assign(module, payload, f"layer {name!r}" if target == name else f"layer {name!r} (as {target!r})")
        except ConversionError:
            raise
        except ValueError as e:
            raise error(f"{source}: {e}") from e
        loaded.append(target)
    skipped = [m.name for m in model.modules()
               if (m.params or m.buffers) and not m.children() and m.name not in loaded]
    if match_all and skipped:
        raise error(f"{source}: no weights for modules {', '.join(skipped)} (match_all=True)")
    return {"loaded": loaded, "skipped": skipped, "unused": unused}
