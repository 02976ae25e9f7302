"""Fixtures of the Ansible tests: an isolated environment for ansible processes.

``ansible_home``: a directory of this session for Ansible's temp files, SSH
control sockets, logs and keys. ``ansible_env``: the environment of an
ansible process with no way out to a real cloud (see ansible_harness).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_harness import base_env


@pytest.fixture(scope="session")
def ansible_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ansible-home")


@pytest.fixture(scope="session")
def ansible_env(ansible_home: Path) -> dict[str, str]:
    return base_env(ansible_home)
