"""Speech recognition: one session per speaker leg, emitting Partial and Final events.

    base.py        the interface every engine implements
    utterances.py  embedded models: VAD segmentation + decode scheduling + a decoder
    vad.py         the shared, batched voice-activity model;  segmenter.py: utterances from it
    scheduler.py   decode threads, overload policy, measured decode cost
    moonshine.py   Moonshine base-en decoder (onnxruntime; moonshine_convert.py builds it once from the wheel)
    whisper.py     Whisper (CTranslate2) decoder;  models.py: model files, verified
    streaming.py   what the speech services share: pacing, replay, reconnects, fallback
    deepgram.py, assemblyai.py, google.py   the services (websocket.py: their WebSocket part)
    settings.py    the services' settings sections
    null.py        no transcription
"""

from .base import AsrEngine, AsrSession, Final, Partial, SessionInfo

__all__ = ["AsrEngine", "AsrSession", "Final", "Partial", "SessionInfo", "create_engine"]

ENGINES = ("moonshine", "whisper", "deepgram", "assemblyai", "google", "none")
EMBEDDED = ("moonshine", "whisper")


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
    if name in EMBEDDED:
        from .utterances import UtteranceEngine

        if name == "moonshine":
            from .moonshine import MoonshineDecoder, resolve_moonshine

            decoder = MoonshineDecoder(resolve_moonshine(settings.models_dir), threads=settings.asr.cpu_threads)
        else:
            from .whisper import WhisperDecoder

            decoder = WhisperDecoder(settings.asr, settings.models_dir)
        return UtteranceEngine(decoder, settings.asr, settings.vad)
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
