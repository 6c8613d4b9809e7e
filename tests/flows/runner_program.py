"""A Python program that runs a flow through Metaflow's Runner API:
``python runner_program.py FLOW [NAME=VALUE ...]``, each NAME=VALUE a parameter of the run
(an int where VALUE is one: the Runner checks the parameters' types)."""
import sys

from metaflow import Runner


def parameter(value: str):
    return int(value) if value.lstrip("-").isdigit() else value


parameters = {name: parameter(value)
              for name, value in (argument.split("=", 1) for argument in sys.argv[2:])}
with Runner(sys.argv[1], show_output=False).run(**parameters) as running:
    print(f"RUNNER STATUS {running.status} run={running.run.pathspec}")
    print(running.stdout)
    print(running.stderr)
