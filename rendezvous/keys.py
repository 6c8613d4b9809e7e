"""The keys of node 0's store: every name the backend writes, in one place.

Store layout. ``metaflow-torchrun/`` is the backend's namespace: every key of
ours lives below it, and anything else in the store belongs to the workers
(their process groups) and is wiped before a restart round.

- ``metaflow-torchrun/job``: the rdzv id of the job whose node 0 hosts the
  store, set last when the store is ready; a node of another job refuses it.

The keys of one job, all below ``metaflow-torchrun/<rdzv id>/``:

- ``round``: the newest round any node asked for (restart requests move it up).
- ``r<N>/asked``: how many nodes asked for round N; the first one moves
  ``round``, names itself in ``r<N>/asked_by`` and wakes every node.
- ``r<N>/count``, ``r<N>/members``: arrivals in round N; the last arrival checks
  the member list and sets ``r<N>/complete``, which the others wait on.
- ``r<N>/agent/``: the store handed to torch's agent for round N (rank
  assignment, exit barrier).
- ``r<N>/worker_port``: on a torch whose store cannot list its keys, the port
  of the store node 0 hosts for the workers of restart round N (see
  ``rendezvous.torch_compat``).
- ``hb/<i>``: heartbeat counter of node i; node 0 watches them all.
- ``failures``: one record per failing node, in the order they were recorded;
  see ``rendezvous.failures``. ``failure_count`` counts them; the node whose
  record is the first wakes every node.
- ``wake/<i>``: exists when node i has a change of the job to read (a failure,
  a new round asked for); node i waits for it, deletes it, then reads.
- ``finished``: ``"<i>,"`` per node whose workers all succeeded (its agent
  entered torch's exit barrier); such a node never joins another round.
- ``closed``: one count per node that finished; node 0 waits for them before
  taking the store down.
- ``hang/``: hang diagnosis (``rendezvous.hangs.watch``): ``suspected``,
  ``gather`` and ``reported`` count the nodes' requests, node 0's gathers and
  its reports; ``state/<n>/<i>`` is node i's answer to gather n; ``report``
  the newest report; ``wake/<i>`` wakes node i's hang watch.
- ``card/``: with ``@card`` on the step, each node's ranks for the card and
  two flags; named by the extension's status relay, which runs as a script
  where this package may not be importable.
"""

_NAMESPACE = "metaflow-torchrun/"


class JobKeys:
    """The name of every key of the job ``run_id`` in node 0's store.

    Attributes:
        run_id: the job's rendezvous id.
        namespace: the prefix of every key of the backend, of any job.
        job: the key naming the job whose node 0 hosts the store.
        round, failures, failure_count, finished, closed: the job's keys of those names.
    """

    def __init__(self, run_id: str):
        prefix = f"{_NAMESPACE}{run_id}/"
        self._prefix = prefix
        self.run_id = run_id
        self.namespace = _NAMESPACE
        self.job = _NAMESPACE + "job"
        self.round = prefix + "round"
        self.failures = prefix + "failures"
        self.failure_count = prefix + "failure_count"
        self.finished = prefix + "finished"
        self.closed = prefix + "closed"

    def count(self, round_: int) -> str:
        return f"{self._prefix}r{round_}/count"

    def asked(self, round_: int) -> str:
        return f"{self._prefix}r{round_}/asked"

    def asked_by(self, round_: int) -> str:
        return f"{self._prefix}r{round_}/asked_by"

    def members(self, round_: int) -> str:
        return f"{self._prefix}r{round_}/members"

    def complete(self, round_: int) -> str:
        return f"{self._prefix}r{round_}/complete"

    def worker_port(self, round_: int) -> str:
        return f"{self._prefix}r{round_}/worker_port"

    def agent_prefix(self, round_: int) -> str:
        """The prefix of the store handed to torch's agent in round ``round_``."""
        return f"{self._prefix}r{round_}/agent/"

    def heartbeat(self, node: int) -> str:
        return f"{self._prefix}hb/{node}"

    def wake(self, node: int) -> str:
        return f"{self._prefix}wake/{node}"

    @property
    def hang_suspected(self) -> str:
        return f"{self._prefix}hang/suspected"

    @property
    def hang_gather(self) -> str:
        return f"{self._prefix}hang/gather"

    @property
    def hang_reported(self) -> str:
        return f"{self._prefix}hang/reported"

    @property
    def hang_report(self) -> str:
        return f"{self._prefix}hang/report"

    def hang_state(self, gather: int, node: int) -> str:
        return f"{self._prefix}hang/state/{gather}/{node}"

    def hang_wake(self, node: int) -> str:
        return f"{self._prefix}hang/wake/{node}"


__all__ = ["JobKeys"]
