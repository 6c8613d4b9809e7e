"""Worker: global rank --fail-rank raises from a nested call; every other rank idles.

With --deaf-to-interrupts every rank goes on through SIGINT and SIGTERM, as a rank blocked
in a collective does when its program notes SIGTERM to stop at the next batch (Lightning's
Trainer does): Python runs no handler until the call returns, and that handler only notes.
"""
import argparse
import os
import signal
import time

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=int, default=0)
parser.add_argument("--idle-seconds", type=float, default=600)
parser.add_argument("--deaf-to-interrupts", action="store_true")
args = parser.parse_args()
if args.deaf_to_interrupts:
    signal.signal(signal.SIGTERM, lambda signum, frame: print("SIGTERM noted", flush=True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # last: the test waits for it


def check_batch(rank: int) -> None:
    raise ValueError(f"bad batch on rank {rank}")


rank = int(os.environ["RANK"])
print(f"started rank={rank}", flush=True)
if rank == args.fail_rank:
    check_batch(rank)
time.sleep(args.idle_seconds)
