"""The simulator's watchers check the watch hub the members run: a
deliberately broken hub is caught.

Each test breaks one rule of ``paxoskv.replica.watch`` (only inside the
test, with ``monkeypatch``), runs seeds from 0 until the simulator reports a
watch violation naming the broken guarantee, and asserts it did so within a
stated number of seeds.

Figures when written (3 nodes, watchers in every seed): each of the
three bugs (one revision's events split across responses; the first event
of every catch-up skipped; progress answered at once while a watcher still
catches up, etcd 3.4's behaviour) was first caught at seed 0; in the first
12 seeds the split was caught in 9, the skip in 7, the early progress in 3.
The bounds leave room for the run's draws to change.
"""

from __future__ import annotations

from paxoskv.replica.watch import INVALID_WATCH_ID, WatchHub, _resp
from paxoskv.sim import SimResult, run_seed


def first_watch_violation(seeds_max: int, tally, guarantee: str) -> SimResult:
    for seed in range(seeds_max):
        r = run_seed(seed, watch_share=1.0)  # watchers in every seed
        tally(r)
        found = [v for v in r.violations if v.kind == "watch" and f": {guarantee}" in v.detail]
        if found:
            return r
        assert r.ok, r.violations  # nothing else may break
    raise AssertionError(f"no {guarantee} violation in {seeds_max} seeds: the simulator missed the bug")


def test_a_revision_split_across_responses_is_caught_within_10_seeds(monkeypatch, tally) -> None:
    deliver = WatchHub._deliver

    def one_event_per_response(self, w, evs, revision, shared):
        for item in evs:
            left = deliver(self, w, [item], revision, shared)
            if left is not None:
                return left
        return None

    monkeypatch.setattr(WatchHub, "_deliver", one_event_per_response)
    first_watch_violation(10, tally, "atomic")


def test_an_event_skipped_on_catch_up_is_caught_within_10_seeds(monkeypatch, tally) -> None:
    deliver = WatchHub._deliver

    def skip_first_when_catching_up(self, w, evs, revision, shared):
        return deliver(self, w, evs[1:] if not w.synced else evs, revision, shared)

    monkeypatch.setattr(WatchHub, "_deliver", skip_first_when_catching_up)
    first_watch_violation(10, tally, "reliable")


def test_progress_answered_while_a_watcher_catches_up_is_caught_within_20_seeds(monkeypatch, tally) -> None:
    """etcd 3.4 answers a progress request at once: the revision promises
    events an unsynced watcher has not been given yet."""
    request = WatchHub.request

    def progress_at_once(self, stream, req):
        if req.WhichOneof("request_union") == "progress_request" and not stream.closed:
            self._sync_state()
            self._emit(stream, _resp(self.revision, INVALID_WATCH_ID))
            return
        request(self, stream, req)

    monkeypatch.setattr(WatchHub, "request", progress_at_once)
    first_watch_violation(20, tally, "progress")
