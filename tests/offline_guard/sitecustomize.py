"""The offline guard: any connection to an address that is not loopback fails, and is logged.

On PYTHONPATH (first), Python imports this at start-up, so a `duet` subprocess runs under it;
in process, call ``install()``. ``$DUET_OFFLINE_GUARD_LOG`` names a file that gets one line per
refused attempt, so a test can assert that nothing tried (even if the code swallowed the error).
"""

from __future__ import annotations

import ipaddress
import os
import socket

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class OfflineViolation(OSError):
    pass


def _loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host == "":
        return True  # a passive / any-address lookup (bind), not a connection
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str) -> None:
    log = os.environ.get("DUET_OFFLINE_GUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(what + "\n")
    raise OfflineViolation(f"offline guard: refused {what}")


def install() -> None:
    if getattr(socket, "_duet_offline_guard", False):
        return
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def checked(address, sock) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refuse(f"connect to {address[0]}:{address[1]}")

    def guarded_connect(self, address):
        checked(address, self)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        checked(address, self)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kw):
        if not _loopback(host):
            _refuse(f"lookup of {host}")
        return getaddrinfo(host, *args, **kw)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.getaddrinfo = guarded_getaddrinfo
    socket._duet_offline_guard = True


if os.environ.get("DUET_OFFLINE_GUARD") == "1":
    install()
