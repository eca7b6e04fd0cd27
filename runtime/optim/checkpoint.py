"""Snapshots during training: ``model.<iteration>`` and ``optimMethod.<iteration>``, both atomic.

A model snapshot's metadata records the iteration, epoch and training loss and, once validation
has run, the latest results and the data set they came from: that record is what makes a
snapshot *validated* (serving loads only those)."""
from __future__ import annotations

from pathlib import Path

import kindling

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
    path = kindling.save(model, folder / f"model.{it}", metadata=meta)
    optim_method.save(folder / f"optimMethod.{it}")
    return path


def load_checkpoint(model_path):
    """(model, optim method) from ``DIR/model.N`` and the ``DIR/optimMethod.N`` beside it."""
    model_path = Path(model_path)
    if not model_path.name.startswith("model."):
        raise ValueError(f"{model_path}: expected a snapshot named model.<iteration>")
    optim_path = model_path.with_name("optimMethod." + model_path.name.split(".", 1)[1])
    if not optim_path.exists():
        raise ValueError(f"{optim_path}: the optim method state for {model_path.name} is missing")
    return kindling.load(model_path), OptimMethod.load(optim_path)
