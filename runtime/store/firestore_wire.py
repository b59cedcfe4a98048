"""How FirestoreStore talks to Firestore: building the client, and encoding plain
documents straight to `Write` protobufs.

`WriteBatch.set` builds every field through proto-plus wrappers, which costs more CPU
than the rest of an ingest (reads included): profiled at ~140 µs of a ~180 µs
message write. Messages and threads are plain values, so they are encoded here with the
raw protobuf classes (`WriteEncoder`, ~11 µs a message) and handed to the batch through
`_add_write_pbs`, the hook the client's own `set` ends in (its docstring invites
subclasses to override it). Anything this encoder does not know (sentinels, references,
geo points, vectors) goes through `batch.set` unchanged; tests/test_firestore_layout.py
checks both paths encode alike.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.types import common as common_types
from google.cloud.firestore_v1.types import document as document_types
from google.cloud.firestore_v1.types import write as write_types
from google.oauth2 import service_account
from google.protobuf import timestamp_pb2

from wasync.runtime.store.base import StoreError

_Write = write_types.Write.pb()
_Document = document_types.Document.pb()
_Value = document_types.Value.pb()
_MapValue = document_types.MapValue.pb()
_ArrayValue = document_types.ArrayValue.pb()
_MUST_NOT_EXIST = common_types.Precondition.pb()(exists=False)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_PLAIN_ZONES = (None, timezone.utc)  # datetimes equal only when they are the same instant


class _Unsupported(TypeError):
    pass


def _value(v: Any):
    kind = type(v)
    if kind is str:
        return _Value(string_value=v)
    if v is None:
        return _Value(null_value=0)
    if kind is bool:
        return _Value(boolean_value=v)
    if kind is int:
        return _Value(integer_value=v)
    if kind is float:
        return _Value(double_value=v)
    if isinstance(v, datetime):
        if hasattr(v, "timestamp_pb"):  # DatetimeWithNanoseconds read back from Firestore
            return _Value(timestamp_value=v.timestamp_pb())
        micros = ((v if v.tzinfo else v.replace(tzinfo=timezone.utc)) - _EPOCH) // _MICROSECOND
        seconds, micros = divmod(micros, 1_000_000)
        return _Value(timestamp_value=timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000))
    if kind is dict:
        return _Value(map_value=_MapValue(fields={k: _value(x) for k, x in v.items()}))
    if kind is list or kind is tuple:
        return _Value(array_value=_ArrayValue(values=[_value(x) for x in v]))
    raise _Unsupported(kind)


class WriteEncoder:
    """Encodes the documents of one commit to `Write` protobufs, each field's encoding
    made once per value and reused.

    A commit's messages share most of their values (account, chat, direction, type, sync
    source, the batch's `now`...). Building a field's `Value` and copying it into the
    document's map cost ~1 µs each, 20 µs a message. Here a field seen before with the
    same value is taken as the bytes of a `Write` holding just that field; the fields seen
    for the first time are built together with the name (and precondition), and the parts
    are parsed once: protobuf merges repeated messages and map entries, so the result is
    the same `Write` (11 µs a message). Values of any other kind (floats: -0.0 == 0.0;
    maps and lists), and datetimes in zones other than UTC (equal across a clock change's
    repeated hour, an hour apart), are never reused. One encoder per commit bounds what it
    remembers."""

    _REUSABLE = frozenset((str, int, bool, type(None), datetime))

    def __init__(self) -> None:
        self._fields: dict[tuple, bytes] = {}  # (name, kind, value) -> one-field Write bytes
        self._seen: set[tuple] = set()

    def write(self, ref, doc: dict, create: bool = False):
        """The `Write` that `batch.set(ref, doc)` (or `batch.create`) would produce; raises
        _Unsupported for values it does not know."""
        parts, first = [], {}
        reusable, fields, seen = self._REUSABLE, self._fields, self._seen
        for name, v in doc.items():
            kind = type(v)
            if kind not in reusable or (kind is datetime and v.tzinfo not in _PLAIN_ZONES):
                first[name] = _value(v)
                continue
            key = (name, kind, v)
            encoded = fields.get(key)
            if encoded is None:
                if key not in seen:
                    seen.add(key)
                    first[name] = _value(v)
                    continue
                encoded = fields[key] = _Write(update=_Document(fields={name: _value(v)})).SerializeToString()
            parts.append(encoded)
        update = _Document(name=ref._document_path, fields=first)
        head = _Write(update=update, current_document=_MUST_NOT_EXIST) if create else _Write(update=update)
        if not parts:
            return head
        parts.append(head.SerializeToString())
        return _Write.FromString(b"".join(parts))


def fast_set(batch, encoder: WriteEncoder, ref, doc: dict, create: bool = False) -> None:
    try:
        pb = encoder.write(ref, doc, create)
    except _Unsupported:
        (batch.create if create else batch.set)(ref, doc)
        return
    batch._add_write_pbs([pb])


def service_account_credentials(credentials_json: str, project: Optional[str]):
    try:
        info = json.loads(credentials_json)
        credentials = service_account.Credentials.from_service_account_info(info)
    except (ValueError, KeyError) as exc:
        # The message never repeats the JSON: it holds a private key.
        raise StoreError(f"FIREBASE_SERVICE_ACCOUNT_JSON is not a service account key ({type(exc).__name__})") from None
    return credentials, project or info.get("project_id")


def emulator_client(project: str, host: str) -> firestore.Client:
    """A client of the emulator at `host` (from Settings). The client reads the emulator's
    address only from FIRESTORE_EMULATOR_HOST, in its constructor (an api_endpoint would
    speak TLS to the plaintext emulator). Setting that variable for the call would change
    the environment of a running process under its other threads (neonize's Go code
    reads it too), so the address is given to the client the way it keeps it: it opens its
    channel, and adds the emulator's credentials header, from `_emulator_host`, lazily."""
    client = firestore.Client(project=project, credentials=AnonymousCredentials())
    if not hasattr(client, "_emulator_host") or getattr(client, "_firestore_api_internal", None) is not None:
        raise StoreError("this google-cloud-firestore keeps the emulator address elsewhere: pin the tested version")
    client._emulator_host = host
    return client
