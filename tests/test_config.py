import dataclasses
from pathlib import Path

import pytest

from telephony.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_documented_defaults_match_built_in_defaults():
    documented = load_settings(ROOT / "config" / "telephony.toml", env={})
    assert documented == Settings()


def test_environment_overrides_file(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text("[asr]\nbeam_size = 3\n[service]\nhttp_port = 9000\n")
    s = load_settings(f, env={"TELEPHONY_ASR_BEAM_SIZE": "1", "DATABASE_URL": "postgresql://u@/db?host=/tmp"})
    assert s.asr.beam_size == 1
    assert s.service.http_port == 9000
    assert s.database.url == "postgresql://u@/db?host=/tmp"


@pytest.mark.parametrize(
    "text,env,match",
    [
        ("[asr]\nbeam = 3\n", {}, "unknown setting asr.beam"),
        ("[nope]\nx = 1\n", {}, r"unknown config section \[nope\]"),
        ("[asr]\nbeam_size = 'many'\n", {}, "expected int"),
        ("[media]\npacer_chunk_ms = 500\n", {}, "20..200"),
        ("", {"TELEPHONY_MEDIA_JITTER_WINDOW_MS": "30"}, "multiple of 20"),
        ("[asr\n", {}, "config file"),
    ],
)
def test_bad_settings_give_clear_errors(tmp_path, text, env, match):
    f = tmp_path / "t.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(f, env=env)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_settings("/nonexistent.toml", env={})


def test_every_setting_is_documented():
    text = (ROOT / "config" / "telephony.toml").read_text()
    for section in dataclasses.fields(Settings):
        assert f"[{section.name}]" in text
        for f in dataclasses.fields(getattr(Settings(), section.name)):
            assert f"\n{f.name} =" in text, f"{section.name}.{f.name} undocumented"
