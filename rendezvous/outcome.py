"""How ``python -m rendezvous`` says why it ended: a line for people, a file for its launcher.

When the agent fails (its workers failed, another node failed, the
rendezvous failed, the arguments were bad, a signal stopped it), ``report``
prints one last line on stderr, ``metaflow rendezvous: <summary>``, and, if
the launcher named a file in ``OUTCOME_FILE_VAR``, writes the failure record
(``rendezvous.failure.Failure``) there as JSON. The launcher reads it back
with ``read_outcome``: no parsing of output. Standard library only: the
launcher imports it without torch.
"""

import json
import os
import sys
from typing import Optional

from .failure import Failure

OUTCOME_FILE_VAR = "METAFLOW_RENDEZVOUS_OUTCOME_FILE"
# A file where the launcher writes why it stops the agent (the step's @timeout, an
# interrupt) before it sends SIGTERM: the other nodes are told that, not just "a signal".
STOP_REASON_FILE_VAR = "METAFLOW_RENDEZVOUS_STOP_REASON_FILE"
LINE_PREFIX = "metaflow rendezvous: "


def stop_reason(default: str) -> str:
    """Why the launcher stopped this agent, as it wrote it; ``default`` if it wrote nothing."""
    path = os.environ.get(STOP_REASON_FILE_VAR)
    try:
        with open(path or "") as reason_file:
            return reason_file.read().strip() or default
    except OSError:
        return default


def report(failure: Failure) -> None:
    """Write ``failure`` to the launcher's outcome file, if it asked for one, then print its summary.

    The traceback tail goes to the file only: the failing node's own log
    shows the whole traceback, and the launcher puts the tail in its error.
    """
    path = os.environ.get(OUTCOME_FILE_VAR)
    if path:
        try:
            with open(path, "w") as outcome_file:
                json.dump({"failure": failure.to_dict()}, outcome_file)
        except OSError as error:
            say(f"could not write the outcome file {path}: {error}")
    say(f"{LINE_PREFIX}{failure.summary}")


def say(line: str) -> None:
    """Write ``line`` on stderr (the agent's log) in one write, unless no one reads it any more.

    One write: in a local Metaflow run every node shares the control task's stderr,
    unbuffered (Metaflow sets PYTHONUNBUFFERED), where ``print`` writes the text and
    its line end apart and another node's line, such as the same hang report logged
    by every node at once, comes between them. A killed task leaves its agent a
    broken pipe; the agent must still end (its caller's next step), not raise
    ``BrokenPipeError``.
    """
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except OSError:
        pass


def read_outcome(path: str) -> Optional[Failure]:
    """The failure ``report`` wrote to ``path``, or None if it wrote none there."""
    try:
        with open(path) as outcome_file:
            return Failure.from_dict(json.load(outcome_file)["failure"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
