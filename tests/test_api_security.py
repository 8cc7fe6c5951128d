"""Bearer tokens, loopback-only mode, CORS and Origin checks, on the real service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from telephony.api import ApiSettings
from telephony.api.auth import auth_middleware
from telephony.bench.local import local_settings
from telephony.service import Service
from .testdata import vector

CHROME_OFFER = vector("webrtc_sdp", "aiortc_audio_chrome.sdp").read_bytes()


@pytest.fixture
async def locked(tmp_path, fresh_database_url):
    api = ApiSettings(tokens=["s3cret-one", "s3cret-two"], cors_origins=["https://softphone.example"])
    async with Service(local_settings(tmp_path, fresh_database_url, api=api)) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            svc.http = http
            yield svc


@pytest.fixture
async def open_(tmp_path, fresh_database_url):
    async with Service(local_settings(tmp_path, fresh_database_url)) as svc:
        async with aiohttp.ClientSession(svc.url) as http:
            svc.http = http
            yield svc


async def status_of(svc, method, path, **kw):
    async with svc.http.request(method, path, **kw) as r:
        return r.status, r.headers, (await r.read())


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Basic czNjcmV0LW9uZQ=="}, 401),
    ({"Authorization": "Bearer s3cret-one"}, 200),
    ({"Authorization": "bearer s3cret-two"}, 200),
])
async def test_bearer_tokens(locked, headers, status):
    got, hdrs, body = await status_of(locked, "GET", "/api/calls", headers=headers)
    assert got == status
    if status == 401:
        assert hdrs["WWW-Authenticate"].startswith("Bearer") and json.loads(body)["error"] == "unauthorized"


async def test_signalling_needs_the_token_too(locked):
    got, _, _ = await status_of(locked, "POST", "/webrtc/sessions", data=CHROME_OFFER,
                                headers={"Content-Type": "application/sdp"})
    assert got == 401 and locked.manager.active_calls == 0


@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json", "/", "/calls", "/static/telephony-client.js",
                                  "/telephony-client.js"])  # where the README imports it from
async def test_public_paths_need_no_token(locked, path):
    got, _, _ = await status_of(locked, "GET", path)
    assert got in (200, 503) if path == "/ready" else got == 200


async def test_caption_socket_takes_the_token_in_the_query(locked):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await locked.http.ws_connect("/api/captions")
    assert info.value.status == 401
    async with locked.http.ws_connect("/api/captions", params={"access_token": "s3cret-one"}) as ws:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert json.loads(msg.data)["type"] == "hello"


async def test_without_tokens_a_foreign_host_name_is_refused(open_):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends Host: evil.example.
    got, _, body = await status_of(open_, "GET", "/api/calls", headers={"Host": f"evil.example:{open_.port}"})
    assert got == 403 and "loopback" in json.loads(body)["message"]
    got, _, _ = await status_of(open_, "GET", "/api/calls", headers={"Host": f"localhost:{open_.port}"})
    assert got == 200


@pytest.mark.parametrize("peer, status", [(("127.0.0.1", 5555), 200), (("::1", 5555, 0, 0), 200),
                                          (("192.0.2.7", 5555), 403), (("10.1.2.3", 5555), 403)])
async def test_without_tokens_only_loopback_peers_get_in(peer, status):
    # A non-loopback peer cannot be produced on loopback-only test traffic: the real
    # middleware gets a request whose transport reports that peer.
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: peer if name == "peername" else default
    request = make_mocked_request("GET", "/api/calls", headers={"Host": "127.0.0.1:8080"}, transport=transport)

    async def handler(_request):
        return web.Response(text="ok")

    response = await auth_middleware([])(request, handler)
    assert response.status == status


async def test_cors_preflight_and_headers_for_an_allowed_origin(locked):
    origin = "https://softphone.example"
    got, hdrs, _ = await status_of(locked, "OPTIONS", "/webrtc/sessions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert got == 204
    assert hdrs["Access-Control-Allow-Origin"] == origin
    assert "POST" in hdrs["Access-Control-Allow-Methods"] and "Authorization" in hdrs["Access-Control-Allow-Headers"]
    got, hdrs, _ = await status_of(locked, "GET", "/api/calls",
                                   headers={"Origin": origin, "Authorization": "Bearer s3cret-one"})
    assert got == 200 and hdrs["Access-Control-Allow-Origin"] == origin and hdrs["Vary"] == "Origin"
    got, hdrs, _ = await status_of(locked, "POST", "/webrtc/sessions", data=CHROME_OFFER, headers={
        "Origin": origin, "Authorization": "Bearer s3cret-one", "Content-Type": "application/sdp"})
    assert got in (201, 422)  # the offer's candidates are off-loopback; either way the browser may read it
    assert "Location" in hdrs["Access-Control-Expose-Headers"] and hdrs["Access-Control-Allow-Origin"] == origin


async def test_other_origins_are_refused_even_for_websockets(locked):
    headers = {"Origin": "https://evil.example", "Authorization": "Bearer s3cret-one"}
    got, hdrs, body = await status_of(locked, "GET", "/api/calls", headers=headers)
    assert got == 403 and "not allowed" in json.loads(body)["message"]
    assert "Access-Control-Allow-Origin" not in hdrs
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await locked.http.ws_connect("/api/captions", headers=headers)
    assert info.value.status == 403


async def test_same_origin_pages_need_no_cors_entry(locked):
    got, hdrs, _ = await status_of(locked, "GET", "/api/calls", headers={
        "Origin": locked.url, "Authorization": "Bearer s3cret-one"})
    assert got == 200 and "Access-Control-Allow-Origin" not in hdrs


async def test_query_token_only_opens_caption_feeds(locked):
    # Elsewhere a header is always possible, and tokens in URLs end up in access logs.
    got, _, _ = await status_of(locked, "GET", "/api/calls", params={"access_token": "s3cret-one"})
    assert got == 401
