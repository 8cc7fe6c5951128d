"""Independent SIP peers for the end-to-end tests: baresip, linphonec, kamailio, and pjsua2 as a SIPREC client.

Each runs as its own process on 127.0.0.1 only, from a config written into a
temporary directory, and is stopped by its own PID (never by name). Debian
packages: baresip-core, linphone-cli, kamailio; pjsua2 comes from the venv.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from .ports import free_port  # noqa: F401 (peers.free_port: used by tests too)

SOUNDS = Path("/usr/share/asterisk/sounds/en")


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def require(binary: str, package: str) -> None:
    """A peer the suite needs: fail loudly (not skip) when its Debian package is missing."""
    import pytest

    if not have(binary):
        pytest.fail(f"{binary} not found: apt-get install {package} (scripts/test.sh installs it)")


def baresip_call(workdir: Path, uri: str, wav: Path, seconds: float, user: str = "baresip",
                 auth_pass: str | None = None, codecs: str = "PCMU/8000", mediaenc: str | None = None,
                 cafile: Path | None = None) -> subprocess.CompletedProcess:
    """Call ``uri``, play ``wav`` (aufile source), hang up after ``seconds`` (BYE on quit).
    ``auth_pass``: answer digest challenges as ``user`` with this password. ``codecs``: what baresip
    offers (``G722``, ``opus/48000/2``, …). ``mediaenc``: e.g. ``srtp-mand`` (SDES keys in the SDP).
    ``cafile``: the CA to trust for ``;transport=tls`` URIs."""
    workdir.mkdir(parents=True, exist_ok=True)
    rtp = free_port() & ~1
    tls = f"sip_cafile\t\t{cafile}\n" if cafile else ""
    (workdir / "config").write_text(textwrap.dedent(f"""\
        poll_method		epoll
        sip_listen		127.0.0.1:{free_port()}
        net_interface		127.0.0.1
        audio_player		aufile,{workdir / 'heard.wav'}
        audio_source		aufile,{wav}
        audio_alert		aufile,{workdir / 'alert.wav'}
        rtp_ports		{rtp}-{rtp + 40}
        module_path		/usr/lib/baresip/modules
        module			g711.so
        module			g722.so
        module			opus.so
        module			srtp.so
        module			aufile.so
        module_app		account.so
        module_app		menu.so
        """) + tls)
    auth = f";auth_pass={auth_pass}" if auth_pass else ""
    enc = f";mediaenc={mediaenc}" if mediaenc else ""
    (workdir / "accounts").write_text(f"<sip:{user}@127.0.0.1>;regint=0;audio_codecs={codecs}{auth}{enc}\n")
    # -t counts from start-up, not from the answer: two seconds of slack for a slow start.
    return subprocess.run(["baresip", "-f", str(workdir), "-e", f"/dial {uri}", "-t", str(int(seconds) + 2)],
                          capture_output=True, text=True, timeout=seconds + 30)


def linphone_call(workdir: Path, uri: str, wav: Path, seconds: float) -> str:
    """linphonec in file mode: call, play ``wav`` once connected, terminate after ``seconds``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
    rc = workdir / "linphonerc"
    rtp = free_port() & ~1
    rc.write_text(textwrap.dedent(f"""\
        [sip]
        sip_port={free_port()}
        sip_tcp_port=0
        sip_tls_port=0
        use_ipv6=0
        default_proxy=-1
        [rtp]
        audio_rtp_port={rtp}-{rtp + 40}
        [sound]
        echocancellation=0
        """))
    env = dict(os.environ, HOME=str(workdir))
    proc = subprocess.Popen(["linphonec", "-c", str(rc), "-d", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def cmd(line: str) -> None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def wait_for(text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in ln for ln in list(lines)):
                return True
            time.sleep(0.05)
        return False

    try:
        cmd("soundcard use files")
        cmd(f"call {uri}")
        if wait_for("connected", 15):  # play only once the call is up (a loaded CI machine is slow)
            cmd(f"play {wav}")
            time.sleep(seconds)
        cmd("terminate")
        wait_for("ended", 5)
        cmd("quit")
        proc.wait(10)
    finally:
        _stop(proc)
        reader.join(5)
    return "".join(lines)


class Kamailio:
    """A record-routing proxy on 127.0.0.1:``port``.

    One target: every INVITE is relayed to it. Several: kamailio's ``dispatcher``
    spreads INVITEs round-robin over them and pings each with OPTIONS (the
    README's "several instances behind kamailio" set-up, as tested).
    """

    def __init__(self, workdir: Path, target_ports: int | list[int]):
        self.workdir = workdir
        self.port = free_port()
        self.targets = [target_ports] if isinstance(target_ports, int) else list(target_ports)
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        head = textwrap.dedent(f"""\
            #!KAMAILIO
            debug=2
            log_stderror=yes
            fork=yes
            children=2
            listen=udp:127.0.0.1:{self.port}
            mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
            loadmodule "tm.so"
            loadmodule "sl.so"
            loadmodule "rr.so"
            loadmodule "pv.so"
            loadmodule "maxfwd.so"
            loadmodule "textops.so"
            loadmodule "siputils.so"
            """)
        if len(self.targets) == 1:
            pick = f'$du = "sip:127.0.0.1:{self.targets[0]}";'
        else:
            (self.workdir / "dispatcher.list").write_text(
                "".join(f"1 sip:127.0.0.1:{p}\n" for p in self.targets))
            head += textwrap.dedent(f"""\
                loadmodule "dispatcher.so"
                modparam("dispatcher", "list_file", "{self.workdir / 'dispatcher.list'}")
                modparam("dispatcher", "ds_ping_interval", 2)
                modparam("dispatcher", "ds_probing_mode", 1)
                modparam("dispatcher", "ds_ping_from", "sip:proxy@127.0.0.1")
                """)
            pick = 'if (!ds_select_dst("1", "4")) { sl_send_reply("503", "No instance"); exit; }'  # 4: round-robin
        return head + textwrap.dedent(f"""\
            request_route {{
                if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
                if (has_totag()) {{
                    if (loose_route()) {{ t_relay(); exit; }}
                    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
                    sl_send_reply("404", "Not here"); exit;
                }}
                if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
                if (is_method("INVITE")) {{ record_route(); }}
                {pick}
                t_relay();
            }}
            """)

    def __enter__(self) -> "Kamailio":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(self.config())
        self.log = open(self.workdir / "kamailio.log", "w")  # a file, not a pipe nobody drains
        self.proc = subprocess.Popen(
            ["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "64", "-M", "8", "-Y", str(self.workdir),
             "-P", str(self.workdir / "kamailio.pid")],
            stdout=self.log, stderr=subprocess.STDOUT)
        _wait_udp_port(self.port, self.proc)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop(self.proc)
        self.log.close()

    def output(self) -> str:
        return (self.workdir / "kamailio.log").read_text(errors="replace")


def _wait_udp_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait until something answers OPTIONS-less probing: the port is bound (bind fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited early (see its log)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} never bound")


SIPREC_UAC = r'''
import sys, time
import pjsua2 as pj

uri, wav1, wav2, seconds, metadata = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), open(sys.argv[5]).read()

ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0
cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 1
cfg.logConfig.consoleLevel = 1
cfg.medConfig.clockRate = 8000
cfg.medConfig.sndClockRate = 8000
ep.libInit(cfg)
ep.audDevManager().setNullDev()  # the conference bridge clock that drives the players
tc = pj.TransportConfig()
tc.port = 0
tc.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
ep.libStart()
for ci in ep.codecEnum2():
    ep.codecSetPriority(ci.codecId, 255 if ci.codecId.startswith("PCMU/") else 0)

acc = pj.Account()
acfg = pj.AccountConfig()
acfg.idUri = "sip:recorder@127.0.0.1"
acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
acc.create(acfg)

players = []
for wav in (wav1, wav2):
    p = pj.AudioMediaPlayer()
    p.createPlayer(wav, pj.PJMEDIA_FILE_NO_LOOP)
    players.append(p)

class RecordingCall(pj.Call):
    def onCallSdpCreated(self, prm):
        # A recording client sends only, and labels its streams for the metadata (RFC 7866).
        out, n = [], 0
        for line in prm.sdp.wholeSdp.replace("\r\n", "\n").split("\n"):
            if line == "a=sendrecv":
                line = "a=sendonly"
            out.append(line)
            if line.startswith("m=audio"):
                n += 1
                out.append(f"a=label:{n}")
        prm.sdp.wholeSdp = "\r\n".join(x for x in out if x) + "\r\n"

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and mi.index < 2:
                players[mi.index].startTransmit(self.getAudioMedia(mi.index))

call = RecordingCall(acc)
op = pj.CallOpParam(True)
op.opt.audioCount = 2
h = pj.SipHeader()
h.hName, h.hValue = "Require", "siprec"
op.txOption.headers.append(h)
mt = pj.SipMediaType()
mt.type, mt.subType = "multipart", "mixed"
op.txOption.multipartContentType = mt
part = pj.SipMultipartPart()
part.contentType.type, part.contentType.subType = "application", "rs-metadata+xml"
disp = pj.SipHeader()
disp.hName, disp.hValue = "Content-Disposition", "recording-session"
part.headers.append(disp)
part.body = metadata
op.txOption.multipartParts.append(part)
call.makeCall(uri, op)

end = time.monotonic() + seconds
while time.monotonic() < end:
    ep.libHandleEvents(10)
ci = call.getInfo()
print("STATE", ci.stateText, flush=True)
call.hangup(pj.CallOpParam(True))
for _ in range(100):
    ep.libHandleEvents(10)
del call
players.clear()
del p  # every pjmedia port must go before the library (else an assertion aborts the process)
ep.libDestroy()
'''


def siprec_metadata(names: tuple[str, str], aors: tuple[str, str]) -> str:
    """rs-metadata where participant 0 sends on label 2 and participant 1 on label 1 (caller on the 2nd stream)."""
    return textwrap.dedent(f"""\
        <?xml version="1.0" encoding="UTF-8"?>
        <recording xmlns="urn:ietf:params:xml:ns:recording:1">
          <datamode>complete</datamode>
          <session session_id="c2Vzc2lvbi0x"><sipSessionID>test-session</sipSessionID></session>
          <participant participant_id="cDA="><nameID aor="{aors[0]}"><name xml:lang="en">{names[0]}</name></nameID></participant>
          <participant participant_id="cDE="><nameID aor="{aors[1]}"><name xml:lang="en">{names[1]}</name></nameID></participant>
          <stream stream_id="czE=" session_id="c2Vzc2lvbi0x"><label>1</label></stream>
          <stream stream_id="czI=" session_id="c2Vzc2lvbi0x"><label>2</label></stream>
          <participantstreamassoc participant_id="cDA="><send>czI=</send><recv>czE=</recv></participantstreamassoc>
          <participantstreamassoc participant_id="cDE="><send>czE=</send><recv>czI=</recv></participantstreamassoc>
        </recording>
        """)


def pjsua2_siprec_call(workdir: Path, uri: str, wav1: Path, wav2: Path, seconds: float, metadata: str) -> str:
    """A SIPREC client in its own process (pjsua2 is one per process): wav1 on stream 1, wav2 on stream 2."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "siprec_uac.py"
    script.write_text(SIPREC_UAC)
    meta = workdir / "metadata.xml"
    meta.write_text(metadata)
    res = subprocess.run([sys.executable, str(script), uri, str(wav1), str(wav2), str(seconds), str(meta)],
                         capture_output=True, text=True, timeout=seconds + 30)
    return res.stdout + res.stderr
