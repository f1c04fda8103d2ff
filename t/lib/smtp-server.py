#!/usr/bin/python3
# A real SMTP server for the test suite, on Debian's python3-aiosmtpd (1.4).
#
#   smtp-server.py --port N --dir DIR [--tls-cert F --tls-key F]
#                  [--starttls-required] [--implicit-tls] [--auth USER:PASS]
#                  [--reject-rcpt ADDR]
#
# Each message received is saved as DIR/<n>.eml (the raw DATA, CRLF kept)
# and DIR/<n>.json ({"mail_from", "rcpt_tos", "tls", "auth_user"}), both
# written under a temporary name and renamed, so a reader never sees half
# a file.  Prints {"listening": N} once connections are accepted; exits
# cleanly on SIGTERM or SIGINT.

import argparse
import glob
import json
import logging
import os
import signal
import ssl
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword, TLSSetupException


def write_file(path, data):
    tmp = '%s.tmp' % path
    with open(tmp, 'wb') as f:
        f.write(data)
    os.rename(tmp, path)


class Handler:
    def __init__(self, directory, reject_rcpt):
        self.dir = directory
        self.reject_rcpt = reject_rcpt
        self.lock = threading.Lock()
        self.n = len(glob.glob(os.path.join(directory, '*.eml')))

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        if self.reject_rcpt and address.lower() == self.reject_rcpt.lower():
            return '550 5.1.1 <%s>: recipient rejected' % address
        envelope.rcpt_tos.append(address)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        tls = server.transport.get_extra_info('ssl_object') is not None
        user = session.auth_data.login if session.authenticated else None
        meta = {
            'mail_from': envelope.mail_from,
            'rcpt_tos': envelope.rcpt_tos,
            'tls': tls,
            'auth_user': user.decode() if user is not None else None,
        }

        with self.lock:
            self.n += 1
            n = self.n

        # the .eml first: a reader waiting for <n>.json finds both
        base = os.path.join(self.dir, str(n))
        write_file(base + '.eml', envelope.original_content)
        write_file(base + '.json', json.dumps(meta).encode())
        return '250 OK queued as %d' % n


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == user and auth_data.password == password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return check


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--dir', required=True)
    ap.add_argument('--tls-cert')
    ap.add_argument('--tls-key')
    ap.add_argument('--starttls-required', action='store_true')
    ap.add_argument('--implicit-tls', action='store_true')
    ap.add_argument('--auth', metavar='USER:PASS')
    ap.add_argument('--reject-rcpt', metavar='ADDR')
    args = ap.parse_args()

    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error('--tls-cert and --tls-key go together')
    if (args.starttls_required or args.implicit_tls) and not args.tls_cert:
        ap.error('TLS needs --tls-cert and --tls-key')

    os.makedirs(args.dir, exist_ok=True)

    # quiet: AUTH without TLS is deliberate, a refused handshake is a test
    log = logging.getLogger('mail.log')
    log.setLevel(logging.ERROR)
    log.addFilter(lambda r: not (r.exc_info and isinstance(
        r.exc_info[1], TLSSetupException)))
    warnings.filterwarnings('ignore', module='aiosmtpd')

    ctx = None
    if args.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)

    kw = {'server_hostname': 'smtp.test', 'ready_timeout': 10}

    if args.implicit_tls:
        kw['ssl_context'] = ctx
    elif ctx:
        kw['tls_context'] = ctx
        kw['require_starttls'] = args.starttls_required

    if args.auth:
        user, sep, password = args.auth.partition(':')
        if not sep:
            ap.error('--auth wants USER:PASS')
        # PLAIN and LOGIN, also without TLS: this is a test server
        kw['authenticator'] = authenticator(user.encode(), password.encode())
        kw['auth_required'] = True
        kw['auth_require_tls'] = False

    controller = Controller(Handler(args.dir, args.reject_rcpt),
                            hostname='127.0.0.1', port=args.port, **kw)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())

    controller.start()
    print(json.dumps({'listening': args.port}), flush=True)

    while not stop.wait(3600):
        pass

    controller.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
