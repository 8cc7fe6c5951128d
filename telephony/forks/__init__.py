"""Media forks: protocols that stream a call's audio to us without SIP/RTP.

    listen.py   Deepgram-compatible /v1/listen (live WebSocket and prerecorded POST)
"""
