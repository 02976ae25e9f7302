"""paxoskv.check.history: the Operation value, JSON Lines I/O, the Recorder."""

from __future__ import annotations

import json
import threading

import pytest

from paxoskv.check import (
    HistoryError,
    Operation,
    Recorder,
    dump_history,
    dumps_history,
    load_history,
    parse_history,
)


def line(**fields: object) -> str:
    base: dict[str, object] = {
        "id": 1, "client": "c1", "op": "put", "key": "k", "value": "v",
        "call": 1.0, "return": 2.0, "outcome": "ok", "output": {"existed": False},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_parse_a_put_get_delete():
    ops = parse_history([
        line(),
        "",
        line(id=2, op="get", value=..., output={"value": None}),
        line(id=3, op="delete", value=..., output={}),
        line(id=4, op="get", value=..., outcome="unknown", **{"return": None}, output=None),
    ])
    assert [o.op for o in ops] == ["put", "get", "delete", "get"]
    assert ops[0].output_existed is False and ops[0].value == "v"
    assert ops[1].output_value is None and ops[1].outcome == "ok"
    assert ops[2].output_existed is None  # absent optional field: unconstrained
    assert ops[3].ret is None and ops[3].outcome == "unknown"


def test_round_trip_through_a_file(tmp_path):
    ops = [
        Operation(id=1, client="a", op="put", key="k", value="x", call=0.5, ret=1.5, outcome="ok",
                  output_existed=True),
        Operation(id=2, client="b", op="get", key="k", call=1, ret=2, outcome="ok", output_value="x"),
        Operation(id=3, client="b", op="get", key="k", call=3, ret=4, outcome="ok"),
        Operation(id=4, client="c", op="delete", key="k", call=3, ret=None, outcome="unknown"),
        Operation(id=5, client="c", op="put", key="j", value="y", call=5, ret=6, outcome="fail"),
    ]
    path = tmp_path / "h.jsonl"
    dump_history(ops, path)
    assert load_history(path) == ops
    assert parse_history(dumps_history(ops).splitlines()) == ops
    assert json.loads(path.read_text().splitlines()[2])["output"] == {"value": None}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (line(client=...), "missing field 'client'"),
        (line(op="cas"), "op must be one of"),
        (line(outcome="maybe"), "outcome must be one of"),
        (line(**{"return": None}), "ok operation needs a return time"),
        (line(**{"return": 0.5}), "before call"),
        (line(call="soon"), "call must be a finite number"),
        (line(value=None), "put needs a string value"),
        (line(op="get", value=..., output={}), "needs output.value"),
        (line(op="get", value="v", output={"value": None}), "takes no value"),
        (line(output={"existed": "yes"}), "'existed' must be a bool"),
        (line(output={"existed": True, "extra": 1}), "unexpected output field"),
        (line(colour="red"), "unexpected field"),
        (line(id="seven"), "id must be an int"),
        (line(key=3), "key must be a string"),
    ],
)
def test_malformed_lines_are_named(text, message):
    with pytest.raises(HistoryError) as info:
        parse_history([line(id=0), "", text], source="h.jsonl")
    assert str(info.value).startswith("h.jsonl:3: ")
    assert message in str(info.value)


def test_duplicate_ids_are_rejected():
    with pytest.raises(HistoryError, match="h.jsonl:2: duplicate id 1 \\(first on line 1\\)"):
        parse_history([line(), line()], source="h.jsonl")


def test_unreadable_files(tmp_path):
    with pytest.raises(HistoryError, match="cannot read"):
        load_history(tmp_path / "missing.jsonl")
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HistoryError, match="not UTF-8"):
        load_history(binary)


def test_output_of_an_incomplete_operation_is_dropped():
    o = Operation(id=1, client="a", op="get", key="k", call=0, ret=1, outcome="unknown", output_value="x")
    assert o.output_value is None
    o = Operation(id=2, client="a", op="put", key="k", value="v", call=0, ret=None, outcome="fail",
                  output_existed=True)
    assert o.output_existed is None


def test_describe_is_one_readable_line():
    o = Operation(id=17, client="c3", op="put", key="k1", value="v9", call=12.5, ret=13.1, outcome="ok",
                  output_existed=False)
    assert o.describe() == "#17 c3 put k1='v9' [12.5, 13.1] ok existed=false"
    g = Operation(id=18, client="c3", op="get", key="k1", call=14, ret=15, outcome="ok")
    assert g.describe() == "#18 c3 get k1 [14, 15] ok -> absent"
    u = Operation(id=19, client="c4", op="delete", key="k1", call=14, ret=20, outcome="unknown")
    assert u.describe() == "#19 c4 delete k1 [14, ?] unknown"


def test_recorder_builds_a_history_and_turns_in_flight_ops_unknown():
    now = [0.0]
    rec = Recorder(clock=lambda: now[0])
    a = rec.invoke("c1", "put", "k", "x")
    now[0] = 1.0
    b = rec.invoke("c2", "get", "k")
    c = rec.invoke("c3", "delete", "k", at=1.5)
    now[0] = 2.0
    rec.complete(a, "ok", output_existed=False)
    rec.complete(b, "ok", output_value="x", at=2.5)
    ops = rec.history()
    assert [(o.id, o.op, o.call, o.ret, o.outcome) for o in ops] == [
        (a, "put", 0.0, 2.0, "ok"), (b, "get", 1.0, 2.5, "ok"), (c, "delete", 1.5, None, "unknown"),
    ]
    assert ops[1].output_value == "x"


def test_recorder_is_thread_safe():
    rec = Recorder()
    n_threads, n_ops = 8, 200

    def client(name: str) -> None:
        for i in range(n_ops):
            op_id = rec.invoke(name, "put", "k", f"{name}-{i}")
            rec.complete(op_id, "ok")

    threads = [threading.Thread(target=client, args=(f"c{t}",)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = rec.history()
    assert len(ops) == n_threads * n_ops
    assert sorted(o.id for o in ops) == list(range(n_threads * n_ops))
    assert all(o.ret >= o.call for o in ops)
