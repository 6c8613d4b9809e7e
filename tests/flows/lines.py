"""``say``: a line the test reads back, written whole.

In a local run every node of a parallel step writes into the control task's pipe, and Metaflow
runs tasks unbuffered (PYTHONUNBUFFERED), so ``print`` writes its text and its line end apart:
another node's line can come between them, and two records become one torn line.
"""
import sys
from typing import TextIO


def say(line: str, stream: TextIO = sys.stdout) -> None:
    """Write ``line`` and its line end in one write."""
    stream.write(line + "\n")
    stream.flush()
