"""Webhook rules the API and the workers share: which URLs and addresses may be called,
how a delivery is signed, and how a URL may appear in a log.

The API checks a ``callback_url`` at submit (``url_problem``); a worker checks every
address its host resolves to before it connects (``forbidden``), because a name that
passed at submit may point anywhere by the time the task ends.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
SCHEMES = frozenset({"http", "https"})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PRIVATE = "a loopback, private, link-local, multicast or reserved address"


def forbidden(address: IPAddress) -> bool:
    """True for an address a webhook may not reach: anything but a public unicast one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, also in the old forms (``127.1``, ``0x7f.1``); else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def url_problem(
    url: str, allow_private: bool, allowed_hosts: frozenset[str] = frozenset()
) -> str | None:
    """What is wrong with a ``callback_url``, or None when a worker may POST to it.

    ``allowed_hosts`` (``WEBHOOK_ALLOWED_HOSTS``), when not empty, are the only hosts allowed.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"at most {MAX_URL_LENGTH} characters"
    if not url.isascii() or any(not c.isprintable() or c.isspace() for c in url):
        return "printable ASCII without spaces (percent-encode the rest; punycode for names)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return "not a URL"
    if parts.scheme not in SCHEMES:
        return "the scheme must be http or https"
    if "@" in parts.netloc:
        return "no user name or password in the URL (sign requests with WEBHOOK_SECRET)"
    if not parts.hostname:
        return "the URL has no host"
    if allowed_hosts and parts.hostname not in allowed_hosts:
        return "the host is not one of WEBHOOK_ALLOWED_HOSTS"
    literal = ip_literal(parts.hostname)
    if literal is not None and forbidden(literal) and not allow_private:
        return f"{PRIVATE}: refused (WEBHOOK_ALLOW_PRIVATE allows them)"
    return None


def for_logs(url: str) -> str:
    """The URL as logs may show it: scheme, host, port and path; never the query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Errand-Signature`` header: ``t=<unix seconds>,v1=<HMAC-SHA256 hex>``.

    The HMAC is over ``f"{timestamp}."`` followed by the body, keyed with the secret.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"
