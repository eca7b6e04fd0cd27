"""The manager: every version's state, the gate, the version policy and the routing table.

Each poll of the repository moves versions along

    SETTLING -> LOADING (header, size) -> VALIDATING (gate, checksums, smoke test, warm-up) -> AVAILABLE
                                 \\-> REFUSED (with the reason)           AVAILABLE -> UNLOADING -> UNLOADED

The versions the policy chooses are loaded and warmed beside the ones answering now; only when
all of them are AVAILABLE does the routing table switch (one reference assignment), so requests
never see a model without a version during a swap. Requests already routed finish on the version
they were given; a replaced version stays addressable by number for the grace period, then is
dropped. A version that fails to load or warm up is REFUSED and the policy chooses again without
it, which leaves traffic where it was. A removed or un-pinned version rolls back the same way. A
changed file is a new candidate; a refusal never blocks a later version.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kindling.runtime.data import read_labels
from kindling.runtime.format import read_header, metadata_from_proto

from . import log
from .policy import Policy, PolicyError, read_policy
from .repository import FileState, ModelFolder, Repository
from .servable import Servable


class State(enum.Enum):
    SETTLING = 1
    LOADING = 2
    VALIDATING = 3
    AVAILABLE = 4
    UNLOADING = 5
    UNLOADED = 6
    REFUSED = 7


class NotFound(LookupError):
    """An unknown model, or a version that does not answer."""


@dataclass
class Version:
    number: int
    path: Path
    file: FileState
    state: State = State.SETTLING
    reason: str = ""
    metadata: dict | None = None
    score: float | None = None   # the gate metric's value
    servable: Servable | None = None
    retire_at: float | None = None
    removed: bool = False   # its file is gone; it answers until it is retired
    changed: bool = False   # its file changed while loaded; reloaded once settled

    @property
    def validation(self) -> dict:
        return ((self.metadata or {}).get("training") or {}).get("validation") or {}


@dataclass
class Model:
    name: str
    policy: Policy
    policy_file: FileState | None = None
    labels_file: FileState | None = None
    labels: list[str] | None = None
    versions: dict[int, Version] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """What answers for one model: the default servable and every addressable version."""
    default: Servable | None
    versions: dict[int, Servable]


Loader = Callable[[str, int, Path, "list[str] | None"], Servable]


class Manager:
    def __init__(self, repository: Repository, policy: Policy, loader: Loader, *, grace: float = 60.0,
                 on_change: Callable[[str, bool], None] | None = None,
                 on_state: Callable[[str, int, "State | None", str], None] | None = None):
        self.repository, self.default_policy, self.loader = repository, policy, loader
        self.grace = float(grace)
        self.on_change = on_change or (lambda name, serving: None)
        self.on_state = on_state or (lambda name, version, state, reason: None)
        self.models: dict[str, Model] = {}
        self.routes: dict[str, Route] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one poll at a time

    # ---- requests ------------------------------------------------------------------------------
    def route(self, name: str, version: int = 0) -> Servable:
        r = self.routes.get(name)
        if r is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"no model named {name[:200]!r}; models: {known}")
        if not version:
            if r.default is None:
                raise NotFound(f"model {name!r} has no validated version answering now (ListModels says why)")
            return r.default
        s = r.versions.get(version)
        if s is None:
            raise NotFound(f"model {name!r} version {version} is not available; available: "
                           f"{', '.join(map(str, sorted(r.versions, reverse=True))) or 'none'}")
        return s

    # ---- the watcher ---------------------------------------------------------------------------
    def start(self, interval: float) -> None:
        self.poll()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="serving-watcher", daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one bad poll
                log.log.exception("poll failed", extra={"event": "poll_failed", "fields": {}})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def poll(self) -> None:
        with self._lock:
            folders = self.repository.scan()
            for name in sorted(set(self.models) - set(folders)):  # model folder removed
                for v in self.models[name].versions.values():
                    v.servable = None
                    self.on_state(name, v.number, None, "removed")
                del self.models[name]
                self.routes.pop(name, None)
                self.on_change(name, False)
                log.event("model_removed", model=name)
            for name, folder in folders.items():
                self._poll_model(folder)

    # ---- one model -----------------------------------------------------------------------------
    def _set(self, model: Model, v: Version, state: State, reason: str = "") -> None:
        if v.state == state and v.reason == reason:
            return
        v.state, v.reason = state, reason
        self.on_state(model.name, v.number, state, reason)
        level = logging.WARNING if state is State.REFUSED else logging.INFO
        fields = {"model": model.name, "version": v.number, "state": state.name.lower()}
        if reason:
            fields["reason"] = reason
        log.event("refused" if state is State.REFUSED else "version_state", level, **fields)

    def _poll_model(self, folder: ModelFolder) -> None:
        model = self.models.get(folder.name)
        if model is None:
            model = self.models[folder.name] = Model(folder.name, self.default_policy)
            self.on_change(folder.name, False)
        policy_changed = self._read_policy(model, folder)
        self._read_labels(model, folder)
        self._update_versions(model, folder)
        for v in sorted(model.versions.values(), key=lambda v: v.number):
            settled = v.number in folder.snapshots and folder.snapshots[v.number].settled
            if v.state is State.SETTLING and settled:
                self._admit(model, v)
            elif v.changed and settled:
                self._reload(model, v)
        if policy_changed:
            for v in model.versions.values():
                if v.metadata is not None and not v.reason.startswith("load"):
                    self._gate(model, v)
        self._serve(model)

    def _read_policy(self, model: Model, folder: ModelFolder) -> bool:
        if folder.policy == model.policy_file:
            return False
        model.policy_file = folder.policy
        try:
            policy = read_policy(folder.path / "policy.json", self.default_policy) if folder.policy else \
                self.default_policy
        except PolicyError as e:
            log.event("policy_error", logging.ERROR, model=model.name, reason=str(e), keeping=model.policy.describe())
            return False
        changed = policy != model.policy
        model.policy = policy
        if changed:
            gate, versions = policy.describe()
            log.event("policy", model=model.name, gate=gate, versions=versions)
        return changed

    def _read_labels(self, model: Model, folder: ModelFolder) -> None:
        if folder.labels == model.labels_file:
            return
        model.labels_file = folder.labels
        try:
            model.labels = read_labels(folder.path / "labels.txt", unique=False) if folder.labels else None
        except ValueError as e:
            model.labels = None
            log.event("labels_error", logging.ERROR, model=model.name, reason=str(e))

    def _update_versions(self, model: Model, folder: ModelFolder) -> None:
        for number, snap in folder.snapshots.items():
            v = model.versions.get(number)
            if v is None:
                model.versions[number] = Version(number, snap.path, snap.state)
                log.event("version_found", model=model.name, version=number, bytes=snap.state.size)
            elif v.file != snap.state:  # changed on disk: a new candidate; what is loaded keeps answering
                v.file, v.removed = snap.state, False
                if v.servable is not None:
                    v.changed = True
                else:
                    v.metadata, v.score = None, None
                    self._set(model, v, State.SETTLING, "the file changed")
        for number in sorted(set(model.versions) - set(folder.snapshots)):
            v = model.versions[number]
            if v.servable is not None:
                v.removed, v.reason = True, "file removed"
            else:
                del model.versions[number]
                self.on_state(model.name, number, None, "removed")
                log.event("version_removed", model=model.name, version=number)

    def _reload(self, model: Model, v: Version) -> None:
        """A loaded version whose file changed: the new file replaces it only once it loads,
        passes the gate and warms up; until then (or if it never does) the loaded one answers."""
        v.changed = False
        try:
            metadata = metadata_from_proto(read_header(v.path)[0].metadata)
            refusal = model.policy.gate.refusal(metadata)
            if refusal:
                raise ValueError(refusal)
            servable = self.loader(model.name, v.number, v.path, model.labels)
        except Exception as e:  # the loaded copy keeps answering
            v.reason = f"the file changed and is refused ({getattr(e, 'problem', None) or e}); the loaded copy answers"
            log.event("refused", logging.WARNING, model=model.name, version=v.number, reason=v.reason)
            return
        v.metadata, v.servable, v.reason = metadata, servable, ""
        v.score = float(v.validation["results"][model.policy.gate.metric])
        log.event("reloaded", model=model.name, version=v.number)

    def _admit(self, model: Model, v: Version) -> None:
        """Header and size, then the gate: cheap, before any tensor is read."""
        self._set(model, v, State.LOADING)
        try:
            header, _ = read_header(v.path)
            v.metadata = metadata_from_proto(header.metadata)
        except ValueError as e:
            self._set(model, v, State.REFUSED, f"load: {getattr(e, 'problem', e)}")
            return
        self._gate(model, v)

    def _gate(self, model: Model, v: Version) -> None:
        refusal = model.policy.gate.refusal(v.metadata or {})
        if refusal:
            if v.state in (State.AVAILABLE, State.UNLOADING):
                v.reason = refusal  # retired by _serve once no longer chosen
                v.score = None
                return
            self._set(model, v, State.REFUSED, refusal)
            return
        v.score = float(v.validation["results"][model.policy.gate.metric])
        if v.state not in (State.AVAILABLE, State.UNLOADING):
            self._set(model, v, State.UNLOADED, "admitted; not chosen by the version policy")

    def _candidates(self, model: Model) -> dict[int, float]:
        return {n: v.score for n, v in model.versions.items()
                if v.score is not None and not v.removed
                and v.state in (State.UNLOADED, State.AVAILABLE, State.UNLOADING)}

    def _serve(self, model: Model) -> None:
        now = time.monotonic()
        while True:
            chosen = model.policy.versions.choose(self._candidates(model), model.policy.gate.metric)
            failed = [n for n in chosen if not self._make_available(model, model.versions[n])]
            if not failed:
                break
        old = self.routes.get(model.name)
        current = {n for n, v in model.versions.items() if v.state is State.AVAILABLE}
        for n in sorted(current - set(chosen)):
            v = model.versions[n]
            v.retire_at = now + self.grace
            self._set(model, v, State.UNLOADING, v.reason if v.reason and not v.reason.startswith("admitted")
                      else f"replaced by {chosen[0]}" if chosen else "no longer chosen")
        for n, v in list(model.versions.items()):
            if v.state is State.UNLOADING and v.retire_at is not None and now >= v.retire_at:
                v.servable, v.retire_at = None, None
                if v.removed:
                    del model.versions[n]
                    self.on_state(model.name, n, None, "removed")
                    log.event("version_removed", model=model.name, version=n)
                    continue
                if v.changed:  # a changed file not yet reloaded: looked at afresh
                    v.changed, v.metadata, v.score = False, None, None
                    self._set(model, v, State.SETTLING, "the file changed")
                    continue
                self._set(model, v, State.UNLOADED, "retired after the grace period")
                if v.score is None and v.metadata is not None:  # retired because the gate now refuses it
                    self._gate(model, v)
        addressable = {n: v.servable for n, v in model.versions.items()
                       if v.state in (State.AVAILABLE, State.UNLOADING) and v.servable is not None}
        default = model.versions[chosen[0]].servable if chosen else None
        if old is None or old.default is not default or old.versions != addressable:
            self.routes[model.name] = Route(default, addressable)
            if old is None or (old.default is None) != (default is None) or old.default is not default:
                self.on_change(model.name, default is not None)
                if default is not None:
                    log.event("serving", model=model.name, version=chosen[0], versions=sorted(addressable))

    def _make_available(self, model: Model, v: Version) -> bool:
        if v.state is State.AVAILABLE:
            return True
        if v.state is State.UNLOADING and v.servable is not None:  # back from its grace period
            v.retire_at = None
            self._set(model, v, State.AVAILABLE)
            return True
        self._set(model, v, State.VALIDATING)
        try:
            v.servable = self.loader(model.name, v.number, v.path, model.labels)
        except Exception as e:  # any failure to load or warm up refuses this version only
            v.servable, v.score = None, None
            self._set(model, v, State.REFUSED, f"load: {getattr(e, 'problem', None) or e}")
            return False
        self._set(model, v, State.AVAILABLE)
        return True

    # ---- reporting -----------------------------------------------------------------------------
    def status(self) -> list[dict]:
        out = []
        for name in sorted(self.models):
            model = self.models[name]
            route = self.routes.get(name)
            default = route.default.version if route and route.default else 0
            gate, policy = model.policy.describe()
            versions = [{"version": v.number, "state": v.state, "reason": v.reason,
                         "validation": dict(v.validation.get("results") or {}), "default": v.number == default}
                        for v in sorted(model.versions.values(), key=lambda v: -v.number)]
            out.append({"name": name, "default_version": default, "policy": policy, "gate": gate,
                        "versions": versions})
        return out
