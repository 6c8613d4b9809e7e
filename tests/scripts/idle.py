"""Worker: prints that it started, then idles outside any collective."""
import os
import sys
import time

# One write per line (see allreduce.py).
sys.stdout.write(f"started rank={os.environ['RANK']} pid={os.getpid()}\n")
time.sleep(float(os.environ.get("IDLE_SECONDS", "120")))
