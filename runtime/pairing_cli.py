"""`wasync pair ACCOUNT [--phone DIGITS]`: pair an account through the running daemon's
admin API. Shows the QR in the terminal (redrawn when WhatsApp rotates it) or prints a
pairing code to type on the phone, and waits until the account is connected."""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import segno


class Api:
    def __init__(self, base: str, token: Optional[str]):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" \
                    else raw.decode()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")


def account_status(api: Api, account_id: str) -> Optional[dict]:
    status, body = api.call("GET", "/api/whatsapp/accounts")
    if status != 200:
        raise SystemExit(f"wasync pair: the daemon answered {status}: {body}")
    return next((a for a in body["accounts"] if a["accountId"] == account_id), None)


def main(argv: list[str], settings) -> int:
    parser = argparse.ArgumentParser(prog="wasync pair", description=__doc__.split("\n\n")[0])
    parser.add_argument("account_id")
    parser.add_argument("--phone", help="pair by code typed on this phone instead of scanning a QR")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for success")
    parser.add_argument("--new", action="store_true",
                        help="forget the account's current session and pair it anew (re-link a working account)")
    args = parser.parse_args(argv)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    api = Api(f"http://{host}:{settings.port}", settings.admin_token)
    try:
        account = account_status(api, args.account_id)
    except OSError as exc:
        print(f"wasync pair: no daemon answers on {api.base} ({exc}); start it with `wasync run`", file=sys.stderr)
        return 1
    if account is None:
        status, body = api.call("POST", "/api/whatsapp/accounts", {"accountId": args.account_id})
        if status != 201:
            print(f"wasync pair: could not add {args.account_id}: {body}", file=sys.stderr)
            return 1
        print(f"added account {args.account_id}; waiting for its pairing code …", file=sys.stderr)
    elif args.new or account.get("status") in ("needs_repair", "logged_out"):
        # Resuming the stored session is what did not work (or is not wanted): a new pairing.
        status, body = api.call("POST", f"/api/whatsapp/regenerate-qr/{args.account_id}", {"newPairing": True})
        if status != 200:
            print(f"wasync pair: could not restart pairing of {args.account_id}: {body}", file=sys.stderr)
            return 1
        print(f"{args.account_id}: a new pairing starts; waiting for its pairing code …", file=sys.stderr)
    elif account.get("status") == "connected":
        print(f"{args.account_id} is connected already ({account.get('jid') or account.get('phone')}); "
              "--new pairs it anew")
        return 0
    deadline = time.monotonic() + args.timeout
    shown = None
    while time.monotonic() < deadline:
        if args.phone and shown is None:
            status, body = api.call("POST", f"/api/whatsapp/accounts/{args.account_id}/pair-phone",
                                    {"phone": args.phone})
            if status == 200:
                shown = body["code"]
                print(f"On the phone: WhatsApp → Linked devices → Link with phone number, enter: {shown}")
        elif not args.phone:
            status, body = api.call("GET", f"/api/whatsapp/accounts/{args.account_id}/qr?format=text")
            if status == 200 and body != shown:
                shown = body
                print("\nScan with WhatsApp → Linked devices → Link a device:\n")
                segno.make(body, error="l").terminal(compact=True)
        account = account_status(api, args.account_id)
        if account and account.get("status") == "connected":
            print(f"paired: {args.account_id} is connected ({account.get('jid') or account.get('phone')})")
            return 0
        time.sleep(1.0)
    print(f"wasync pair: {args.account_id} not paired within {args.timeout:.0f} s", file=sys.stderr)
    return 1
