"""How ``python -m rendezvous`` says why it ended: a line for people, a file for its launcher.

When the backend ends the agent (the job or the rendezvous failed, the
arguments were bad, a signal stopped it), ``report`` prints one last line on
stderr, ``metaflow rendezvous: <summary>``, and, if the launcher named a file
in ``OUTCOME_FILE_VAR``, writes the summary there as JSON. The launcher reads
it back with ``read_outcome``: no parsing of output. When torchrun's own
failure table is the last word (this node's workers failed first), nothing is
written. Standard library only: the launcher imports it without torch.
"""

import json
import os
import sys
from typing import Optional

OUTCOME_FILE_VAR = "METAFLOW_RENDEZVOUS_OUTCOME_FILE"
LINE_PREFIX = "metaflow rendezvous: "


def report(summary: str) -> None:
    """Write ``summary`` to the launcher's outcome file, if it asked for one, then print it."""
    path = os.environ.get(OUTCOME_FILE_VAR)
    if path:
        try:
            with open(path, "w") as outcome_file:
                json.dump({"summary": summary}, outcome_file)
        except OSError as error:
            print(f"could not write the outcome file {path}: {error}", file=sys.stderr)
    print(f"{LINE_PREFIX}{summary}", file=sys.stderr)


def read_outcome(path: str) -> Optional[str]:
    """The summary ``report`` wrote to ``path``, or None if it wrote none there."""
    try:
        with open(path) as outcome_file:
            return str(json.load(outcome_file)["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
