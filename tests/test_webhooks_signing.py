"""Standard Webhooks signing and the [webhooks] settings: spec vectors, key rotation, bad configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from telephony.config import ConfigError, load_settings
from telephony.webhooks import configured_endpoints, new_secret
from telephony.webhooks.delivery import backoff
from telephony.webhooks.signing import headers, signature

from .webhooks_receiver import OLD_SECRET, SECRET, verify

# The vector of the spec's reference libraries (standard-webhooks, libraries/*/tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_spec_vector():
    assert signature([SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signature_is_hmac_sha256_of_id_timestamp_body_by_hand():
    body = '{"type":"call.ended","data":{"text":"naïve café"}}'  # non-ASCII: the UTF-8 bytes are signed
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    by_hand = base64.b64encode(hmac.new(key, f"msg_x.1700000000.{body}".encode(), hashlib.sha256).digest()).decode()
    assert signature([SECRET], "msg_x", 1700000000, body) == f"v1,{by_hand}"


def test_key_rotation_signs_with_every_secret_and_each_receiver_verifies():
    now = int(time.time())
    body = '{"type":"call.started"}'
    h = headers([SECRET, OLD_SECRET], "msg_rot", now, body)
    assert len(h["webhook-signature"].split(" ")) == 2
    assert h["webhook-id"] == "msg_rot" and h["webhook-timestamp"] == str(now)
    assert h["content-type"] == "application/json"
    assert verify(SECRET, h, body.encode()) and verify(OLD_SECRET, h, body.encode())
    assert not verify(new_secret(), h, body.encode())
    assert not verify(SECRET, h, body.encode() + b" ")  # a stray byte breaks it
    stale = headers([SECRET], "msg_rot", now - 3600, body)
    assert not verify(SECRET, stale, body.encode())  # replay protection: outside the tolerance


def test_environment_alone_configures_one_receiver():
    s = load_settings(env={"TELEPHONY_WEBHOOKS_URLS": "http://127.0.0.1:9/hook",
                           "TELEPHONY_WEBHOOKS_SECRET": SECRET})
    [ep] = configured_endpoints(s.webhooks)
    assert ep.url == "http://127.0.0.1:9/hook" and ep.secrets == (SECRET,)
    assert ep.wants("call.started") and ep.wants("call.ended") and not ep.wants("utterance.final")
    assert SECRET not in repr(ep)


def test_toml_endpoints_have_their_own_secret_and_filter(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(f"""
[webhooks]
urls = ["https://user:pw@crm.example/hook?token=abc"]
secret = "{SECRET} {OLD_SECRET}"
events = ["*"]

[[webhooks.endpoints]]
name = "tickets"
url = "http://127.0.0.1:9/t"
secret = "{OLD_SECRET}"
events = ["call.ended"]
""")
    crm, tickets = configured_endpoints(load_settings(f, env={}).webhooks)
    assert crm.name == "https://crm.example/hook"  # no credentials or query in what is logged
    assert crm.secrets == (SECRET, OLD_SECRET) and crm.wants("utterance.final")
    assert tickets.name == "tickets" and tickets.secrets == (OLD_SECRET,)
    assert tickets.wants("call.ended") and not tickets.wants("call.started")


@pytest.mark.parametrize("env, match", [
    ({"TELEPHONY_WEBHOOKS_URLS": "ftp://host/x", "TELEPHONY_WEBHOOKS_SECRET": SECRET}, "only http:// and https://"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http:///nohost", "TELEPHONY_WEBHOOKS_SECRET": SECRET}, "no host"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x#frag", "TELEPHONY_WEBHOOKS_SECRET": SECRET}, "fragment"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x"}, "webhooks.secret is required"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x", "TELEPHONY_WEBHOOKS_SECRET": "hunter2hunter2"}, "must start with 'whsec_'"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x", "TELEPHONY_WEBHOOKS_SECRET": "whsec_not*base64"}, "not valid base64"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x", "TELEPHONY_WEBHOOKS_SECRET": "whsec_c2hvcnQ="}, "5 bytes"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x", "TELEPHONY_WEBHOOKS_SECRET": SECRET,
      "TELEPHONY_WEBHOOKS_EVENTS": "call.started,call.exploded"}, "unknown event type"),
    ({"TELEPHONY_WEBHOOKS_URLS": "http://h/x,http://h/x", "TELEPHONY_WEBHOOKS_SECRET": SECRET}, "two receivers"),
    ({"TELEPHONY_WEBHOOKS_RETRY_MAX_S": "1", "TELEPHONY_WEBHOOKS_RETRY_INITIAL_S": "5"}, "retry_max_s"),
])
def test_bad_webhook_settings_are_refused_with_the_setting_named(env, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_settings(env=env)
    assert "hunter2" not in str(err.value) and "not*base64" not in str(err.value)  # secrets are never echoed


def test_new_secret_is_valid_and_random():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(base64.b64decode(a[6:])) == 32
    load_settings(env={"TELEPHONY_WEBHOOKS_URLS": "http://h/x", "TELEPHONY_WEBHOOKS_SECRET": a})


def test_backoff_doubles_with_jitter_up_to_the_cap():
    for attempt, base in ((1, 5), (2, 10), (3, 20), (10, 600), (40, 600)):
        low, high = backoff(attempt, 5, 600, 0.0), backoff(attempt, 5, 600, 0.999999)
        assert low == pytest.approx(base / 2) and base / 2 < high < base
