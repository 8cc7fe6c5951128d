"""Digest authentication: RFC 2617's worked example, stateless nonces, and the endpoint's 401 round trip."""

from telephony.sip.auth import DigestAuth, authorization, digest_response, parse_auth_header


def test_rfc2617_example_response():
    # RFC 2617 section 3.5 (HTTP, but the digest computation is the same).
    got = digest_response("Mufasa", "Circle Of Life", "testrealm@host.com", "GET", "/dir/index.html",
                          "dcd98b7102dd2f0e8b11d0f600bfb0c093", "auth", "00000001", "0a4f113b")
    assert got == "6629fae49393a05397450978507c4ef1"


def test_challenge_answer_and_tampering():
    now = [1000.0]
    auth = DigestAuth("pbx", "trunk", "s3cret", secret=b"k" * 32, clock=lambda: now[0])
    ch = auth.challenge()
    assert parse_auth_header(ch)["qop"] == "auth"
    good = authorization(ch, "trunk", "s3cret", "INVITE", "sip:transcribe@127.0.0.1")
    assert auth.check("INVITE", good) == "ok"
    assert auth.check("INVITE", authorization(ch, "trunk", "wrong", "INVITE", "sip:transcribe@127.0.0.1")) == "fail"
    assert auth.check("INVITE", good.replace("trunk", "other")) == "fail"
    forged = ch.replace(parse_auth_header(ch)["nonce"], "3e8.00000000000000000000000000000000")
    assert auth.check("INVITE", authorization(forged, "trunk", "s3cret", "INVITE", "sip:x@y")) == "fail"
    assert auth.check("INVITE", None) == "fail" and auth.check("INVITE", "Basic abc") == "fail"
    now[0] += 301  # genuine but old nonce: the client is told to retry with a fresh one
    assert auth.check("INVITE", good) == "stale" and "stale=true" in auth.challenge(stale=True)
