"""Worker: write 50 lines to stdout and one to stderr in one write each, then a last line
with the time it was written, then go quiet for --quiet-seconds."""
import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--quiet-seconds", type=float, default=120)
args = parser.parse_args()
rank = os.environ["RANK"]
sys.stdout.write("".join(f"burst rank={rank} line={i}\n" for i in range(50)))
sys.stdout.flush()
sys.stderr.write(f"stderr rank={rank}\n")
sys.stderr.flush()
print(f"LAST LINE rank={rank} written={time.time():.3f}", flush=True)
time.sleep(args.quiet_seconds)
