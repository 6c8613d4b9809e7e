"""Property-based checks of ``current.torch.run`` arguments: a clear error or a correct run.

Most examples go through the pure command building, with torchrun's own
argument parser as the judge of what the agent would do. A few go through a
real single-node flow whose step serves one ``current.torch.run`` call per
example (tests/flows/run_requests.py), so that torch, the backend and the
launcher have their say too, and a hang would show as a call that never answers.
"""

import contextlib
import io
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from torch.distributed.run import get_args_parser

from harness.flow_runs import FlowRunner, RunningFlow
from metaflow_extensions.torchrun.plugins.launch.command import (
    parse_torchrun_args,
    plan_launch,
    resolve_nproc_per_node,
)
from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.launch.program import entrypoint_argv

pytestmark = pytest.mark.timeout(300)

TORCHRUN_PARSER = get_args_parser()
# Every option string torchrun knows, as run() would be given it: without dashes.
TORCHRUN_FLAGS = sorted(
    {option.lstrip("-") for action in TORCHRUN_PARSER._actions for option in action.option_strings}
)
FLAG_NAMES = st.one_of(
    st.sampled_from(TORCHRUN_FLAGS),
    # abbreviations, which torchrun's parser expands when they are unambiguous
    st.sampled_from(TORCHRUN_FLAGS).flatmap(lambda name: st.integers(1, len(name)).map(lambda n: name[:n])),
    st.text(max_size=10),
)
DASHED_NAMES = st.tuples(st.sampled_from(["", "-", "--"]), FLAG_NAMES).map("".join)
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=10),
    st.lists(st.integers(0, 3), max_size=2),
    st.sampled_from(["a\0b", "\ud800", "\udcff"]),  # NUL; surrogates (one the file system can encode)
)
TOKENS = st.one_of(
    st.sampled_from(TORCHRUN_FLAGS).map("--{}".format),
    DASHED_NAMES,
    st.tuples(DASHED_NAMES, st.text(max_size=6)).map("=".join),
    st.text(max_size=6),
    st.integers(-3, 100),
)
# Input of the right shape comes more often than not, so that many examples
# get past run()'s own checks to torchrun's parser.
TORCHRUN_ARGS = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(FLAG_NAMES, DASHED_NAMES), VALUES, max_size=4),
    st.dictionaries(st.one_of(DASHED_NAMES, st.integers()), VALUES, max_size=4),
    st.lists(TOKENS, max_size=6),
    st.text(max_size=6),
)
ENTRYPOINT_ARGS = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=8), VALUES, max_size=3),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), VALUES, max_size=3),
    st.text(max_size=6),
)
NPROC = st.one_of(
    st.none(), st.integers(1, 16), st.just("auto"),
    st.one_of(st.integers(-2, 10**4), st.booleans(), st.floats(), st.text(max_size=4),
              st.sampled_from([" 2", "\u00b2", "\u0663"])),  # superscript two, Arabic-Indic three
)

RDZV_ID = "Flow-1-train-2-a0-c1"
ENDPOINT = "127.0.0.1"
BOOTSTRAP = "/ext/worker/bootstrap.py"
ENTRY = ("script", "/flow/train.py", "/flow")


def torchrun_reads(command):
    """torchrun's parsed arguments for ``command``, or its exit code when it refuses them."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return TORCHRUN_PARSER.parse_args(command)
        except SystemExit as stop:
            return stop.code


TORCHRUN_DEFAULTS = torchrun_reads(["train.py"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(torchrun_args=TORCHRUN_ARGS, entrypoint_args=ENTRYPOINT_ARGS, nproc=NPROC,
       attribute=st.sampled_from([None, "2"]), gpus=st.integers(0, 8))
def test_arguments_are_refused_clearly_or_reach_torchrun_as_planned(
    torchrun_args, entrypoint_args, nproc, attribute, gpus
):
    try:
        flags = parse_torchrun_args(torchrun_args)
        program_args = entrypoint_argv(entrypoint_args)
        resolved = resolve_nproc_per_node(nproc, flags.nproc_per_node, attribute, gpus)
        plan = plan_launch(
            python="/venv/bin/python", num_nodes=2, nproc_per_node=resolved, rdzv_id=RDZV_ID,
            rdzv_endpoint=ENDPOINT, join_timeout=600, default_log_dir="/tmp/logs", flags=flags,
            bootstrap=BOOTSTRAP, entry=ENTRY, program_args=program_args,
        )
    except TorchrunArgumentError as error:
        event("refused by run()")
        message = str(error)
        assert any(name in message for name in ("torchrun_args", "entrypoint_args", "nproc_per_node"))
        assert "\n" not in message
        return
    assert plan.command[:4] == ["/venv/bin/python", "-u", "-m", "rendezvous"]
    for token in plan.command:  # what subprocess would refuse to start
        assert "\0" not in token
        os.fsencode(token)  # raises for text that no command line can carry
    parsed = torchrun_reads(plan.command[4:])
    if not isinstance(parsed, type(TORCHRUN_DEFAULTS)):
        event("refused by torchrun's parser")
        assert parsed == 2  # torchrun's usage error: one line naming the flag (never help's 0)
        return
    event("accepted")
    # What the job's layout fixes is ours, whatever the user's flags say.
    assert parsed.nnodes == "2" and parsed.nproc_per_node == resolved
    assert (parsed.rdzv_backend, parsed.rdzv_id, parsed.rdzv_endpoint) == ("metaflow", RDZV_ID, ENDPOINT)
    assert parsed.rdzv_conf == ",".join(f"{key}={value}" for key, value in plan.rdzv_conf)
    assert parsed.log_dir == plan.log_dir and parsed.tee == "3"
    for name in ("node_rank", "master_addr", "master_port", "redirects", "standalone", "module",
                 "no_python", "run_path"):
        assert getattr(parsed, name) == getattr(TORCHRUN_DEFAULTS, name), name
    # The program starts under the bootstrap with exactly the user's arguments.
    assert [parsed.training_script, *parsed.training_script_args] == [BOOTSTRAP, *ENTRY, *program_args]


# Through a real flow: real torchrun flags with good and bad values, and flags run() refuses.
FLOW_FLAGS = [
    ("max_restarts", 0), ("max_restarts", "x"), ("max_restarts", -1), ("monitor_interval", "0.05"),
    ("monitor_interval", 0), ("rdzv_conf", "heartbeat_timeout=30"), ("rdzv_conf", "join_timeout=x"),
    ("rdzv_conf", "oops"), ("rdzv_conf", "bogus=1"), ("role", "trainer"), ("role", True),
    ("local_ranks_filter", "x"), ("start_method", "bogus"), ("event_log_handler", "bogus"),
    ("log_dir", "per-rank-logs"), ("log_dir", "/proc/no-such-dir"), ("bogus_flag", 1),
    ("nnodes", 3), ("nnode", 3), ("help", True),
]


def as_tokens(flags):
    return [f"--{name}" if value is True else f"--{name}={value}" for name, value in flags]


FLOW_CALLS = st.fixed_dictionaries({}, optional={
    "entrypoint_args": st.one_of(
        st.dictionaries(st.sampled_from(["text", "n", "flag"]),
                        st.one_of(st.booleans(), st.none(), st.text(max_size=6), st.integers(-5, 5)),
                        max_size=2),
        st.lists(st.text(max_size=6), max_size=3),
    ),
    "nproc_per_node": st.sampled_from([1, 2, "1", 0, "two", True, 1.5]),
    "torchrun_args": st.lists(st.sampled_from(FLOW_FLAGS), max_size=2, unique_by=lambda flag: flag[0])
    .flatmap(lambda flags: st.sampled_from([dict(flags), as_tokens(flags)])),
})


class ServedCalls:
    """tests/flows/run_requests.py running in an isolated Metaflow environment: one call per request."""

    def __init__(self, root: Path):
        self.runner = FlowRunner(root)
        self.requests = root / "requests"
        self.requests.mkdir()
        self.flow = RunningFlow(
            self.runner.start("run_requests.py", env={"TORCHRUN_TEST_REQUESTS": str(self.requests)}))
        self.number = 0

    def send(self, request: dict) -> int:
        self.number += 1
        partial = self.requests / f"{self.number}.partial-request"
        partial.write_text(json.dumps(request))
        partial.replace(self.requests / f"{self.number}.request.json")
        return self.number

    def call(self, arguments: dict, timeout: float) -> tuple:
        """``(request number, answer)`` of one ``current.torch.run(**arguments)``."""
        number = self.send({"call": arguments})
        path = self.requests / f"{number}.response.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.flow.process.poll() is None, self.flow.output()[-4000:]
            assert time.monotonic() < deadline, (
                f"run({arguments!r}) still runs after {timeout} s:\n{self.flow.output()[-4000:]}")
            time.sleep(0.05)
        return number, json.loads(path.read_text())

    def echoes(self, number: int) -> list:
        """What each rank of call ``number`` wrote, by rank."""
        found = [json.loads(path.read_text()) for path in self.requests.glob(f"{number}-*.json")]
        return sorted(found, key=lambda echo: echo["rank"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    calls = ServedCalls(tmp_path_factory.mktemp("served"))
    try:
        yield calls
        calls.send({"stop": True})
        calls.flow.finish(timeout=60)
    finally:
        calls.runner.kill_all()


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(arguments=FLOW_CALLS)
def test_run_in_a_real_flow_fails_clearly_or_runs_correctly(served, arguments):
    try:  # what run() checks before it starts anything
        flags = parse_torchrun_args(arguments.get("torchrun_args"))
        program_args = entrypoint_argv(arguments.get("entrypoint_args"))
        nproc = resolve_nproc_per_node(arguments.get("nproc_per_node"), flags.nproc_per_node, None, 0)
        refusal = None
    except TorchrunArgumentError as error:
        refusal = str(error)
    # A call takes a few seconds; this only turns a hang into a failure.
    number, answer = served.call(arguments, timeout=120)
    if refusal is not None:
        assert answer["type"] == "TorchrunArgumentError" and refusal in answer["message"], answer
        return
    if answer["outcome"] == "error":
        event(f"run() raised {answer['type']}")
        assert answer["type"] in ("TorchrunArgumentError", "TorchrunFailed"), answer
        assert "Traceback" not in answer["message"], answer["message"]
        return
    event("a correct run")
    world = int(nproc)
    assert served.echoes(number) == [
        {"rank": rank, "world": world, "argv": program_args} for rank in range(world)]
    assert answer["exit_code"] == 0 and answer["restarts"] == 0
    if flags.log_dir is not None:
        assert answer["log_dir"] == str(served.runner.root / flags.log_dir)
