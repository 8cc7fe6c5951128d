"""Media forks: phone systems that copy a call's audio to us over a socket instead of a SIP leg.

    twilio.py       Twilio Media Streams           WebSocket /ingest/twilio
    stream.py       FreeSWITCH mod_audio_stream,   WebSocket /ingest/stream
                    jambonz listen
    audiosocket.py  Asterisk AudioSocket           TCP [audiosocket] port (9092)
    rtp.py          Asterisk ARI externalMedia     POST /ingest/rtp opens RTP ports (bare RTP, no SIP)
    listen.py       Deepgram-compatible API        WebSocket and POST /v1/listen
    websocket.py    access, receive loop, media timeout and close codes of the WebSocket forks
    call.py         what every fork does with its call: admission, legs, backpressure, end

Each turns its protocol into a call (``source`` twilio | stream | audiosocket | listen | rtp) with stream legs
(``LiveCall.add_stream_leg``; RTP legs for rtp): the rest of the service never knows where the audio came from.
"""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application, manager, settings):
    """The forks on the service's HTTP port; returns their open WebSockets (``close_all`` at stop)
    and the RTP forks (``stop``)."""
    from . import stream, twilio
    from .rtp import RtpForks
    from .websocket import OpenSockets

    open_sockets = OpenSockets()
    twilio.add_routes(app, manager, settings, open_sockets)
    stream.add_routes(app, manager, settings, open_sockets)
    rtp = RtpForks(manager, settings)
    rtp.add_routes(app)
    return open_sockets, rtp
