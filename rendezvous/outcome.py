"""How ``python -m rendezvous`` says why it ended: a line for people, a file for its launcher.

When the backend ends the agent (the job or the rendezvous failed, the
arguments were bad, a signal stopped it), ``report`` prints one last line on
stderr, ``metaflow rendezvous: <summary>``, and, if the launcher named a file
in ``OUTCOME_FILE_VAR``, writes the summary there as JSON, with the end of the
failing rank's traceback when another node recorded one. The launcher reads
it back with ``read_outcome``: no parsing of output. When torchrun's own
failure table is the last word (this node's workers failed first), nothing is
written. Standard library only: the launcher imports it without torch.
"""

import json
import os
import sys
from typing import NamedTuple, Optional

OUTCOME_FILE_VAR = "METAFLOW_RENDEZVOUS_OUTCOME_FILE"
LINE_PREFIX = "metaflow rendezvous: "
# How many of the last lines of a failing rank's traceback travel with a
# failure: in the failure record, the outcome, ``TorchrunFailed`` and the card.
TRACEBACK_TAIL_LINES = 20


def traceback_tail(text: str) -> str:
    """The last ``TRACEBACK_TAIL_LINES`` lines of a traceback (or of any text)."""
    return "\n".join(text.rstrip().splitlines()[-TRACEBACK_TAIL_LINES:])


class Outcome(NamedTuple):
    """Why the agent ended: the summary line, and the failing rank's traceback tail ("" if none)."""

    summary: str
    traceback_tail: str = ""


def report(summary: str, traceback_tail: str = "") -> None:
    """Write the outcome to the launcher's outcome file, if it asked for one, then print the summary.

    The traceback tail goes to the file only: the failing node's own log
    shows it, and the launcher puts it in its error.
    """
    path = os.environ.get(OUTCOME_FILE_VAR)
    if path:
        try:
            with open(path, "w") as outcome_file:
                json.dump({"summary": summary, "traceback_tail": traceback_tail}, outcome_file)
        except OSError as error:
            print(f"could not write the outcome file {path}: {error}", file=sys.stderr)
    print(f"{LINE_PREFIX}{summary}", file=sys.stderr)


def read_outcome(path: str) -> Optional[Outcome]:
    """The outcome ``report`` wrote to ``path``, or None if it wrote none there."""
    try:
        with open(path) as outcome_file:
            written = json.load(outcome_file)
        return Outcome(str(written["summary"]), str(written.get("traceback_tail") or ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
