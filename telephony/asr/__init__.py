"""Speech recognition: one session per speaker leg, emitting Partial and Final events.

    base.py        the interface every engine implements
    utterances.py  embedded models: VAD segmentation + decode scheduling + a decoder
    vad.py         the shared, batched voice-activity model;  segmenter.py: utterances from it
    scheduler.py   decode threads, overload policy, measured decode cost
    whisper.py     Whisper (CTranslate2) decoder;  models.py: model files, verified
    null.py        no transcription
"""

from .base import AsrEngine, AsrSession, Final, Partial, SessionInfo

__all__ = ["AsrEngine", "AsrSession", "Final", "Partial", "SessionInfo", "create_engine"]


def create_engine(settings, name: str | None = None):
    """The engine named by ``settings.asr.engine`` (or ``name``); loads and verifies the model."""
    name = name or settings.asr.engine
    if name == "none":
        from .null import NullEngine

        return NullEngine()
    from .utterances import UtteranceEngine
    from .whisper import WhisperDecoder

    return UtteranceEngine(WhisperDecoder(settings.asr, settings.data_dir), settings.asr, settings.vad)
