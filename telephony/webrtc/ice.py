"""ICE policy: which addresses we offer, which remote candidates we accept, which servers we ask.

aioice gathers host candidates from every interface except loopback, with no
option to choose; ``restrict_host_addresses`` replaces its address discovery
with the configured list (see ``aiortc_hooks.py``). Remote candidates outside ``remote_networks`` are removed
from an offer's text before aiortc sees it, so an offer cannot make us send
connectivity checks anywhere else (and mDNS ``.local`` names, which would need
multicast lookups, are dropped whenever a network list is set).
"""

from __future__ import annotations

import ipaddress
import re

from aiortc import RTCConfiguration, RTCIceServer

from ..config import WebRtcSettings
from .aiortc_hooks import set_host_addresses


def restrict_host_addresses(addresses: list[str]) -> None:
    """Host candidates use exactly these addresses (an empty list restores aioice's discovery)."""
    for a in addresses:
        ipaddress.ip_address(a)  # fail at start-up, not at the first offer
    set_host_addresses(addresses)


def rtc_configuration(settings: WebRtcSettings) -> RTCConfiguration:
    # An explicit empty list: aiortc falls back to Google's STUN server only when given None.
    servers = [RTCIceServer(urls=url, username=settings.ice_username or None,
                            credential=settings.ice_credential or None) for url in settings.ice_servers]
    return RTCConfiguration(iceServers=servers)


class CandidateFilter:
    def __init__(self, networks: list[str]):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # a hostname (mDNS "x.local"): resolving it is itself traffic
            return False
        return any(ip in net for net in self.networks)

    def apply(self, sdp: str) -> tuple[str, int]:
        """The SDP without disallowed ``a=candidate`` lines, and how many were dropped."""
        if not self.networks:
            return sdp, 0
        kept, dropped = [], 0
        for line in sdp.splitlines(keepends=True):
            m = _CANDIDATE.match(line)
            if m is not None and not self.allows(m.group(1)):
                dropped += 1
                continue
            kept.append(line)
        return "".join(kept), dropped


# a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
_CANDIDATE = re.compile(r"a=candidate:\S+\s+\d+\s+\S+\s+\d+\s+(\S+)\s", re.IGNORECASE)
