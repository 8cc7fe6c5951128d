"""Recordings: each leg's audio as it came off the jitter buffer, stored beside its transcript.

    writer.py     Recorder (one writer thread, bounded queue) and LegRecording (one file)
    retention.py  deletes audio older than [recordings] retention_days
    reader.py     decodes a recording back to an AudioFrame (second pass, tests)
"""

from .writer import FORMATS, LegRecording, Recorder, RecordingInfo

__all__ = ["FORMATS", "LegRecording", "Recorder", "RecordingInfo"]
