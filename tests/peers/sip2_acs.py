#!/usr/bin/env python3
"""A library system (SIP2 ACS) for Portvakt's end-to-end tests, built on pysip2 0.1.0.

Usage: sip2_acs.py PATRONS.json [--mode MODE] [--slow-seconds S] [--encoding utf-8|latin-1]
                   [--login-user U --login-password P] [--institution AO]

Binds 127.0.0.1 on a free port and prints the port as the first line on stdout (or a line
starting with "ERROR:" when it cannot start). Exits when its stdin closes, so a test that
dies does not leave it behind.

PATRONS.json is a list of {"card", "pin", "name", "birth_date" ("YYYYMMDD" or null),
"home_library" (or null), "blocked", "lost", "mode"}. The mode of the card asked about in a
63, or else --mode, decides how a response is sent:

  normal        as it should be
  slow          after sleeping --slow-seconds (longer than the client's timeout)
  close         not at all: the connection is closed instead
  bad-checksum  with a wrong AZ checksum
  garbage       replaced by random bytes that are no SIP2 message

The card "__connections__" answers with AF "connections=N": the TCP connections accepted
so far. pysip2's typed 64 has no PB (birth date) or AQ (home library), so those are added
to the encoded frame before its AY/AZ trailer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

try:
    import anyio
    import pysip2
    from pysip2 import (
        LoginResponse,
        PatronInformationResponse,
        calculate_checksum,
        encode_message,
    )
    from pysip2.routes import LOGIN, PATRON_INFORMATION
    from pysip2.server import SIP2Server
except ImportError as exc:  # the Rust test turns this line into a failure message
    print(
        f"ERROR: cannot import pysip2 ({exc}); install it: "
        "pip install -r tests/peers/requirements.txt",
        flush=True,
    )
    sys.exit(3)

MODES = ("normal", "slow", "close", "bad-checksum", "garbage")
COUNT_CARD = "__connections__"


class TestAcs(SIP2Server):
    """pysip2's server with per-response send modes, extension fields and a connection count."""

    def __init__(self, *, mode: str, slow_seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self.slow_seconds = slow_seconds
        self.connections_accepted = 0

    async def _handle_connection(self, stream):
        self.connections_accepted += 1
        await super()._handle_connection(stream)

    async def _write_response(self, stream, state, decoded, response):
        mode = state.app_state.pop("mode", None) or self.mode
        extra = state.app_state.pop("extra", "")
        body = encode_message(response, encoding=self.encoding)[:-1]  # without CR
        body += extra.encode(self.encoding)
        if decoded.checksum is not None or mode == "bad-checksum":
            if decoded.sequence_number is not None:
                body += b"AY%d" % decoded.sequence_number
            body += b"AZ"
            checksum = int(calculate_checksum(body), 16)
            if mode == "bad-checksum":
                checksum = (checksum + 1) & 0xFFFF
            body += b"%04X" % checksum
        frame = body + b"\r"
        if mode == "slow":
            await anyio.sleep(self.slow_seconds)
        elif mode == "close":
            await stream.aclose()
            raise anyio.ClosedResourceError
        elif mode == "garbage":
            # 0xFF 0xFE can start no SIP2 message id; the rest is noise.
            frame = b"\xff\xfe" + os.urandom(40) + b"\r"
        await self._send(stream, state, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patrons")
    parser.add_argument("--mode", choices=MODES, default="normal")
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--login-user")
    parser.add_argument("--login-password")
    parser.add_argument("--institution", default="hylte")
    args = parser.parse_args()

    with open(args.patrons, encoding="utf-8") as f:
        patrons = {p["card"]: p for p in json.load(f)}
    for p in patrons.values():
        if p.get("mode", "normal") not in MODES:
            raise SystemExit(f"unknown mode {p['mode']!r}")

    login = args.login_user is not None
    app = TestAcs(
        mode=args.mode,
        slow_seconds=args.slow_seconds,
        encoding=args.encoding,
        institution_id=args.institution,
        login_required=login,
    )

    @app.route(LOGIN)
    def on_login(req, ctx):
        ok = login and req.login_user_id == args.login_user and (
            req.login_password == args.login_password
        )
        return LoginResponse(ok="1" if ok else "0")

    @app.route(PATRON_INFORMATION)
    def on_patron_information(req, ctx):
        state = ctx.connection.state
        card = req.patron_identifier
        patron = patrons.get(card)
        screen = ()
        if card == COUNT_CARD:
            screen = (f"connections={app.connections_accepted}",)
        valid = patron is not None
        pin_ok = valid and req.patron_password == patron["pin"]
        status = [" "] * 14
        if patron is not None:
            if "mode" in patron:
                state["mode"] = patron["mode"]
            if patron.get("blocked"):
                status[0] = "Y"  # charge privileges denied
            if patron.get("lost"):
                status[4] = "Y"  # card reported lost
            if pin_ok:
                extra = ""
                if patron.get("birth_date"):
                    extra += f"PB{patron['birth_date']}|"
                if patron.get("home_library"):
                    extra += f"AQ{patron['home_library']}|"
                state["extra"] = extra
        return PatronInformationResponse(
            patron_status="".join(status),
            language="000",
            transaction_date=ctx.now_18(),
            hold_items_count="0000",
            overdue_items_count="0000",
            charged_items_count="0000",
            fine_items_count="0000",
            recall_items_count="0000",
            unavailable_holds_count="0000",
            institution_id=args.institution,
            patron_identifier=card,
            personal_name=patron["name"] if pin_ok else "",
            hold_items_limit="0005",
            valid_patron="Y" if valid else "N",
            valid_patron_password="Y" if pin_ok else "N",
            screen_message=screen,
        )

    def exit_when_stdin_closes() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    async def run() -> None:
        async with app.start(host="127.0.0.1", port=0) as port:
            print(port, flush=True)
            threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
            await anyio.sleep_forever()

    anyio.run(run)


if __name__ == "__main__":
    main()
