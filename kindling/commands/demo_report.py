"""kindling demo's report: one PNG with the training curves (from the run's TensorBoard summaries)
and a grid of held-out digits as the server classified them."""
from __future__ import annotations

import os
from pathlib import Path

SIZE = (12.0, 4.2)    # inches; at DPI: the PNG's pixel size
DPI = 100
GRID = (4, 6)         # rows, columns of classified digits


def draw_report(path: Path, opt, served, before: dict | None = None) -> Path:
    """Writes the PNG atomically (temp file + rename) and returns its path. ``opt`` is the trained
    Optimizer (its train/validation summaries), ``served`` the demo's ``Served``, ``before`` the
    held-out metrics of the model as converted (drawn at iteration 0)."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from PIL import Image

    fig = plt.figure(figsize=SIZE, dpi=DPI, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.25, 1])
    loss_ax, acc_ax = left.subplots(1, 2)
    _curves(loss_ax, acc_ax, opt, before or {})
    rows, cols = GRID
    axes = right.subplots(rows, cols)
    picked = served.picked(rows * cols, mistakes=cols)  # a row's worth of mistakes, when there are
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picked):
        c = served.top[i]
        ax.imshow(Image.open(served.paths[i]).convert("L"), cmap="gray")
        truth = served.labels[served.truth[i]]
        right_answer = c.indices[0] == served.truth[i]
        ax.set_title(f"{c.labels[0]} {c.scores[0]:.2f}" + ("" if right_answer else f" (is {truth})"), fontsize=9,
                     color="tab:green" if right_answer else "tab:red")
    right.suptitle(f"served (version {served.version}): Top-1 {served.top1:.3f} on {len(served.truth)} held-out "
                   f"digits", fontsize=10)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _curves(loss_ax, acc_ax, opt, before: dict) -> None:
    train, val = opt.train_summary, opt.val_summary
    steps, losses = _series(train, "Loss")
    loss_ax.plot(steps, losses, lw=0.8, label="training batches")
    steps, losses = _series(val, "Loss")
    loss_ax.plot(steps, losses, "o-", label="held-out")
    loss_ax.set(title="loss", xlabel="iteration")
    loss_ax.legend(fontsize=8)
    for tag in ("Top1Accuracy", "Top5Accuracy"):
        steps, values = _series(val, tag)
        if tag in before:
            steps, values = [0, *steps], [before[tag], *values]
        acc_ax.plot(steps, values, "o-", label=tag.replace("Accuracy", ""))
    acc_ax.set(title="held-out accuracy (0: as converted)", xlabel="iteration", ylim=(0.0, 1.02))
    acc_ax.legend(fontsize=8, loc="lower right")


def _series(summary, tag: str):
    points = summary.read_scalar(tag) if summary is not None else []
    return [p[0] for p in points], [p[1] for p in points]
