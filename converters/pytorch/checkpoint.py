"""The state_dict inside whatever a .pt file holds: a state_dict itself, or a training checkpoint
that keeps one under a key such as ``state_dict`` or ``model``; and the prefixes that wrappers add
to every key (DataParallel's ``module.``, torch.compile's ``_orig_mod.``), stripped with a note.
"""
from __future__ import annotations

from .errors import TorchError

# Where training scripts put the model's state_dict in a checkpoint, in the order looked at.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "model_state")
# Prefixes that wrappers add to every key.
WRAPPER_PREFIXES = {"module.": "DataParallel's", "_orig_mod.": "torch.compile's"}


def _tensors(d, is_tensor) -> dict:
    return {k: v for k, v in d.items() if is_tensor(v)} if isinstance(d, dict) else {}


def state_dict_of(obj, is_tensor, path, key: str | None = None) -> tuple[dict, list[str]]:
    """({key: tensor}, notes) of the state_dict in ``obj``; ``key`` picks a checkpoint entry by name."""
    notes: list[str] = []
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = ", ".join(map(repr, list(obj)[:20])) if isinstance(obj, dict) else f"a {type(obj).__name__}"
            raise TorchError(f"{path}: no entry {key!r} in the file (it holds {keys})")
        obj = obj[key]
    elif isinstance(obj, dict):
        found = next((k for k in STATE_KEYS if _tensors(obj.get(k), is_tensor)), None)
        if found is not None:
            others = [str(k) for k in obj if k != found]
            notes.append(f"took the state_dict under {found!r}" + (f" (the file also holds {', '.join(others[:10])})"
                                                                    if others else ""))
            obj = obj[found]
    held = _tensors(obj, is_tensor)
    if not held:
        what = (f"a dict with keys {', '.join(map(repr, list(obj)[:20]))}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise TorchError(f"{path}: no state_dict found: the file holds {what}, and no tensors under "
                         f"{', '.join(map(repr, STATE_KEYS))} (pass key=... to pick an entry)")
    bad = [k for k in held if not isinstance(k, str)]
    if bad:
        raise TorchError(f"{path}: state_dict keys must be strings, found {bad[0]!r}")
    skipped = [k for k in obj if k not in held]
    if skipped:
        nested = [k for k in skipped if _tensors(obj[k], is_tensor)]
        notes.append(f"skipped {len(skipped)} entries that are not tensors: {', '.join(map(str, skipped[:10]))}"
                     + (f" ({', '.join(map(repr, nested))} hold tensors: key=... picks one)" if nested else ""))
    return _strip_prefixes(held, notes), notes


def _strip_prefixes(tensors: dict, notes: list[str]) -> dict:
    stripped = True
    while stripped:
        stripped = False
        for prefix, who in WRAPPER_PREFIXES.items():
            if tensors and all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                notes.append(f"stripped {who} {prefix!r} prefix from {len(tensors)} keys")
                stripped = True
    return tensors
