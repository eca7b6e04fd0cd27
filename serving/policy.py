"""What a model serves: the gate (which snapshots may answer at all) and the version policy
(which of the admitted ones do).

The server's flags give every model's default (``--min-top1 X``: Top1Accuracy >= X, best by it);
a model folder may hold ``policy.json`` to set its own, e.g.

    {"metric": "Top1Accuracy", "min": 0.9, "versions": "best"}
    {"metric": "Loss", "max": 0.35, "versions": "latest"}
    {"versions": {"latest": 3}}
    {"versions": {"pinned": [1200, 1300]}}

The file is read again whenever it changes: un-pinning a version is an edit, not an RPC.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kindling.runtime.optim import metrics as _metrics


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the field."""


def higher_is_better(metric: str) -> bool:
    method = getattr(_metrics, metric, None)
    return bool(getattr(method, "higher_is_better", True))


@dataclass(frozen=True)
class Gate:
    """A snapshot is admitted when its validation record holds ``metric`` at or beyond ``bound``
    (at least ``bound`` for accuracies, at most for losses); with no bound, any validated value."""
    metric: str = "Top1Accuracy"
    bound: float | None = None

    def refusal(self, metadata: dict) -> str | None:
        """Why this snapshot may not answer, or None when it may."""
        validation = (metadata.get("training") or {}).get("validation")
        if not validation or not validation.get("results"):
            return "no validation record (a snapshot saved before validation ran, or not by training)"
        results = validation["results"]
        if self.metric not in results:
            return f"the validation record has no {self.metric} (it has {', '.join(sorted(results))})"
        value = float(results[self.metric])
        if self.bound is None:
            return None
        up = higher_is_better(self.metric)
        if (value < self.bound) if up else (value > self.bound):
            return f"{self.metric} {value:.4g} {'<' if up else '>'} {self.bound:g} on {validation.get('dataset') or '?'}"
        return None

    def describe(self) -> str:
        if self.bound is None:
            return f"validated, with {self.metric}"
        return f"{self.metric} {'>=' if higher_is_better(self.metric) else '<='} {self.bound:g}"


@dataclass(frozen=True)
class VersionPolicy:
    """Which admitted versions answer: ``best`` by the gate's metric (the default), ``latest``,
    the ``latest`` N, or ``pinned`` ones. The first chosen answers requests naming no version."""
    kind: str = "best"
    count: int = 1
    pinned: tuple[int, ...] = field(default_factory=tuple)

    def choose(self, scores: dict[int, float], metric: str) -> list[int]:
        """The versions to serve, the default first, from {version: metric value} of admitted ones."""
        if not scores:
            return []
        if self.kind == "best":
            sign = 1 if higher_is_better(metric) else -1
            return [max(scores, key=lambda v: (sign * scores[v], v))]
        if self.kind == "pinned":
            return sorted((v for v in self.pinned if v in scores), reverse=True)
        return sorted(scores, reverse=True)[:self.count]

    def describe(self, metric: str) -> str:
        return {"best": f"best {metric}", "latest": "latest" if self.count == 1 else f"latest {self.count}",
                "pinned": "pinned " + ",".join(map(str, self.pinned))}[self.kind]


@dataclass(frozen=True)
class Policy:
    gate: Gate = Gate()
    versions: VersionPolicy = VersionPolicy()

    def describe(self) -> tuple[str, str]:
        return self.gate.describe(), self.versions.describe(self.gate.metric)


def _versions(value, path) -> VersionPolicy:
    if value in ("best", "latest"):
        return VersionPolicy(value)
    if isinstance(value, dict) and len(value) == 1:
        (kind, arg), = value.items()
        if kind == "latest" and isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1:
            return VersionPolicy("latest", arg)
        if kind == "pinned" and isinstance(arg, list) and arg and all(
                isinstance(v, int) and not isinstance(v, bool) for v in arg):
            return VersionPolicy("pinned", pinned=tuple(arg))
    raise PolicyError(f"{path}: \"versions\" must be \"best\", \"latest\", {{\"latest\": N}} or "
                      f"{{\"pinned\": [N, ...]}}, got {json.dumps(value)}")


def read_policy(path: Path, default: Policy) -> Policy:
    """The policy in a model's policy.json, fields not given taken from ``default``."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"{path}: cannot read the policy: {e}") from e
    if not isinstance(spec, dict):
        raise PolicyError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"metric", "min", "max", "versions"})
    if unknown:
        raise PolicyError(f"{path}: unknown fields {unknown}; known: metric, min, max, versions")
    metric = spec.get("metric", default.gate.metric)
    if not isinstance(metric, str) or not metric:
        raise PolicyError(f"{path}: \"metric\" must be a metric name such as \"Top1Accuracy\"")
    if "min" in spec and "max" in spec:
        raise PolicyError(f"{path}: give \"min\" (for a metric where higher is better) or \"max\", not both")
    key = "min" if "min" in spec else "max" if "max" in spec else None
    bound = spec.get(key) if key else (default.gate.bound if metric == default.gate.metric else None)
    if key:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise PolicyError(f"{path}: \"{key}\" must be a number, got {json.dumps(bound)}")
        if (key == "min") != higher_is_better(metric):
            raise PolicyError(f"{path}: {metric} is better {'higher' if higher_is_better(metric) else 'lower'}: "
                              f"give {'min' if higher_is_better(metric) else 'max'}, not {key}")
    versions = _versions(spec["versions"], path) if "versions" in spec else default.versions
    return Policy(Gate(metric, None if bound is None else float(bound)), versions)
