"""What file ingest produces: a call as legs, and the error for a file that can't be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from telephony.media.codecs import Codec


class IngestError(ValueError):
    """One-line, user-facing reason a file can't be read (the CLI prints it and exits non-zero)."""


def err(path: Path, reason: str) -> IngestError:
    # One line whatever the path contains: the CLI prints it as is.
    return IngestError(f"{str(path).replace(chr(10), ' ')}: {reason}")


@dataclass
class RtpLegInput:
    label: str  # speaker label: SIP display name/user when the capture maps it, else "ssrc 0x…"
    # The leg's {payload type: Codec}, its audio codec first (MediaLeg decodes with it): what the
    # capture's SDP negotiated, else the static payload types of the codec table.
    payload_types: dict[int, Codec]
    packets: list[tuple[float, bytes]]  # (arrival s relative to the call's first RTP packet, raw RTP datagram)
    ssrc: int
    meta: dict = field(default_factory=dict)  # src, dst, role, call_id, payload_types, start_ms, duration_ms…

    @property
    def codec(self) -> str:
        """The audio codec's name ("PCMU", "G722", "opus"…)."""
        return next(c.name for c in self.payload_types.values() if c.audio)


@dataclass
class PcmLegInput:
    label: str  # "left"/"right" for stereo, the file stem for mono
    rate: int  # 8000 or 16000
    samples: np.ndarray  # int16 mono
    start_ms: int = 0


@dataclass
class CallInput:
    path: str
    kind: str  # "wav" | "ulaw" | "alaw" | "pcap"
    legs: list[RtpLegInput | PcmLegInput]
    duration_ms: int  # end of the last leg's audio on the call timeline
    meta: dict = field(default_factory=dict)  # SIP call_id/from/to/sip_calls, warnings, capture details
