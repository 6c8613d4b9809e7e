"""Runs in the Metaflow task of a ``@torchrun`` step: plans ``current.torch.run``, starts
this node's torchrun agent (``python -m rendezvous``), pumps its logs, supervises it and
says what failed (``post_mortem``); on node 0 of a local run, starts the other nodes."""
