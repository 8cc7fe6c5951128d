"""The local journal: durable, ordered, thread-safe, one owner at a time."""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone

import pytest

from telephony.records import CallEnd, CallRecord, UtteranceRecord, new_id
from telephony.store import Journal, JournalError

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)


def utt(seq: int, text: str = "words") -> UtteranceRecord:
    return UtteranceRecord(new_id(), new_id(), new_id(), "A", seq, seq * 100, seq * 100 + 50, text, 0.5)


def test_append_pending_ack_keep_order_and_types(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as j:
        call = CallRecord(new_id(), "sip", T0, meta={"k": [1, 2]})
        seqs = [j.append(call), *j.append_many([utt(0), utt(1)]), j.append(CallEnd(call.id, T0, "completed"))]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        got = j.pending()
        assert [s for s, _ in got] == seqs
        assert got[0][1] == call and isinstance(got[0][1].started_at, datetime)
        assert [type(r).__name__ for _, r in got] == ["CallRecord", "UtteranceRecord", "UtteranceRecord", "CallEnd"]
        assert [s for s, _ in j.pending(limit=2, after=seqs[0])] == seqs[1:3]
        j.ack(seqs[1])  # everything up to and including seqs[1]
        assert [s for s, _ in j.pending()] == seqs[2:]
        j.ack([seqs[3]])  # exactly these
        assert [s for s, _ in j.pending()] == [seqs[2]]
        assert j.count() == 1


def test_sequence_numbers_are_never_reused(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as j:
        first = j.append(utt(0))
        j.ack(first)
        assert j.count() == 0
        assert j.append(utt(1)) > first  # an empty table must not restart numbering


def test_records_survive_a_killed_process(tmp_path):
    path = tmp_path / "j.sqlite3"
    child = textwrap.dedent(f"""
        import os
        from telephony.records import UtteranceRecord
        from telephony.store import Journal
        j = Journal({str(path)!r})
        for i in range(20):
            j.append(UtteranceRecord("00000000-0000-4000-8000-%012d" % i, "{new_id()}", "{new_id()}", "A", i, 0, 1, "t%d" % i))
        os._exit(9)  # no close, no flush: as if killed
    """)
    assert subprocess.run([sys.executable, "-c", child]).returncode == 9
    with Journal(path) as j:
        assert [r.text for _, r in j.pending()] == [f"t{i}" for i in range(20)]


def test_a_second_owner_is_refused(tmp_path):
    with Journal(tmp_path / "j.sqlite3"):
        with pytest.raises(JournalError, match="in use"):
            Journal(tmp_path / "j.sqlite3")
    Journal(tmp_path / "j.sqlite3").close()  # free again once closed


def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(blocker / "j.sqlite3")


def test_unserialisable_record_is_refused_before_anything_is_written(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as j:
        with pytest.raises(ValueError, match="cannot be journalled"):
            j.append_many([utt(0), CallRecord(new_id(), "sip", T0, meta={"x": object()})])
        assert j.count() == 0


def test_unreadable_entry_is_set_aside_not_fatal(tmp_path):
    path = tmp_path / "j.sqlite3"
    with Journal(path) as j:
        j.append(utt(0))
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO pending (body, created) VALUES (?, 0)", ('{"type": "FutureRecord", "data": {}}',))
    raw.commit()
    raw.close()
    with Journal(path) as j:
        j.append(utt(2))
        assert [r.seq for _, r in j.pending()] == [0, 2]
        (seq, body, reason), = j.rejected()
        assert body["type"] == "FutureRecord" and "unreadable" in reason
        assert j.count() == 2


def test_concurrent_threads_lose_nothing(tmp_path):
    with Journal(tmp_path / "j.sqlite3") as j:
        def work(base):
            for i in range(25):
                j.append(utt(base + i))

        threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = j.pending(limit=1000)
        assert sorted(r.seq for _, r in got) == sorted(k * 100 + i for k in range(4) for i in range(25))
        for k in range(4):  # each thread's own records stay in its order
            mine = [r.seq for _, r in got if r.seq // 100 == k]
            assert mine == sorted(mine)


def test_append_latency_is_reported(tmp_path, capsys):
    with Journal(tmp_path / "j.sqlite3") as j:
        times = []
        for i in range(30):
            t = time.perf_counter()
            j.append(utt(i))
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        j.append_many(utt(i) for i in range(500))
        batch = time.perf_counter() - t
    median = statistics.median(times) * 1000
    with capsys.disabled():
        print(f"\n  journal append (fsync'd): median {median:.2f} ms; 500 in one group commit: {batch * 1000:.1f} ms")
    assert median < 100 and batch < 2.0  # fsync'd, yet far from the pipeline's time budget
