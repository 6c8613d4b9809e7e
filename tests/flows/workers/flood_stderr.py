"""Worker: --lines lines of about 105 bytes on stderr, then one line on stdout."""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--lines", type=int, default=50_000)
args = parser.parse_args()

rank = os.environ["RANK"]
padding = "x" * 90
for index in range(args.lines):
    print(f"flood {rank} {index} {padding}", file=sys.stderr)
print(f"stdout after the flood of rank {rank}")
