"""What an outside attack on the SIP side broke (issue 7), each reproduced against the running endpoint.

RTP hijack (the first packet won the port), refusals retransmitted as a reflection amplifier,
calls that never end (no media, idle TCP), a flood of INVITEs without media crowding others out.
"""

from __future__ import annotations

import asyncio
import socket
import time

from telephony.bench.sip_loadgen import RawUac, parse_response, read_wav_g711, sdp_offer, send_rtp
from telephony.records import CallEnd, CallRecord, LegEnd, LegRecord
from telephony.sip.media import PortAllocator

from .test_sip_endpoint import PROMPT, running, settle


async def test_ports_are_drawn_at_random_not_in_order():
    alloc = PortAllocator("127.0.0.1", 41000, 45000)
    pairs = [alloc.open_pair() for _ in range(40)]
    ports = [rtp.getsockname()[1] for rtp, _ in pairs]
    for rtp, rtcp in pairs:
        rtp.close()
        rtcp.close()
    assert all(p % 2 == 0 and 41000 <= p < 45000 for p in ports) and len(set(ports)) == 40
    next_in_line = sum(1 for a, b in zip(ports, ports[1:]) if b == a + 2)
    assert next_in_line <= 3  # in order, all 39 would be


async def test_media_only_from_the_announced_source_an_injector_never_reaches_the_leg():
    """A sender at another address spraying the port, and the caller's own IP from another port:
    both dropped and counted as foreign; the leg holds exactly the caller's packets."""
    victim = read_wav_g711(PROMPT)[:8000]
    async with running() as (ep, uac, records, manager):
        d = uac.dialog(display="Victim")
        assert (await d.invite(sdp_offer(40000, direction="sendrecv"))).status == 200
        target = d.media_port(0)
        stop = asyncio.Event()

        async def spray(src: tuple[str, int]):
            from telephony.media.rtp import build_rtp

            sent = 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(src)
                s.setblocking(False)
                n = 0
                while not stop.is_set():
                    s.sendto(build_rtp(0, 60000 + n, n * 160, 0xBAD, b"\x00" * 160), target)
                    sent += 1
                    n += 1
                    await asyncio.sleep(0.001)
            return sent

        attackers = [asyncio.create_task(spray(("127.0.0.66", 0))), asyncio.create_task(spray(("127.0.0.1", 0)))]
        await asyncio.sleep(0.05)  # the attackers are first: the old "first packet wins" would latch to them
        sent = await send_rtp(target, victim, local_port=d.offer_port(0))
        stop.set()
        sprayed = sum(await asyncio.gather(*attackers))
        await d.bye()
        await settle(manager)
    end = records.of(LegEnd)[0]
    assert end.stats["received"] == sent.sent  # the caller's packets, all of them, nothing else
    assert end.stats["foreign"] >= sprayed * 0.9  # counted (stored as legs.packets_foreign)


async def test_latching_takes_the_sdp_address_on_another_port_once_and_never_switches():
    audio = read_wav_g711(PROMPT)[:4000]
    async with running(rtp_latch=True) as (ep, uac, records, manager):
        d = uac.dialog()
        assert (await d.invite(sdp_offer(40000, direction="sendrecv"))).status == 200
        first = await send_rtp(d.media_port(0), audio, local_port=41234)  # NAT: another port, same IP
        second = await send_rtp(d.media_port(0), audio, local_port=41236)  # a second source: not taken
        await d.bye()
        await settle(manager)
    end = records.of(LegEnd)[0]
    assert end.stats["received"] == first.sent and end.stats["foreign"] == second.sent


async def test_refusals_are_sent_once_not_retransmitted():
    """403 to a source outside the allow list, 488, 503: one response per request (no timer G),
    so a spoofed source cannot make us send eleven."""
    async with running(allow=["10.0.0.0/8"]) as (ep, uac, records, manager):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            port = s.getsockname()[1]
            body = sdp_offer(40000).encode()
            invite = (f"INVITE sip:transcribe@127.0.0.1:{ep.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKrefuse1\r\n"
                      f"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:transcribe@127.0.0.1>\r\nCall-ID: refused-1\r\n"
                      f"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            await loop.sock_sendto(s, invite, ("127.0.0.1", ep.port))
            got = []
            deadline = time.monotonic() + 4.0  # timer G would have resent at 0.5, 1.5 and 3.5 s
            while time.monotonic() < deadline:
                try:
                    got.append(parse_response(await asyncio.wait_for(loop.sock_recv(s, 65536), 0.2)))
                except asyncio.TimeoutError:
                    pass
    assert [r.status for r in got] == [403]


async def test_speaker_names_from_odd_from_headers():
    async with running() as (ep, uac, records, manager):
        no_user = uac.dialog()
        no_user.uac.send_raw(no_user._request("INVITE", sdp_offer(40000).encode(), "application/sdp").replace(
            b"From: <sip:loadgen@127.0.0.1>", b"From: <sip:200.57.7.195:55061>"))
        r = await asyncio.wait_for(_final(no_user), 5)
        assert r.status == 200
        spaced = uac.dialog(display="Alice ")
        assert (await spaced.invite(sdp_offer(40002))).status == 200
        await settle(manager)
    speakers = sorted(leg.speaker for leg in records.of(LegRecord))
    assert speakers == ["Alice", "caller"]  # no user part: the fixed label, not "host:port"


async def _final(d):
    while True:
        r = await d.queue.get()
        if r.status >= 200:
            return r


async def test_a_call_without_media_ends_with_a_bye_and_hold_pauses_the_timer():
    async with running(media_timeout_s=1.0) as (ep, uac, records, manager):
        silent = uac.dialog()
        assert (await silent.invite(sdp_offer(40000, direction="sendrecv"))).status == 200
        held = uac.dialog()
        assert (await held.invite(sdp_offer(40002, direction="sendrecv"))).status == 200
        assert (await held.reinvite(sdp_offer(40002, direction="inactive"))).status == 200  # on hold
        await asyncio.sleep(2.5)
        await settle(manager)
        ended = {why for _, why, _ in ep.ended}
        assert ended == {"media-timeout"} and len(ep.ended) == 1  # the silent one; the held one goes on
        assert len(records.of(CallEnd)) == 1
        # Resumed and still silent: the timeout runs again from the resume.
        assert (await held.reinvite(sdp_offer(40002, direction="sendrecv"))).status == 200
        await asyncio.sleep(2.5)
        assert len(ep.ended) == 2


async def test_idle_tcp_connections_without_a_dialog_are_closed():
    async with running(tcp_idle_timeout_s=1.0) as (ep, uac, records, manager):
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.uas.ports["tcp"])
        writer.write(b"OPTIONS sip:x SIP/2.0\r\n")  # half a request, then nothing
        t0 = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 6)
        assert data == b"" and 0.9 <= time.monotonic() - t0 <= 4.5
        writer.close()


async def test_calls_without_media_from_one_source_are_capped():
    async with running(max_pending_per_source=3, rate_limit=0) as (ep, uac, records, manager):
        answers = [await uac.dialog().invite(sdp_offer(40000 + 2 * i)) for i in range(5)]
        assert [r.status for r in answers] == [200, 200, 200, 503, 503]
        assert answers[-1].get("Retry-After") and "without media" in answers[-1].reason
        other = await RawUac(("127.0.0.1", ep.port), local_host="127.0.0.2").open()
        try:
            assert (await other.dialog().invite(sdp_offer(41000))).status == 200  # another source is served
        finally:
            await other.close()


async def test_cancel_while_the_call_is_set_up_gets_487_and_no_call_stays():
    async with running() as (ep, uac, records, manager):
        d = uac.dialog()
        branch = "z9hG4bKcancel1"
        uac.send_raw(d._request("INVITE", sdp_offer(40000).encode(), "application/sdp", branch=branch))
        uac.send_raw(d._request("CANCEL", cseq=d.cseq, branch=branch))
        got = []
        while len([r for r in got if r.status >= 200]) < 2:
            got.append(await asyncio.wait_for(d.queue.get(), 5))
        await settle(manager, 0.5)
    finals = sorted(r.status for r in got if r.status >= 200)
    # Either the CANCEL caught the set-up (200 to CANCEL, 487 to INVITE, the call ended at once)
    # or it came too late (200 to both): never a call left open.
    assert finals in ([200, 487], [200, 200])
    if finals == [200, 487]:
        assert not ep.calls and len(records.of(CallEnd)) == len(records.of(CallRecord))
