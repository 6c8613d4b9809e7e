"""Scale of the ``metaflow`` backend: node 0's idle cost per node, rounds, failures, silent nodes.

Run it inside a loopback-only network namespace (see ``run_in_netns.sh``), so
that TCPStore's reverse DNS lookups fail at once instead of stalling::

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.scale

from the repository root, whose backend it then measures.

How nodes are simulated: the parent imports torch, then forks node 0 into a
process of its own and the other nodes into processes of 128 nodes each
(``nodes``). Every node is a real handler with its real threads and store
connections; each process runs one "agent" loop for its nodes, which calls
``num_nodes_waiting()`` every 0.1 s as torch's agent does, follows a restart,
and counts a node as stopped when that call raises ``JobFailedError``. The
processes of simulated nodes run at nice 19: on a cluster node 0 has a machine
of its own, here its store's thread must not starve behind thousands of threads.

What one node count measures (``parent``), with the last node as the one that
restarts, fails or falls silent:

- **node 0 CPU per node**: CPU time of node 0's process (every thread, the
  store's included; ``getrusage`` in that process) over ``--idle-seconds``
  once the round formed and ``--settle-seconds`` passed, less the same for a
  job of node 0 alone, divided by the other nodes and the seconds.
- **first round**: from the instant every process is told to join (node 0's
  first) until the last ``next_rendezvous()`` returned; each node opens its
  connections inside it, so on two cores it is bounded by the simulated
  nodes' own CPU, not by node 0.
- **restart round**: from the last node's call of ``next_rendezvous()`` for a
  new round until every node returned from it (the others follow through
  ``num_nodes_waiting()``).
- **failure to all stopped**: from the last node's ``shutdown()`` with an
  error in flight (what torch's agent does when a rank raised) until every
  other node's agent loop got ``JobFailedError``.
- **silent node failed after**: a second job; the last node's process is
  stopped with SIGSTOP, and the time runs until node 0's agent loop got
  ``JobFailedError`` naming it (compare with ``--heartbeat-timeout``).

``c10d`` runs the round, idle and restart parts (``--c10d-nodes``): it does not
pass failures on to the other nodes, and its keep-alive timeout is no
failure detector to compare. ``report`` prints one row per backend and node
count, with ratios over metaflow at the same count, and the load average
before and after each row (other programs share the two cores).
"""
