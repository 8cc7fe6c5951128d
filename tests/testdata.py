"""Where the shared third-party test vectors are (RFC 4475 messages, captures, SIPREC bodies,
browser offers): ``../shared/testdata`` beside the repository, or ``$TELEPHONY_TESTDATA``.

A test that needs them and cannot find them fails, with one message saying where it looked:
it never skips (a skipped test would count as a pass).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CANDIDATES = [Path(os.environ["TELEPHONY_TESTDATA"])] if os.environ.get("TELEPHONY_TESTDATA") else []
_CANDIDATES += [Path(__file__).resolve().parents[2] / "shared" / "testdata", Path("/work/shared/testdata")]


def _root() -> Path | None:
    return next((p for p in _CANDIDATES if (p / "README.md").is_file()), None)


def vector(*parts: str) -> Path:
    """The path of a test vector (a file or a folder); fails the test loudly when it is missing."""
    root = _root()
    if root is None:
        pytest.fail("shared test data not found (looked in "
                    + ", ".join(str(p) for p in _CANDIDATES) + "); set TELEPHONY_TESTDATA", pytrace=False)
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test vector missing: {path}", pytrace=False)
    return path


def vectors(folder: str, pattern: str) -> list[Path]:
    """Every vector in a folder matching ``pattern``; an empty or missing folder fails loudly."""
    found = sorted(vector(folder).glob(pattern))
    if not found:
        pytest.fail(f"no {pattern} in {vector(folder)}", pytrace=False)
    return found
