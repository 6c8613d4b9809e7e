"""Reading the cards of a run's tasks with Metaflow's own client (``metaflow.cards.get_cards``).

The client runs in a process of its own (``read_cards``), with the flow's
environment, so that it finds the run's metadata and datastore as a user's
``get_cards`` would: on the local datastore, or on S3 from the rehearsal's laptop.
"""

import json
import subprocess
import sys
from typing import Callable, Dict, List, Sequence

# Prints, as a JSON object {pathspec: Markdown}, the Markdown of the cards of each target
# (argv[4:]: a task's pathspec, or "Flow/latest/step" for every task of the step in the
# flow's latest run), once one task's cards hold every text of the JSON list argv[2], or
# at the deadline argv[1]; argv[3] "live" adds the live view's latest data.
_READER = r"""
import base64, json, re, sys, time
from metaflow import Flow, Task
from metaflow.cards import get_cards

def markdown(task):
    texts = []
    try:
        for card in get_cards(task):
            found = re.search(r'__MF_DATA__\["[^"]+"\] = "([^"]+)"', card.get())
            stack = [json.loads(base64.b64decode(found.group(1)))]
            if LIVE:  # the live view's latest data (Metaflow's client: an internal method)
                stack.append(card.get_data() or {})
            while stack:  # depth first, in the card's order
                item = stack.pop()
                if isinstance(item, dict):
                    if item.get("type") == "markdown":
                        texts.append(item["source"])
                    stack.extend(reversed(list(item.values())))
                elif isinstance(item, list):
                    stack.extend(reversed(item))
    except Exception as error:  # no card saved yet, or the task not registered yet
        texts = [f"no card: {type(error).__name__}: {error}"]
    return "\n".join(texts)

def tasks(target):
    try:
        flow, run, step = target.split("/")
    except ValueError:
        return [Task(target, attempt=0)]
    try:
        found = Flow(flow).latest_run if run == "latest" else Flow(flow)[run]
        return sorted(found[step], key=lambda task: task.pathspec)
    except Exception:  # the run or its step not registered yet
        return []

deadline, want = time.monotonic() + float(sys.argv[1]), json.loads(sys.argv[2])
LIVE, targets = sys.argv[3] == "live", sys.argv[4:]
while True:
    texts = {task.pathspec: markdown(task) for target in targets for task in tasks(target)}
    if any(all(w in text for w in want) for text in texts.values()) or time.monotonic() > deadline:
        print(json.dumps(texts))
        break
    time.sleep(0.5)
"""


def read_cards(run: Callable[[List[str], float], "subprocess.CompletedProcess[str]"],
               targets: Sequence[str], want: Sequence[str] = (),
               timeout: float = 0, live: bool = False) -> Dict[str, str]:
    """``{pathspec: Markdown}`` of the cards of ``targets``, once one task's cards hold
    every text of ``want`` (or after ``timeout`` seconds).

    ``live``: also the live view's latest data (what ``card server`` shows between
    renders: a rank's new lines re-render no card, they only update that data).

    ``run(argv, timeout)`` runs the reader with the flow's environment, where
    Metaflow's client finds the run, and returns its completed process.
    """
    reader = run([sys.executable, "-c", _READER, str(timeout), json.dumps(list(want)),
                  "live" if live else "rendered", *targets], timeout + 60)
    assert reader.returncode == 0, reader.stderr[-3000:]
    return json.loads(reader.stdout)


def find_card(texts: Dict[str, str], *want: str) -> str:
    """The one card text of ``texts`` that holds every text of ``want``."""
    found = [text for text in texts.values() if all(w in text for w in want)]
    assert len(found) == 1, f"{len(found)} cards hold {want}: {texts}"
    return found[0]


_MARKS = {"running": "▶ running", "done": "✔ done", "failed": "✖ failed", "stopped": "■ stopped"}


def rank_row(rank: int, local: int, node: int, state: str) -> str:
    """The start of a rank's row in a card's table: ranks, node and state as the card shows them."""
    return f"| {rank} | {local} | {node} | {_MARKS[state]} |"
