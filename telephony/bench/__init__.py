"""Measuring tools, not the product: benchmarks, load generators and test peers.

Only the CLI (``telephony bench``) and the tests import this package.

    core.py           ``telephony bench``: pipeline cost, ASR speed, WER, final latency
    sip.py            ``telephony bench sip``: calls from a raw UAC into the real service; capacity search
    sip_loadgen.py    that raw UAC and its RTP sender (also used by tests)
    script.py         what each benchmark leg says and when; finals scored against it
    stages.py         where a run's CPU goes, by stage (per-thread CPU times)
    naive.py          the naive baseline engine capacity is compared with
    webrtc.py         ``telephony bench webrtc``: aiortc softphones in other processes
    webrtc_client.py  the aiortc softphone (also used by tests)
    streaming.py      ``telephony bench streaming``: legs per core with a streaming speech service
    accuracy.py       WER and the Asterisk prompts with their transcripts
"""
