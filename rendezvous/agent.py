"""The elastic agent of ``python -m rendezvous``: torch's, with one restart count for the job.

torch's agent counts only its own node's failures: after a rank of node 1 failed
and the job restarted, node 1's workers saw ``TORCHELASTIC_RESTART_COUNT=1`` and
node 0's, restarted for the new round without spending a restart, saw ``0``;
``--max-restarts`` was a budget per node, so the job could restart once per node
and failing node. ``JobRestartCountAgent`` sets the agent's remaining restarts from
the rendezvous round at every round: every worker of every node sees the job's
restart round as its restart count (and writes its logs to ``attempt_<round>``),
and ``--max-restarts`` bounds the job's restarts, whichever nodes fail. Plain
``torchrun --rdzv-backend=metaflow`` runs torch's own agent, which keeps its per-node
count.
"""

from torch.distributed.elastic.agent.server.api import WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

from .torch_compat import set_remaining_restarts


class JobRestartCountAgent(LocalElasticAgent):
    """torch's ``LocalElasticAgent`` whose restarts are the job's rounds (see the module).

    It overrides torch's private rendezvous step (``_rendezvous``, called at
    the start and at every restart); what differs between torch releases is in
    ``rendezvous.torch_compat``.
    """

    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        super()._rendezvous(worker_group)
        joined = getattr(worker_group.spec.rdzv_handler, "round", None)
        if joined is not None:  # the metaflow backend: round k is the job's k-th restart
            set_remaining_restarts(self, max(0, worker_group.spec.max_restarts - joined))


def use_job_restart_count() -> None:
    """Make torchrun's launcher (``torch.distributed.launcher.api``) start this agent."""
    from torch.distributed.launcher import api

    api.LocalElasticAgent = JobRestartCountAgent


__all__ = ["JobRestartCountAgent", "use_job_restart_count"]
