"""Structured log lines: one JSON object per line on stderr, easy to grep and to ship.

    {"ts": "2026-11-28T09:46:21.120Z", "level": "warning", "event": "refused", "model": "digits",
     "version": 1200, "reason": "Top1Accuracy 0.61 < 0.7 on digits-val"}

``event(name, level, **fields)`` writes one; the message a person reads is the ``reason`` or
``message`` field."""
from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger("kindling.serving")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ms = int(record.created * 1000) % 1000
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
                "level": record.levelname.lower(), "event": getattr(record, "event", "message")}
        line.update(getattr(record, "fields", {}) or {})
        if line["event"] == "message":
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def event(name: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, name, extra={"event": name, "fields": fields})


def configure(stream=None, level: int = logging.INFO) -> logging.Handler:
    """JSON lines for the serving logger on ``stream`` (stderr); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler
