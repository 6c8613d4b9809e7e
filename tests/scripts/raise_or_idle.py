"""Worker: global rank FAIL_RANK raises at once; every other rank idles outside any collective."""
import os
import time

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    if int(os.environ["RANK"]) == int(os.environ.get("FAIL_RANK", "0")):
        raise ValueError("rank failed on purpose")
    time.sleep(float(os.environ.get("IDLE_SECONDS", "120")))


main()
