"""A Python program that runs a flow through Metaflow's Runner API: python runner_program.py FLOW."""
import sys

from metaflow import Runner

with Runner(sys.argv[1], show_output=False).run(nproc=2) as running:
    print(f"RUNNER STATUS {running.status} run={running.run.pathspec}")
    print(running.stdout)
    print(running.stderr)
