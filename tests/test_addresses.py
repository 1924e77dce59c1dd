"""The upstream address policy as pure logic: literals, categories, deny and allow lists."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from metamcp.addresses import (
    AddressPolicy,
    AddressRefused,
    IPAddress,
    parse_allow_entry,
    parse_ip,
    parse_ipv4,
)

DENY_BOTH = AddressPolicy(deny=frozenset({"private", "loopback"}))


@pytest.mark.parametrize("literal", [
    "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0x7f000001", "017700000001", "0xA9FEA9FE",
    "169.254.43518", "10.1.1", "0", "4294967295", "1.2.3.4",
    "256.1.1.1", "1.2.3.4.5", "08.1.1.1", "0x", "1..2", "a.b", "1.2.3.-4", "4294967296", "1_0.0.0.1",
    "0x_7f.1", "",
])
def test_odd_ipv4_literals_are_read_as_the_resolver_reads_them(literal: str) -> None:
    try:
        expected: str | None = socket.inet_ntoa(socket.inet_aton(literal))
    except OSError:
        expected = None
    parsed = parse_ipv4(literal)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize(("host", "rule"), [
    ("169.254.169.254", "link-local/cloud-metadata"),
    ("0xA9FEA9FE", "link-local/cloud-metadata"),
    ("2852039166", "link-local/cloud-metadata"),
    ("::ffff:169.254.169.254", "link-local/cloud-metadata"),
    ("[::ffff:a9fe:a9fe]", "link-local/cloud-metadata"),
    ("::169.254.169.254", "link-local/cloud-metadata"),        # IPv4-compatible
    ("64:ff9b::169.254.169.254", "link-local/cloud-metadata"),  # NAT64
    ("2002:a9fe:a9fe::1", "link-local/cloud-metadata"),         # 6to4
    ("fe80::1", "link-local/cloud-metadata"),
    ("fe80::1%25eth0", "link-local/cloud-metadata"),
    ("fd00:ec2::254", "link-local/cloud-metadata"),
    ("fd20:ce::254", "link-local/cloud-metadata"),
    ("fd00:ec2::23", "link-local/cloud-metadata"),
    ("fd00:42::42", "link-local/cloud-metadata"),
    ("192.0.0.192", "link-local/cloud-metadata"),
    ("100.100.100.200", "link-local/cloud-metadata"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("::ffff:224.0.0.251", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("::ffff:0.0.0.0", "unspecified"),
])
def test_always_refused_whatever_the_settings(host: str, rule: str) -> None:
    address = parse_ip(host)
    assert address is not None
    everything = AddressPolicy(allow_networks=(ipaddress.ip_network("0.0.0.0/0"),
                                               ipaddress.ip_network("::/0")), allow_hosts=(host,))
    for policy in (AddressPolicy(), DENY_BOTH, everything):
        reason = policy.refusal(host, address)
        assert reason is not None and f"{rule} address (always refused)" in reason
        assert reason.startswith(host.strip("[]"))


@pytest.mark.parametrize(("host", "category", "what"), [
    ("127.0.0.1", "loopback", "loopback"),
    ("0x7f.1", "loopback", "loopback"),
    ("2130706433", "loopback", "loopback"),
    ("0177.0.0.1", "loopback", "loopback"),
    ("::1", "loopback", "loopback"),
    ("::ffff:127.0.0.1", "loopback", "loopback"),
    ("10.2.3.4", "private", "a private address"),
    ("172.31.0.1", "private", "a private address"),
    ("192.168.1.1", "private", "a private address"),
    ("fd12:3456::1", "private", "a private address"),
    ("100.64.0.1", "private", "a private address"),
    ("::ffff:10.0.0.1", "private", "a private address"),
])
def test_private_and_loopback_are_allowed_unless_denied(host: str, category: str, what: str) -> None:
    address = parse_ip(host)
    assert address is not None
    assert AddressPolicy().refusal(host, address) is None
    reason = AddressPolicy(deny=frozenset({category})).refusal(host, address)
    assert reason is not None and reason.endswith(f"is {what} (refused by METAMCP_UPSTREAM_DENY)")
    other = "private" if category == "loopback" else "loopback"
    assert AddressPolicy(deny=frozenset({other})).refusal(host, address) is None


def test_public_addresses_are_allowed() -> None:
    for host in ("8.8.8.8", "2001:4860:4860::8888", "172.32.0.1", "100.128.0.1"):
        address = parse_ip(host)
        assert address is not None and DENY_BOTH.refusal(host, address) is None


def test_the_allow_list_narrows_by_network_and_by_host_name() -> None:
    entries = [parse_allow_entry(e) for e in ("10.0.0.0/8", "192.168.1.5", "mcp.internal", "*.corp.example")]
    policy = AddressPolicy(allow_networks=tuple(e for e in entries if not isinstance(e, str)),
                           allow_hosts=tuple(e for e in entries if isinstance(e, str)))
    ten, public = ipaddress.ip_address("10.9.8.7"), ipaddress.ip_address("203.0.113.9")
    assert policy.refusal("10.9.8.7", ten) is None
    assert policy.refusal("db.example", ten) is None  # a name is allowed by what it resolves to
    assert policy.refusal("192.168.1.5", ipaddress.ip_address("192.168.1.5")) is None
    assert policy.refusal("mcp.internal", public) is None
    assert policy.refusal("a.b.corp.example", public) is None
    assert policy.refusal("corp.example", public) == "corp.example (203.0.113.9) is not in METAMCP_UPSTREAM_ALLOW"
    assert policy.refusal("203.0.113.9", public) == "203.0.113.9 is not in METAMCP_UPSTREAM_ALLOW"
    refused = policy.refusal("127.0.0.1", ipaddress.ip_address("127.0.0.1"))
    assert refused == "127.0.0.1 is not in METAMCP_UPSTREAM_ALLOW"
    # the always-refused list wins over the allow-list, and so does the deny list
    assert "always refused" in (policy.refusal("mcp.internal", ipaddress.ip_address("169.254.169.254")) or "")
    denied = AddressPolicy(deny=frozenset({"private"}), allow_networks=policy.allow_networks)
    assert "METAMCP_UPSTREAM_DENY" in (denied.refusal("10.9.8.7", ten) or "")


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "http://x", "a..b", "bad host", "é.example"])
def test_malformed_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allow_entry(entry)


def test_registration_resolves_names_and_refuses_any_bad_address() -> None:
    answers: dict[str, list[IPAddress] | None] = {
        "mixed.test": [ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("169.254.169.254")],
        "local.test": [ipaddress.ip_address("127.0.0.1")],
        "gone.test": None,
    }
    asked: list[str] = []

    def resolve(name: str) -> list[IPAddress] | None:
        asked.append(name)
        return answers[name]

    with pytest.raises(AddressRefused, match=r"^mixed\.test \(169\.254\.169\.254\) is a link-local"):
        AddressPolicy().check_host("mixed.test", resolve)
    AddressPolicy().check_host("local.test", resolve)
    with pytest.raises(AddressRefused, match="local.test \\(127.0.0.1\\) is loopback"):
        DENY_BOTH.check_host("local.test", resolve)
    DENY_BOTH.check_host("gone.test", resolve)  # unresolvable now: the connect-time check decides
    with pytest.raises(AddressRefused, match="always refused"):
        AddressPolicy().check_host("0xa9fea9fe", resolve)  # a literal is never looked up
    assert asked == ["mixed.test", "local.test", "local.test", "gone.test"]


def test_a_connection_uses_only_allowed_addresses_of_a_rebound_name() -> None:
    rebound = [ipaddress.ip_address(a) for a in ("169.254.169.254", "::ffff:127.0.0.1", "127.0.0.1")]
    assert AddressPolicy().choose("rebind.test", rebound) == [1, 2]
    with pytest.raises(AddressRefused, match=r"rebind\.test \(169\.254\.169\.254\) is a link-local"):
        DENY_BOTH.choose("rebind.test", rebound)
    with pytest.raises(AddressRefused):
        AddressPolicy().choose("empty.test", [])
