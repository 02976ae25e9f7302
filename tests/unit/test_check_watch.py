"""paxoskv.check.watch: each watch guarantee passes on a correct record and
is reported when a crafted record breaks it."""

from __future__ import annotations

import dataclasses

import pytest

from paxoskv.check.watch import WatchEvent, WatchRecord, check_record, check_resumed, check_watches, in_range


def put(rev: int, key: bytes, value: bytes, prev: bytes | None = None) -> WatchEvent:
    return WatchEvent(rev, key, "put", value, prev)


def delete(rev: int, key: bytes, prev: bytes | None = None) -> WatchEvent:
    return WatchEvent(rev, key, "delete", b"", prev)


# revision 2: a=1; 3: b=1; 4: txn a=2 b=2; 5: delete a; 6: c=1 (outside /a../b prefix tests); 7: a=3
LOG = [
    put(2, b"a", b"1"),
    put(3, b"b", b"1"),
    put(4, b"a", b"2"), put(4, b"b", b"2"),
    delete(5, b"a"),
    put(6, b"c", b"1"),
    put(7, b"a", b"3"),
]


def with_prev(ev: WatchEvent, prev: bytes | None) -> WatchEvent:
    return dataclasses.replace(ev, prev_value=prev)


def good_record(**kw) -> WatchRecord:  # noqa: ANN003
    """Every key from revision 3, one response per revision, a progress at 5."""
    rec = WatchRecord(name="w", key=b"\x00", range_end=b"\x00", start_revision=3,
                      responses=[[LOG[1]], [LOG[2], LOG[3]], [LOG[4]], [LOG[5]], [LOG[6]]],
                      progress=[(3, 5)])
    return dataclasses.replace(rec, **kw)


def props(violations: list[str]) -> set[str]:
    return {v.split(": ")[1] for v in violations}


def test_a_correct_record_passes() -> None:
    assert check_watches(LOG, [good_record()]) == []


def test_a_correct_prefix_watch_with_prev_kv_and_filters_passes() -> None:
    rec = WatchRecord(name="p", key=b"a", range_end=b"b", start_revision=1, prev_kv=True,
                      filters=frozenset({"nodelete"}),
                      responses=[[with_prev(LOG[0], None)], [with_prev(LOG[2], b"1")], [with_prev(LOG[6], None)]],
                      progress=[(0, 1), (3, 7)])
    assert check_watches(LOG, [rec]) == []


def test_a_watch_from_now_is_checked_from_its_first_event() -> None:
    rec = WatchRecord(name="n", key=b"a", range_end=b"", start_revision=0, responses=[[LOG[4]], [LOG[6]]])
    assert check_watches(LOG, [rec]) == []
    rec.responses = [[LOG[2]], [LOG[6]]]  # from 4, it missed the delete at 5
    assert props(check_watches(LOG, [rec])) == {"reliable"}


def test_ordered() -> None:
    rec = good_record(responses=[[LOG[1]], [LOG[4]], [LOG[2], LOG[3]], [LOG[5]], [LOG[6]]], progress=[])
    assert "ordered" in props(check_watches(LOG, [rec]))


def test_ordered_within_a_revision() -> None:
    rec = good_record(responses=[[LOG[1]], [LOG[3], LOG[2]], [LOG[4]], [LOG[5]], [LOG[6]]])
    assert props(check_watches(LOG, [rec])) == {"ordered"}


def test_unique() -> None:
    rec = good_record(responses=[[LOG[1]], [LOG[2], LOG[3]], [LOG[4]], [LOG[4]], [LOG[5]], [LOG[6]]], progress=[])
    assert "unique" in props(check_watches(LOG, [rec]))


def test_atomic_split_revision() -> None:
    rec = good_record(responses=[[LOG[1]], [LOG[2]], [LOG[3]], [LOG[4]], [LOG[5]], [LOG[6]]], progress=[])
    out = check_watches(LOG, [rec])
    assert props(out) == {"atomic"}, out
    assert "revision 4 split" in out[0]


def test_atomic_partial_revision() -> None:
    rec = good_record(responses=[[LOG[1]], [LOG[2]], [LOG[4]], [LOG[5]], [LOG[6]]], progress=[])
    out = check_watches(LOG, [rec])
    assert "atomic" in props(out) and "reliable" in props(out), out


def test_reliable() -> None:
    rec = good_record(responses=[[LOG[1]], [LOG[2], LOG[3]], [LOG[5]], [LOG[6]]], progress=[])
    out = check_watches(LOG, [rec])
    assert props(out) == {"reliable"}, out
    assert "delete b'a'@5 missing" in out[0]


def test_reliable_up_to_a_progress_revision() -> None:
    rec = good_record(responses=[[LOG[1]]], progress=[(1, 4)])
    out = check_watches(LOG, [rec])
    assert "reliable" in props(out) and "progress" in props(out), out


def test_exact_value() -> None:
    rec = good_record(responses=[[LOG[1]], [put(4, b"a", b"X"), LOG[3]], [LOG[4]], [LOG[5]], [LOG[6]]])
    out = check_watches(LOG, [rec])
    assert props(out) == {"exact", "reliable", "progress"}, out  # and a=2 at 4 was never received
    assert "value b'X', log has b'2'" in out[0]


def test_exact_prev_kv() -> None:
    rec = WatchRecord(name="p", key=b"a", range_end=b"", start_revision=4, prev_kv=True,
                      responses=[[with_prev(LOG[2], b"1")], [with_prev(LOG[4], b"1")], [with_prev(LOG[6], None)]])
    out = check_watches(LOG, [rec])
    assert props(out) == {"exact"} and "prev_kv" in out[0], out
    # the revision before the event compacted: etcd sends no prev_kv (a wrong one is still wrong)
    rec.responses = [[with_prev(LOG[2], None)], [with_prev(LOG[4], b"2")], [with_prev(LOG[6], None)]]
    assert check_watches(LOG, [rec], compact_revision=4) == []
    rec.responses[0] = [with_prev(LOG[2], b"X")]
    assert props(check_watches(LOG, [rec], compact_revision=4)) == {"exact"}
    # prev_kv given though not asked for
    rec = WatchRecord(name="q", key=b"a", range_end=b"", start_revision=7, responses=[[with_prev(LOG[6], b"2")]])
    assert props(check_watches(LOG, [rec])) == {"exact"}


def test_exact_outside_range_and_filters_and_start() -> None:
    out = check_watches(LOG, [WatchRecord(name="r", key=b"a", range_end=b"b", start_revision=5,
                                          responses=[[LOG[4]], [LOG[5]], [LOG[6]]])])
    assert props(out) == {"exact"} and "outside the range" in out[0], out
    out = check_watches(LOG, [WatchRecord(name="f", key=b"a", range_end=b"", start_revision=5,
                                          filters=frozenset({"nodelete"}), responses=[[LOG[4]], [LOG[6]]])])
    assert props(out) == {"exact"} and "filters" in out[0], out
    out = check_watches(LOG, [WatchRecord(name="s", key=b"a", range_end=b"", start_revision=5,
                                          responses=[[LOG[2]], [LOG[4]], [LOG[6]]])])
    assert "below the start revision" in " ".join(out), out


def test_an_event_not_in_the_log() -> None:
    rec = WatchRecord(name="x", key=b"a", range_end=b"", start_revision=7, responses=[[LOG[6]], [put(8, b"a", b"4")]])
    assert props(check_watches(LOG, [rec])) == {"exact"}


def test_progress_followed_by_an_older_event() -> None:
    # the progress at 5 came after response 2 (revision 4): revision 5's delete came after it
    rec = good_record(progress=[(2, 5)])
    out = check_watches(LOG, [rec])
    assert props(out) == {"progress"}, out
    assert any("received after progress revision 5" in v for v in out)


def test_progress_above_the_last_revision() -> None:
    rec = good_record(progress=[(5, 9)])
    out = check_watches(LOG, [rec])
    assert props(out) == {"progress"} and "above the store's last revision 7" in out[0], out
    assert check_watches(LOG, [rec], last_revision=9) == []  # revisions 8, 9 had no event


def test_canceled_below_compaction() -> None:
    ok = WatchRecord(name="c", key=b"a", range_end=b"", start_revision=2, canceled_compact_revision=4)
    assert check_watches(LOG, [ok], compact_revision=5) == []
    assert props(check_watches(LOG, [ok], compact_revision=3)) == {"canceled"}
    bad = dataclasses.replace(ok, start_revision=4)
    assert props(check_watches(LOG, [bad], compact_revision=5)) == {"canceled"}
    late = dataclasses.replace(ok, responses=[[LOG[0]]], canceled_compact_revision=5)  # it fell behind: 3 < 5
    assert check_watches(LOG, [late], compact_revision=5) == []
    bad = dataclasses.replace(ok, responses=[[LOG[0]], [LOG[2]]])  # had seen up to 4: next 5 is not below 4
    assert props(check_watches(LOG, [bad], compact_revision=5)) == {"canceled"}


def resumed_chain(second_start: int, second: list[list[WatchEvent]]) -> list[WatchRecord]:
    one = WatchRecord(name="w#0", key=b"\x00", range_end=b"\x00", start_revision=2,
                      responses=[[LOG[0]], [LOG[1]]])
    two = WatchRecord(name="w#1", key=b"\x00", range_end=b"\x00", start_revision=second_start, responses=second)
    return [one, two]


def test_resumable_passes() -> None:
    chain = resumed_chain(4, [[LOG[2], LOG[3]], [LOG[4]], [LOG[5]], [LOG[6]]])
    assert check_watches(LOG, chain) == []
    assert check_resumed(chain, LOG) == []


def test_resumable_gap() -> None:
    chain = resumed_chain(5, [[LOG[4]], [LOG[5]], [LOG[6]]])
    assert check_watches(LOG, chain[1:]) == []  # alone, the second watch is fine
    out = check_watches(LOG, chain)
    assert props(out) == {"resumable", "resumable/reliable"}, out


def test_resumable_duplicate() -> None:
    chain = resumed_chain(3, [[LOG[1]], [LOG[2], LOG[3]], [LOG[4]], [LOG[5]], [LOG[6]]])
    out = check_watches(LOG, chain)
    assert props(out) == {"resumable/unique"}, out


def test_a_chain_ending_in_a_compaction_cancel_counts_what_it_received() -> None:
    chain = resumed_chain(4, [[LOG[2], LOG[3]]])
    chain[1].canceled_compact_revision = 6  # it fell behind, after revision 4
    assert check_watches(LOG, chain, compact_revision=6) == []


def test_resumable_from_a_progress_revision() -> None:
    chain = resumed_chain(6, [[LOG[5]], [LOG[6]]])
    chain[0].progress = [(2, 3)]
    assert props(check_watches(LOG, chain)) == {"resumable", "resumable/reliable"}
    chain[0].progress = [(2, 5)]  # promised 4 and 5 were sent: they were not
    assert "progress" in props(check_watches(LOG, chain))


def test_an_unordered_log_is_reported() -> None:
    assert any("log:" in v for v in check_watches([LOG[1], LOG[0]], []))


@pytest.mark.parametrize(("key", "start", "end", "inside"), [
    (b"a", b"a", b"", True), (b"ab", b"a", b"", False), (b"ab", b"a", b"b", True), (b"b", b"a", b"b", False),
    (b"zz", b"a", b"\x00", True), (b"", b"a", b"\x00", False), (b"x", b"\x00", b"\x00", True),
])
def test_in_range(key: bytes, start: bytes, end: bytes, inside: bool) -> None:
    assert in_range(key, start, end) is inside


def test_check_record_alone_and_bad_inputs() -> None:
    assert check_record(good_record(), LOG) == []
    with pytest.raises(ValueError, match="kind"):
        WatchEvent(1, b"a", "set")
    with pytest.raises(ValueError, match="filters"):
        WatchRecord(name="w", key=b"a", range_end=b"", start_revision=1, filters=frozenset({"noset"}))


def test_a_key_written_twice_in_one_revision() -> None:
    """paxoskv.v1 batches may write a key twice in one revision (etcd refuses)."""
    log = [put(2, b"a", b"1"), put(3, b"a", b"2"), put(3, b"a", b"3")]
    rec = WatchRecord(name="t", key=b"a", range_end=b"", start_revision=2, prev_kv=True,
                      responses=[[log[0]], [with_prev(log[1], b"1"), with_prev(log[2], b"1")]])
    assert check_watches(log, [rec]) == []
    rec.responses = [[log[0]], [with_prev(log[1], b"1")]]
    assert props(check_watches(log, [rec])) == {"atomic", "reliable"}
    rec.responses = [[log[0]], [with_prev(log[1], b"1"), with_prev(log[1], b"1")]]
    assert props(check_watches(log, [rec])) == {"exact", "reliable"}
    rec.responses = [[log[0]], [with_prev(log[2], b"1"), with_prev(log[1], b"1")]]
    assert props(check_watches(log, [rec])) == {"ordered"}


def test_a_delete_at_a_compacted_start_revision_may_be_missing() -> None:
    """etcd's compaction at C drops a key's tombstone at C: a watch from C cannot see it."""
    rec = WatchRecord(name="d", key=b"a", range_end=b"", start_revision=5, responses=[[LOG[6]]], progress=[(1, 7)])
    assert check_watches(LOG, [rec], compact_revision=5) == []
    assert props(check_watches(LOG, [rec], compact_revision=4)) == {"reliable", "progress"}
    chain = [WatchRecord(name="d#0", key=b"a", range_end=b"", start_revision=2, responses=[[LOG[0]], [LOG[2]]]),
             WatchRecord(name="d#1", key=b"a", range_end=b"", start_revision=5, responses=[[LOG[6]]])]
    assert check_watches(LOG, chain, compact_revision=6) == []
    assert props(check_watches(LOG, chain)) == {"resumable/reliable", "reliable"}


def test_at_a_compacted_start_revision_only_what_compaction_keeps_is_required() -> None:
    """A compaction at C keeps a key's last write in C (a key written twice in
    one revision: paxoskv.v1 batches), not the earlier one, nor a tombstone."""
    log = [put(2, b"a", b"1"), put(3, b"a", b"2"), put(3, b"a", b"3"), put(3, b"b", b"1"), put(4, b"b", b"2")]
    everything = dict(name="c", key=b"\x00", range_end=b"\x00", start_revision=3)
    kept = WatchRecord(**everything, responses=[[log[2], log[3]], [log[4]]])
    assert check_watches(log, [kept], compact_revision=3) == []
    assert props(check_watches(log, [kept])) == {"atomic", "reliable"}
    full = WatchRecord(**everything, responses=[[log[1], log[2], log[3]], [log[4]]])  # served before the compaction
    assert check_watches(log, [full], compact_revision=3) == []
    lost = WatchRecord(**everything, responses=[[log[1], log[3]], [log[4]]])  # the kept write is required
    assert props(check_watches(log, [lost], compact_revision=3)) == {"reliable"}
    swapped = WatchRecord(**everything, responses=[[log[3], log[2]], [log[4]]])
    assert props(check_watches(log, [swapped], compact_revision=3)) == {"ordered"}


def _progress_by_definition(rec: WatchRecord, log: list[WatchEvent], last_revision: int,
                            compact_revision: int) -> list[str]:
    """The progress rule read literally (every notification against every
    event and the whole log): the oracle the indexed check must agree with."""
    from collections import Counter

    exempt = {r for r in [rec.start_revision] if 0 < r <= compact_revision}
    last_of = {}
    for ev in log:
        last_of[(ev.revision, ev.key)] = ev
    events = rec.events()
    start = rec.start_revision if rec.start_revision > 0 else (events[0][1].revision if events else None)
    out = []
    for before, prog in rec.progress:
        if prog > last_revision:
            out.append(f"above {prog}")
        out.extend(f"after {ev.show()} {prog}" for i, ev in events if i >= before and ev.revision <= prog)
        if start is None:
            continue
        got = Counter((ev.revision, ev.key, ev.kind, ev.value) for i, ev in events if i < before)
        for lv in log:
            if not (start <= lv.revision <= prog and rec.selects(lv)):
                continue
            ident = (lv.revision, lv.key, lv.kind, lv.value)
            if got[ident] > 0:
                got[ident] -= 1
            elif lv.revision not in exempt or (lv.kind == "put" and last_of[(lv.revision, lv.key)] is lv):
                out.append(f"missing {lv.show()} {prog}")
    return out


def _progress_lines(violations: list[str]) -> list[str]:
    """check_record's progress lines in the oracle's words."""
    out = []
    for v in violations:
        text = v.split(": ", 2)[2]
        if text.startswith("progress revision") and "above the store's" in text:
            out.append(f"above {text.split()[2]}")
        elif "received after progress revision" in text:
            show, prog = text.split(" received after progress revision ")
            out.append(f"after {show} {prog}")
        elif "not received before it" in text:
            words = text.split()
            out.append(f"missing {' '.join(words[4:6])} {words[2]}")
    return out


@pytest.mark.parametrize("seed", range(40))
def test_progress_check_agrees_with_its_definition(seed: int) -> None:
    """Random logs and records (events dropped, repeated, moved later;
    progress notifications true, early or lying): the indexed progress check
    reports exactly what the rule read literally reports."""
    import random

    rnd = random.Random(seed)
    log: list[WatchEvent] = []
    rev = 1
    for _ in range(rnd.randint(5, 40)):
        rev += rnd.randint(1, 2)
        for _ in range(rnd.choice([1, 1, 2])):
            key = rnd.choice([b"a", b"b", b"c"])
            log.append(put(rev, key, b"v%d" % rnd.randint(0, 2)) if rnd.random() < 0.8 else delete(rev, key))
    last_revision = rev + rnd.randint(0, 2)
    rec = WatchRecord(name="w", key=b"a", range_end=rnd.choice([b"", b"c", b"\x00"]),
                      start_revision=rnd.choice([0, 1, log[len(log) // 3].revision]))
    stream = [ev for ev in log if rec.selects(ev) and ev.revision >= rec.start_revision]
    sent: list[list[WatchEvent]] = []
    for ev in stream:
        r = rnd.random()
        if r < 0.1:
            continue  # dropped
        if r < 0.15 and sent:
            sent.insert(rnd.randrange(len(sent)), [ev])  # earlier than its place
            continue
        sent.append([ev])
        if r > 0.95:
            sent.append([ev])  # twice
    rec.responses = sent
    for _ in range(rnd.randint(0, 8)):
        before = rnd.randint(0, len(sent))
        seen = [ev.revision for resp in sent[:before] for ev in resp]
        truth = max(seen, default=rec.start_revision)
        rec.progress.append((before, max(0, truth + rnd.choice([-1, 0, 0, 1, 3]))))
    rec.progress.sort()
    compact = rnd.choice([0, rec.start_revision])
    mine = _progress_lines(check_record(rec, log, last_revision, compact))
    want = _progress_by_definition(rec, log, last_revision, compact)
    # the report keeps the first few lines of each property: compare those and the count
    assert mine[:5] == want[:5], (mine, want)

