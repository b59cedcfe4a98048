"""How SqliteStore keeps documents: JSON text, timestamps as {"$ts": ms}."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import orjson

from wasync.runtime.store.schema import ms_to_dt


def encode(doc: dict) -> str:
    """The document as JSON text, timestamps as {"$ts": ms}. orjson (the store's hottest line
    under history sync: 5x faster than json); text it refuses (a lone surrogate, an integer
    beyond 64 bits) goes through json, which escapes or writes it: the same documents."""
    try:
        return orjson.dumps(doc, default=_ts, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except TypeError:  # orjson.JSONEncodeError
        return _encode_slow(doc)


def _ts(value: Any) -> Any:
    global _last
    last = _last  # one read: another thread may replace it (a tuple: never half-written)
    if value is last[0]:
        return last[1]
    if isinstance(value, datetime):
        converted = plain(value)
        _last = (value, converted)
        return converted
    raise TypeError(f"cannot store {type(value).__name__}")


# The last timestamp converted: a batch stamps every document with the same `now`
# (createdAt, syncedAt, updatedAt), so most conversions are this one again.
_last: tuple = (None, None)


def _encode_slow(doc: dict) -> str:
    return _dumps(plain(doc))


_dumps = json.JSONEncoder(separators=(",", ":")).encode
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$ts": (value - _EPOCH) // _MS}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _hook(obj: dict) -> Any:
    if len(obj) == 1 and "$ts" in obj:
        return ms_to_dt(obj["$ts"])
    return obj


def decode(text: Optional[str]) -> Optional[dict]:
    return None if text is None else json.loads(text, object_hook=_hook)
