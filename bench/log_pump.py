"""Log throughput: a program's output through ``LogPump`` against the same output sent to a file.

    .venv/bin/python -m bench.log_pump --megabytes 50 --repeats 5

(from the repository root, whose ``LogPump`` it then measures).

A child process writes ``--megabytes`` of 100-byte lines as fast as it can, in
1 MiB writes. "to a file": its stdout is a file. "through the pump": its stdout
is a pipe that ``LogPump`` copies, line by line as ``current.torch.run`` does,
into a text file. A sample is the time from starting the child until its last
byte is in the file. The two alternate; medians in MB/s.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metaflow_extensions.torchrun.plugins.launch.log_pump import LogPump

PRODUCER = """
import sys
line = b"x" * 99 + b"\\n"
block = line * ((1 << 20) // len(line))
for _ in range(int(sys.argv[1]) * (1 << 20) // len(block)):
    sys.stdout.buffer.write(block)
"""


def to_file(megabytes: int, directory: Path) -> float:
    with open(directory / "direct.log", "wb") as sink:
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", PRODUCER, str(megabytes)], stdout=sink, check=True)
        return time.monotonic() - started


def through_pump(megabytes: int, directory: Path) -> float:
    with open(directory / "pumped.log", "w", encoding="utf-8") as sink:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", PRODUCER, str(megabytes)], stdout=subprocess.PIPE)
        pump = LogPump([child.stdout], [sink]).start()
        child.wait()
        pump.join()
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    samples = {"to a file": [], "through the pump": []}
    with tempfile.TemporaryDirectory(prefix="log-pump-") as root:
        directory = Path(root)
        for repetition in range(args.repeats):
            order = [to_file, through_pump] if repetition % 2 == 0 else [through_pump, to_file]
            for measure in order:
                name = "to a file" if measure is to_file else "through the pump"
                samples[name].append(measure(args.megabytes, directory))
        assert os.path.getsize(directory / "pumped.log") == os.path.getsize(directory / "direct.log")

    size = args.megabytes * (1 << 20) / 1e6
    print(f"{args.megabytes} MiB of 100-byte lines, {args.repeats} runs each")
    print(f"{'path':<18}{'median s':>10}{'MB/s':>9}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:>10.3f}{size / median:>9.0f}")
    ratio = statistics.median(samples["through the pump"]) / statistics.median(samples["to a file"])
    print(f"the pump takes {ratio:.1f}x the time of writing to a file")


if __name__ == "__main__":
    main()
