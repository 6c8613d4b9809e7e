"""Time rendezvous rounds of N nodes: our ``metaflow`` backend, torch's ``c10d`` and ``static``.

Run it inside a loopback-only network namespace (see ``run_in_netns.sh``), or
TCPStore's reverse DNS lookups can add 5 s stalls that have nothing to do with
the backends::

    sudo bench/run_in_netns.sh .venv/bin/python -m bench.rendezvous_round --nodes 2,8,32 --repeats 5

from the repository root, whose backend it then measures even when another
copy is installed.

What one measurement does:

- The parent imports torch and registers the backends, then forks one process
  per node, so no node pays for importing torch inside the measurement.
- Every node sleeps until one shared release instant, then builds its handler
  through torch's registry (``get_rendezvous_handler``) and calls
  ``next_rendezvous()``, exactly what torchrun's agent does at start. Handler
  creation is inside the timing because ``c10d`` connects to its store there.
  A round lasts from the release instant until the LAST node's
  ``next_rendezvous()`` returned.
- "late node 0": node 0, which hosts the store in every backend, is released
  ``--late-delay`` seconds after the others; the table shows how long the round
  took beyond that delay, that is how long the early nodes needed to notice it.
- "restart": after round 0, the last node calls ``next_rendezvous()`` again,
  as an agent does when its workers failed. The others poll
  ``num_nodes_waiting()`` every ``--monitor-interval`` seconds (the agent's
  ``monitor_interval``), each from a random phase as independent agents do,
  and follow once it is positive. The restart lasts until
  every node returned from the new round. ``static`` cannot restart: n/a.
- Afterwards every node calls ``handler.shutdown()``, and no node exits before
  every node's ``shutdown()`` returned, so none loses the store while it
  still needs it.
- "CPU ms per node": CPU time (all threads) a node used from its release until
  its first ``next_rendezvous()`` returned, median over the nodes. With more
  nodes than CPUs, N times that divided by the CPU count bounds the round from
  below: on a small machine this, not the network, is what a round costs.

Every measurement gets a fresh port and rdzv id, its processes are bounded by
``--timeout`` (an alarm in each node, a deadline in the parent) and killed on
any error; a failed measurement is counted and left out of the medians.
Repetitions interleave the backends, so load from other programs on the
machine spreads over all of them alike.

Where each part runs: ``node`` in every forked node, ``parent`` in the process
that forks and times them, ``protocol`` on both sides (what one measurement is,
and the pipes between them), ``report`` turns the samples into a table of
medians and ratios, and ``__main__`` reads the options and prepares the parent.
"""
