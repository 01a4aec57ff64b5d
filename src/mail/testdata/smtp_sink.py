"""SMTP sink for gatehouse's mail tests (aiosmtpd).

Listens on 127.0.0.1 (port 0 = any free port), prints the port on its first stdout line, and
saves each accepted message as DIR/NNN.eml with its envelope in DIR/NNN.json (written to a
temporary name, then renamed, so a reader never sees half a file). Options: AUTH credentials
that must be given, plain / starttls (required) / tls (implicit) with a certificate, and
recipients to refuse with 550.
"""
import argparse
import asyncio
import json
import logging
import os
import ssl

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

parser = argparse.ArgumentParser()
parser.add_argument("--dir", required=True)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--user")
parser.add_argument("--password")
parser.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--reject-prefix")
args = parser.parse_args()
# The SMTP dialogue goes to stderr, which the tests print when something fails.
logging.basicConfig(level=logging.DEBUG)


class Sink:
    count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if args.reject_prefix and address.startswith(args.reject_prefix):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        Sink.count += 1
        base = os.path.join(args.dir, "%03d" % Sink.count)
        login = None
        if isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "login": login,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        os.replace(base + ".json.tmp", base + ".json")
        os.replace(base + ".eml.tmp", base + ".eml")
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == args.user
        and auth_data.password.decode() == args.password
    )
    # handled=False: aiosmtpd answers 535 itself (with handled=True it would answer nothing).
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


async def main():
    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    sink = Sink()

    def protocol():
        options = {}
        if args.user:
            options.update(
                authenticator=authenticator, auth_required=True, auth_require_tls=False
            )
        if args.mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        return SMTP(sink, **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        protocol, "127.0.0.1", args.port, ssl=context if args.mode == "tls" else None
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
