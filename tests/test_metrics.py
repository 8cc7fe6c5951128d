"""``/metrics`` of a real running service (real PostgreSQL, real SIP calls with RTP from the port their
SDP announced), read back with prometheus-client's own parser and scraped by the real Prometheus."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from telephony.bench.local import local_settings
from telephony.bench.sip_loadgen import Impairment, RawUac, read_wav_g711, sdp_offer, send_rtp
from telephony.config import ApiSettings, ConfigError, MetricsSettings, load_settings
from telephony.media.rtp import build_rtp
from telephony.service import Service

from .webhooks_receiver import SECRET, Receiver, db, free_port  # noqa: F401 (db: fixture)

PROMPT = "/usr/share/asterisk/sounds/en/hello-world.wav"


# -- helpers ----------------------------------------------------------------------------------

class Scrape(dict):
    """{(sample name, ((label, value), ...)): value}, parsed by prometheus-client's parser."""

    def __init__(self, body: str):
        super().__init__()
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(body):
            self.types[family.name] = family.type
            for s in family.samples:
                self[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get_value(self, name: str, **labels) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def value(self, name: str, **labels) -> float:
        v = self.get_value(name, **labels)
        assert v is not None, f"no sample {name}{labels} in the scrape"
        return v


async def scrape(svc: Service, token: str | None = None, url: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(url or f"{svc.url}/metrics", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return Scrape(await r.text())


async def stored_legs(svc: Service) -> list[dict]:
    async with svc.runtime.writer._engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT packets_received, packets_lost, packets_late, packets_foreign, silence_ms, ended_at"
            " FROM legs ORDER BY started_ms"))
        return [dict(r) for r in rows.mappings()]


async def until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def all_stored(svc: Service, legs: int, timeout: float = 20.0) -> list[dict]:
    """Every call ended and every leg's end committed to PostgreSQL."""
    async def done():
        if svc.manager.active_calls:
            return None
        rows = await stored_legs(svc)
        return rows if len(rows) == legs and all(r["ended_at"] is not None for r in rows) else None

    return await until(done, timeout, what=f"{legs} legs stored")


def audio(seconds: float) -> bytes:
    try:
        return read_wav_g711(PROMPT)[: int(8000 * seconds)]
    except FileNotFoundError:
        pytest.fail(f"{PROMPT} missing: apt-get install asterisk-core-sounds-en-wav", pytrace=False)


async def rtp_socket():
    """Our RTP socket, opened before the offer so the offer can announce its port."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


async def call(uac: RawUac, seconds: float = 0.2, impair: Impairment | None = None):
    """One SIP call: INVITE, RTP for ``seconds`` from the announced port, BYE. Returns what was sent."""
    transport, port = await rtp_socket()
    try:
        d = uac.dialog()
        r = await d.invite(sdp_offer(port, direction="sendrecv"))
        assert r.status == 200, (r.status, r.reason)
        sent = await send_rtp(d.media_port(0), audio(seconds), impair=impair, transport=transport)
        assert (await d.bye()).status == 200
        return sent
    finally:
        transport.close()


@pytest.fixture
async def sip_service(tmp_path, fresh_database_url):
    s = local_settings(tmp_path, fresh_database_url, sip=True)
    s.sip.rate_limit = 0  # dozens of INVITEs a second from one address, as from a proxy
    async with Service(s) as svc:
        uac = await RawUac(("127.0.0.1", svc.sip.port)).open()
        try:
            yield svc, uac
        finally:
            await uac.close()


# -- the service's own view -----------------------------------------------------------------------

async def test_a_sip_call_moves_the_counters_and_they_equal_the_stored_leg(sip_service):
    svc, uac = sip_service
    before = await scrape(svc)
    assert before.value("telephony_calls_total", source="sip", status="completed") == 0
    assert before.value("telephony_calls_active", source="sip") == 0
    assert before.value("telephony_rtp_packets_received_total", source="sip") == 0
    assert before.value("telephony_database_up") == 1
    assert before.value("process_resident_memory_bytes") > 10e6  # the client's default collectors
    assert before.value("process_cpu_seconds_total") > 0
    assert before.types["telephony_calls"] == "counter" and before.types["telephony_calls_active"] == "gauge"

    # During the call: live values, read from the leg's jitter buffer.
    transport, port = await rtp_socket()
    d = uac.dialog()
    assert (await d.invite(sdp_offer(port, direction="sendrecv"))).status == 200
    impair = Impairment(loss=0.08, reorder=0.05, seed=7)
    sender = asyncio.create_task(send_rtp(d.media_port(0), audio(2.0), impair=impair, transport=transport))
    await asyncio.sleep(1.0)
    during = await scrape(svc)
    assert during.value("telephony_calls_active", source="sip") == 1
    assert during.value("telephony_legs_active", source="sip") == 1
    assert 20 <= during.value("telephony_rtp_packets_received_total", source="sip") <= 60  # ~1 s of 20 ms packets
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # an injector on another port
        s.bind(("127.0.0.1", 0))
        for n in range(5):
            s.sendto(build_rtp(0, n, n * 160, 0xBAD, b"\xff" * 160), d.media_port(0))
    sent = await sender
    transport.close()
    assert (await d.bye()).status == 200
    [leg] = await all_stored(svc, 1)

    after = await scrape(svc)
    assert after.value("telephony_calls_total", source="sip", status="completed") == 1
    assert after.value("telephony_calls_active", source="sip") == 0
    assert after.value("telephony_legs_active", source="sip") == 0
    # The process totals are exactly the stored leg's counters.
    assert after.value("telephony_rtp_packets_received_total", source="sip") == leg["packets_received"] == sent.sent
    assert after.value("telephony_rtp_packets_lost_total", source="sip") == leg["packets_lost"] > 0
    assert after.value("telephony_rtp_packets_late_total", source="sip") == leg["packets_late"]
    assert after.value("telephony_rtp_packets_foreign_total", source="sip") == leg["packets_foreign"] == 5
    assert after.value("telephony_rtp_silence_inserted_seconds_total", source="sip") == leg["silence_ms"] / 1000 > 0
    for name in ("telephony_rtp_packets_received_total", "telephony_rtp_packets_lost_total"):
        assert after.value(name, source="sip") >= during.value(name, source="sip")  # counters never go back
    assert after.value("telephony_sip_requests_total", method="INVITE") == 1
    assert after.value("telephony_sip_requests_total", method="ACK") == 1
    assert after.value("telephony_sip_requests_total", method="BYE") == 1
    assert after.value("telephony_sip_responses_total", method="INVITE", code_class="1xx") == 1  # 100 Trying
    assert after.value("telephony_sip_responses_total", method="INVITE", code_class="2xx") == 1
    assert after.value("telephony_sip_responses_total", method="BYE", code_class="2xx") == 1
    assert after.value("telephony_admission_admitted_total") == 1
    assert after.value("telephony_journal_pending_records") == 0
    assert after.value("telephony_database_written_records_total") >= 4  # call, leg, leg end, call end


async def test_refused_invites_count_as_4xx_and_5xx_with_their_reason(tmp_path, fresh_database_url):
    s = local_settings(tmp_path, fresh_database_url, sip=True)
    s.admission.max_legs = 1
    async with Service(s) as svc:
        uac = await RawUac(("127.0.0.1", svc.sip.port)).open()
        try:
            first = uac.dialog()
            assert (await first.invite(sdp_offer(40100, direction="sendrecv"))).status == 200
            busy = await uac.dialog().invite(sdp_offer(40102, direction="sendrecv"))
            g729 = await uac.dialog().invite(sdp_offer(40104, codecs=(18,)))
            junk = uac.dialog()
            unknown = await junk.request("FROBNICATE")  # any token: counted as "other", never as its own label
            assert (busy.status, g729.status, unknown.status) == (503, 488, 501)
            m = await scrape(svc)
            assert m.value("telephony_sip_responses_total", method="INVITE", code_class="5xx") == 1
            assert m.value("telephony_sip_responses_total", method="INVITE", code_class="4xx") == 1
            assert m.value("telephony_sip_responses_total", method="other", code_class="5xx") == 1
            assert m.value("telephony_sip_requests_total", method="other") == 1
            assert not any("FROBNICATE" in repr(k) for k in m)
            assert m.value("telephony_admission_refused_total", reason="max_legs") == 1
            assert m.value("telephony_admission_refused_total", reason="asr_capacity") == 0  # every reason listed
            assert m.value("telephony_admission_admitted_total") == 1
            assert m.value("telephony_calls_active", source="sip") == 1
            assert (await first.bye()).status == 200
        finally:
            await uac.close()


async def test_label_sets_stay_bounded_after_50_calls(sip_service):
    svc, uac = sip_service
    await call(uac)
    await all_stored(svc, 1)
    one = await scrape(svc)
    for _ in range(7):  # 49 more, 7 at a time
        await asyncio.gather(*(call(uac) for _ in range(7)))
    legs = await all_stored(svc, 50)
    fifty = await scrape(svc)
    assert fifty.value("telephony_calls_total", source="sip", status="completed") == 50
    assert fifty.value("telephony_rtp_packets_received_total", source="sip") == sum(r["packets_received"] for r in legs)
    assert fifty.value("telephony_sip_requests_total", method="INVITE") == 50
    # The same series after 50 calls as after one: no label carries a call, leg or dialog.
    assert set(fifty) == set(one)
    async with svc.runtime.writer._engine.connect() as conn:
        ids = [r[0] for r in await conn.execute(text(
            "SELECT id::text FROM calls UNION ALL SELECT external_id FROM calls UNION ALL SELECT id::text FROM legs"))]
    values = {v for (_, labels) in fifty for _, v in labels}
    assert len(ids) == 150 and not values & set(ids)
    assert len(fifty) < 400, len(fifty)


async def test_webrtc_sessions_are_counted_while_open(tmp_path, fresh_database_url):
    from .testdata import vector

    offer = (vector("webrtc_sdp") / "aiortc_audio_chrome.sdp").read_text()
    offer = re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( )", r"\g<1>127.0.0.1\3", offer)
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            async with http.post("/webrtc/sessions", data=offer, headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                location = r.headers["Location"]
            m = await scrape(svc)
            assert m.value("telephony_webrtc_sessions") == 1
            assert m.value("telephony_calls_active", source="webrtc") == 1
            async with http.delete(location) as r:
                assert r.status == 200
        m = await scrape(svc)
        assert m.value("telephony_webrtc_sessions") == 0
        assert m.value("telephony_calls_total", source="webrtc", status="failed") == 1  # never connected
        assert m.get_value("telephony_sip_requests_total", method="INVITE") is None  # SIP is off here


async def test_database_down_shows_as_down_with_the_journal_holding_the_records(tmp_path, restartable_database):
    async with Service(local_settings(tmp_path, restartable_database.url, sip=True)) as svc:
        uac = await RawUac(("127.0.0.1", svc.sip.port)).open()
        try:
            assert (await scrape(svc)).value("telephony_database_up") == 1
            restartable_database.stop()
            await call(uac, 0.5)

            async def down():
                m = await scrape(svc)
                return m if m.value("telephony_database_up") == 0 and m.value("telephony_journal_pending_records") >= 4 else None

            m = await until(down, what="database down and records pending")
            assert m.value("telephony_calls_total", source="sip", status="completed") == 1
            restartable_database.start()

            async def drained():
                m = await scrape(svc)
                return m if m.value("telephony_database_up") == 1 and m.value("telephony_journal_pending_records") == 0 else None

            m = await until(drained, timeout=30, what="the journal drained")
            assert m.value("telephony_journal_rejected_records_total") == 0
            assert m.value("telephony_journal_rejected_held_records") == 0
            [leg] = await stored_legs(svc)
            assert m.value("telephony_rtp_packets_received_total", source="sip") == leg["packets_received"] > 0
        finally:
            await uac.close()


# -- who may read it ------------------------------------------------------------------------------

async def test_metrics_are_guarded_like_the_api_or_served_on_their_own_listener(tmp_path, fresh_database_url):
    s = local_settings(tmp_path, fresh_database_url, api=ApiSettings(tokens=["s3cret-token"]))
    s.metrics.listen = "127.0.0.1:0"
    async with Service(s) as svc:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{svc.url}/metrics") as r:
                assert r.status == 401 and "s3cret" not in await r.text()
            async with http.get(f"{svc.url}/metrics", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            own = f"http://127.0.0.1:{svc.metrics.port}"
            async with http.get(f"{own}/health") as r:
                assert r.status == 404  # the own listener serves /metrics and nothing else
            # OpenMetrics when the scraper asks for it.
            async with http.get(f"{own}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await r.text()).rstrip().endswith("# EOF")
        main = await scrape(svc, token="s3cret-token")
        alone = await scrape(svc, url=f"http://127.0.0.1:{svc.metrics.port}/metrics")
        assert main.value("telephony_database_up") == alone.value("telephony_database_up") == 1
        assert "s3cret-token" not in repr(main)

    s = local_settings(tmp_path, fresh_database_url)
    s.metrics.enabled = False
    async with Service(s) as svc:
        assert svc.metrics is None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{svc.url}/metrics") as r:
                assert r.status == 404


@pytest.mark.parametrize("listen", ["9464", "host:", ":9464", "127.0.0.1:99999", "[::1]"])
def test_a_malformed_listen_address_is_a_config_error(listen):
    with pytest.raises(ConfigError, match="metrics.listen must be host:port"):
        load_settings(env={"TELEPHONY_METRICS_LISTEN": listen})
    assert MetricsSettings(listen="[::1]:9464").listen_address() == ("::1", 9464)


# -- scraped by the real Prometheus ---------------------------------------------------------------

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "telephony.json"
README = Path(__file__).resolve().parents[1] / "README.md"


def debian_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install prometheus (scripts/test.sh does)", pytrace=False)
    return path


class Prometheus:
    """The Debian ``prometheus`` binary, on loopback, scraping one target every second with the scrape
    job of ``docker/prometheus.yml`` (only the target, interval and token changed)."""

    def __init__(self, tmp_path: Path, target: str, token: str | None = None):
        config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        if token:
            (tmp_path / "token").write_text(token)
            job["authorization"] = {"credentials_file": str(tmp_path / "token")}
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.data = tmp_path / "prometheus-data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    async def __aenter__(self) -> "Prometheus":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([debian_tool("prometheus"), f"--config.file={self.config}",
                                          f"--storage.tsdb.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}",
                                          "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        async with aiohttp.ClientSession() as http:
            async def ready():
                if self.proc.poll() is not None:
                    pytest.fail(f"prometheus exited: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, what="prometheus ready")
        return self

    async def __aexit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def query(self, expr: str) -> list[dict]:
        """An instant query; fails the test if Prometheus refuses the expression."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
                body = await r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def target(self) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/api/v1/targets") as r:
                [target] = (await r.json())["data"]["activeTargets"]
        return target

    async def scraped(self, expr: str, expected: float, what: str) -> None:
        """Wait until Prometheus holds ``expected`` for ``expr`` (the next scrapes bring it)."""
        async def holds():
            return await self.value(expr) == expected

        await until(holds, what=f"{what} ({expr} == {expected}) in Prometheus")


async def test_prometheus_scrapes_metrics_with_a_bearer_token(tmp_path, fresh_database_url):
    s = local_settings(tmp_path / "svc", fresh_database_url, sip=True, api=ApiSettings(tokens=["scrape-token"]))
    async with Service(s) as svc:
        uac = await RawUac(("127.0.0.1", svc.sip.port)).open()
        try:
            async with Prometheus(tmp_path, f"127.0.0.1:{svc.port}", token="scrape-token") as prom:
                await prom.scraped('up{job="telephony"}', 1, "the first scrape")
                target = await prom.target()
                assert target["health"] == "up" and target["lastError"] == ""
                sent = await call(uac, 1.0, impair=Impairment(loss=0.1, seed=3))
                [leg] = await all_stored(svc, 1)
                assert leg["packets_received"] == sent.sent and leg["packets_lost"] > 0
                await prom.scraped('telephony_calls_total{source="sip",status="completed"}', 1, "the ended call")
                assert await prom.value('telephony_rtp_packets_received_total{source="sip"}') == leg["packets_received"]
                assert await prom.value('telephony_rtp_packets_lost_total{source="sip"}') == leg["packets_lost"]
                assert await prom.value('telephony_sip_responses_total{method="INVITE",code_class="2xx"}') == 1
                assert await prom.value('process_resident_memory_bytes{job="telephony"}') > 10e6
        finally:
            await uac.close()


def test_compose_prometheus_and_grafana_files_are_valid():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"postgres", "telephony", "prometheus", "grafana"} <= set(compose["services"])
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["network_mode"] == "host"  # beside the service, which needs the host's addresses
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which is not in docker/"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
    assert "--web.listen-address=127.0.0.1:9090" in compose["services"]["prometheus"]["command"]
    check = subprocess.run([debian_tool("promtool"), "check", "config", str(DOCKER / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    [source] = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:9090"
    [provider] = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/telephony.yaml").read_text())["providers"]
    mounted = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounted["./grafana/dashboards"] == provider["options"]["path"]

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])  # unique ids
    for p in panels:
        assert p["datasource"]["uid"] == source["uid"], p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, with Grafana's variables as Prometheus would get them."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"].replace("label_values(", "group by (instance) (").replace(", instance)", ")")
              for v in dashboard["templating"]["list"]]
    return [e.replace("$__rate_interval", "1m").replace("$instance", ".*") for e in exprs]


def readme_queries() -> list[str]:
    blocks = re.findall(r"```promql\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no ```promql examples"
    return [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:telephony|process)_[a-z0-9_]+)", expr))


@pytest.mark.slow
async def test_prometheus_scrapes_a_transcribing_service_and_every_dashboard_query_evaluates(tmp_path, db):  # noqa: F811
    receiver = await Receiver().start()
    s = local_settings(tmp_path / "svc", db, sip=True, asr="whisper")
    s.sip.rate_limit = 0
    s.metrics.listen = "127.0.0.1:0"  # Prometheus on the metrics listener of its own
    s.webhooks.urls, s.webhooks.secret = [receiver.url], SECRET
    pcm = b"".join(read_wav_g711(f"/usr/share/asterisk/sounds/en/{name}.wav") + b"\xff" * 9600
                   for name in ("hello-world", "all-circuits-busy-now"))
    try:
        async with Service(s) as svc, Prometheus(tmp_path, f"127.0.0.1:{svc.metrics.port}") as prom:
            await prom.scraped('up{job="telephony"}', 1, "a scrape before the call")  # rates need one from before
            uac = await RawUac(("127.0.0.1", svc.sip.port)).open()
            transport, port = await rtp_socket()
            d = uac.dialog()
            assert (await d.invite(sdp_offer(port, direction="sendrecv"))).status == 200
            await send_rtp(d.media_port(0), pcm, transport=transport)
            transport.close()
            assert (await d.bye()).status == 200
            await all_stored(svc, 1, timeout=60)  # the last final is decoded after the hang-up
            await uac.close()
            async with svc.runtime.writer._engine.connect() as conn:
                rows = (await conn.execute(text("SELECT text, latency_ms, engine FROM utterances"))).all()
            assert len(rows) >= 2 and all(r.engine == "whisper" for r in rows), rows
            await receiver.wait(lambda: receiver.of_type("call.ended"), 20, "call.ended")

            count = 'telephony_asr_final_latency_seconds_count{engine="whisper"}'
            await prom.scraped(count, len(rows), "every stored final in the latency histogram")
            latency_sum = await prom.value('telephony_asr_final_latency_seconds_sum{engine="whisper"}')
            # End of speech → committed: no less than the half hangover an utterance ends on (segmenter.py),
            # and no less than end of speech → decoded (stored with each row).
            floor = s.vad.hangover_ms / 2000
            assert latency_sum >= max(floor * len(rows), sum(r.latency_ms for r in rows) / 1000)
            assert latency_sum / len(rows) < 10
            assert await prom.value('telephony_asr_decode_seconds_total{engine="whisper"}') > 0
            assert await prom.value('telephony_asr_decodes_total{engine="whisper",kind="final"}') >= len(rows)
            assert await prom.value('telephony_vad_windows_total{outcome="scored"}') > 0
            assert await prom.value('telephony_vad_windows_total{outcome="gated"}') > 0  # the pauses: digital silence
            assert await prom.value("telephony_asr_decode_cost_ratio") > 0
            assert await prom.value("telephony_asr_capacity_legs") > 0
            await prom.scraped("telephony_webhooks_delivered_total", 2, "call.started and call.ended delivered")
            from telephony.status import fetch_status, render_status

            assert f"finals    {len(rows)} stored since start; end of speech → stored: p50 ≤ " in render_status(
                await fetch_status(svc.url))

            # Every name the dashboard and the README's examples use is in a real scrape, and Prometheus
            # evaluates every one of their expressions.
            body = (await scrape(svc, url=f"http://127.0.0.1:{svc.metrics.port}/metrics"))
            scraped = {name for name, _ in body}
            queries = dashboard_queries() + readme_queries()
            for expr in queries:
                missing = metric_names(expr) - scraped
                assert not missing, f"{expr}: {missing} not in the scrape"
                await prom.query(expr)
            p95_panel = next(q for q in dashboard_queries() if q.startswith("histogram_quantile(0.95"))
            p95 = await prom.value(p95_panel)  # over 5 minutes: every scrape since Prometheus started
            assert p95 is not None and floor <= p95 <= 60, p95
    finally:
        await receiver.stop()


async def test_status_shows_totals_read_from_metrics(sip_service):
    from telephony.status import fetch_status, render_status

    svc, uac = sip_service
    sent = await call(uac, 1.5, impair=Impairment(loss=0.1, seed=5))
    [leg] = await all_stored(svc, 1)
    status = await fetch_status(svc.url)
    m = status["metrics"]
    assert (m["rtp_received"], m["rtp_lost"], m["admitted"]) == (sent.sent, leg["packets_lost"], 1)
    expected = sent.sent + leg["packets_lost"]
    lost, late = 100 * leg["packets_lost"] / expected, 100 * leg["packets_late"] / expected
    out = render_status(status)
    assert f"media     {sent.sent} RTP packets received since start, {lost:.1f} % lost, {late:.1f} % late" in out, out
    assert "admission 1 admitted, 0 refused since start" in out
    assert "finals" not in out  # no ASR here: no line rather than zeros
