"""The one place that reads a node's place in the job from the environment, and writes it.

Metaflow's ``@parallel`` support sets these variables on every node, locally,
on Kubernetes and on AWS Batch; anyone may set them by hand to run
``torchrun --rdzv-backend=metaflow`` outside Metaflow.
"""

import os
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

NODE_INDEX_VAR = "MF_PARALLEL_NODE_INDEX"
NUM_NODES_VAR = "MF_PARALLEL_NUM_NODES"
MAIN_IP_VAR = "MF_PARALLEL_MAIN_IP"
CONTROL_TASK_ID_VAR = "MF_PARALLEL_CONTROL_TASK_ID"
# Metaflow's @kubernetes exports its `port` attribute to every pod of a
# parallel step (and declares it in the pod spec); "None" when it is unset.
DECLARED_PORT_VAR = "MF_MASTER_PORT"


@dataclass(frozen=True)
class Topology:
    """Where this node sits in a fixed-size job.

    ``node_index`` is 0 for the control task, which hosts the store, and is the
    torchrun group rank. ``main_ip`` is the address of node 0 as the other nodes
    reach it. ``control_task_id`` names the job when Metaflow set it.
    ``declared_port`` is the port the compute layer opened for node 0
    (``@kubernetes(port=...)``), if any.
    """

    node_index: int
    num_nodes: int
    main_ip: str
    control_task_id: Optional[str] = None
    declared_port: Optional[int] = None

    @property
    def is_control(self) -> bool:
        return self.node_index == 0

    def environment(self) -> Dict[str, str]:
        """The variables that make ``read_topology`` return this topology.

        For whoever starts nodes outside Metaflow's own launchers (the local
        launcher of ``@torchrun``, benchmarks, tests); optional fields that are
        None are left out.
        """
        env = {
            NODE_INDEX_VAR: str(self.node_index),
            NUM_NODES_VAR: str(self.num_nodes),
            MAIN_IP_VAR: self.main_ip,
        }
        if self.control_task_id is not None:
            env[CONTROL_TASK_ID_VAR] = self.control_task_id
        if self.declared_port is not None:
            env[DECLARED_PORT_VAR] = str(self.declared_port)
        return env


def _topology_error(message: str) -> Exception:
    # Imported here: rendezvous.errors imports torch, which takes seconds, and the
    # @torchrun decorator reads the topology in the Metaflow task before torch runs.
    from .errors import TopologyError

    return TopologyError(message)


def _require(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise _topology_error(
            f"{name} is not set. The metaflow rendezvous backend runs on the nodes of a "
            f"Metaflow @parallel step, which set {NODE_INDEX_VAR}, {NUM_NODES_VAR} and "
            f"{MAIN_IP_VAR}; outside Metaflow, export all three on every node."
        )
    return value


def _require_int(environ: Mapping[str, str], name: str) -> int:
    value = _require(environ, name)
    try:
        return int(value)
    except ValueError:
        raise _topology_error(f"{name}={value!r} is not an integer.") from None


def read_topology(environ: Optional[Mapping[str, str]] = None) -> Topology:
    """Read and check the topology from ``environ`` (default: ``os.environ``).

    Raises:
        TopologyError: a variable is missing or malformed, or the index is out
            of range.
    """
    environ = os.environ if environ is None else environ
    num_nodes = _require_int(environ, NUM_NODES_VAR)
    node_index = _require_int(environ, NODE_INDEX_VAR)
    main_ip = _require(environ, MAIN_IP_VAR)
    if num_nodes < 1:
        raise _topology_error(f"{NUM_NODES_VAR}={num_nodes}: a job needs at least one node.")
    if not 0 <= node_index < num_nodes:
        raise _topology_error(
            f"{NODE_INDEX_VAR}={node_index} is out of range for {NUM_NODES_VAR}={num_nodes}: "
            f"node indexes run from 0 to {num_nodes - 1}."
        )
    control_task_id = environ.get(CONTROL_TASK_ID_VAR) or None
    return Topology(node_index, num_nodes, main_ip, control_task_id, _declared_port(environ))


def _declared_port(environ: Mapping[str, str]) -> Optional[int]:
    value = environ.get(DECLARED_PORT_VAR, "").strip()
    if value in ("", "None"):
        return None
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise _topology_error(
            f"{DECLARED_PORT_VAR}={value!r} is not a TCP port from 1 to 65535; it comes from "
            f"@kubernetes(port=...)."
        )
    return port
