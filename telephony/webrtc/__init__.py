"""WebRTC endpoint: HTTP signalling and aiortc peer connections whose audio tracks become live call legs.

    signalling.py  HTTP routes (WHIP-style POST/DELETE, JSON variant)
    gateway.py     admission (limits, shutdown), the live sessions
    offer.py       offer checks with clear errors, speaker labels per track
    session.py     one peer connection = one call; its end paths
    tap.py         RTP packets of a track → the leg's jitter buffer (ours, not aiortc's)
    aiortc_hooks.py every use of aiortc's and aioice's private parts, in one place
    ice.py         host addresses, remote candidate filter, ICE servers
"""

from .gateway import Busy, WebRtcGateway
from .offer import OfferError, OfferNotAcceptable, TrackLabel
from ..config import WebRtcSettings

__all__ = ["Busy", "OfferError", "OfferNotAcceptable", "TrackLabel", "WebRtcGateway", "WebRtcSettings"]
