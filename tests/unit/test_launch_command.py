"""launch/command.py: parsing torchrun_args, nproc_per_node, the rendezvous id and the agent's
command; hypothesis over ``current.torch.run`` arguments.

The property test goes through the pure command building with torchrun's own
argument parser as the judge of what the agent would do; the same arguments
through a real flow: tests/integration/test_run_arguments.py.
"""

import contextlib
import io
import os

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from torch.distributed.run import get_args_parser

from metaflow_extensions.torchrun.plugins.errors import TorchrunArgumentError
from metaflow_extensions.torchrun.plugins.launch.command import (
    LINE_PREFIX_TEMPLATE,
    MANAGED_FLAGS,
    parse_torchrun_args,
    plan_launch,
    rendezvous_id,
    resolve_nproc_per_node,
)
from metaflow_extensions.torchrun.plugins.launch.program import entrypoint_argv

# The property test's 600 examples take the longest.
pytestmark = pytest.mark.timeout(300)


def test_torchrun_args_dict_and_list_forms():
    assert list(parse_torchrun_args({"max_restarts": 1, "monitor-interval": 0.5, "no_python": False,
                                     "standalone_like": True}).passed_on) == [
        ("max_restarts", "1"), ("monitor-interval", "0.5"), ("standalone_like", None)]
    assert list(parse_torchrun_args(["--max-restarts", "2", "--monitor_interval=0.5", "--flag"]).passed_on) == [
        ("max-restarts", "2"), ("monitor_interval", "0.5"), ("flag", None)]
    assert list(parse_torchrun_args(None).passed_on) == []


def test_the_same_flag_twice_in_two_spellings_is_refused():
    with pytest.raises(TorchrunArgumentError, match="sets --max-restarts twice"):
        parse_torchrun_args({"max_restarts": 1, "max-restarts": 2})


@pytest.mark.parametrize("flag", sorted(MANAGED_FLAGS))
@pytest.mark.parametrize("form", ["dict", "list"])
def test_managed_flags_are_refused_with_the_reason(flag, form):
    spelled = flag.replace("-", "_")
    args = {spelled: "1"} if form == "dict" else [f"--{spelled}=1"]
    with pytest.raises(TorchrunArgumentError) as refused:
        parse_torchrun_args(args)
    assert f"may not set --{spelled}: {MANAGED_FLAGS[flag]}" in str(refused.value)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("--max-restarts=1", "must be a dict"),
        (["max_restarts", "1"], "'max_restarts' is neither a flag nor the value of one"),
        ({"local_ranks_filter": [0, 1]}, "torchrun flags take one value"),
        ({3: 1}, "is not a torchrun flag name"),
        ({"nnodes=3": True}, "is not a torchrun flag name"),
        (["-"], "'-' is neither a flag"),
        (["--max-restarts", "-1"], "'-1' is neither a flag nor the value of one"),
        # torchrun expands unambiguous abbreviations: these would set managed flags
        ({"nnode": 3}, "torchrun would read --nnode as --nnodes; write the flag in full"),
        (["-t", "3"], "torchrun would read --t as --tee"),
        ({"nproc": 2}, "torchrun would read --nproc as --nproc-per-node"),
        ({"h": True}, "torchrun would read --h as --help"),
        ({"help": True}, "may not set --help: torchrun would print its help and start nothing"),
        ({"role": "a\0b"}, "torchrun_args --role: .* holds a NUL character"),
    ],
)
def test_malformed_torchrun_args_are_refused(bad, message):
    with pytest.raises(TorchrunArgumentError, match=message):
        parse_torchrun_args(bad)


def test_nproc_per_node_precedence():
    flags = parse_torchrun_args({"nproc_per_node": "3"})
    assert resolve_nproc_per_node(4, None, "2", 8) == "4"
    assert resolve_nproc_per_node(None, flags.nproc_per_node, "2", 8) == "3"
    assert resolve_nproc_per_node(None, None, "2", 8) == "2"
    assert resolve_nproc_per_node(None, None, None, 8) == "8"
    assert resolve_nproc_per_node(None, None, None, 0) == "1"
    assert resolve_nproc_per_node("auto", None, None, 0) == "auto"
    assert resolve_nproc_per_node(None, None, "2", 0) == "2"


def test_nproc_per_node_given_twice_is_refused():
    with pytest.raises(TorchrunArgumentError, match="given twice"):
        resolve_nproc_per_node(2, parse_torchrun_args(["--nproc-per-node", "2"]).nproc_per_node, None, 0)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "two", "", "0"])
def test_bad_nproc_per_node_is_refused(bad):
    with pytest.raises(TorchrunArgumentError, match="at least 1, or 'auto'"):
        resolve_nproc_per_node(bad, None, None, 0)


def test_rendezvous_id_is_per_call_and_attempt():
    first = rendezvous_id("Flow", "17", "train", "4", 0, 1)
    assert first == rendezvous_id("Flow", "17", "train", "4", 0, 1)
    assert len({first, rendezvous_id("Flow", "17", "train", "4", 0, 2),
                rendezvous_id("Flow", "17", "train", "4", 1, 1),
                rendezvous_id("Flow", "18", "train", "4", 0, 1)}) == 4


def test_plan_builds_the_agent_command():
    plan = plan_launch(
        python="/venv/bin/python",
        num_nodes=2,
        nproc_per_node="2",
        rdzv_id="F-1-train-3-a0-c1",
        rdzv_endpoint=":29400",
        join_timeout=600,
        default_log_dir="/tmp/logs",
        flags=parse_torchrun_args(
            {"nproc_per_node": 2, "max_restarts": 1, "rdzv_conf": "heartbeat_timeout=30,join_timeout=5",
             "log_dir": "/data/logs"}),
        bootstrap="/ext/worker/bootstrap.py",
        entry=("script", "/flow/train.py", "/flow"),
        program_args=["--epochs", "3"],
    )
    assert plan.command == [
        "/venv/bin/python", "-u", "-m", "rendezvous", "--max_restarts=1",
        "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=metaflow",
        "--rdzv-id=F-1-train-3-a0-c1", "--rdzv-endpoint=:29400",
        "--rdzv-conf=join_timeout=5,heartbeat_timeout=30",
        "--log-dir=/data/logs", "--tee=3",
        "/ext/worker/bootstrap.py", "script", "/flow/train.py", "/flow", "--epochs", "3",
    ]
    env = plan.environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": LINE_PREFIX_TEMPLATE,
                   "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("nproc, base, expected", [
    ("2", {}, "1"),                             # what torchrun would set, without its banner
    ("2", {"OMP_NUM_THREADS": "4"}, "4"),       # the user's own value stays
    ("1", {}, None),                            # one process: torchrun leaves it unset too
    ("auto", {}, None),                         # the count is torchrun's to find, and so the choice
])
def test_plan_sets_omp_num_threads_as_torchrun_would(nproc, base, expected):
    plan = plan_launch(
        python="p", num_nodes=1, nproc_per_node=nproc, rdzv_id="x", rdzv_endpoint="127.0.0.1",
        join_timeout=1, default_log_dir="/l", flags=parse_torchrun_args(None),
        bootstrap="b", entry=("script", "t", "d"), program_args=[],
    )
    assert plan.environment(base).get("OMP_NUM_THREADS") == expected


def test_rdzv_conf_needs_key_value_pairs():
    with pytest.raises(TorchrunArgumentError, match="write key=value pairs"):
        plan_launch(
            python="p", num_nodes=1, nproc_per_node="1", rdzv_id="x", rdzv_endpoint="127.0.0.1",
            join_timeout=1, default_log_dir="/l", flags=parse_torchrun_args({"rdzv_conf": "oops"}),
            bootstrap="b", entry=("script", "t", "d"), program_args=[],
        )


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
