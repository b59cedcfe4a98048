"""What an account id and a phone number may be, and the document a new account starts
with. One place for the HTTP API and the CLI."""
from __future__ import annotations

import re
import secrets
from typing import Any, Optional

from wasync.runtime.store.schema import SERVER_TIME

# Account ids end up in document ids, and thread ids are "{accountId}__{jid}": a "__"
# inside an account id would make thread ids ambiguous.
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PHONE_DIGITS = re.compile(r"[0-9]{5,20}")  # ASCII only: str.isdigit() accepts other scripts
_PHONE_SEPARATORS = re.compile(r"[ \-]")


class BadAccount(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_account_id(value: Any) -> str:
    if not isinstance(value, str):
        raise BadAccount("invalid_account_id", "accountId must be a string")
    if not _ACCOUNT_ID.fullmatch(value):
        raise BadAccount("invalid_account_id", "accountId must be 1-64 characters of A-Z a-z 0-9 _ -")
    if "__" in value:
        raise BadAccount("invalid_account_id", "accountId must not contain '__' (thread ids use it)")
    return value


def check_phone(value: Any) -> str:
    """'+1 555-222-3333' -> '15552223333': a leading +, spaces and dashes are dropped."""
    if not isinstance(value, str):
        raise BadAccount("invalid_phone", "phone must be a string of digits")
    digits = _PHONE_SEPARATORS.sub("", value.strip().removeprefix("+"))
    if not _PHONE_DIGITS.fullmatch(digits):
        raise BadAccount("invalid_phone", "phone must be 5-20 digits (an optional leading +, spaces and "
                                          "dashes are ignored)")
    return digits


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(4)


def account_fields(account_id: str, phone: Optional[str]) -> dict:
    fields = {"accountId": account_id, "enabled": True, "createdAt": SERVER_TIME,
              "status": "connecting" if phone else "pairing"}
    if phone:
        fields["phone"] = phone
    return fields
