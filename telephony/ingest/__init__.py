"""Read a call from a file: WAV, headerless G.711, or a pcap/pcapng capture of SIP + RTP.

``load_call(path)`` returns a ``CallInput``: one leg per speaker, either raw RTP
datagrams with their capture arrival times and negotiated payload types
(``RtpLegInput``) or decoded 16-bit PCM (``PcmLegInput``). Anything that cannot
be read raises ``IngestError`` with a one-line reason.

The file's content decides how it is read, its name only where content can't
(headerless G.711): ``wav`` reads WAV and raw G.711, ``capture`` reads captures
(frames taken apart by ``layers``, SIP and SDP read by ``signalling``).
"""

from __future__ import annotations

from pathlib import Path

from .call import CallInput, IngestError, PcmLegInput, RtpLegInput, err
from .capture import PCAP_MAGICS, PCAPNG_MAGIC, load_capture
from .wav import load_raw, load_wav

__all__ = ["load_call", "CallInput", "RtpLegInput", "PcmLegInput", "IngestError"]

ULAW_SUFFIXES = (".ulaw", ".mulaw", ".pcmu", ".ul", ".u8")
ALAW_SUFFIXES = (".alaw", ".pcma", ".al", ".a8")


def load_call(path: str | Path) -> CallInput:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            if head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC:
                f.seek(0)
                return load_capture(p, f, pcapng=head[:4] == PCAPNG_MAGIC)
            data = head + f.read()
    except IsADirectoryError:
        raise err(p, "is a directory, not a call file") from None
    except OSError as e:
        raise err(p, f"cannot read: {e.strerror or e}") from None
    suffix = p.suffix.lower()
    if not data:
        raise err(p, "empty file")
    if data[:4] in (b"RIFF", b"RF64"):
        return load_wav(p, data)
    if suffix in ULAW_SUFFIXES:
        return load_raw(p, data, "ulaw")
    if suffix in ALAW_SUFFIXES:
        return load_raw(p, data, "alaw")
    if suffix == ".wav":
        raise err(p, "not a RIFF/WAVE file")
    if suffix in (".pcap", ".pcapng", ".cap"):
        raise err(p, "not a pcap or pcapng capture")
    raise err(p, "unsupported file type: need WAV, raw G.711 (.ulaw/.alaw) or a pcap/pcapng capture")
