"""SDES a=crypto lines and SRTP unprotection against libsrtp senders (pylibsrtp), both suites."""

from __future__ import annotations

import base64

import pytest
from pylibsrtp import Policy, Session

from telephony.media.srtp import SUITES, CryptoAttribute, SdesError, SrtpReceiver, is_rtcp, negotiate
from telephony.media.rtp import build_rtp, parse_rtp

# RFC 4568 section 4's example (with MKI 1 of 4 bytes, which we refuse) and keys shaped like it.
RFC4568_EXAMPLE = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4"
KEY_A = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
KEY_B = "NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj"


def sender(attr: CryptoAttribute) -> Session:
    """The peer's side: libsrtp protecting with the key it put in its a=crypto line."""
    return Session(Policy(key=attr.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=SUITES[attr.suite]))


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes = bytes(range(160))) -> bytes:
    return build_rtp(0, seq, 160 * seq, ssrc, payload)


@pytest.mark.parametrize("suite,tag_len", [("AES_CM_128_HMAC_SHA1_80", 10), ("AES_CM_128_HMAC_SHA1_32", 4)])
def test_protected_stream_comes_back_byte_for_byte(suite, tag_len):
    offer = CryptoAttribute.generate(7, suite)
    remote = CryptoAttribute.parse("a=crypto:" + offer.sdp())  # through the SDP text, as a peer sends it
    tx, rx = sender(offer), SrtpReceiver(remote)
    for seq in range(65530, 65536 + 40):  # across the sequence number wrap (rollover counter)
        plain = rtp(seq & 0xFFFF)
        protected = tx.protect(plain)
        assert len(protected) == len(plain) + tag_len and protected[12:] != plain[12:]
        out = rx.unprotect(protected)
        assert out == plain and parse_rtp(out).payload == plain[12:]
    assert (rx.received, rx.auth_failed, rx.replayed) == (46, 0, 0)
    report = bytes.fromhex("81c90007") + (0x11223344).to_bytes(4, "big") + bytes(24)  # an RR with one block
    srtcp = tx.protect_rtcp(report)
    assert is_rtcp(srtcp) and not is_rtcp(protected)
    assert rx.unprotect_rtcp(srtcp) == report


def test_several_ssrcs_in_one_session():
    offer = CryptoAttribute.generate(1, "AES_CM_128_HMAC_SHA1_80")
    tx, rx = sender(offer), SrtpReceiver(offer)
    for seq in range(10):
        for ssrc in (1, 2):
            assert rx.unprotect(tx.protect(rtp(seq, ssrc))) == rtp(seq, ssrc)


def test_wrong_key_tampered_replayed_and_plain_rtp_are_rejected_and_counted():
    offer = CryptoAttribute.generate(1, "AES_CM_128_HMAC_SHA1_80")
    tx, rx = sender(offer), SrtpReceiver(offer)
    good = [tx.protect(rtp(seq)) for seq in range(1, 6)]
    assert rx.unprotect(good[0]) is not None

    other = sender(CryptoAttribute.generate(1, "AES_CM_128_HMAC_SHA1_80"))
    assert rx.unprotect(other.protect(rtp(100))) is None  # a key other than the one signalled

    tampered = bytearray(good[1])
    tampered[20] ^= 0x01  # one payload bit
    assert rx.unprotect(bytes(tampered)) is None
    assert rx.unprotect(good[1]) is not None  # the genuine packet still gets through afterwards

    assert rx.unprotect(good[1]) is None  # replayed
    assert rx.unprotect(rtp(200)) is None  # plain RTP injected into the SRTP stream
    assert rx.unprotect(rtp(201, payload=bytes(170))) is None
    assert rx.unprotect(b"\x80\x00") is None  # not even a header
    assert (rx.received, rx.auth_failed, rx.replayed, rx.malformed) == (2, 4, 1, 1)


def test_packets_older_than_the_replay_window_are_rejected():
    offer = CryptoAttribute.generate(1, "AES_CM_128_HMAC_SHA1_32")
    tx, rx = sender(offer), SrtpReceiver(offer)
    old = tx.protect(rtp(1))
    for seq in range(2, 400):
        rx.unprotect(tx.protect(rtp(seq)))
    assert rx.unprotect(old) is None and rx.replayed == 1  # never seen, but 398 packets behind


def test_sender_with_the_32_bit_tag_is_not_accepted_by_an_80_bit_receiver():
    offer = CryptoAttribute.generate(1, "AES_CM_128_HMAC_SHA1_32")
    rx = SrtpReceiver(CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", offer.key))
    assert rx.unprotect(sender(offer).protect(rtp(1))) is None and rx.auth_failed == 1


@pytest.mark.parametrize("line,tag,suite,lifetime", [
    # Asterisk (res_srtp / res_pjsip_sdp_rtp): tag, suite, inline key, nothing more.
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}", 1, "AES_CM_128_HMAC_SHA1_80", None),
    (f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B}", 2, "AES_CM_128_HMAC_SHA1_32", None),
    # baresip's srtp module: the same shape; SDP parsers hand us the value without "a=".
    (f"crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B}", 3, "AES_CM_128_HMAC_SHA1_80", None),
    # Lifetimes as RFC 4568 writes them (power of two) and as a plain number.
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^20", 1, "AES_CM_128_HMAC_SHA1_80", 2**20),
    (f"1 AES_CM_128_HMAC_SHA1_32 inline:{KEY_A}|1048576", 1, "AES_CM_128_HMAC_SHA1_32", 2**20),
    (f"  a=crypto:99 AES_CM_128_HMAC_SHA1_80   inline:{KEY_A}|2^31 \r\n", 99, "AES_CM_128_HMAC_SHA1_80", 2**31),
])
def test_crypto_lines_peers_write(line, tag, suite, lifetime):
    attr = CryptoAttribute.parse(line)
    assert (attr.tag, attr.suite, attr.lifetime) == (tag, suite, lifetime)
    assert len(attr.key) == 30 and base64.b64encode(attr.key).decode() in line
    assert CryptoAttribute.parse(attr.sdp()) == CryptoAttribute(tag, suite, attr.key)


@pytest.mark.parametrize("line,reason", [
    (RFC4568_EXAMPLE, "MKI not supported"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^20|1:4;inline:{KEY_B}|2^20|2:4", "more than one master key"),
    (f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_A}{KEY_B}", "crypto suite AES_256_CM_HMAC_SHA1_80 not supported"),
    (f"a=crypto:1 AEAD_AES_128_GCM inline:{KEY_A}", "crypto suite AEAD_AES_128_GCM not supported"),
    (f"a=crypto:1 F8_128_HMAC_SHA1_80 inline:{KEY_A}", "not supported"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A[:-1]}!", "not valid base64"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A[:-4]}", "inline key is 27 bytes"),
    ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(bytes(46)).decode(), "inline key is 46 bytes"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A} KDR=1", "session parameters not supported: KDR"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A} UNENCRYPTED_SRTP UNENCRYPTED_SRTCP", "UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A} FEC_KEY=inline:{KEY_B}", "session parameters not supported: FEC_KEY"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^99", "outside 1..2^48"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|forever", "bad key lifetime"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^49", "outside 1..2^48"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^20|2^20", "bad key lifetime"),
    (f"a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}", "tag 'x' is not a number"),
    (f"a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}", "not a number of 1-9 digits"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 uri:https://keys.example/{KEY_A}", "must be inline"),
    ("a=crypto:1 AES_CM_128_HMAC_SHA1_80", "needs a tag, a crypto suite and key parameters"),
    ("a=crypto:", "needs a tag"),
])
def test_broken_or_unsupported_lines_are_refused_with_a_reason_and_no_key(line, reason):
    with pytest.raises(SdesError) as e:
        CryptoAttribute.parse(line)
    message = str(e.value)
    assert reason in message and "\n" not in message
    assert KEY_A[:12] not in message and KEY_B[:12] not in message  # secrets never reach logs


def test_negotiation_takes_the_first_usable_line_and_answers_with_a_new_key():
    # An Asterisk 18+ offer: AES-256 suites first, then the AES-128 ones we take.
    offer = [
        f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_A}{KEY_B}",
        f"a=crypto:2 AES_256_CM_HMAC_SHA1_32 inline:{KEY_B}{KEY_A}",
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}",
        f"a=crypto:4 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B}",
    ]
    remote, ours = negotiate(offer)
    assert (remote.tag, remote.suite, base64.b64encode(remote.key).decode()) == (3, "AES_CM_128_HMAC_SHA1_80", KEY_A)
    assert (ours.tag, ours.suite) == (3, remote.suite) and ours.key != remote.key and len(ours.key) == 30
    assert ours.key != negotiate(offer)[1].key  # fresh every time
    assert ours.sdp().startswith("3 AES_CM_128_HMAC_SHA1_80 inline:") and KEY_A not in repr(ours)


def test_negotiation_failure_says_why_for_each_line():
    with pytest.raises(SdesError) as e:
        negotiate([RFC4568_EXAMPLE, f"a=crypto:2 AES_192_CM_HMAC_SHA1_80 inline:{KEY_A}"])
    assert str(e.value) == ("no usable a=crypto line (1: MKI not supported; 2: crypto suite AES_192_CM_HMAC_SHA1_80 "
                            "not supported (we take AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32))")
    with pytest.raises(SdesError, match="without a=crypto"):
        negotiate([])


# ---- a real SDES peer: baresip's srtp module calls us with mediaenc=srtp-mand


def _sip_reply(request: str, status: str, extra: str = "", body: str = "") -> bytes:
    """A response carrying the request's Via, From, To (tagged), Call-ID and CSeq."""
    lines = request.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    keep = [ln for ln in lines if ln.split(":", 1)[0].strip().lower() in ("via", "v", "from", "f", "call-id", "i", "cseq")]
    to = next(ln for ln in lines if ln.split(":", 1)[0].strip().lower() in ("to", "t"))
    if ";tag=" not in to:
        to += ";tag=srtptest"
    head = [f"SIP/2.0 {status}", *keep, to, *filter(None, extra.split("\r\n"))]
    return ("\r\n".join(head + [f"Content-Length: {len(body)}", "", body])).encode()


@pytest.mark.slow
def test_baresip_srtp_call_is_unprotected_and_decoded(tmp_path):
    import selectors
    import socket
    import subprocess
    import textwrap
    import time

    import numpy as np

    from telephony.media.codecs import CODECS

    from .sip_peers import SOUNDS, _stop, free_port, require
    from .speech import prompt_8k

    require("baresip", "baresip-core")
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    media.bind(("127.0.0.1", 0))
    rtp_base = free_port() & ~1
    (tmp_path / "config").write_text(textwrap.dedent(f"""\
        poll_method		epoll
        sip_listen		127.0.0.1:{free_port()}
        net_interface		127.0.0.1
        audio_player		aufile,{tmp_path / 'heard.wav'}
        audio_source		aufile,{SOUNDS / 'pls-hold-while-try.wav'}
        audio_alert		aufile,{tmp_path / 'alert.wav'}
        rtp_ports		{rtp_base}-{rtp_base + 40}
        module_path		/usr/lib/baresip/modules
        module			g711.so
        module			aufile.so
        module			srtp.so
        module_app		account.so
        module_app		menu.so
        """))
    (tmp_path / "accounts").write_text("<sip:baresip@127.0.0.1>;regint=0;audio_codecs=PCMU/8000;mediaenc=srtp-mand\n")
    proc = subprocess.Popen(["baresip", "-f", str(tmp_path), "-e", f"/dial sip:srtp@127.0.0.1:{sip.getsockname()[1]}", "-t", "7"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(sip, selectors.EVENT_READ)
    sel.register(media, selectors.EVENT_READ)
    injector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    offer, receiver, answer, pcm, injected = None, None, None, [], False
    decoder = CODECS["PCMU"].decoder()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = sel.select(timeout=1)
            for key, _ in ready:
                data, addr = key.fileobj.recvfrom(65535)
                if key.fileobj is media:
                    plain = receiver.unprotect(data) if receiver else None
                    if plain is not None:
                        packet = parse_rtp(plain)
                        pcm.append(decoder.decode(packet.payload))
                        if receiver.received == 50 and not injected:  # plain RTP slipped into the stream
                            forged = build_rtp(0, packet.sequence + 1000, packet.timestamp + 160_000, packet.ssrc, bytes(160))
                            injector.sendto(forged, media.getsockname())
                            injected = True
                    continue
                msg = data.decode(errors="replace")
                method = msg.split(" ", 1)[0]
                if method == "INVITE":
                    offer = msg
                    if receiver is None:
                        crypto = [ln for ln in msg.split("\r\n") if ln.startswith("a=crypto:")]
                        remote, ours = negotiate(crypto)
                        receiver = SrtpReceiver(remote)
                        port = media.getsockname()[1]
                        body = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                                f"m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{ours.sdp()}\r\na=recvonly\r\n")
                        answer = _sip_reply(msg, "200 OK", f"Contact: <sip:srtp@127.0.0.1:{sip.getsockname()[1]}>\r\n"
                                            "Content-Type: application/sdp", body)
                    sip.sendto(answer, addr)
                elif method == "BYE":
                    sip.sendto(_sip_reply(msg, "200 OK"), addr)
                    deadline = 0
        proc.wait(10)
    finally:
        _stop(proc)
        for sock in (sip, media, injector):
            sock.close()
    assert offer is not None, "baresip never sent its INVITE"
    lines = [CryptoAttribute.parse(ln) for ln in offer.split("\r\n") if ln.startswith("a=crypto:")]
    print("\nbaresip offered:", [f"{a.tag} {a.suite} lifetime={a.lifetime}" for a in lines])
    assert {a.suite for a in lines} >= {"AES_CM_128_HMAC_SHA1_80"} and "RTP/SAVP" in offer
    assert receiver.received > 100 and receiver.replayed == 0
    assert injected and receiver.auth_failed == 1  # the forged plain packet, and nothing of baresip's
    heard = np.frombuffer(b"".join(pcm), "<i2").astype(float)
    sent = prompt_8k("pls-hold-while-try").astype(float)
    # Where the prompt sits in what we heard (baresip starts it when the call is up): FFT cross-correlation.
    n = len(heard) + len(sent)
    xc = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(sent, n)), n)
    lag = int(np.argmax(xc[: len(heard)]))
    seg = heard[lag:lag + len(sent)]
    assert len(seg) > 8000 and np.corrcoef(seg, sent[: len(seg)])[0, 1] > 0.95
