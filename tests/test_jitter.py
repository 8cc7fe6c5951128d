import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.config import MediaSettings
from telephony.media.jitter import STUCK_S, JitterBuffer
from telephony.media.rtp import RtpPacket

SIL = b"\xff"
FRAME = 160  # samples (= bytes for G.711) per 20 ms
W = 3  # default window, in frames


def payload(k: int, n: int = FRAME) -> bytes:
    """Distinct per packet and never the silence byte, so any misplacement shows."""
    return bytes((k * 31 + i) % 255 for i in range(n))


def pkt(k: int, *, n: int = FRAME, seq0: int = 1000, ts0: int = 5000, ssrc: int = 7, tag: int | None = None):
    """The k-th packet of a stream; ``tag`` picks its payload (default k)."""
    return RtpPacket(0, (seq0 + k) & 0xFFFF, (ts0 + k * n) & 0xFFFFFFFF, ssrc, payload(k if tag is None else tag, n))


def run(jb: JitterBuffer, arrivals, ticks: int) -> list[bytes]:
    """Drive ``jb`` like a leg: at tick n (n × 20 ms) push what has arrived, then pop.

    ``arrivals``: (arrival_ms, packet); ties keep the given order.
    """
    events = sorted(arrivals, key=lambda a: a[0])
    out, i = [], 0
    for n in range(ticks):
        now = n * 20
        while i < len(events) and events[i][0] <= now:
            jb.push(events[i][1], events[i][0] / 1000)
            i += 1
        out.append(jb.pop(now / 1000))
    assert i == len(events), "test bug: not every packet was pushed"
    return out


def stream(count: int, *, ms: int = 20, phase: int = 5, **kw):
    """Packets 0..count-1 of ``ms`` each, each sent (and arriving) on time."""
    return [(phase + k * ms, pkt(k, **kw)) for k in range(count)]


def silence(frames: float) -> bytes:
    return SIL * int(frames * FRAME)


def test_in_order_stream_plays_exact_bytes_after_the_window():
    jb = JitterBuffer()
    out = run(jb, stream(10), 15)
    assert all(len(f) == FRAME for f in out)
    # tick 0 precedes the first packet; it arrives before tick 1 and plays W ticks later
    assert out[:1 + W] == [silence(1)] * (1 + W)
    assert out[1 + W:14] == [payload(k) for k in range(10)]
    assert out[14] == silence(1)
    s = jb.stats
    assert (s.received, s.lost, s.late, s.duplicate, s.reordered, s.resyncs) == (10, 0, 0, 0, 0, 0)
    assert s.silence_ms == 100


def test_silence_before_first_packet_is_counted():
    jb = JitterBuffer()
    assert [jb.pop(n * 0.02) for n in range(5)] == [silence(1)] * 5
    assert jb.stats.silence_ms == 100 and jb.depth_ms == 0
    assert jb.drain() == []


def test_lost_packet_becomes_exactly_one_frame_of_silence():
    jb = JitterBuffer()
    out = run(jb, [a for a in stream(10) if a[1].sequence != 1005], 15)
    expected = [payload(k) if k != 5 else silence(1) for k in range(10)]
    assert out[1 + W:14] == expected
    assert jb.stats.lost == 1 and jb.stats.late == 0
    assert jb.stats.silence_ms == 120


def test_reordered_within_window_plays_in_order():
    arrivals = stream(10)
    arrivals[3] = (arrivals[3][0] + 30, arrivals[3][1])  # 3 arrives after 4, still before its slot
    jb = JitterBuffer()
    out = run(jb, arrivals, 15)
    assert out[1 + W:14] == [payload(k) for k in range(10)]
    assert jb.stats.reordered == 1 and jb.stats.lost == 0 and jb.stats.late == 0


@pytest.mark.parametrize("arrival_ms,lost", [(145, 0), (165, 1)])
def test_late_packet_is_dropped_and_counted(arrival_ms, lost):
    # packet 3 plays at tick 1+W+3 = 7 (140 ms); packet 4, at tick 8, is what reveals the gap
    arrivals = stream(10)
    arrivals[3] = (arrival_ms, arrivals[3][1])
    jb = JitterBuffer()
    out = run(jb, arrivals, 15)
    assert out[1 + W:14] == [payload(k) if k != 3 else silence(1) for k in range(10)]
    assert jb.stats.late == 1
    # arriving after the gap was counted lost: late as well, lost not taken back
    assert jb.stats.lost == lost


def test_duplicates_buffered_or_already_played_are_dropped():
    arrivals = stream(10)
    arrivals.append((46, pkt(2)))  # 2 is still buffered
    arrivals.append((150, pkt(0)))  # 0 was played at tick 4
    jb = JitterBuffer()
    out = run(jb, arrivals, 15)
    assert out[1 + W:14] == [payload(k) for k in range(10)]
    assert jb.stats.duplicate == 2 and jb.stats.late == 0 and jb.stats.received == 12


def test_sequence_wraps_at_65535():
    arrivals = stream(8, seq0=65533)
    arrivals[2], arrivals[3] = (arrivals[3][0], arrivals[2][1]), (arrivals[2][0], arrivals[3][1])  # 65535 after 0
    del arrivals[5]  # seq 2 lost, after the wrap
    jb = JitterBuffer()
    out = run(jb, arrivals, 13)
    assert out[1 + W:12] == [payload(k) if k != 5 else silence(1) for k in range(8)]
    assert (jb.stats.lost, jb.stats.reordered, jb.stats.resyncs) == (1, 1, 0)


def test_timestamp_wraps_at_2_32():
    jb = JitterBuffer()
    out = run(jb, stream(8, ts0=2**32 - 3 * FRAME), 13)
    assert out[1 + W:12] == [payload(k) for k in range(8)]
    assert jb.stats.resyncs == 0 and jb.stats.silence_ms == 100


def test_ssrc_change_continues_the_timeline_and_ignores_old_stragglers():
    old = stream(10)
    new = [(5 + k * 20, pkt(k - 10, seq0=40000, ts0=123456789, ssrc=99, tag=k)) for k in range(10, 20)]
    straggler = (230, pkt(10))  # the old sender's last packet, overtaken by the switch
    jb = JitterBuffer()
    out = run(jb, old + new + [straggler], 25)
    # the new stream arrives where the old one would have: seamless, nothing invented
    assert out[1 + W:24] == [payload(k) for k in range(20)]
    s = jb.stats
    assert (s.resyncs, s.late, s.lost, s.silence_ms) == (1, 1, 0, 100)


def test_ssrc_change_displaces_old_audio_buffered_beyond_the_new_start():
    # the old sender ran 100 ms ahead (10..14 arrive early), then the new one takes over
    old = stream(10) + [(205, pkt(k)) for k in range(10, 15)]
    new = [(210 + k * 20, pkt(k, seq0=3, ts0=77, ssrc=99, tag=100 + k)) for k in range(8)]
    jb = JitterBuffer()
    out = run(jb, old + new, 23)
    assert out[1 + W:] == [payload(k) for k in range(10)] + [payload(100 + k) for k in range(8)] + [silence(1)]
    assert jb.stats.resyncs == 1 and jb.stats.overflow_dropped_ms == 100


def test_single_stray_packet_does_not_resync():
    arrivals = stream(10) + [(66, pkt(0, seq0=5, ts0=9, ssrc=666, tag=200))]
    jb = JitterBuffer()
    out = run(jb, arrivals, 15)
    assert out[1 + W:14] == [payload(k) for k in range(10)]
    assert jb.stats.resyncs == 0
    jb.drain()
    assert jb.stats.late == 1  # the unconfirmed probe is discarded at the end


def test_probe_expires():
    # two strays of one SSRC, 1.5 s apart, are not a new stream
    strays = [(66, pkt(0, seq0=5, ts0=9, ssrc=666, tag=200)), (1566, pkt(1, seq0=5, ts0=9, ssrc=666, tag=201))]
    jb = JitterBuffer()
    out = run(jb, stream(80) + strays, 85)
    assert out[1 + W:1 + W + 80] == [payload(k) for k in range(80)]
    assert jb.stats.resyncs == 0 and jb.stats.late == 1


@pytest.mark.parametrize("ts_jump", [10**6, -(10**6), 2**31])
def test_timestamp_jump_reanchors_without_inventing_a_gap(ts_jump):
    arrivals = stream(10) + [(5 + k * 20, pkt(k, ts0=5000 + ts_jump)) for k in range(10, 20)]
    jb = JitterBuffer()
    out = run(jb, arrivals, 25)
    assert out[1 + W:24] == [payload(k) for k in range(20)]
    assert jb.stats.resyncs == 1 and jb.stats.lost == 0 and jb.stats.silence_ms == 100


def test_sequence_jump_is_a_restart_not_thousands_lost():
    arrivals = stream(10) + [(5 + k * 20, pkt(k, seq0=1000 + 20000)) for k in range(10, 20)]
    jb = JitterBuffer()
    out = run(jb, arrivals, 25)
    assert out[1 + W:24] == [payload(k) for k in range(20)]
    assert jb.stats.resyncs == 1 and jb.stats.lost == 0


@pytest.mark.parametrize("pause_frames", [50, 150])  # 1 s, 3 s (longer than max_jitter)
def test_pause_in_sending_is_silence_and_resumes_in_place(pause_frames):
    # DTX/hold: no packets, timestamps keep counting, sequence numbers do not
    resume = [(5 + (10 + pause_frames + j) * 20, RtpPacket(0, 1010 + j, 5000 + (10 + pause_frames + j) * FRAME, 7, payload(10 + j)))
              for j in range(5)]
    jb = JitterBuffer()
    out = run(jb, stream(10) + resume, 1 + W + 10 + pause_frames + 5)
    assert out[1 + W:] == [payload(k) for k in range(10)] + [silence(1)] * pause_frames + [payload(10 + j) for j in range(5)]
    assert (jb.stats.resyncs, jb.stats.lost, jb.stats.late) == (0, 0, 0)


@pytest.mark.parametrize("ms", [10, 30, 40])
def test_packet_sizes_other_than_a_frame_are_sliced_into_frames(ms):
    n = 8 * ms
    count = 600 // ms  # 600 ms of audio
    jb = JitterBuffer()
    out = run(jb, stream(count, ms=ms, n=n), 1 + W + 30)
    audio = b"".join(payload(k, n) for k in range(count))
    assert b"".join(out) == silence(1 + W) + audio + silence(30 - 600 / 20)
    assert all(len(f) == FRAME for f in out)
    assert jb.stats.silence_ms == (1 + W) * 20 and jb.stats.lost == 0


def test_lost_30ms_packet_leaves_exactly_its_range_silent():
    arrivals = [a for a in stream(10, ms=30, n=240) if a[1].sequence != 1004]
    jb = JitterBuffer()
    out = run(jb, arrivals, 1 + W + 15)
    audio = b"".join(payload(k, 240) if k != 4 else SIL * 240 for k in range(10))
    assert b"".join(out) == silence(1 + W) + audio
    assert jb.stats.lost == 1 and jb.stats.silence_ms == (1 + W) * 20 + 30


def test_burst_beyond_max_jitter_drops_oldest_audio_back_to_window():
    jb = JitterBuffer()
    jb.pop(0.0)
    for k in range(80):  # 1.6 s of audio at once, timestamps consistent
        jb.push(pkt(k), 0.005)
        assert jb.depth_ms <= 1000
    # packet 47 pushed the depth past 1000 ms: playout skipped to leave a window (45, 46, 47)
    assert jb.stats.overflow_dropped_ms == 960
    assert jb.depth_ms == 35 * 20
    out = [jb.pop(0.02 * (n + 1)) for n in range(35)]
    assert out == [payload(k) for k in range(45, 80)]
    assert jb.stats.resyncs == 0


def test_fast_sender_clock_keeps_memory_bounded():
    # the sender's clock runs 2 % fast: 20 ms of its timestamps every 19.6 ms of ours
    packets = [(k * 19.6 + 5, pkt(k)) for k in range(2600)]
    jb = JitterBuffer()
    out = run(jb, packets, 2550)
    assert all(len(f) == FRAME for f in out) and jb.depth_ms <= 1000
    assert jb.stats.overflow_dropped_ms > 0 and jb.stats.resyncs == 0 and jb.stats.late == 0


def test_ticks_running_late_do_not_look_like_a_jump_or_overflow():
    # the driver stalls for 1.6 s (longer than max_jitter) while packets keep arriving, then catches up
    jb = JitterBuffer()
    arrivals = stream(85)
    out = run(jb, arrivals[:4], 5)
    for a, p in arrivals[4:]:
        jb.push(p, a / 1000)
    out += [jb.pop(n * 0.02) for n in range(5, 90)]
    assert out[1 + W:1 + W + 85] == [payload(k) for k in range(85)]
    assert jb.stats.resyncs == 0 and jb.stats.overflow_dropped_ms == 0


def test_stream_stuck_behind_the_playout_reanchors():
    # the sender paused 300 ms without advancing its timestamps: every packet after is late
    resume = [(305 + k * 20, pkt(k)) for k in range(10, 40)]
    jb = JitterBuffer()
    out = run(jb, stream(10) + resume, 60)
    assert jb.stats.resyncs == 1
    j = 10 + jb.stats.late  # first packet played after the re-anchor
    assert STUCK_S / 0.02 <= jb.stats.late <= STUCK_S / 0.02 + 1
    # j arrived just before tick 16 + j and plays a window later; nothing but silence before it
    assert out[1 + W:] == [payload(k) for k in range(10)] + [silence(1)] * (5 + j) \
        + [payload(k) for k in range(j, 40)] + [silence(1)]


def test_rfc3550_jitter():
    # arrivals alternate 0 / 10 ms late: |D| = 80 timestamp units each time
    jb = JitterBuffer()
    for k in range(200):
        jb.push(pkt(k), (k * 20 + (10 if k % 2 else 0)) / 1000)
        if k == 1:
            assert jb.stats.jitter_ms == pytest.approx(80 / 16 / 8)
    assert jb.stats.jitter_ms == pytest.approx(10 * (1 - (15 / 16) ** 199))
    steady = JitterBuffer()
    run(steady, stream(50, phase=7), 60)
    assert steady.stats.jitter_ms == pytest.approx(0, abs=1e-6)


def test_pcm16_at_16khz():
    jb = JitterBuffer(rate=16000, bytes_per_sample=2, silence=b"\0\0")
    data = [payload(k, 640) for k in range(6)]
    arrivals = [(5 + k * 20, RtpPacket(96, k, k * 320, 1, data[k])) for k in range(6) if k != 2]
    out = run(jb, arrivals, 1 + W + 6)
    assert out[1 + W:] == [data[0], data[1], b"\0" * 640, data[3], data[4], data[5]]
    assert jb.stats.lost == 1 and jb.stats.silence_ms == (1 + W + 1) * 20


def test_drain_plays_out_the_buffer_and_pads_the_last_frame():
    jb = JitterBuffer()
    out = run(jb, stream(5, ms=30, n=240), 8)  # stop ticking while 70 ms are still buffered
    rest = jb.drain()
    assert all(len(f) == FRAME for f in rest)
    assert b"".join(out + rest) == silence(1 + W) + b"".join(payload(k, 240) for k in range(5)) + silence(0.5)
    assert jb.depth_ms == 0 and jb.drain() == []


def test_zero_length_packet_holds_its_sequence_number():
    # e.g. comfort noise passed as an empty payload: silence, but not a loss
    arrivals = stream(6)
    arrivals[2] = (arrivals[2][0], RtpPacket(13, 1002, 5000 + 2 * FRAME, 7, b""))
    jb = JitterBuffer()
    out = run(jb, arrivals, 1 + W + 6)
    assert out[1 + W:] == [payload(0), payload(1), silence(1), payload(3), payload(4), payload(5)]
    assert jb.stats.lost == 0


def test_malformed_count_and_stats_dict():
    jb = JitterBuffer()
    jb.count_malformed()
    d = jb.stats.as_dict()
    assert d["malformed"] == 1 and d["overflow_dropped_ms"] == 0
    assert set(d) >= {"received", "lost", "late", "duplicate", "reordered", "silence_ms", "jitter_ms", "resyncs"}


def test_wideband_clock_rates_map_timestamps_to_samples():
    # G.722: an 8 kHz RTP clock for 16 kHz audio; Opus: a 48 kHz clock, decoded at 16 kHz.
    # Either way a lost packet leaves exactly its 20 ms of silence and the rest stays in place.
    for clock, step in ((8000, 160), (48000, 960)):
        jb = JitterBuffer(rate=16000, clock_rate=clock, bytes_per_sample=2, silence=b"\0\0")
        data = [payload(k, 640) for k in range(6)]
        arrivals = [(5 + k * 20, RtpPacket(9, k, 70000 + k * step, 1, data[k])) for k in range(6) if k != 2]
        out = run(jb, arrivals, 1 + W + 6)
        assert out[1 + W:] == [data[0], data[1], b"\0" * 640, data[3], data[4], data[5]], clock
        assert jb.stats.lost == 1


def test_decode_runs_only_for_packets_that_play():
    decoded = []

    def decode(p):
        decoded.append(p.sequence)
        return bytes(x ^ 0xFF for x in p.payload)

    jb = JitterBuffer(decode=decode)
    arrivals = stream(4)
    arrivals.insert(2, arrivals[1])  # a duplicate is never decoded
    out = run(jb, arrivals, 1 + W + 4)
    assert sorted(decoded) == [1000, 1001, 1002, 1003] and jb.stats.duplicate == 1
    assert out[1 + W] == bytes(x ^ 0xFF for x in payload(0))


def test_settings_and_validation():
    jb = JitterBuffer(window_ms=MediaSettings(jitter_window_ms=100).jitter_window_ms, silence=b"\xd5")
    out = run(jb, [(5, RtpPacket(8, 1, 0, 1, b"\x01" * FRAME))], 1 + 5 + 1)
    assert out[-1] == b"\x01" * FRAME and out[-2] == b"\xd5" * FRAME  # played 100 ms after its tick
    with pytest.raises(ValueError):
        JitterBuffer(silence=b"\0\0")
    with pytest.raises(ValueError):
        JitterBuffer(window_ms=1000, max_jitter_ms=1000)
    with pytest.raises(ValueError):
        JitterBuffer(rate=8001)


# -- properties ------------------------------------------------------------------


@st.composite
def impaired_streams(draw):
    n_samples = draw(st.sampled_from([80, 160, 240, 320]))  # 10/20/30/40 ms packets
    count = draw(st.integers(1, 40))
    # a packet may start mid-frame; this much less delay spread keeps every start in time
    budget = 60 - 20 * (FRAME - math.gcd(n_samples, FRAME)) // FRAME
    delays = draw(st.lists(st.integers(0, budget), min_size=count, max_size=count))
    dropped = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    order = draw(st.permutations(range(count)))  # tie-break for equal arrival times
    return dict(n=n_samples, count=count, delays=delays, dropped=dropped, order=order,
                seq0=draw(st.integers(0, 0xFFFF)), ts0=draw(st.integers(0, 0xFFFFFFFF)),
                phase=draw(st.integers(0, 19)), extra_ticks=draw(st.integers(0, 10)))


@settings(max_examples=300, deadline=None)
@given(impaired_streams())
def test_loss_and_reordering_within_the_window(c):
    n, ms = c["n"], c["n"] // 8
    packets = [pkt(k, n=n, seq0=c["seq0"], ts0=c["ts0"]) for k in range(c["count"])]
    received = [k for k in range(c["count"]) if not c["dropped"][k]]
    arrival = {k: c["phase"] + k * ms + c["delays"][k] for k in received}
    pushed = sorted(received, key=lambda k: (arrival[k], c["order"][k]))
    ticks = (max(arrival.values(), default=0) + 19) // 20 + 1 + c["extra_ticks"]

    jb = JitterBuffer()
    out = run(jb, [(arrival[k], packets[k]) for k in pushed], ticks)
    rest = jb.drain()

    assert len(out) == ticks and all(len(f) == FRAME for f in out + rest)  # timeline = ticks
    expected = b""
    if received:
        f = pushed[0]
        tick_f = -(-arrival[f] // 20)  # the tick whose pop follows its arrival
        base = (tick_f + W) * FRAME - f * n  # output offset of the stream's sample 0
        expected = SIL * base + b"".join(payload(k, n) if k in arrival else SIL * n for k in range(max(received) + 1))
    total = max(ticks * FRAME, -(-len(expected) // FRAME) * FRAME)
    assert b"".join(out + rest) == expected + SIL * (total - len(expected))

    s = jb.stats
    assert s.lost == sum(1 for k in range(c["count"]) if c["dropped"][k] and received and received[0] < k < received[-1])
    assert s.reordered == sum(1 for i, k in enumerate(pushed) if any(j > k for j in pushed[:i]))
    assert (s.late, s.duplicate, s.resyncs, s.received) == (0, 0, 0, len(received))
    assert s.silence_ms == (total - len(received) * n) * 1000 // 8000


fuzz_ops = st.lists(
    st.one_of(
        st.just(("pop",)),
        st.tuples(
            st.just("push"),
            st.sampled_from([1, 2]),  # SSRC
            st.one_of(st.integers(0, 40), st.integers(0, 0xFFFF)),  # sequence: mostly near, sometimes anywhere
            st.one_of(st.integers(0, 40).map(lambda k: k * FRAME), st.integers(0, 0xFFFFFFFF)),  # timestamp
            st.integers(0, 500),  # payload bytes
            st.integers(0, 60),  # arrival ms after the last tick (past the next one: ticks running late)
        ),
    ),
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(fuzz_ops)
def test_any_packet_sequence_keeps_the_frame_contract(ops):
    jb = JitterBuffer()
    now = 0.0
    pushes = 0
    for op in ops:
        if op[0] == "pop":
            now += 0.02
            assert len(jb.pop(now)) == FRAME
        else:
            _, ssrc, seq, ts, size, after_ms = op
            jb.push(RtpPacket(0, seq, ts, ssrc, b"\x01" * size), now + after_ms / 1000)
            pushes += 1
        assert 0 <= jb.depth_ms <= 1000 + 60  # bounded memory whatever arrives (+ how late the ticks run)
    assert all(len(f) == FRAME for f in jb.drain())
    s = jb.stats
    assert jb.depth_ms == 0 and s.received == pushes
    assert s.late + s.duplicate <= pushes and min(s.as_dict().values()) >= 0
