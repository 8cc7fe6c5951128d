"""Speech recognition: one session per speaker leg, emitting Partial and Final events."""

from .base import AsrEngine, AsrSession, Final, Partial

__all__ = ["AsrEngine", "AsrSession", "Final", "Partial", "create_engine"]

ENGINES = ("whisper", "deepgram", "assemblyai", "google", "none")


def create_engine(settings, name: str | None = None, *, fallback=None):
    """The engine named ``name`` (default: ``settings.asr.engine``).

    Streaming services get ``fallback`` as their embedded fallback engine when
    given (the caller owns it and closes it); otherwise, with ``[asr] fallback
    = "whisper"``, one is built here and closed with the service engine.
    The embedded engine loads and verifies its model.
    """
    name = name or settings.asr.engine
    if name == "none":
        from .null import NullEngine

        return NullEngine()
    if name == "whisper":
        from .whisper import WhisperEngine

        return WhisperEngine(settings.asr, settings.vad, settings.data_dir)
    if name not in ENGINES:
        raise ValueError(f"unknown ASR engine {name!r}; one of {', '.join(ENGINES)}")
    owns = False
    if fallback is None and settings.asr.fallback:
        fallback, owns = create_engine(settings, settings.asr.fallback), True
    if name == "deepgram":
        from .deepgram import DeepgramEngine

        return DeepgramEngine(settings.asr, settings.deepgram, fallback=fallback, owns_fallback=owns)
    if name == "assemblyai":
        from .assemblyai import AssemblyAIEngine

        return AssemblyAIEngine(settings.asr, settings.assemblyai, fallback=fallback, owns_fallback=owns)
    from .google import GoogleEngine

    return GoogleEngine(settings.asr, settings.google, fallback=fallback, owns_fallback=owns)
