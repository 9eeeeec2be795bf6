"""Find the client's IP address behind proxies and CDNs.

A pure function on the request hot path: the common case (no forwarding
headers, or a plain ``X-Forwarded-For``) costs a few dict lookups and one
cached address check, and raises nothing.

Headers are consulted in the order Moesif's own middlewares use, each only
when it holds a valid IP address; otherwise the socket peer is returned.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache
from typing import Callable, Mapping, Optional, Tuple

__all__ = ["client_ip"]

logger = logging.getLogger(__name__)

# Single-address headers set by well-known proxies and CDNs, in the order of
# trust Moesif uses. X-Forwarded-For (a list) comes second and the RFC 7239
# Forwarded header last; both are handled by their own parsers.
_FIRST = "x-client-ip"  # Amazon EC2, Heroku and others
_LIST = "x-forwarded-for"  # load balancers: "client, proxy1, proxy2"
# The original package (1.1.8) reads true-client-ip right after
# cf-connecting-ip and knows no fastly-client-ip: a request carrying both gets
# the same address as there, and Fastly's header still counts when alone.
_SINGLE_AFTER_LIST = (
    "cf-connecting-ip",  # Cloudflare
    "true-client-ip",  # Akamai, Cloudflare Enterprise
    "fastly-client-ip",  # Fastly
    "x-real-ip",  # nginx
    "x-cluster-client-ip",  # Rackspace LB, Riverbed Stingray
    "x-forwarded",
    "forwarded-for",
)
_RFC7239 = "forwarded"


@lru_cache(maxsize=4096)
def _valid(candidate: str) -> bool:
    # Cached because the same few client and proxy addresses repeat on every
    # request; the bound keeps a flood of random values from growing memory.
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _address(entry: str) -> Optional[str]:
    """Return the IP in one list entry, dropping quotes, brackets and ports.

    Accepts ``1.2.3.4``, ``1.2.3.4:8080``, ``2001:db8::1``, ``[2001:db8::1]``
    and ``[2001:db8::1]:443``; anything else (``unknown``, obfuscated names,
    host names) gives None.
    """
    value = entry.strip().strip('"').strip()
    if not value:
        return None
    if value[0] == "[":
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        # Exactly one colon can only be IPv4 with a port (Azure adds one);
        # a bare IPv6 address always has at least two.
        value = value.partition(":")[0]
    return value if _valid(value) else None


def _first_in_list(value: str) -> Optional[str]:
    # The left-most entry is the originating client; proxies append to the
    # right. Entries may be "unknown" (Squid), so take the first valid one.
    for entry in value.split(","):
        found = _address(entry)
        if found is not None:
            return found
    return None


def _first_in_forwarded(value: str) -> Optional[str]:
    # RFC 7239: "for=192.0.2.60;proto=http, for=\"[2001:db8::17]:4711\"".
    # Some proxies put a bare address in it instead; accept that too.
    for element in value.split(","):
        for pair in element.split(";"):
            name, eq, val = pair.partition("=")
            if not eq:
                found = _address(name)
            elif name.strip().lower() == "for":
                found = _address(val)
            else:
                continue
            if found is not None:
                return found
    return None


# Every header to look at, in order of trust, with the parser for its format.
_LOOKUPS: Tuple[Tuple[str, Callable[[str], Optional[str]]], ...] = (
    (_FIRST, _address),
    (_LIST, _first_in_list),
    *((name, _address) for name in _SINGLE_AFTER_LIST),
    (_RFC7239, _first_in_forwarded),
)
_NAMES = frozenset(name for name, _ in _LOOKUPS)


def client_ip(headers: Mapping[str, str], peer: Optional[str]) -> Optional[str]:
    """Return the originating client's IP address, else ``peer``.

    ``headers`` must have lowercase names (repeated headers joined with
    ``", "``). ``peer`` is the socket peer's host from the ASGI scope and is
    returned unchanged when no header holds a valid address. Never raises.
    """
    try:
        if type(headers) is dict and headers.keys().isdisjoint(_NAMES):
            # Most calls carry none of them: one set test in C instead of ten lookups.
            return peer
        get = headers.get
        for name, parse in _LOOKUPS:
            value = get(name)
            if value:
                found = parse(value)
                if found is not None:
                    return found
    except Exception:  # a foreign header object must never break a request
        logger.debug("could not read forwarding headers", exc_info=True)
    return peer
