"""Telephony call transcription: calls in, speaker-attributed transcripts in PostgreSQL out."""

__version__ = "0.1.0"
