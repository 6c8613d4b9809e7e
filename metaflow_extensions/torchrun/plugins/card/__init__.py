"""The live view of a call on the step's ``@card``: ``live`` (its life cycle, in the task),
``state`` and ``render`` (the model and its pure rendering, no Metaflow), ``exchange``
(the task's side of the relay) and ``relay`` (a child process of the task: the card's
traffic with node 0's store)."""
