"""TensorBoard summaries (BigDL's TrainSummary / ValidationSummary), written with tensorboardX
under log_dir/app_name/train and log_dir/app_name/validation."""
from __future__ import annotations

import time
from pathlib import Path


class _Summary:
    folder = ""

    def __init__(self, log_dir, app_name: str):
        from tensorboardX import SummaryWriter
        self.path = Path(log_dir) / app_name / self.folder
        self.path.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.path))
        self._scalars: dict[str, list] = {}
        self._triggers: dict = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, float(value), int(step))
        self._scalars.setdefault(tag, []).append((int(step), float(value), time.time()))

    def add_histogram(self, tag: str, values, step: int) -> None:
        self._writer.add_histogram(tag, values, int(step))

    def read_scalar(self, tag: str) -> list[tuple[int, float, float]]:
        """[(step, value, wall time)], as BigDL's read_scalar."""
        return list(self._scalars.get(tag, []))

    def set_summary_trigger(self, name: str, trigger) -> "_Summary":
        """e.g. ("Parameters", Trigger.several_iteration(100)): histograms cost time, so only when asked."""
        self._triggers[name] = trigger
        return self

    def trigger(self, name: str):
        return self._triggers.get(name)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TrainSummary(_Summary):
    folder = "train"


class ValidationSummary(_Summary):
    folder = "validation"
