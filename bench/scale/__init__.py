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
and counts a node as stopped when that call raises ``JobFailedError``; each
node has one more thread, started with the process, that calls
``next_rendezvous()`` when told to, as an agent's main thread does.

What simulated nodes share that real ones do not, and how the simulation
keeps that from being measured instead of the backend (of these, node 0's
process has only the frozen heap):

- **two cores for thousands of nodes**: the processes of simulated nodes run
  at nice 19, so that node 0's store thread, which on a cluster has a
  machine of its own, does not starve behind them.
- **one GIL for 128 nodes**: a thread that waits for the GIL longer than the
  switch interval forces a switch, and with hundreds of threads runnable at
  once (every node told to join, every node woken by one store answer) those
  forced switches cost more than the nodes' work. The processes of simulated
  nodes set a switch interval of 1 s; their threads block within
  microseconds anyway. (1024 nodes: first round 1.9-2.4 s with the default
  5 ms, 1.2-1.4 s with 1 s.)
- **torch's heap, inherited by fork**: 128 nodes' allocations in one process
  made Python's full collections frequent, each walking every object torch
  created and copying its pages (copy-on-write); the parent freezes its
  objects (``gc.freeze()``) before forking.
- **an agent's thread that exists before it joins**: starting a thread per
  node when told to join made thread starts part of the round.
- **a worker thread per connection** (``--inline-nodes``): a real node hands
  each call over a connection to a thread of the connection, which bounds it
  by a deadline: two thread switches per call, nothing on a node's own
  machine, but more CPU than the requests when simulated by the thousand.
  With ``--inline-nodes`` the simulated nodes (not node 0) run the calls on
  the calling thread (``nodes.InlineConnection``): the same handler and
  watcher code makes the same requests, which
  ``tests/integration/test_scale.py`` checks request by request.

What one node count measures (``parent``), with the last node as the one that
restarts, fails or falls silent:

- **node 0 CPU per node**: CPU time of node 0's process (every thread, the
  store's included; ``getrusage`` in that process) over ``--idle-seconds``
  once the round formed and ``--settle-seconds`` passed, less the same for a
  job of node 0 alone, divided by the other nodes and the seconds.
- **first round**: from the instant every process is told to join (node 0's
  first) until the last ``next_rendezvous()`` returned; each node opens its
  connections inside it, so on two cores it is bounded by the simulated
  nodes' own CPU, not by node 0. Next to it, the CPU each process spent
  meanwhile (``/proc``): node 0's, and the others' per simulated node.
- **restart round**: from the last node's call of ``next_rendezvous()`` for a
  new round until every node returned from it (the others follow through
  ``num_nodes_waiting()``).
- **failure to all stopped**: from the last node's ``shutdown()`` with an
  error in flight (torch's ``ChildFailedError``, as an agent has when a rank
  raised; its traceback's end makes a failure record of 2.3 KB) until every
  other node's agent loop got ``JobFailedError``.
- **silent node failed after**: a second job; the last node's process is
  stopped with SIGSTOP, and the time runs until node 0's agent loop got
  ``JobFailedError`` naming it (compare with ``--heartbeat-timeout``).

``c10d`` (``--c10d-nodes``, its nodes real handlers with their own threads)
runs the round, idle and restart parts: it does not pass failures on to the
other nodes, and its keep-alive timeout is no failure detector to compare.
``report`` prints one row per backend and node count, with ratios over
metaflow's threaded nodes at the same count, and the load average before and
after each row (other programs share the two cores).
"""
