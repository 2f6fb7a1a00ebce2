# A real SMTP server for tests: aiosmtpd (Debian's python3-aiosmtpd) on 127.0.0.1.
# Usage: smtp_sink.py CONFIG.json. The config names the directory each message goes
# to, the TLS mode ("none", "starttls" with require_starttls, "implicit" with the
# certificate on the listening socket), optional AUTH PLAIN/LOGIN credentials, and
# failures to inject ("fail_rcpt" / "fail_data": 451 or 550). Each accepted message
# is written as N.eml (the raw data) and then N.json (envelope and the message as
# Python's email package parses it). Prints the port once the server answers.
import asyncio
import email
import email.policy
import json
import os
import socket
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

FAILURES = {
    451: "451 4.3.0 Temporary failure, try again later",
    550: "550 5.1.1 Mailbox unavailable",
}


def parse(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers = [[k, str(v)] for k, v in msg.items()]
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            parts.append({"content_type": part.get_content_type(), "multipart": True})
            continue
        payload = part.get_content()
        if isinstance(payload, bytes):
            payload = payload.decode("latin-1")
        parts.append(
            {
                "content_type": part.get_content_type(),
                "charset": part.get_content_charset(),
                "filename": part.get_filename(),
                "disposition": part.get_content_disposition(),
                "transfer_encoding": part.get("Content-Transfer-Encoding"),
                "content": payload,
                "multipart": False,
            }
        )
    return headers, parts


class Handler:
    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = cfg["dir"]
        self.count = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        code = self.cfg.get("fail_rcpt")
        if code:
            return FAILURES[code]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        code = self.cfg.get("fail_data")
        if code:
            return FAILURES[code]
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        with self.lock:
            self.count += 1
            n = self.count
        # A benchmark keeps the bytes only: parsing is the receiver's time, not ours.
        headers, parts = ([], []) if self.cfg.get("raw_only") else parse(raw)
        base = os.path.join(self.dir, "%06d" % n)
        with open(base + ".eml", "wb") as f:
            f.write(raw)
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "auth": bool(session.authenticated),
            "headers": headers,
            "parts": parts,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(record, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 Message accepted for delivery"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # handled=False: aiosmtpd answers 535 itself on a failure.
        return AuthResult(success=ok, handled=False)

    return check


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    mode = cfg.get("tls", "none")
    ctx = None
    if mode != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cfg["cert"], cfg["key"])
    kwargs = {}
    if mode == "starttls":
        kwargs["tls_context"] = ctx
        kwargs["require_starttls"] = True
    if cfg.get("user") is not None:
        kwargs["authenticator"] = authenticator(cfg["user"], cfg["password"])
        kwargs["auth_required"] = True
        # Under implicit TLS aiosmtpd does not know the socket is encrypted; with
        # STARTTLS, AUTH is only offered after it.
        kwargs["auth_require_tls"] = mode == "starttls"
    else:
        kwargs["auth_require_tls"] = False
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    controller = Controller(
        Handler(cfg),
        hostname="127.0.0.1",
        port=port,
        ssl_context=ctx if mode == "implicit" else None,
        server_hostname="sink.certkeeper.test",
        **kwargs,
    )
    controller.start()
    print(port, flush=True)
    try:
        # Runs until killed (the Rust side kills it on drop) or stdin closes.
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
