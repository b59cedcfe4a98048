"""Logging set-up for the daemon and the CLI: text (default) or one JSON object per line.

Operators grep for `[tag] accountId=…` lines (SPEC §6); journald and Loki prefer JSON.
In JSON each line keeps the message as written and adds its tag and its `key=value`
figures as fields, so `accountId` can be queried without a regex. Must run before
anything imports neonize: its import calls logging.basicConfig, a no-op once the root
logger has a handler.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_TAG = re.compile(r"^\[([a-z-]+)\]")
_FIELD = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)=(\S+)")
# Loggers of libraries that speak at info about every request or event.
NOISY = ("neonize", "whatsmeow", "aiohttp.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": message,
        }
        tag = _TAG.match(message)
        if tag:
            entry["tag"] = tag.group(1)
        for key, value in _FIELD.findall(message):
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    if level != "debug":
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.WARNING)
