"""Functions that tests/flows/function_entrypoints.py runs on every rank: a module next to
the flow, as users keep their training code."""
import os


def describe_rank(offset, word):
    """Positional arguments; the value depends on the rank, so each node's values differ."""
    rank = int(os.environ["RANK"])
    return {"rank": rank + offset, "word": word, "world": int(os.environ["WORLD_SIZE"])}
