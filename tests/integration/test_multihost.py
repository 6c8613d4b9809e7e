"""torchrun --rdzv-backend=metaflow across three test hosts (network namespaces): links cut, hosts partitioned.

The hosts map the hostname to 127.0.1.1 as stock Debian does and nothing sets
GLOO_SOCKET_IFNAME: the backend must hand the workers the interface that
reaches node 0 by itself.
"""

import os
import random
from pathlib import Path

import pytest

from tests.harness.netns_hosts import TestHosts, unavailable_reason
from tests.harness.torchrun_nodes import FAST, job_on_hosts, lines_with, wait_for_output

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(REASON is not None, reason=f"no test hosts: {REASON}"),
]
IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


@pytest.fixture
def hosts():
    assert not any(name in os.environ for name in IFNAME_VARS), "the jobs would inherit them"
    with TestHosts(3) as made:
        yield made


def test_three_hosts_all_reduce(hosts, tmp_path):
    with job_on_hosts(hosts, tmp_path, "allreduce.py", nproc_per_node=2,
                script_args=["--print-env", *IFNAME_VARS]) as job:
        job.start()
        assert job.wait() == {0: 0, 1: 0, 2: 0}
        for node in range(3):
            lines = lines_with(job.output(node), "sum=")
            assert len(lines) == 2 and all("sum=21" in line for line in lines), job.output(node)
            assert all(f"group_rank={node}" in line for line in lines)
            assert all(f"master={hosts.addresses[0]}" in line for line in lines)
            assert all("GLOO_SOCKET_IFNAME=eth0 NCCL_SOCKET_IFNAME==eth0" in line for line in lines)


def test_users_own_socket_ifname_wins(hosts, tmp_path):
    # The user's NCCL choice stays; gloo, which the user left alone, gets ours.
    with job_on_hosts(hosts, tmp_path, "allreduce.py", script_args=["--print-env", *IFNAME_VARS],
                env={"NCCL_SOCKET_IFNAME": "^docker"}) as job:
        job.start()
        assert job.wait() == {0: 0, 1: 0, 2: 0}
        for node in range(3):
            lines = lines_with(job.output(node), "sum=")
            assert lines and "GLOO_SOCKET_IFNAME=eth0 NCCL_SOCKET_IFNAME=^docker" in lines[0], lines


@pytest.mark.parametrize("fault", ["cut_link", "partition"])
@pytest.mark.parametrize(
    "lost, the_others_say, the_lost_host_says",
    [
        (2, ["node 2 failed first: stopped sending heartbeats"],
         "the control node (node 0) failed first: its rendezvous store at"),
        (0, ["the control node (node 0) failed first: its rendezvous store at", "is unreachable"],
         "stopped sending heartbeats"),
    ],
    ids=["worker host", "control host"],
)
def test_host_lost(hosts, tmp_path, fault, lost, the_others_say, the_lost_host_says):
    with job_on_hosts(hosts, tmp_path, "idle.py", rdzv_conf=FAST) as job:
        job.start()
        wait_for_output(job, [0, 1, 2], "started rank=")
        getattr(hosts, fault)(lost)
        codes = job.wait(timeout=90)
        assert all(code != 0 for code in codes.values()), codes
        for node in sorted({0, 1, 2} - {lost}):
            for message in the_others_say:
                assert message in job.output(node), job.output(node)
        assert the_lost_host_says in job.output(lost), job.output(lost)
        assert job.live_processes() == []


HANG_WORKER = str(Path(__file__).resolve().parents[1] / "flows" / "workers" / "hang.py")
# Hang diagnosis within seconds, and the job failed for it soon after.
HANG_CONF = {**FAST, "hang_timeout": 5, "hang_fail_after": 3}


def test_a_rank_sleeping_on_one_host_is_named_by_every_host(hosts, tmp_path):
    culprit = random.randrange(6)
    with job_on_hosts(hosts, tmp_path, HANG_WORKER, launcher="module", nproc_per_node=2,
                      rdzv_conf=HANG_CONF,
                      script_args=["--scenario", "sleep", "--culprit", str(culprit)]) as job:
        job.start()
        codes = job.wait(timeout=120)
        assert all(code != 0 for code in codes.values()), codes
        for node in range(3):
            output = job.output(node)
            assert (f"metaflow rendezvous (node {node}): hang: ranks" in output
                    and f"for rank {culprit} (node {culprit // 2}, local rank {culprit % 2}), "
                        f"which is at hang.py:" in output), output[-3000:]
            assert "metaflow rendezvous: the job hung: " in output, output[-3000:]
        assert job.live_processes() == []


def test_a_data_link_cut_under_every_rank_is_a_transport_hang_blaming_no_rank(tmp_path):
    """The training traffic has a network of its own (GLOO_SOCKET_IFNAME=eth1); one host is
    cut off from it while every rank all_reduces. Its heartbeats go on over the other network,
    so no node is lost: every rank waits inside a collective, which the diagnosis says."""
    lost = random.randrange(3)
    with TestHosts(3, data_network=True) as hosts, job_on_hosts(
            hosts, tmp_path, HANG_WORKER, launcher="module", nproc_per_node=2,
            rdzv_conf=HANG_CONF, env={"GLOO_SOCKET_IFNAME": "eth1"},
            script_args=["--scenario", "loop", "--hold", "600"]) as job:
        job.start()
        wait_for_output(job, [0, 1, 2], "warmed up rank=")
        hosts.partition_data(lost)
        codes = job.wait(timeout=120)
        assert all(code != 0 for code in codes.values()), codes
        for node in range(3):
            output = job.output(node)
            assert "a transport hang (a cut link, a stuck network card or driver)" in output, (
                output[-3000:])
            assert "metaflow rendezvous: the job hung: " in output, output[-3000:]
            assert "which is at" not in output and "stopped sending heartbeats" not in output, (
                output[-3000:])
        assert job.live_processes() == []
