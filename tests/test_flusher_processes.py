from __future__ import annotations

import os
import re
import signal
import time


from tests.flush_support import cli_process, insert_events, query, wait_until

FAST_RUN = ("run", "--lease-seconds", "3", "--renew-interval", "0.5", "--batch-size", "10")


def leader_pid(path):
    rows = query(path, "SELECT pid FROM leases WHERE expires_at >= ?", time.time())
    return rows[0][0] if rows else None


def test_after_a_kill_9_of_the_leader_mid_post_another_process_takes_over_and_every_event_arrives(path, collector):
    tids = insert_events(path, 400)
    collector.delay(0.2)  # every post is in flight for a while: the kill lands mid-post
    first = cli_process(*FAST_RUN, queue=path, base_uri=collector.url)
    second = None
    try:
        assert wait_until(lambda: leader_pid(path) == first.pid)
        second = cli_process(*FAST_RUN, queue=path, base_uri=collector.url)
        assert wait_until(lambda: collector.event_count >= 40)
        claimed = query(path, "SELECT COUNT(*) FROM events WHERE claimed_by IS NOT NULL")[0][0]
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(60)
        assert claimed > 0
        assert wait_until(lambda: leader_pid(path) == second.pid)
        assert time.monotonic() - killed_at < 15
        assert wait_until(lambda: collector.distinct_transaction_ids() >= set(tids))
        # A re-post of a batch the dead leader had in flight carries the same
        # transaction ids (Moesif drops those), never a new copy of an event.
        assert set(collector.transaction_ids()) == set(tids)
        assert collector.duplicates() <= 4 * 10
        assert wait_until(lambda: query(path, "SELECT COUNT(*) FROM events") == [(0,)])
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_drain_processes_at_once_never_post_the_same_event_twice(path, collector):
    tids = insert_events(path, 3000)
    collector.delay(0.03)  # keeps both processes draining at the same time
    procs = [cli_process("drain", "--batch-size", "10", queue=path, base_uri=collector.url) for _ in range(2)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    sent = [int(re.search(r"sent (\d+) events,", out).group(1)) for out, _ in outputs]
    assert sum(sent) == 3000 and min(sent) > 0  # both did drain
    assert collector.duplicates() == 0
    assert collector.distinct_transaction_ids() == set(tids)
    assert query(path, "SELECT COUNT(*) FROM events") == [(0,)]
