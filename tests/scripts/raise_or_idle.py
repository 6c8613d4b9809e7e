"""Worker: global rank FAIL_RANK raises after FAIL_AFTER seconds; the others idle IDLE_SECONDS.

The idle ranks are outside any collective, so only the backend can tell them.
"""
import os
import sys
import time

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    if int(os.environ["RANK"]) == int(os.environ.get("FAIL_RANK", "0")):
        time.sleep(float(os.environ.get("FAIL_AFTER", "0")))
        # CLOCK_MONOTONIC is system-wide: bench/faults.py times the stop from here
        sys.stdout.write(f"raising at {time.monotonic()}\n")  # one write per line
        raise ValueError("rank failed on purpose")
    time.sleep(float(os.environ.get("IDLE_SECONDS", "120")))


main()
