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


def test_streaming_engine_from_the_environment(tmp_path):
    key = tmp_path / "key"
    key.write_text("secret-from-file\n")
    s = load_settings(env={"TELEPHONY_ASR_ENGINE": "deepgram", "TELEPHONY_ASR_URL": "ws://127.0.0.1:9000/v1/listen",
                           "TELEPHONY_ASR_API_KEY_FILE": str(key), "TELEPHONY_DEEPGRAM_MODEL": "nova-2",
                           "TELEPHONY_DEEPGRAM_KEYWORDS": "refund:2,invoice", "TELEPHONY_ASR_FALLBACK": "whisper"})
    assert (s.asr.engine, s.asr.url, s.deepgram.model, s.asr.fallback) == ("deepgram", "ws://127.0.0.1:9000/v1/listen", "nova-2", "whisper")
    assert s.deepgram.keywords == ["refund:2", "invoice"]
    from telephony.asr.settings import resolve_api_key

    assert resolve_api_key("deepgram", s.asr.api_key, s.asr.api_key_file) == "secret-from-file"
    s.asr.api_key = "s3cret"
    assert "s3cret" not in repr(s)  # settings can be logged; keys are not in them


def test_vendor_key_variable_is_read():
    s = load_settings(env={"TELEPHONY_ASR_ENGINE": "assemblyai", "ASSEMBLYAI_API_KEY": "k"})
    assert s.asr.engine == "assemblyai"


@pytest.mark.parametrize(
    "env,match",
    [
        ({"TELEPHONY_ASR_ENGINE": "deepgram"}, "needs an API key.*DEEPGRAM_API_KEY"),
        ({"TELEPHONY_ASR_ENGINE": "google"}, "GOOGLE_APPLICATION_CREDENTIALS"),
        ({"TELEPHONY_ASR_ENGINE": "deepgram", "TELEPHONY_ASR_URL": "http://x/v1/listen"}, "ws:// or wss://"),
        ({"TELEPHONY_ASR_ENGINE": "assemblyai", "ASSEMBLYAI_API_KEY": "k", "TELEPHONY_ASR_CHUNK_MS": "20"}, "at least 50"),
        ({"TELEPHONY_ASR_ENGINE": "deepgram", "DEEPGRAM_API_KEY": "k", "TELEPHONY_ASR_FALLBACK": "vosk"}, "asr.fallback"),
        ({"TELEPHONY_ASR_ENGINE": "deepgram", "TELEPHONY_ASR_API_KEY_FILE": "/nonexistent/key"}, "api_key_file"),
        ({"TELEPHONY_ASR_ENGINE": "speechmatics"}, "asr.engine must be"),
        ({"TELEPHONY_ASR_BUFFER_S": "0.5"}, "buffer_s"),
    ],
)
def test_bad_streaming_settings_give_clear_errors(env, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(env=env)
