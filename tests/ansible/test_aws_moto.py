"""provision.yml, the aws_ec2 inventory and destroy.yml against a local moto server.

The playbooks are pointed at moto only through ``AWS_ENDPOINT_URL`` with
dummy credentials. What is checked, with boto3, after each step: three
running instances tagged with the cluster and node ids, the exact security
group rules, the key pair; a second provision changes nothing; the
inventory lists the three hosts; destroy leaves nothing tagged and a second
destroy is a no-op. Instances of another cluster and untagged ones are
never touched.

Not run here: the SSH wait at the end of provision.yml (``--skip-tags ssh``)
-- moto's instances are not machines. The deploy tests run the same
wait_for_ssh.yml against real hosts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from ansible_harness import UBUNTU_NOBLE_AMI, MotoServer, PlaybookRun, base_env, run_playbook

CLUSTER = "paxoskv"
NAME = f"paxoskv-{CLUSTER}"
ADMIN_CIDR = "198.51.100.7/32"
CLIENT_CIDR = "203.0.113.0/24"
GRPC_PORT = 50051
BUS_PORT = 51051
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def aws_env(moto: MotoServer, ansible_home: Path) -> dict[str, str]:
    return base_env(ansible_home, aws_endpoint=moto.endpoint)


@pytest.fixture(scope="module")
def ec2(aws_env: dict[str, str]) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=aws_env["AWS_ENDPOINT_URL"],
        region_name=aws_env["AWS_REGION"],
        aws_access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=aws_env["AWS_SESSION_TOKEN"],
    )


@pytest.fixture(scope="module")
def operator_key(ansible_home: Path) -> Path:
    """The operator's public key (OpenSSH format); the private half is never needed here."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = ansible_home / "operator_ed25519.pub"
    path.write_bytes(public + b" operator@paxoskv-test\n")
    return path


def _provision(env: dict[str, str], home: Path, key: Path, log: str, *extra: str) -> PlaybookRun:
    args = ["provision.yml", "--skip-tags", "ssh", "-e", f"paxoskv_aws_public_key_path={key}", *extra]
    return run_playbook(args, env, home / "logs" / log, timeout_s=600)


def _instances(ec2: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def _bystanders(ec2: Any) -> list[str]:
    """An instance of another cluster and an untagged one, which no playbook may touch."""
    image = UBUNTU_NOBLE_AMI["ami_id"]
    other = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "paxoskv-cluster", "Value": "other"},
                                                  {"Key": "paxoskv-node-id", "Value": "1"}]}
        ],
    )
    plain = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    return [other["Instances"][0]["InstanceId"], plain["Instances"][0]["InstanceId"]]


def _assert_provisioned(ec2: Any, key_name: str) -> list[dict[str, Any]]:
    nodes = _instances(ec2, [{"Name": "tag:paxoskv-cluster", "Values": [CLUSTER]},
                             {"Name": "instance-state-name", "Values": LIVE_STATES}])
    assert len(nodes) == 3, [(i["InstanceId"], _tags(i)) for i in nodes]
    assert sorted(_tags(i)["paxoskv-node-id"] for i in nodes) == ["1", "2", "3"]
    for inst in nodes:
        tags = _tags(inst)
        assert inst["State"]["Name"] == "running"
        assert tags["Name"] == f"{NAME}-{tags['paxoskv-node-id']}"
        assert inst["InstanceType"] == "t3.micro"
        assert inst["ImageId"] == UBUNTU_NOBLE_AMI["ami_id"]  # the newest of the two noble images
        assert inst["KeyName"] == key_name
        assert inst["PublicIpAddress"] and inst["PrivateIpAddress"]
    # One node per availability zone (default subnets), so one zone's loss leaves a quorum.
    assert len({i["SubnetId"] for i in nodes}) == 3
    assert len({i["Placement"]["AvailabilityZone"] for i in nodes}) == 3

    (group,) = ec2.describe_security_groups(Filters=[{"Name": "tag:paxoskv-cluster", "Values": [CLUSTER]}])[
        "SecurityGroups"
    ]
    assert group["GroupName"] == NAME
    for inst in nodes:
        assert [g["GroupId"] for g in inst["SecurityGroups"]] == [group["GroupId"]]
    rules = []
    for perm in group["IpPermissions"]:
        sources = [("cidr", r["CidrIp"]) for r in perm.get("IpRanges", [])]
        sources += [("group", p["GroupId"]) for p in perm.get("UserIdGroupPairs", [])]
        sources += [("cidr6", r["CidrIpv6"]) for r in perm.get("Ipv6Ranges", [])]
        sources += [("prefix-list", p["PrefixListId"]) for p in perm.get("PrefixListIds", [])]
        for source in sources:
            rules.append((perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"), *source))
    assert sorted(rules) == sorted(
        [
            ("tcp", 22, 22, "cidr", ADMIN_CIDR),
            ("tcp", GRPC_PORT, GRPC_PORT, "cidr", CLIENT_CIDR),
            ("tcp", BUS_PORT, BUS_PORT, "group", group["GroupId"]),
        ]
    ), f"ingress rules: {rules}"
    egress = [(p["IpProtocol"], [r["CidrIp"] for r in p.get("IpRanges", [])]) for p in group["IpPermissionsEgress"]]
    assert egress == [("-1", ["0.0.0.0/0"])], egress

    (key,) = ec2.describe_key_pairs(KeyNames=[key_name])["KeyPairs"]
    assert _tags(key).get("paxoskv-cluster") == CLUSTER
    return nodes


def _assert_nothing_left(ec2: Any) -> None:
    by_tag = [{"Name": "tag:paxoskv-cluster", "Values": [CLUSTER]}]
    assert _instances(ec2, by_tag + [{"Name": "instance-state-name", "Values": LIVE_STATES}]) == []
    assert ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=by_tag)["KeyPairs"] == []
    assert ec2.describe_volumes(Filters=by_tag)["Volumes"] == []
    names = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    assert NAME not in names


def test_provision_refuses_to_run_without_the_access_cidrs(
    aws_env: dict[str, str], ansible_home: Path, operator_key: Path, ec2: Any
) -> None:
    run = _provision(aws_env, ansible_home, operator_key, "provision-no-cidr.log")
    assert run.returncode != 0, run.tail()
    assert "Set paxoskv_aws_admin_cidr" in run.output, run.tail()
    assert ec2.describe_key_pairs()["KeyPairs"] == []


def test_without_aws_credentials_provision_and_destroy_say_so_before_any_aws_call(
    ansible_home: Path, operator_key: Path, tmp_path: Path
) -> None:
    env = base_env(ansible_home)  # AWS_ENDPOINT_URL: a closed local port
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(name)
    empty = tmp_path / "empty"
    empty.write_text("")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty))  # and no instance role
    cidrs = ["-e", f"paxoskv_aws_admin_cidr={ADMIN_CIDR}"]
    for args, log in (
        (["provision.yml", "--skip-tags", "ssh", "-e", f"paxoskv_aws_public_key_path={operator_key}", *cidrs], "nocreds-provision.log"),
        (["destroy.yml"], "nocreds-destroy.log"),
    ):
        run = run_playbook(args, env, ansible_home / "logs" / log, timeout_s=300)
        assert run.returncode != 0, run.tail()
        assert "no AWS credentials found" in run.output, run.tail()
        # The check came first: no task that calls AWS ran.
        assert "Find the default VPC" not in run.output and "Terminate the cluster" not in run.output, run.tail()


def test_provision_inventory_destroy(aws_env: dict[str, str], ansible_home: Path, operator_key: Path, ec2: Any) -> None:
    cidrs = ["-e", f"paxoskv_aws_admin_cidr={ADMIN_CIDR}", "-e", f"paxoskv_aws_client_cidr={CLIENT_CIDR}"]
    bystanders = _bystanders(ec2)

    first = _provision(aws_env, ansible_home, operator_key, "provision-1.log", *cidrs)
    first.assert_ok()
    assert first.recap["localhost"]["changed"] == 3, first.tail()  # key pair, group, the instances (one loop)
    nodes = _assert_provisioned(ec2, NAME)

    again = _provision(aws_env, ansible_home, operator_key, "provision-2.log", *cidrs)
    again.assert_ok()
    assert again.changed() == 0, again.tail()
    assert {i["InstanceId"] for i in _assert_provisioned(ec2, NAME)} == {i["InstanceId"] for i in nodes}

    inv = run_playbook(["--list"], aws_env, ansible_home / "logs" / "inventory.log", cmd="ansible-inventory")
    assert inv.returncode == 0, inv.tail()
    listing = json.loads(inv.output[inv.output.index("{"):inv.output.rindex("}") + 1])
    assert sorted(listing["paxoskv"]["hosts"]) == [f"{NAME}-1", f"{NAME}-2", f"{NAME}-3"]
    by_id = {_tags(i)["paxoskv-node-id"]: i for i in nodes}
    for host in listing["paxoskv"]["hosts"]:
        hv = _plain(listing["_meta"]["hostvars"][host])
        inst = by_id[str(hv["paxoskv_node_id"])]
        assert host == f"{NAME}-{hv['paxoskv_node_id']}"
        assert hv["ansible_host"] == inst["PublicIpAddress"]
        assert hv["paxoskv_node_advertise_address"] == inst["PrivateIpAddress"]
        assert hv["ansible_user"] == "ubuntu"

    # How ansible/README.md says to reach the cluster: the inventory's nodes, and their endpoints.
    graph = run_playbook(["--graph", "paxoskv"], aws_env, ansible_home / "logs" / "graph.log", cmd="ansible-inventory")
    assert graph.returncode == 0 and all(f"{NAME}-{i}" in graph.output for i in (1, 2, 3)), graph.tail()
    printed = run_playbook(["endpoints.yml"], aws_env, ansible_home / "logs" / "endpoints.log")
    printed.assert_ok()
    public = ",".join(f"{by_id[str(i)]['PublicIpAddress']}:{GRPC_PORT}" for i in (1, 2, 3))
    assert f"export PAXOSKV_ENDPOINTS={public}" in printed.output, printed.tail()

    gone = run_playbook(["destroy.yml"], aws_env, ansible_home / "logs" / "destroy-1.log", timeout_s=600)
    gone.assert_ok()
    assert gone.changed() >= 3, gone.tail()
    _assert_nothing_left(ec2)

    twice = run_playbook(["destroy.yml"], aws_env, ansible_home / "logs" / "destroy-2.log", timeout_s=600)
    twice.assert_ok()
    assert twice.changed() == 0, twice.tail()
    _assert_nothing_left(ec2)

    survivors = _instances(ec2, [{"Name": "instance-id", "Values": bystanders}])
    assert sorted((i["InstanceId"], i["State"]["Name"]) for i in survivors) == sorted(
        (b, "running") for b in bystanders
    )


def _plain(value: Any) -> Any:
    """ansible-inventory marks strings from the cloud as unsafe: {"__ansible_unsafe": "..."}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
