"""Speech recognition: one session per speaker leg, emitting Partial and Final events."""

from .base import AsrEngine, AsrSession, Final, Partial, SessionInfo

__all__ = ["AsrEngine", "AsrSession", "Final", "Partial", "SessionInfo"]


def create_engine(settings):
    """The engine named by ``settings.asr.engine`` (loads and verifies the model)."""
    if settings.asr.engine == "none":
        from .null import NullEngine

        return NullEngine()
    from .whisper import WhisperEngine

    return WhisperEngine(settings.asr, settings.vad, settings.data_dir)
