"""Pure pieces of @torchrun: command building, the log pump, the worker bootstrap, attribute checks."""

import argparse
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from metaflow_extensions.torchrun.plugins.worker import bootstrap as worker_bootstrap
from metaflow_extensions.torchrun.plugins.launch.command import (
    LINE_PREFIX_TEMPLATE,
    MANAGED_FLAGS,
    parse_torchrun_args,
    plan_launch,
    rendezvous_id,
    resolve_nproc_per_node,
)
from metaflow_extensions.torchrun.plugins.errors import (
    TorchrunArgumentError,
    TorchrunNotEnabled,
)
from metaflow_extensions.torchrun.plugins.launch.log_pump import LogPump
from metaflow_extensions.torchrun.plugins.launch.program import entrypoint_argv, resolve_entrypoint
from metaflow_extensions.torchrun.plugins.worker.files import first_error
from metaflow_extensions.torchrun.plugins.launch.settings import (
    _checked_port,
    _checked_timeout,
    _requested_gpus,
)
from rendezvous.failure import FailureKind
from rendezvous.topology import Topology, read_topology
from harness.processes import is_alive

pytestmark = pytest.mark.timeout(60)
BOOTSTRAP = worker_bootstrap.__file__
# A child that imports the bootstrap as a file of its own, as the workers load it.
BOOTSTRAP_ALONE = {**os.environ, "PYTHONPATH": str(Path(BOOTSTRAP).parent)}


# entrypoint_args


def test_dict_arguments_keep_order_and_values_untouched():
    value = 'say "hi" \\ to 中文 {"a": [1]}'
    argv = entrypoint_argv(
        {"epochs": 3, "lr": 0.5, "text": value, "verbose": True, "quiet": False, "seed": None,
         "layers": [64, "32"], "--name": "x"}
    )
    assert argv == [
        "--epochs", "3", "--lr", "0.5", "--text", value, "--verbose", "--layers", "64", "32",
        "--name", "x",
    ]


def test_list_arguments_are_passed_as_given():
    assert entrypoint_argv(["pos", "--flag", 3, "--x=1"]) == ["pos", "--flag", "3", "--x=1"]
    assert entrypoint_argv(None) == []


@pytest.mark.parametrize("bad", ["--a 1", b"--a", 5, {1: "x"}, {"": 1}, ["a\0b"], {"text": "a\0b"}, ["\ud800"]])
def test_bad_entrypoint_args_are_refused(bad):
    with pytest.raises(TorchrunArgumentError):
        entrypoint_argv(bad)


@settings(max_examples=200, deadline=None)
@given(
    key=st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
    value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1)
    .filter(lambda text: not text.startswith("-")),
)
def test_a_value_reaches_the_program_exactly(key, value):
    parser = argparse.ArgumentParser()
    parser.add_argument(f"--{key}")
    parsed = parser.parse_args(entrypoint_argv({key: value}))
    assert getattr(parsed, key) == value


# torchrun_args


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


# nproc_per_node


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


# identity, entrypoint, plan


def test_rendezvous_id_is_per_call_and_attempt():
    first = rendezvous_id("Flow", "17", "train", "4", 0, 1)
    assert first == rendezvous_id("Flow", "17", "train", "4", 0, 1)
    assert len({first, rendezvous_id("Flow", "17", "train", "4", 0, 2),
                rendezvous_id("Flow", "17", "train", "4", 1, 1),
                rendezvous_id("Flow", "18", "train", "4", 0, 1)}) == 4


def test_entrypoint_is_found_from_the_flow_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    script = tmp_path / "sub" / "train.py"
    script.write_text("")
    assert resolve_entrypoint("sub/train.py", None, str(tmp_path)) == (
        "script", str(script), str(tmp_path / "sub"))
    assert resolve_entrypoint(str(script), None, "/elsewhere")[1] == str(script)
    with pytest.raises(TorchrunArgumentError, match=f"looked for {tmp_path}/nope.py"):
        resolve_entrypoint("nope.py", None, str(tmp_path))


def test_module_is_found_from_the_flow_directory(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text("")
    assert resolve_entrypoint(None, "pkg.train", str(tmp_path)) == ("module", "pkg.train", str(tmp_path))
    with pytest.raises(TorchrunArgumentError, match="no module or package 'nopkg'"):
        resolve_entrypoint(None, "nopkg.train", str(tmp_path))
    with pytest.raises(TorchrunArgumentError, match="is not a dotted module name"):
        resolve_entrypoint(None, "pkg/train.py", str(tmp_path))


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


# decorator attributes and graph


def test_decorator_attribute_checks():
    assert _checked_port("29500") == 29500 and _checked_port(None) is None
    for bad in ("http", 0, 70000, True, -5, "\u00b2"):
        with pytest.raises(TorchrunArgumentError, match="give a TCP port"):
            _checked_port(bad)
    assert _checked_timeout("30") == 30.0
    for bad in (0, -1, "soon", float("inf"), True, None):
        with pytest.raises(TorchrunArgumentError, match="positive number"):
            _checked_timeout(bad)


class _Deco:
    def __init__(self, name, **attributes):
        self.name = name
        self.attributes = attributes


def test_gpus_requested_for_the_step():
    assert _requested_gpus([_Deco("resources", gpu=2)]) == 2
    assert _requested_gpus([_Deco("resources", gpu=None)]) == 0
    assert _requested_gpus([_Deco("retry", times=3)]) == 0
    # @kubernetes takes the larger of its own and @resources' request
    kubernetes = _Deco("kubernetes", gpu="4", cpu="1")
    assert _requested_gpus([_Deco("resources", gpu="2.0", cpu="1"), kubernetes]) == 4


def test_not_enabled_error_keeps_hasattr_false():
    class Holder:
        @property
        def torch(self):
            raise TorchrunNotEnabled("no")

    assert not hasattr(Holder(), "torch")


# log pump


def test_pump_reads_both_streams_at_once_drains_them_and_replaces_bad_bytes():
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    out_sink, err_sink = io.StringIO(), io.StringIO()
    pump = LogPump([os.fdopen(out_read, "rb"), os.fdopen(err_read, "rb")], [out_sink, err_sink],
                   keep_lines=3).start()
    out, err = os.fdopen(out_write, "wb"), os.fdopen(err_write, "wb")
    flood = b"".join(b"line %d\n" % index for index in range(200_000))  # far more than a pipe holds
    writer = threading.Thread(target=err.write, args=(flood,))
    writer.start()
    out.write(b"ok \xff\xfe\n")
    out.flush()
    # Both streams open: a pump that read one to its end before the other would stall here.
    deadline = time.monotonic() + 30
    while not (out_sink.getvalue() and err_sink.getvalue()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out_sink.getvalue() == "ok \ufffd\ufffd\n" and err_sink.getvalue()
    out.write(b"no newline at the end")
    out.close()
    writer.join()
    err.close()
    assert pump.join(timeout=30)
    assert out_sink.getvalue() == "ok \ufffd\ufffd\nno newline at the end\n"
    assert err_sink.getvalue() == flood.decode()
    assert pump.tail(0) == ["ok \ufffd\ufffd", "no newline at the end"]
    assert pump.tail(1) == ["line 199997", "line 199998", "line 199999"]


# worker bootstrap


def run_bootstrap(tmp_path, kind, target, *args, env=None):
    return subprocess.run(
        [sys.executable, "-u", BOOTSTRAP, kind, target, str(tmp_path), *args],
        cwd=tmp_path,
        env={**os.environ, "TORCHELASTIC_ERROR_FILE": str(tmp_path / "error.json"), "RANK": "5",
             **(env or {})},
        capture_output=True,
        text=True,
    )


def test_bootstrap_runs_the_script_as_python_would(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 'from the script directory'\n")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import pickle, sys
        import helper
        class Point:
            pass
        assert __name__ == "__main__"
        assert pickle.loads(pickle.dumps(Point())).__class__ is Point  # __main__ is this script
        print(sys.argv, sys.path[0], helper.VALUE)
    """))
    done = run_bootstrap(tmp_path, "script", str(script), "--epochs", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{str(script)!r}, '--epochs', '3'] {tmp_path} from the script directory"
    assert not (tmp_path / "error.json").exists()


def test_bootstrap_runs_a_module(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    done = run_bootstrap(tmp_path, "module", "pkg.train", "--x", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "__main__ ['--x', '1']"


def test_bootstrap_records_an_uncaught_exception(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("def step():\n    raise KeyError('missing batch')\n\nstep()\n")
    done = run_bootstrap(tmp_path, "script", str(script))
    assert done.returncode == 1
    record = json.loads((tmp_path / "error.json").read_text())["message"]
    assert record["message"] == "KeyError: 'missing batch'"
    assert record["extraInfo"]["rank"] == "5" and int(record["extraInfo"]["timestamp"]) > 0
    traceback_text = record["extraInfo"]["py_callstack"]
    assert traceback_text.startswith("Traceback (most recent call last):\n  File \"" + str(script))
    assert "bootstrap.py" not in traceback_text and "runpy" not in traceback_text
    assert done.stderr == traceback_text  # what the worker prints is the same clean traceback


def test_bootstrap_keeps_exit_codes_and_an_existing_error_file(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nsys.exit(3)\n")
    assert run_bootstrap(tmp_path, "script", str(script)).returncode == 3
    assert not (tmp_path / "error.json").exists()
    (tmp_path / "error.json").write_text('{"written by": "the program"}')
    script.write_text("raise ValueError('x')\n")
    assert run_bootstrap(tmp_path, "script", str(script)).returncode == 1
    assert json.loads((tmp_path / "error.json").read_text()) == {"written by": "the program"}


# A one-process gloo group; at exit the program reports whether a group is still up.
GROUP_PROGRAM = textwrap.dedent("""
    import atexit, os, socket, sys
    import torch.distributed as dist
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(probe.getsockname()[1]),
                          WORLD_SIZE="1", RANK="0")
    atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
    dist.init_process_group("gloo")
    dist.new_group([0])
    {ending}
""")


@pytest.mark.parametrize(
    "ending, code, left_initialized",
    [("pass", 0, False), ("sys.exit(0)", 0, False), ("sys.exit(None)", 0, False),
     ("sys.exit(3)", 3, True), ("raise ValueError('boom')", 1, True)],
)
def test_bootstrap_ends_the_groups_of_a_successful_program_only(tmp_path, ending, code,
                                                                left_initialized):
    script = tmp_path / "train.py"
    script.write_text(GROUP_PROGRAM.format(ending=ending))
    done = run_bootstrap(tmp_path, "script", str(script))
    assert done.returncode == code, done.stderr
    assert done.stdout.strip().endswith(f"initialized at exit: {left_initialized}"), done.stdout


def test_bootstrap_imports_nothing_for_a_program_without_torch_distributed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import atexit, sys\n"
                      "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith('torch'))))\n")
    done = run_bootstrap(tmp_path, "script", str(script))
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_a_destroy_that_hangs_ends_the_worker_with_success_in_bounded_time(tmp_path):
    # A stand-in torch.distributed whose destroy never returns, as NCCL's can with peers gone.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, threading, types
            import bootstrap as worker_bootstrap
            stuck = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                          destroy_process_group=threading.Event().wait)
            sys.modules["torch.distributed"] = stuck
            worker_bootstrap._DESTROY_TIMEOUT_SECONDS = 0.2
            worker_bootstrap.end_process_groups()
            print("not reached")
        """)],
        capture_output=True, text=True, timeout=30, env=BOOTSTRAP_ALONE,
    )
    assert done.returncode == 0
    assert "not reached" not in done.stdout
    assert "destroying the process group took over 0.2 s; exiting without waiting" in done.stderr


def test_child_dies_with_its_parent(tmp_path):
    # The parent starts a sleeping child that asked for SIGKILL on its parent's death, then exits.
    parent = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import functools, os, signal, subprocess, sys
            from bootstrap import die_with_parent
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                     preexec_fn=functools.partial(die_with_parent, signal.SIGKILL, os.getpid()))
            print(child.pid)
        """)],
        capture_output=True,
        text=True,
        env=BOOTSTRAP_ALONE,
    )
    child = int(parent.stdout)
    deadline = time.monotonic() + 30
    while is_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(child)


# what the agent, the workers and the local launcher hand over


def test_topology_environment_reads_back_as_the_same_topology():
    for topology in (Topology(1, 3, "10.0.0.5"), Topology(0, 2, "::1", "7", 29500)):
        assert read_topology(topology.environment()) == topology


def test_the_launcher_reads_the_error_files_the_bootstrap_writes(tmp_path, monkeypatch):
    attempt = tmp_path / "attempt_0"
    for local_rank in (0, 1):  # rank 0 first: its timestamp is never the later one
        (attempt / str(local_rank)).mkdir(parents=True)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / str(local_rank) / "error.json"))
        monkeypatch.setenv("RANK", str(4 + local_rank))
        worker_bootstrap.record_error(ValueError(f"bad {local_rank}"), f"trace {local_rank}")
    (attempt / "2").mkdir()
    (attempt / "2" / "error.json").write_text('{"written by": "the program"}')
    first = first_error(str(attempt), node_index=2)
    assert (first.kind, first.node_index, first.rank, first.local_rank) == (FailureKind.RAISED, 2, 4, 0)
    assert (first.exit_code, first.message, first.traceback_tail) == (1, "ValueError: bad 0", "trace 0")
    assert first_error(str(tmp_path / "attempt_1"), node_index=2) is None
    # in one second, the file written first wins: local rank 1's, made older here
    for local_rank, written in ((0, 2_000), (1, 1_000)):
        path = attempt / str(local_rank) / "error.json"
        data = json.loads(path.read_text())
        data["message"]["extraInfo"]["timestamp"] = "7"
        path.write_text(json.dumps(data))
        os.utime(path, ns=(written, written))
    assert first_error(str(attempt), node_index=2).local_rank == 1
