"""``python -m rendezvous ARGS`` is ``torchrun ARGS`` with the ``metaflow`` backend registered,
and an agent whose restart count is the job's (``rendezvous.agent``).

Use it where the package's entry point is not installed, as on the remote nodes
of a Metaflow run, which receive the package inside Metaflow's code package.
Errors of the backend end the program with their message and exit code 1
instead of a traceback from inside torch; ``outcome`` passes the failure
record on to the launcher, whichever node failed first.

It says only what torchrun would say about the user's command, once: the
agent's own ``import torch`` does not warn about a missing numpy (the agent
never uses numpy; a worker's import still warns, as it is the program's), and
torchrun's note that ``--master-addr`` is unused is dropped when nobody set it.
"""

import atexit
import logging
import os
import signal
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, List, NoReturn, Optional

# torch's text for a missing numpy, which it warns about on import (a prefix: the rest names the cause).
_NUMPY_MISSING = "Failed to initialize NumPy"
# torchrun warns so whenever no --rdzv-endpoint is given, even when --master-addr was not either.
_MASTER_ADDR_UNUSED = "master_addr is only used for static rdzv_backend"


def main(argv: Optional[List[str]] = None) -> None:
    warnings.filterwarnings("ignore", message=_NUMPY_MISSING, category=UserWarning)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import config_from_args, get_args_parser, parse_args
    from torch.distributed.run import logger as torchrun_logger
    from torch.distributed.run import main as torchrun_main

    from . import register
    from .agent import use_job_restart_count
    from .errors import MetaflowRendezvousError
    from .failure import Failure, FailureKind
    from .failures import child_failure
    from .outcome import report

    register()
    use_job_restart_count()
    node_index = _node_index()
    try:
        # torchrun turns a malformed --rdzv-conf (and other bad flags) into a
        # ValueError or an AssertionError deep inside its launcher; checking the
        # arguments first tells those apart from errors of the job itself.
        args = parse_args(argv)
        with _unheard(torchrun_logger):  # torchrun_main says it all once more
            config, _, _ = config_from_args(args)
        _check_agent_settings(config)
    except (ValueError, AssertionError) as error:
        report(Failure(FailureKind.RENDEZVOUS, f"bad torchrun arguments: {error}", node_index))
        _exit(2)
    if args.master_addr == get_args_parser().get_default("master_addr"):
        torchrun_logger.addFilter(lambda record: not record.getMessage().startswith(_MASTER_ADDR_UNUSED))
    try:
        torchrun_main(argv)
    except MetaflowRendezvousError as error:
        if isinstance(error.__context__, ChildFailedError):
            # This node's workers failed too, but after another node's: show
            # their table, then the root cause last, where readers look.
            print(error.__context__.format_msg(), file=sys.stderr)
        report(_with_last_hang(error.failure(node_index)))
        _exit(1)
    except ChildFailedError as error:
        # The table torchrun shows as the end of a traceback, without the traceback.
        print(error.format_msg(), file=sys.stderr)
        elsewhere = _root_cause_elsewhere()
        report(_with_last_hang(child_failure(error, node_index) if elsewhere is None
                               else elsewhere.failure(node_index)))
        _exit(1)
    except SignalException as stop:
        # SIGINT or SIGTERM from outside (Ctrl-C, a launcher stopping the job).
        _end_stopped(stop.sigval, node_index)
    # This node's workers succeeded; another node's failure reaches here only
    # where torch's launcher dropped what the handler's shutdown raised.
    elsewhere = _root_cause_elsewhere()
    if elsewhere is not None:
        report(_with_last_hang(elsewhere.failure(node_index)))
        _exit(1)


def _end_stopped(stop_signal: signal.Signals, node_index: Optional[int]) -> NoReturn:
    """End an agent that a signal stopped: report why, tell the other nodes, exit.

    torch skips the handler's shutdown after a signal: the handler's exit hook is
    what tells the other nodes, so it runs here. Then ``_exit``, not the
    interpreter's teardown: when a second signal (Ctrl-C, then the task stopping
    its agent) interrupted the agent's stop of its workers, their log tailing
    threads never end, and the teardown would wait for them for ever with the
    workers left running. The workers end with their agent (the worker
    bootstrap's ``die_with_parent``). Further signals are held back, so that
    none interrupts this.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from .failure import Failure, FailureKind
    from .outcome import report, stop_reason

    reason = stop_reason(f"its torchrun agent was stopped by {stop_signal.name}")
    report(_with_last_hang(Failure(FailureKind.STOPPED, reason, node_index)))
    atexit._run_exitfuncs()
    _exit(128 + stop_signal)


def _root_cause_elsewhere():
    """The job's root cause when another node failed first, as the backend's handler knows it.

    The handler's ``shutdown`` raises it, but torch 2.15's launcher logs and
    drops that error (see ``rendezvous.torch_compat``), so torchrun may end
    with this node's own error, or with none.
    """
    from ._entry_point import made_handler

    handler = made_handler()
    return None if handler is None else handler.root_cause_elsewhere()


def _with_last_hang(failure):
    """``failure`` with this node's last hang report, if the job was reported hung when it ended
    (a collective's own timeout, the step's timeout): the failure then says what held it up."""
    from dataclasses import replace

    from ._entry_point import made_handler

    handler = made_handler()
    hang = None if handler is None else handler.last_hang_report()
    if failure.hang is not None or hang is None or not hang.hung:
        return failure
    return replace(failure, hang=hang.without_threads())


def _node_index() -> Optional[int]:
    """This node's index, as the backend reads it; None outside a Metaflow step."""
    from .topology import read_topology

    try:
        return read_topology().node_index
    except ValueError:  # TopologyError: the backend says why, if it is used
        return None


@contextmanager
def _unheard(logger: logging.Logger) -> Iterator[None]:
    """Run the block with ``logger`` silent and ``OMP_NUM_THREADS`` as it was before.

    torchrun's ``config_from_args`` logs its warnings and, with more than one
    process per node and ``OMP_NUM_THREADS`` unset, sets it to 1 while logging
    a banner. A second call then would stay silent about it.
    """
    omp_num_threads = os.environ.get("OMP_NUM_THREADS")
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False
        if omp_num_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def _exit(code: int) -> NoReturn:
    """End a failed agent with ``code``, skipping the interpreter's teardown.

    After a failure a store call of the backend may still be pending in a
    helper thread (node 0 went away while this node waited on it). When that
    call fails during the teardown, the C++ runtime aborts the process
    (``terminate called without an active exception``, SIGABRT), which would
    replace this exit code. Only where the handler has nothing left to do:
    torch has called its ``shutdown``, its exit hook has run, or no handler
    existed; only the output is left to flush.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # the task reading it is gone (killed): nothing left to say
            pass
    os._exit(code)


def _check_agent_settings(config) -> None:
    """What torch checks only once it builds the agent, with a bare AssertionError or KeyError."""
    from torch.distributed.elastic.events.handlers import get_logging_handler

    from .torch_compat import event_log_handler

    if config.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node={config.nproc_per_node}: must be at least 1")
    if not config.monitor_interval > 0:
        raise ValueError(
            f"--monitor-interval={config.monitor_interval:g}: must be a positive number of seconds"
        )
    handler_name = event_log_handler(config)
    if handler_name is None:
        return  # a torch without --event-log-handler
    try:
        get_logging_handler(handler_name)
    except KeyError:
        raise ValueError(f"--event-log-handler={handler_name!r} is unknown") from None


if __name__ == "__main__":
    try:
        main()
    except BaseException as error:
        # Imported here, after main's own import of torch, whose numpy warning it silences.
        from torch.distributed.elastic.multiprocessing.api import SignalException

        if not isinstance(error, SignalException):
            raise
        # One more signal came before the first's end held them back.
        _end_stopped(error.sigval, _node_index())
