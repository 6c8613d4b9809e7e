"""Worker: rank 0 draws a progress bar as tqdm does (30 redraws of one line with "\\r", 10 a
second, on stderr), then prints a line; the other ranks print one line."""
import os
import sys
import time

if os.environ["RANK"] == "0":
    for step in range(1, 31):
        sys.stderr.write(f"\rtraining: {step}/30 [{'#' * (step // 3):<10}]")
        sys.stderr.flush()
        time.sleep(0.1)
    sys.stderr.write("\n")
print(f"done rank={os.environ['RANK']}", flush=True)
