"""Worker: global rank FAIL_RANK raises while every other rank waits for it in an all_reduce.

The waiting ranks then fail too, with gloo's "Connection closed by peer": a
failure of their own that only says a peer went away.
"""
import os
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    dist.init_process_group("gloo")
    if dist.get_rank() == int(os.environ.get("FAIL_RANK", "0")):
        time.sleep(1)
        raise ValueError("rank failed on purpose")
    dist.all_reduce(torch.ones(1))


main()
