"""Snapshots during training: ``model.<iteration>`` and ``optimMethod.<iteration>``, both atomic.

A model snapshot's metadata records the iteration, epoch and training loss and, once validation
has run, the latest results and the data set they came from: that record is what makes a
snapshot *validated* (serving loads only those).

The optim method is written first and the model last, each through a temp file renamed into
place: a process killed while writing leaves the earlier snapshots as they were and never a
``model.N`` without its ``optimMethod.N``. Every run writes into the one folder it is given (no
folder per run, unlike BigDL); iteration numbers go on across ``optimize()`` calls and resumes.
"""
from __future__ import annotations

from pathlib import Path

from .. import format as kdl
from .base import OptimMethod


def save_checkpoint(folder, model, optim_method: OptimMethod, state: dict, validation: dict | None,
                    metadata: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    it = state["iteration"]
    training = {"iteration": it, "epoch": state["epoch"], "loss": float(state.get("loss") or 0.0)}
    if validation:
        training["validation"] = validation
    meta = {**metadata, "training": training}
    optim_method.save(folder / f"optimMethod.{it}")
    return kdl.save(model, folder / f"model.{it}", metadata=meta)


def snapshots(folder) -> list[Path]:
    """The complete snapshots in ``folder`` (``model.N`` with its ``optimMethod.N``), oldest first."""
    found = [p for p in Path(folder).glob("model.*") if p.name.split(".", 1)[1].isdigit()
             and p.with_name("optimMethod." + p.name.split(".", 1)[1]).exists()]
    return sorted(found, key=lambda p: int(p.name.split(".", 1)[1]))


def load_checkpoint(model_path):
    """(model, optim method) from ``DIR/model.N`` and the ``DIR/optimMethod.N`` beside it."""
    model_path = Path(model_path)
    if not model_path.name.startswith("model."):
        raise ValueError(f"{model_path}: expected a snapshot named model.<iteration>")
    optim_path = model_path.with_name("optimMethod." + model_path.name.split(".", 1)[1])
    if not optim_path.exists():
        raise ValueError(f"{optim_path}: the optim method state for {model_path.name} is missing")
    return kdl.load(model_path), OptimMethod.load(optim_path)
