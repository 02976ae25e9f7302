"""``paxoskv sim``: summary, replay command, identical replay, history output."""

from __future__ import annotations

import re

from click.testing import CliRunner

from paxoskv.check import check_history, load_history
from paxoskv.cli import main
from paxoskv.paxos.types import Config


def invoke(*args: str):
    return CliRunner().invoke(main, ["sim", *args], catch_exceptions=False)


def test_passing_seeds_print_a_summary_and_exit_0() -> None:
    res = invoke("--seed", "3", "--seeds", "3", "--nodes", "3")
    assert res.exit_code == 0, res.output
    m = re.search(
        r"seeds: 3  violations: 0  simulated ops: (\d+) .*simulated ops/s: (\d+)", res.output
    )
    assert m is not None, res.output
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0


def test_a_failing_seed_prints_its_replay_command_and_replays_identically(monkeypatch) -> None:
    monkeypatch.setattr(Config, "quorum", property(lambda self: 1))
    first = invoke("--seed", "0", "--nodes", "5", "--ops", "150")
    assert first.exit_code == 1, first.output
    assert "FAIL seed 0" in first.output and "agreement" in first.output
    replay = "paxoskv sim --seed 0 --nodes 5 --ops 150"
    assert f"replay: {replay}" in first.output
    again = invoke(*replay.split()[2:])
    assert again.exit_code == 1

    def without_clock(text: str) -> str:  # the real-time figures differ, nothing else
        text = re.sub(r"(real|cpu)=[\d.]+s", "", text)
        return re.sub(r"real time: .*", "", text)

    assert without_clock(again.output) == without_clock(first.output)
    assert [line for line in first.output.splitlines() if line.startswith("  [")]


def test_verbose_prints_parameters_and_trace() -> None:
    res = invoke("--seed", "5", "--ops", "20", "--verbose")
    assert res.exit_code == 0, res.output
    assert "params: nodes=3" in res.output
    assert "liveness phase" in res.output and " invoke: " in res.output


def test_history_out_is_a_history_the_checker_reads(tmp_path) -> None:
    path = tmp_path / "h.jsonl"
    res = invoke("--seed", "8", "--history-out", str(path))
    assert res.exit_code == 0, res.output
    ops = load_history(path)
    assert ops and check_history(ops).ok


def test_without_seed_a_random_one_is_drawn_and_printed(monkeypatch) -> None:
    monkeypatch.setattr("paxoskv.sim.cli.os.urandom", lambda n: (77).to_bytes(n, "big"))
    res = invoke("--ops", "10", "--faults", "none")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("seed 77 (random)")


def test_fault_profiles_are_choices() -> None:
    res = CliRunner().invoke(main, ["sim", "--faults", "meteor"])
    assert res.exit_code == 2 and "meteor" in res.output


def test_minimize_shrinks_a_failing_seed_to_fewer_operations(monkeypatch) -> None:
    monkeypatch.setattr(Config, "quorum", property(lambda self: 1))
    res = invoke("--seed", "0", "--minimize")
    assert res.exit_code == 1, res.output
    m = re.search(r"minimized to (\d+) operations", res.output)
    assert m is not None and int(m.group(1)) < 200, res.output
    replay = re.findall(r"replay: (paxoskv sim --seed 0 --nodes 3 --ops \d+)", res.output)
    assert replay, res.output
    again = invoke(*replay[-1].split()[2:])
    assert again.exit_code == 1 and "agreement" in again.output


def test_a_campaign_prints_progress_on_stderr_and_keeps_stdout_for_the_summary() -> None:
    res = CliRunner().invoke(main, ["sim", "--seed", "11", "--seeds", "20", "--ops", "10"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    progress = [line for line in res.stderr.splitlines() if line.startswith("progress: ")]
    assert [line.split(",")[0] for line in progress] == [
        f"progress: {n} of 20 seeds ({5 * n}%)" for n in range(2, 21, 2)
    ]
    assert all(", 0 failed, " in line for line in progress)
    assert "progress" not in res.stdout and "seeds: 20  violations: 0" in res.stdout
    one = CliRunner().invoke(main, ["sim", "--seed", "11", "--ops", "10"], catch_exceptions=False)
    assert "progress" not in one.output  # one seed: nothing to report
