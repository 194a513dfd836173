"""The trust list: which client addresses may connect (``TRUST``).

Entries are IP addresses (``"10.1.2.3"``, ``"::1"``), networks in CIDR
notation (``"10.0.0.0/8"``) or ``"*"`` for any client. An empty ``TRUST``
restricts nobody (:func:`client_trust`), as ``Server(trust=[])`` did in the
original API. IPv4 clients reaching
an IPv6 socket (``::ffff:10.1.2.3``) are matched as IPv4.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from lexicons.errors import SettingsError

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustList:
    """A parsed TRUST setting; :meth:`allows` answers for one client address."""

    def __init__(self, entries: Iterable[str]):
        self.entries = tuple(entries)
        self.anyone = False
        self.networks: list[_Network] = []
        for entry in self.entries:
            entry = entry.strip()
            if entry == "*":
                self.anyone = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise SettingsError(f"TRUST: {entry!r} is not an address, a network "
                                    f"(10.0.0.0/8) or '*'") from None

    def allows(self, host: str) -> bool:
        """Tell whether a client at *host* may connect."""
        if self.anyone:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # not an IP (a UNIX socket peer, ...): only '*' admits it
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def client_trust(entries: Iterable[str]) -> TrustList:
    """Return the trust list of the ``TRUST`` setting: an empty one admits anyone."""
    entries = tuple(entries)
    return TrustList(entries or ("*",))
