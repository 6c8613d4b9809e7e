"""Hang diagnosis: which rank holds up a job that waits in a collective, and where it is.

Its modules, one concern each:

- ``probe``: runs inside every worker (started by ``site/sitecustomize.py``,
  which the agent puts on the workers' ``PYTHONPATH``). A thread reads the
  worker's collective positions from torch's flight recorder and writes them
  to a small file when they change; a signal makes ``faulthandler`` write
  every thread's Python stack to another file. No change to the user's script.
- ``workers``: the agent's reading of its own workers: their progress files,
  how long each has waited, and their stacks on request.
- ``watch``: runs in each node's agent. It notices a local rank that has
  waited in a collective for longer than ``hang_timeout``, and on node 0
  gathers every node's ranks (positions and stacks) through the store.
- ``records``: the data that travels (a rank's snapshot, the report), JSON both
  ways; ``diagnosis``: pure, from every rank's position to the culprits, or to a
  transport hang; ``stacks``: faulthandler's dump read as frames.

Standard library only, except ``watch`` (which talks to torch's store): the
task reads the records without torch.
"""
