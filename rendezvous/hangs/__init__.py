"""Hang diagnosis: which rank holds up a job that waits in a collective, and where it is.

Three places, each in its own module:

- ``probe``: runs inside every worker (started by ``site/sitecustomize.py``,
  which the agent puts on the workers' ``PYTHONPATH``). A thread reads the
  worker's collective positions from torch's flight recorder and writes them
  to a small file when they change; a signal makes ``faulthandler`` write
  every thread's Python stack to another file. No change to the user's script.
- ``watch``: runs in each node's agent. It notices a local rank that has
  waited in a collective for longer than ``hang_timeout``, and on node 0
  gathers every node's ranks (positions and stacks) through the store.
- ``diagnosis``: pure functions and records: from every rank's position to
  the culprits, or to a transport hang, and the words for people.

Standard library only, except ``watch`` (which talks to torch's store): the
task reads the records without torch.
"""
