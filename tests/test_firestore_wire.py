"""WriteEncoder (runtime/store/firestore_wire.py): documents encoded as the Firestore
client's own `set`/`create` would, byte for byte. No emulator: nothing is sent."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import hypothesis
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from hypothesis import strategies as st

from wasync.runtime.store.firestore_wire import WriteEncoder

TID = "acct1__15550002222@s.whatsapp.net"

# Few values, so that documents share them; among them values equal across kinds or
# with different encodings (1, 1.0 and True; 0.0 and -0.0; one instant in two zones).
_SHARED = [1, True, 1.0, 0, False, 0.0, -0.0, None, "x", "", "é✓", 2 ** 62,
           datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc),
           datetime(2024, 1, 2, 5, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2))),
           datetime(2024, 1, 2, 3, 4, 5, 678000),
           DatetimeWithNanoseconds(2024, 1, 2, 3, 4, 5, nanosecond=678000001, tzinfo=timezone.utc),
           {"a": 1}, {"a": True}, [1], [True]]
_DOCS = st.lists(st.dictionaries(st.sampled_from(["s", "n", "b"]), st.sampled_from(_SHARED) | st.text(max_size=3),
                                 max_size=3), min_size=1, max_size=12)


def _encoded_like_the_client(docs: list[dict], create: bool) -> None:
    db = firestore.Client(project="encoding-only", credentials=AnonymousCredentials())  # no call is made
    encoder = WriteEncoder()
    helper = _helpers.pbs_for_create if create else _helpers.pbs_for_set_no_merge
    for i, doc in enumerate(docs):
        ref = db.document("threads", TID, "messages", f"E{i}")
        [expected] = helper(ref._document_path, doc)
        # Bytes, not ==: protobuf's == holds -0.0 and 0.0 equal.
        assert encoder.write(ref, doc, create).SerializeToString(deterministic=True) == \
            expected._pb.SerializeToString(deterministic=True), (i, doc)


def test_one_encoder_for_a_whole_commit_tells_apart_values_equal_across_kinds():
    # a, a (its bytes kept), then b: b must not be taken for a.
    repeated_hour = [datetime(2024, 11, 3, 1, 30, fold=fold, tzinfo=ZoneInfo("America/New_York")) for fold in (0, 1)]
    for a, b in [(1, True), (True, 1), (1, 1.0), (0.0, -0.0), (-0.0, 0.0), (_SHARED[12], _SHARED[15]),
                 tuple(repeated_hour)]:
        _encoded_like_the_client([{"v": x} for x in (a, a, b, b, a)], create=False)
    _encoded_like_the_client([{"t": v} for v in _SHARED[12:16] * 3], create=True)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(docs=_DOCS, create=st.booleans())
def test_one_encoder_for_a_whole_commit_encodes_every_document_as_the_client(docs, create):
    """The encoder reuses the bytes of a field whose value it has seen: documents sharing
    values, as a commit's messages do, must each still come out as the client's own."""
    _encoded_like_the_client(docs, create)
