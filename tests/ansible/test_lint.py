"""Every playbook parses (``--syntax-check``) and ansible-lint's production profile passes, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_harness import ANSIBLE_DIR, PLAYBOOKS, run_playbook


def _empty_inventory(home: Path) -> Path:
    # An inventory with the group the node plays target, and no hosts: the
    # checks must not load the aws_ec2 inventory (that would call AWS).
    path = home / "empty-inventory.yml"
    path.write_text("paxoskv:\n  hosts: {}\n")
    return path


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str, ansible_env: dict[str, str], ansible_home: Path) -> None:
    run = run_playbook(
        ["--syntax-check", "-i", str(_empty_inventory(ansible_home)), playbook],
        ansible_env,
        ansible_home / "logs" / f"syntax-{playbook}.log",
        timeout_s=120,
    )
    assert run.returncode == 0, run.tail()
    assert f"playbook: {playbook}" in run.output, run.tail()


def test_ansible_lint_production_profile(ansible_env: dict[str, str], ansible_home: Path) -> None:
    env = dict(ansible_env, ANSIBLE_INVENTORY=str(_empty_inventory(ansible_home)))
    run = run_playbook(
        ["--offline", "--profile", "production", "--nocolor", "."],
        env,
        ansible_home / "logs" / "ansible-lint.log",
        timeout_s=300,
        cmd="ansible-lint",
    )
    assert run.returncode == 0, run.tail()
    assert "Profile 'production' was required, and it passed" in run.output, run.tail()


def test_every_playbook_is_checked() -> None:
    assert sorted(PLAYBOOKS) == sorted(p.name for p in ANSIBLE_DIR.glob("*.yml"))


def _unit_check(unit_text: str, tmp_path: Path) -> int:
    """Run the role's unit check (the template task's ``validate``) on ``unit_text``, as Ansible does."""
    import shlex
    import subprocess

    import yaml

    tasks = yaml.safe_load((ANSIBLE_DIR / "roles/paxoskv_node/tasks/configure.yml").read_text())
    (validate,) = [t["ansible.builtin.template"]["validate"] for t in tasks if "systemd unit" in t["name"]]
    command = validate.replace("{{ paxoskv_node_service }}", "paxoskv")
    candidate = tmp_path / "candidate"  # Ansible's temp file has no .service suffix either
    candidate.write_text(unit_text)
    return subprocess.run(shlex.split(command % str(candidate)), capture_output=True, timeout=60).returncode


def test_unit_check_rejects_what_systemd_would_ignore_or_refuse(tmp_path: Path) -> None:
    good = "[Service]\nExecStart=/bin/true\nNoNewPrivileges=yes\nProtectSystem=strict\n"
    assert _unit_check(good, tmp_path) == 0
    # A misspelt hardening directive: systemd only warns and runs the unit without it.
    assert _unit_check(good.replace("NoNewPrivileges", "NoNewPrivilege"), tmp_path) != 0
    # A program that is not there.
    assert _unit_check(good.replace("/bin/true", "/nonexistent/paxoskv"), tmp_path) != 0
