"""SIP and SIPREC endpoint: INVITEs in, one live call per dialog, one leg per recorded audio stream.

    endpoint.py  SipEndpoint: admission, legs and speakers, the bridge to calls.CallManager
    uas.py       user agent server: transactions, dialogs, session timers, our BYEs
    transport.py SIP over UDP, TCP and TLS on asyncio
    message.py   SIP message parsing/validation (RFC 3261, RFC 4475) and responses
    sdp.py       offers → the stream we record and its codec; our answer
    siprec.py    multipart bodies, rs-metadata, stream label → participant
    media.py     our own RTP sockets, read on the event loop into the leg (source-checked, SRTP unprotected)
    policy.py    source allow-list, per-source rate limit
    auth.py      optional digest authentication of INVITEs
"""
