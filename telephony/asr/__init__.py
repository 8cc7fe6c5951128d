"""Speech recognition: one session per speaker leg, emitting Partial and Final events."""

from .base import AsrEngine, AsrSession, Final, Partial

__all__ = ["AsrEngine", "AsrSession", "Final", "Partial"]
