"""The media path of one leg, as data flows: packets and codecs in, rate-tagged audio out.

    rtp.py      parse RTP datagrams into packets
    codecs.py   the one codec table (name, RTP clock rate, audio rate, decoder)
    jitter.py   reorder, loss → silence of the right length, counters
    leg.py      MediaLeg: packets in, AudioFrames out (decode, resample once)
    resample.py streaming resampler
    pacer.py    hands audio on at the pace it was spoken
    audio.py    AudioFrame: samples with their sample rate

Nothing here imports an endpoint (SIP, WebRTC, HTTP) or the database.
"""
