"""How SqliteStore keeps documents: the fast encoder and its fallback give documents that
read back the same, and a write of more rows than one statement takes is all stored."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store_fixtures import T0, msg
from wasync.runtime.sqlite_steps import ROWS_PER_STATEMENT
from wasync.runtime.store.sqlite import SqliteStore
from wasync.runtime.store.schema import iso, iso_ms, ms_to_dt
from wasync.runtime.store.sqlite_codec import _encode_slow, decode, encode

WHEN = datetime(2025, 11, 23, 12, 0, 1, 250_000, tzinfo=timezone.utc)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63 - 1) | st.text() | st.just(WHEN),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.text(), values, max_size=6))
def test_the_fast_encoder_and_json_store_the_same_documents(doc):
    assert decode(encode(doc)) == decode(_encode_slow(doc))


def test_text_the_fast_encoder_refuses_still_goes_through_json():
    doc = {"body": "broken \ud800 text", "big": 2 ** 70, "at": WHEN}
    stored = encode(doc)
    assert json.loads(stored)["at"] == {"$ts": 1763899201250}
    assert decode(stored) == doc


def test_more_messages_than_one_statement_takes_are_all_stored(tmp_path):
    store = SqliteStore(tmp_path / "store.db")
    try:
        count = ROWS_PER_STATEMENT * 2 + 7
        messages = [msg(id=f"M{n}", ts=T0 + n) for n in range(count)]
        assert store.upsert_messages(messages, T0).messages == count
        assert store.get_message("acct1", messages[-1].client_jid, f"M{count - 1}")["tsClientMs"] == T0 + count - 1
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == count
    finally:
        store.close()


@given(st.integers(-10 ** 13, 10 ** 13))
def test_the_fast_iso_time_is_the_text_iso_gives(ms):
    assert iso_ms(ms) == iso(ms_to_dt(ms))


def test_an_impossible_time_is_still_a_clear_error():
    with pytest.raises(ValueError, match="year"):
        iso_ms(10 ** 17)
