"""``paxoskv check``: summary output and exit codes (0 ok, 1 violation, 2 unknown, 3 invalid)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from paxoskv.check import Operation, dump_history
from paxoskv.check.cli import check_cmd
from paxoskv.cli import main


def put(i: int, value: str, call: float, ret: float | None, outcome: str = "ok") -> Operation:
    return Operation(id=i, client=f"c{i}", op="put", key="k", value=value, call=call, ret=ret, outcome=outcome)


def get(i: int, value: str | None, call: float, ret: float) -> Operation:
    return Operation(id=i, client=f"c{i}", op="get", key="k", call=call, ret=ret, outcome="ok",
                     output_value=value)


def test_good_history_exits_0(tmp_path):
    path = tmp_path / "good.jsonl"
    dump_history([put(1, "x", 0, 1), put(2, "y", 2, None, "unknown"), get(3, "x", 3, 4)], path)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ops: 3" in result.output
    assert "keys: 1 (1 ok" in result.output
    assert "verdict: ok" in result.output


def test_bad_history_exits_1_and_explains(tmp_path):
    path = tmp_path / "bad.jsonl"
    dump_history([put(1, "x", 0, 1), put(2, "y", 2, 3), get(3, "x", 4, 5)], path)
    result = CliRunner().invoke(check_cmd, [str(path)])
    assert result.exit_code == 1, result.output
    assert "verdict: violation" in result.output
    assert "key 'k': not linearizable" in result.output
    assert "#3 c3 get k [4, 5] ok -> 'x'  <-- cannot linearize" in result.output


def test_json_output(tmp_path):
    path = tmp_path / "bad.jsonl"
    dump_history([put(1, "x", 0, 1), get(2, None, 2, 3)], path)
    result = CliRunner().invoke(check_cmd, ["--json", str(path)])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["verdict"] == "violation"
    assert doc["keys"][0]["failing_op"]["id"] == 2


def test_budget_exhausted_exits_2(tmp_path):
    path = tmp_path / "hard.jsonl"
    ops = [put(i, f"v{i}", 0, 100) for i in range(60)]
    ops += [get(100, "v0", 101, 102), get(101, "v1", 103, 104)]
    dump_history(ops, path)
    result = CliRunner().invoke(check_cmd, ["--step-budget", "2000", str(path)])
    assert result.exit_code == 2, result.output
    assert "verdict: unknown" in result.output
    assert "steps budget exhausted" in result.output


def test_malformed_file_exits_3_naming_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    dump_history([put(1, "x", 0, 1)], path)
    with path.open("a") as f:
        f.write('{"id": 2, "client": "c", "op": "get", "key": "k", "call": 1, "return": 2, "outcome": "ok"}\n')
    result = CliRunner().invoke(check_cmd, [str(path)])
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        f"paxoskv check: {path}:2: op 2: an ok get needs output.value (null = absent)"
    ]


def test_missing_file_exits_3(tmp_path):
    result = CliRunner().invoke(check_cmd, [str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 3
    assert "cannot read" in result.output
