"""Whisper (CTranslate2, through faster-whisper) as the decoder of one utterance.

faster-whisper loads the model and gives us its feature extractor and tokenizer;
decoding calls CTranslate2 directly so the encoder window can be shorter than
Whisper's 30 s (see ``decode``). Segmentation and scheduling are the shared
``utterances.py``.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..config import AsrSettings
from .models import resolve_model
from .vad import RATE


def compression_ratio(text: str) -> float:
    """Whisper's own loop detector: repeated text compresses far better than speech does."""
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


class WhisperDecoder:
    name = "whisper"

    def __init__(self, asr: AsrSettings, models_dir: Path, model: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths only
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        path = resolve_model(model or asr.model, models_dir)
        self.model_path = path
        self._whisper = WhisperModel(str(path), device="cpu", compute_type=asr.compute_type,
                                     cpu_threads=asr.cpu_threads, num_workers=asr.workers + 1)  # + the partials thread
        self._ct2 = self._whisper.model
        self._features = self._whisper.feature_extractor
        multilingual = self._ct2.is_multilingual
        tok = Tokenizer(self._whisper.hf_tokenizer, multilingual, task="transcribe",
                        language=asr.language if multilingual else "en")
        self._tokenizer = tok
        self._prompt = list(tok.sot_sequence) + [tok.no_timestamps]
        self._beam = asr.beam_size
        self._window_s = asr.window_s

    def decode(self, audio: np.ndarray, *, draft: bool = False, degraded: bool = False) -> tuple[str, float | None]:
        """Text and a 0..1 confidence (mean token probability) for one utterance.

        The encoder costs the same for any audio inside its window, and 30 s windows
        make short utterances pay for 30 s. Utterances that fit use a ``window_s``
        window (about 2.5× cheaper for 15 s at the same WER on the Asterisk set);
        output that looks like a repetition loop is decoded again with 30 s. Drafts
        (partials) are greedy with a 10 s window when they fit; a backlog makes finals greedy.
        """
        beam = 1 if draft or degraded else self._beam
        window_s = min(10.0, self._window_s) if draft else self._window_s
        seconds = len(audio) / RATE
        window = window_s if seconds + 0.5 <= window_s else 30.0
        text, logprob, no_speech = self._generate(audio, window, beam, seconds)
        if window < 30.0 and text and compression_ratio(text) > 2.4:
            text, logprob, no_speech = self._generate(audio, 30.0, beam, seconds)
        # Whisper invents text in noise: drop what it thinks is not speech and is unsure of.
        if not text or (no_speech > 0.6 and logprob < -1.0):
            return "", None
        return text, round(min(1.0, math.exp(logprob)), 4)

    def _generate(self, audio: np.ndarray, window: float, beam_size: int, seconds: float):
        import ctranslate2

        n = int(RATE * window)
        padded = np.pad(audio, (0, n - len(audio))) if len(audio) < n else audio[:n]
        frames = int(window * 100)  # 10 ms hop
        mel = self._features(padded)[:, :frames]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        # Speech runs at most ~4 tokens/s; a generous bound stops runaway loops early.
        max_length = min(448, len(self._prompt) + int(8 * seconds) + 16)
        result = self._ct2.generate(features, [self._prompt], beam_size=beam_size, max_length=max_length,
                                    return_scores=True, return_no_speech_prob=True, suppress_blank=True)[0]
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        return text, result.scores[0] if result.scores else -10.0, result.no_speech_prob
