"""Which mail servers the product may connect to: not the internal network (SSRF).

A mailbox's IMAP and SMTP hosts are typed by its owner, so connecting to them must not
become a way to probe the network the service runs in: loopback, private networks,
link-local (169.254.169.254 and the other cloud metadata services), multicast, unspecified
and reserved addresses are refused, in IPv4 and IPv6, IPv4 inside IPv6 included. The name
is resolved once, every address it resolves to is checked, and the connection goes to a
checked address, never to a second DNS answer. TLS is the caller's and uses the name (SNI
and the certificate's host name check).

In-house servers are allowed by the deployment (EIS_MAIL_HOSTS_ALLOW): host names, and
CIDRs their addresses may fall in (a bare address is a /32 or /128).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from portal.mail.errors import Classified

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_SETTING = "EIS_MAIL_HOSTS_ALLOW"

# Cloud metadata and instance services. Most are link-local or private already; named here
# so that they stay refused whatever a Python's own tables say.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, Google, Azure, OpenStack, DigitalOcean...
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud
))
# Not reachable on the internet, and not in every Python's is_global tables.
NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4",
    "64:ff9b::/96", "64:ff9b:1::/48", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10",
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the IPv4 address is the last 32 bits


class HostRefused(Exception):
    """The host resolves to an address the product does not connect to. A fault of the
    mailbox's settings (or of its DNS), not a bug: it carries its classification and words;
    `address` is for the logs only (a person is not told what an internal name resolves to)."""

    mail_fault = True

    def __init__(self, host: str, port: int, address: str):
        self.host, self.port, self.address = host, port, address
        words = (f"The mail server {host} is at a private or internal address (loopback, a private "
                 f"network, link-local, multicast or cloud metadata): the CRM does not connect to "
                 f"those. If it is an in-house mail server, an administrator can allow it with "
                 f"{ALLOW_SETTING}.")
        super().__init__(words)
        self.classified = Classified(reason="protocol_error", refusal=False, detail=words, retry_after=None)


def is_internal(address: IPAddress) -> bool:
    """True for an address the product does not connect to unless the deployment allows it:
    loopback, private, link-local, multicast, unspecified, reserved, shared (CGNAT), cloud
    metadata; an IPv6 address carrying an IPv4 one (mapped, 6to4, Teredo, NAT64) by that one."""
    embedded = _embedded_ipv4(address)
    if embedded is not None and is_internal(embedded):
        return True
    return (address in METADATA_ADDRESSES or not address.is_global or address.is_loopback
            or address.is_private or address.is_link_local or address.is_multicast
            or address.is_unspecified or address.is_reserved
            or any(address in network for network in NOT_GLOBAL))


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address (the server's is public anyway)
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Target:
    """A host name resolved and checked: the addresses to connect to, in the resolver's order."""

    host: str
    port: int
    entries: tuple[tuple[int, int, int, tuple], ...]  # (family, type, proto, sockaddr) from getaddrinfo

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(entry[3][0] for entry in self.entries)

    def connect(self, timeout: float | None) -> socket.socket:
        """A TCP connection to the first checked address that answers (as
        socket.create_connection tries each, but without resolving again)."""
        error: OSError | None = None
        for family, type_, proto, sockaddr in self.entries:
            sock = socket.socket(family, type_, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"{self.host} has no address")


@dataclass(frozen=True)
class HostPolicy:
    """The hosts the product may connect to: any public one, and those the deployment allows."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, value: str | list | tuple | None) -> HostPolicy:
        """Parse EIS_MAIL_HOSTS_ALLOW: comma-separated host names and CIDRs (or a list)."""
        items = value.split(",") if isinstance(value, str) else list(value or ())
        names, networks = set(), []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in item or " " in item:
                raise ValueError(f"{ALLOW_SETTING}: {item!r} is neither a host name nor a CIDR")
            names.add(_name(item))
        return cls(frozenset(names), tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        """True if the address may be connected to (public, or in an allowed network)."""
        candidates = [address] + ([a] if (a := _embedded_ipv4(address)) is not None else [])
        if any(a in network for a in candidates for network in self.networks):
            return True
        return not is_internal(address)

    def check(self, host: str, port: int) -> Target:
        """Resolve the host once and check every address; the Target to connect to.

        Raises HostRefused if any address is internal (a name with one private address among
        public ones is refused: the connection could go to either), and socket.gaierror when
        the name is not found."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        entries, seen = [], set()
        for family, type_, proto, _canonname, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6) or sockaddr[0] in seen:
                continue
            seen.add(sockaddr[0])
            entries.append((family, type_, proto, sockaddr))
        if _name(host) not in self.names:
            for entry in entries:
                address = ipaddress.ip_address(entry[3][0])
                if not self.allows(address):
                    raise HostRefused(host, port, entry[3][0])
        return Target(host=host, port=port, entries=tuple(entries))


def _name(host: str) -> str:
    return host.strip().rstrip(".").lower()
