"""Worker: every rank runs a few all_reduces, then --culprit holds the others up as --scenario says.

Hanging scenarios (the others wait in the barrier that ends each one, at BARRIER_LINE):
- sleep: the culprit sleeps in prepare() before the barrier;
- lock: its main thread blocks on a lock another thread holds;
- regex: it runs a regular expression that backtracks for hours, a C call holding the GIL;
- loader: its data loader's worker process hangs, so its main thread waits for a batch;
- skip: it skips the all_reduce before the barrier, so it enters the barrier as the
  others enter that all_reduce.
Healthy scenarios (never a hang): compute: every rank computes with no collective for
--hold seconds, then all_reduces; uneven: the ranks take turns being late at each all_reduce,
each time by --hold seconds; straggler: --culprit is --hold seconds late at each of --rounds
all_reduces. loop: every rank all_reduces for --hold seconds (a test cuts a link meanwhile).
steps: every rank times --rounds all_reduces and prints the mean (a benchmark's step time).
The culprit prints ``holding rank=R at=T`` (wall clock) as it starts to hold the others up.
"""
import argparse
import datetime
import re
import threading
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--scenario", required=True)
parser.add_argument("--culprit", type=int, default=1)
parser.add_argument("--hold", type=float, default=60.0, help="seconds the culprit holds the others up")
parser.add_argument("--rounds", type=int, default=4, help="uneven: all_reduces in turn")
parser.add_argument("--collective-timeout", type=float, default=0,
                    help="gloo's own timeout, seconds (0: its default, 30 min)")
args = parser.parse_args()


class SlowDataset(torch.utils.data.Dataset):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __len__(self):
        return 4

    def __getitem__(self, index):
        time.sleep(self.seconds)  # the loader's worker process hangs here
        return torch.ones(1)


def prepare(scenario: str) -> None:
    if scenario == "sleep":
        time.sleep(args.hold)  # SLEEP_LINE
    elif scenario == "lock":
        lock = threading.Lock()
        lock.acquire()
        threading.Timer(args.hold, lock.release).start()
        with lock:  # the culprit's main thread blocks here
            pass
    elif scenario == "regex":
        re.match(r"(a+)+$", "a" * 64 + "b")  # hours of backtracking, holding the GIL
    elif scenario == "loader":
        loader = torch.utils.data.DataLoader(SlowDataset(args.hold), num_workers=1)
        next(iter(loader))  # waits for a batch that never comes


if args.collective_timeout:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.collective_timeout))
else:
    dist.init_process_group("gloo")
rank = dist.get_rank()
tensor = torch.ones(4)
for _ in range(3):
    dist.all_reduce(tensor)
print(f"warmed up rank={rank}", flush=True)
if args.scenario == "compute":
    time.sleep(args.hold)  # no collective for a long time: not a hang
    dist.all_reduce(tensor)
elif args.scenario == "loop":
    end = time.monotonic() + args.hold
    while time.monotonic() < end:
        dist.all_reduce(tensor)
elif args.scenario == "steps":
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(args.rounds):
        dist.all_reduce(tensor)
    mean_us = (time.perf_counter() - started) / args.rounds * 1e6
    cpu_us = (time.process_time() - cpu_started) / args.rounds * 1e6  # every thread's CPU
    print(f"steps rank={rank} rounds={args.rounds} mean_us={mean_us:.1f} cpu_us={cpu_us:.1f}",
          flush=True)
elif args.scenario == "straggler":
    for _ in range(args.rounds):
        if rank == args.culprit:
            time.sleep(args.hold)
        dist.all_reduce(tensor)
elif args.scenario == "uneven":
    for turn in range(args.rounds):
        if turn % dist.get_world_size() == rank:
            time.sleep(args.hold)  # late, but moving
        dist.all_reduce(tensor)
else:
    if rank == args.culprit:
        print(f"holding rank={rank} at={time.time():.3f}", flush=True)
        prepare(args.scenario)
    if not (args.scenario == "skip" and rank == args.culprit):
        dist.all_reduce(tensor)
    dist.barrier()  # BARRIER_LINE
print(f"done rank={rank}", flush=True)
dist.destroy_process_group()
