"""The upstream address policy: which IP addresses the gateway may open connections to.

Pure logic (host names are resolved by the callers, or by `resolve` with a bounded wait):
registration checks a URL's host, and the upstream connection checks every address its DNS
lookup returned, so a name that later resolves elsewhere (DNS rebinding) is caught too.

Order of the rules: always-refused ranges (link-local and cloud metadata, multicast,
unspecified), then METAMCP_UPSTREAM_DENY (loopback, private), then METAMCP_UPSTREAM_ALLOW.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Categories METAMCP_UPSTREAM_DENY may name.
DENIABLE = ("private", "loopback")


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


#: Link-local ranges (169.254.169.254 of AWS, GCP, Azure, OpenStack..., and 169.254.170.23,
#: 169.254.42.42 lie in the first) and the metadata services that live elsewhere: AWS IMDS and
#: EKS Pod Identity over IPv6 (fd00:ec2::254, fd00:ec2::23), Google Cloud's IPv6 metadata
#: server (fd20:ce::254), Scaleway's (fd00:42::42), Alibaba Cloud (100.100.100.200) and
#: Oracle Cloud Classic (192.0.0.192).
METADATA = _networks("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "fd00:ec2::23/128",
                     "fd20:ce::254/128", "fd00:42::42/128", "100.100.100.200/32", "192.0.0.192/32")
MULTICAST = _networks("224.0.0.0/4", "ff00::/8")
#: Connecting to 0.0.0.0 (or ::) reaches the local host on Linux: never a real upstream.
UNSPECIFIED = _networks("0.0.0.0/8", "::/128")
LOOPBACK = _networks("127.0.0.0/8", "::1/128")
#: RFC 1918, unique-local IPv6, and shared address space (100.64/10: carrier-grade NAT, and
#: the addresses of overlay networks such as Tailscale, which front internal servers too).
PRIVATE = _networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "100.64.0.0/10")

#: (ranges, what they are, rule) in the order they are checked.
ALWAYS_REFUSED = (
    (METADATA, "a link-local/cloud-metadata address"),
    (MULTICAST, "a multicast address"),
    (UNSPECIFIED, "an unspecified address"),
)
DENY_RULES = {"loopback": (LOOPBACK, "loopback"), "private": (PRIVATE, "a private address")}

#: IPv6 spellings of an IPv4 address, besides IPv4-mapped (::ffff:0:0/96): IPv4-compatible
#: (::/96), NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48) with the address in the
#: last 32 bits.
_V4_IN_LAST_32 = _networks("::/96", "64:ff9b::/96", "64:ff9b:1::/48")


_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_OCTAL = re.compile(r"0[0-7]+")
_DECIMAL = re.compile(r"[1-9][0-9]*|0")


class AddressRefused(ValueError):
    """The policy refuses an address; the message names the address and the rule."""


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 literal in any form inet_aton (and so getaddrinfo) accepts: 1 to 4 parts, each
    decimal, octal (leading 0) or hex (0x): `2130706433`, `0x7f.1`, `0177.0.0.1`; else None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if _HEX.fullmatch(part):
            numbers.append(int(part[2:], 16))
        elif _OCTAL.fullmatch(part):
            numbers.append(int(part, 8))
        elif _DECIMAL.fullmatch(part):
            numbers.append(int(part, 10))
        else:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_ip(host: str) -> IPAddress | None:
    """The address a host literal stands for, or None for a host name. Brackets, an IPv6 zone
    and urllib3's trailing dot are dropped; odd IPv4 forms are read as the resolver reads them."""
    text = host.strip().removeprefix("[").removesuffix("]").rstrip(".")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    return parse_ipv4(text)


def effective(address: IPAddress) -> IPAddress:
    """The address a connection really reaches: IPv6 spellings of IPv4 addresses (mapped,
    compatible, NAT64, 6to4) become that IPv4 address, and an IPv6 zone is dropped."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    plain = ipaddress.IPv6Address(int(address))
    if plain.ipv4_mapped is not None:
        return plain.ipv4_mapped
    if plain.sixtofour is not None:
        return plain.sixtofour
    if int(plain) > 1 and any(plain in net for net in _V4_IN_LAST_32):
        return ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF)
    return plain


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def parse_allow_entry(text: str) -> IPNetwork | str:
    """One METAMCP_UPSTREAM_ALLOW entry: a CIDR or address, or a host name (`*.example.com`
    for any name under example.com). ValueError when it is neither."""
    entry = text.strip().lower()
    literal = parse_ip(entry) if "/" not in entry else None
    if literal is not None:
        return ipaddress.ip_network(effective(literal))
    if "/" in entry:
        return ipaddress.ip_network(entry, strict=False)
    name = entry.removeprefix("*.").rstrip(".")
    labels = name.split(".")
    if not name or not all(label and len(label) < 64 and all(c.isalnum() or c in "-_" for c in label)
                           and label.isascii() for label in labels):
        raise ValueError(f"{text!r} is not a CIDR, an IP address or a host name")
    return entry.rstrip(".")


@dataclass(frozen=True)
class AddressPolicy:
    """The operator's choices; the default allows all but the always-refused ranges."""

    #: Subset of DENIABLE.
    deny: frozenset[str] = frozenset()
    #: Empty: no allow-list. Else only these networks and host names are allowed.
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()

    @property
    def narrowed(self) -> bool:
        return bool(self.allow_networks or self.allow_hosts)

    def host_allowed(self, host: str) -> bool:
        """Whether a host name is on the allow-list (always true without one)."""
        if not self.narrowed:
            return True
        name = host.lower().rstrip(".")
        return any(name == entry or (entry.startswith("*.") and name.endswith(entry[1:]))
                   for entry in self.allow_hosts)

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to `address` (a literal host, or one `host` resolved to) is refused;
        None when it is allowed."""
        reached = effective(address)
        subject = _subject(host, reached)
        for networks, what in ALWAYS_REFUSED:
            if _within(reached, networks):
                return f"{subject} is {what} (always refused)"
        for category in DENIABLE:
            networks, what = DENY_RULES[category]
            if category in self.deny and _within(reached, networks):
                return f"{subject} is {what} (refused by METAMCP_UPSTREAM_DENY)"
        listed = _within(reached, self.allow_networks) or _within(address, self.allow_networks)
        if self.narrowed and not self.host_allowed(host) and not listed:
            return f"{subject} is not in METAMCP_UPSTREAM_ALLOW"
        return None

    def check_host(self, host: str, resolve: Callable[[str], list[IPAddress] | None]) -> None:
        """Registration's check of a URL's host: a literal is checked as it is, a name by every
        address `resolve` gives (None: it does not resolve now, and the check at connect time
        decides). AddressRefused naming the rule."""
        literal = parse_ip(host)
        addresses = [literal] if literal is not None else resolve(host.rstrip(".")) or []
        for address in addresses:
            reason = self.refusal(host, address)
            if reason is not None:
                raise AddressRefused(reason)

    def choose(self, host: str, addresses: list[IPAddress]) -> list[int]:
        """Indexes of the resolved `addresses` a connection may use, in order; AddressRefused
        (the first refusal) when none may be."""
        reasons = [self.refusal(host, address) for address in addresses]
        allowed = [index for index, reason in enumerate(reasons) if reason is None]
        if not allowed:
            raise AddressRefused(next((r for r in reasons if r), f"{host} resolves to no address"))
        return allowed


def _subject(host: str, reached: IPAddress) -> str:
    """How a refusal names what it refuses: the host as written, and the address it reaches."""
    shown = host.strip("[]")
    return shown if shown == str(reached) else f"{shown} ({reached})"


def resolve(host: str, timeout: float) -> list[IPAddress] | None:
    """The addresses `host` resolves to, waiting at most `timeout` seconds; None when it does
    not resolve (in time). The lookup runs on a daemon thread: getaddrinfo cannot be cancelled,
    and a stuck resolver must not hold up a request (nor the process's exit)."""
    found: list[list[IPAddress] | None] = [None]

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        addresses = [parse_ip(str(info[4][0])) for info in infos]
        found[0] = [a for a in addresses if a is not None]

    thread = threading.Thread(target=lookup, name="metamcp-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    return found[0]
