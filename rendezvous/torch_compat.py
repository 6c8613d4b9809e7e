"""Everything of the backend that depends on the torch release, in one place.

The rest of ``rendezvous`` asks this module instead of reaching for torch's
attributes itself: each function uses the better call where the installed
release has it and falls back where it does not.

Checked against every minor release from torch 2.6 to 2.15 (the
compatibility run, ``make compat``; its table is in docs/compatibility.md).
What differs between them:

- ``TCPStore.list_keys``: from 2.10 on. A restart round wipes the keys the
  previous round's workers left in node 0's store (their process groups'
  addresses, which the new workers would otherwise read). Earlier releases
  cannot list the keys, so node 0 hosts a fresh store for the workers of each
  restart round instead, on a port the system picks (``STORE_LISTS_KEYS``).
- ``LaunchConfig.event_log_handler`` (torchrun's ``--event-log-handler``):
  from 2.8 on. Earlier releases have no such flag (``event_log_handler``).
- What the handler's ``shutdown`` raises (another node's failure, the root
  cause): up to 2.14.1 torchrun ends with that error, in place of this node's
  own or of its success; torch 2.15's launcher logs it with a traceback and
  drops it, so torchrun ends with this node's own error, or exits 0 when this
  node's workers finished. ``python -m rendezvous`` asks the handler for the
  root cause (``root_cause_elsewhere``) on every release instead of relying on
  the error; plain torchrun on 2.15 cannot.
- The flight recorder that hang diagnosis reads (``rendezvous.hangs``): torch
  2.6 and 2.7 have only ProcessGroupNCCL's, which records nothing of gloo; 2.8
  has the generic one (``_dump_fr_trace``), which records gloo's collectives too, but
  only with ``TORCH_FR_BUFFER_SIZE`` set; 2.11 records by default. The agent
  sizes the workers' recorder unless the user did (``FLIGHT_RECORDER_SIZE_VAR``).
- ``SimpleElasticAgent._rendezvous`` and the agent's ``_remaining_restarts``,
  which ``rendezvous.agent`` overrides and sets to count the job's restarts:
  the same in every release checked. Should a release rename either, its
  agent keeps its own count, per node (``set_remaining_restarts``).

Standard library and torch only.
"""

from typing import Optional

import torch
from torch.distributed import TCPStore
from torch.distributed.elastic.agent.server.api import SimpleElasticAgent


# Whether node 0's store can list its keys, so that a restart round can wipe the
# previous round's worker keys from it (torch 2.10 and later).
STORE_LISTS_KEYS: bool = hasattr(TCPStore, "list_keys")

# The variable that sizes a worker's flight recorder: the generic recorder's, where there is
# one (it sizes NCCL's too), else ProcessGroupNCCL's own, which gloo jobs cannot use.
FLIGHT_RECORDER_SIZE_VAR: str = (
    "TORCH_FR_BUFFER_SIZE" if hasattr(torch._C._distributed_c10d, "_dump_fr_trace")
    else "TORCH_NCCL_TRACE_BUFFER_SIZE"
)


def event_log_handler(config: object) -> Optional[str]:
    """The ``--event-log-handler`` in torchrun's ``LaunchConfig``.

    None before torch 2.8, which has no such flag.
    """
    return getattr(config, "event_log_handler", None)


def set_remaining_restarts(agent: SimpleElasticAgent, remaining: int) -> bool:
    """Set how many restarts torch's ``agent`` has left; False where it keeps no such count.

    The count is the agent's private ``_remaining_restarts``, which ``run()``
    sets before the first rendezvous; a release that renamed it keeps its
    own count (per node) and this changes nothing.
    """
    if not hasattr(agent, "_remaining_restarts"):
        return False
    agent._remaining_restarts = remaining
    return True


__all__ = ["FLIGHT_RECORDER_SIZE_VAR", "STORE_LISTS_KEYS", "set_remaining_restarts",
           "event_log_handler"]
