"""Media forks: phone systems that copy a call's audio to us over a socket instead of a SIP leg.

    twilio.py       Twilio Media Streams           WebSocket /ingest/twilio
    stream.py       FreeSWITCH mod_audio_stream,   WebSocket /ingest/stream
                    jambonz listen
    audiosocket.py  Asterisk AudioSocket           TCP [audiosocket] port (9092)
    listen.py       Deepgram-compatible API        WebSocket and POST /v1/listen
    websocket.py    access, receive loop, media timeout and close codes of the WebSocket forks
    call.py         what every fork does with its call: admission, legs, backpressure, end

Each turns its protocol into a call (``source`` twilio | stream | audiosocket | listen) with stream legs
(``LiveCall.add_stream_leg``): the rest of the service never knows where the audio came from.
"""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application, manager, settings):
    """The WebSocket forks on the service's HTTP port; returns their open sockets (``close_all`` at stop)."""
    from . import stream, twilio
    from .websocket import OpenSockets

    open_sockets = OpenSockets()
    twilio.add_routes(app, manager, settings, open_sockets)
    stream.add_routes(app, manager, settings, open_sockets)
    return open_sockets
