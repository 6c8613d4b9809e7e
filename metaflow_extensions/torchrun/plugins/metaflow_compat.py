"""Every use of Metaflow's internals that are not its public API, in one place.

Checked against Metaflow 2.19.39 (the version the test suite pins as its
floor; see setup.py). When Metaflow changes one of these, this module is the
one to change. Each function says what it stands in for; the card's helpers
fall back to the public API where the internal is missing, so the card
degrades (slower, or a lost last render) instead of failing the job.

Metaflow imports our decorator module on every ``import metaflow``: nothing
here imports Metaflow at module level beyond what that module already has
loaded, and nothing imports torch.
"""

import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# Metaflow's own default of @card(refresh_interval=...).
DEFAULT_CARD_REFRESH_SECONDS = 5.0


# current

def add_to_current(name: str, value: object) -> None:
    """Make ``current.<name>`` return ``value`` in this process (``current._update_env``)."""
    from metaflow import current

    current._update_env({name: value})


def default_current_property(name: str, getter: Callable[[Any], Any]) -> None:
    """Give ``current.<name>`` a default: ``getter(current)`` wherever the task set none.

    Metaflow has no API for it: the property goes on the ``Current`` class;
    ``add_to_current`` then shadows it in the tasks that set their own.
    """
    from metaflow.metaflow_current import Current

    if name not in vars(Current):
        setattr(Current, name, property(getter))


# Local runs of @parallel steps (in place of Metaflow's own launcher of the other nodes)

def num_parallel(flow: Any) -> int:
    """The ``num_parallel`` the step was entered with (``flow._parallel_ubf_iter``)."""
    return flow._parallel_ubf_iter.num_parallel


def step_command(python: str, script: str, step_name: str, step_kwargs: Dict[str, str]) -> List[str]:
    """The command line of one task of ``step_name``, with this task's options and
    ``step_kwargs`` over them (``metaflow.cli_args``)."""
    from metaflow.cli_args import cli_args

    return cli_args.step_command(
        python, script, step_name, step_kwargs=dict(cli_args.step_kwargs, **step_kwargs)
    )


def set_parallel_task_paths(flow: Any, pathspecs: List[str]) -> None:
    """Tell the join step the tasks of every node (``flow._control_mapper_tasks``)."""
    flow._control_mapper_tasks = pathspecs


# Resources

def merged_resource_attributes(decorators: Sequence[Any], compute: Any,
                               defaults: Dict[str, str]) -> Dict[str, Any]:
    """@resources merged into a @kubernetes/@batch decorator's own attributes, as those
    decorators do it (``metaflow.plugins.aws.aws_utils.compute_resource_attributes``)."""
    from metaflow.plugins.aws.aws_utils import compute_resource_attributes

    return compute_resource_attributes(decorators, compute, defaults)


# Cards

def editable_card() -> Tuple[Optional[Any], str, float]:
    """``current.card`` when the step has a card that takes components, that card's
    uuid, and its refresh interval; ``(None, "", 0.0)`` without one."""
    from metaflow import current

    card = getattr(current, "card", None)  # present only in a step with @card
    if card is None:
        return None, "", 0.0
    # The step's default editable card (the one current.card.append fills)
    # and its attributes.
    uuid = getattr(card, "_default_editable_card", None)
    if uuid is None:
        return None, "", 0.0
    meta = getattr(card, "_cards_meta", {}).get(uuid, {})
    return card, uuid, float(meta.get("refresh_interval") or DEFAULT_CARD_REFRESH_SECONDS)


def card_process_running(card_uuid: str) -> bool:
    """Whether Metaflow's card process (a render or a refresh) for this card still runs.

    Metaflow silently drops a refresh asked for while one runs: a state
    change re-rendered then would not show until the next change. The process
    takes seconds (it starts Python and loads the flow), so asking again at
    the next tick after it ended shows the change as soon as Metaflow can.
    """
    try:
        from metaflow.plugins.cards.card_creator import CardProcessManager

        process, _ = CardProcessManager._get_card_process(card_uuid)
    except (ImportError, AttributeError):  # another Metaflow: refresh as asked
        return False
    return process is not None and process.poll() is None


def render_card_now(card: Any) -> None:
    """Render the card's current components and wait until it is saved.

    ``current.card.refresh(force=True)`` may drop a render (at most one per
    refresh interval, and none while an earlier one runs), which at the end
    of a failed task would lose the root cause. The manager of the editable
    card renders synchronously on request; without it, fall back to the
    public refresh.
    """
    manager = getattr(card, "_card_component_store", {}).get(
        getattr(card, "_default_editable_card", None)
    )
    render = getattr(manager, "_card_proc", None)
    if render is None:
        card.refresh(force=True)
        return
    render("render_runtime", sync=True)


# The local runtime's reading of task output

# Steps whose tasks' output the local runtime reads in whole lines (see show_every_line).
_STEPS_READ_WHOLE: set = set()
# How much of a task's output one read takes: a pipe's default capacity.
_READ_BYTES = 65536


def show_every_line(step_name: str) -> None:
    """Make Metaflow's local runtime show each line of ``step_name``'s tasks as it comes.

    In place of ``metaflow.runtime.Worker.read_logline``, for those tasks only:
    Metaflow's reads ONE line per poll event with ``readline()`` on a buffered
    pipe, so lines that reach the pipe together are read into the buffer, one
    is shown, and the rest wait for the task's next output: forever, if the
    task then goes quiet (a rank that printed its last line and hangs, or
    computes for an hour). Here one read takes whatever the pipe holds and every
    complete line in it is shown; a partial line waits for its end. Called in
    every process that initializes the step's decorators; only the runtime's
    process has workers to read.
    """
    runtime = sys.modules.get("metaflow.runtime")
    worker = getattr(runtime, "Worker", None)
    if worker is None or not hasattr(worker, "read_logline"):
        return  # a task's process, or another Metaflow: nothing to read here
    _STEPS_READ_WHOLE.add(step_name)
    if getattr(worker.read_logline, "_reads_whole_lines", False):
        return
    metaflow_read_logline = worker.read_logline

    def read_logline(self: Any, fd: int) -> bool:
        if self.task.step not in _STEPS_READ_WHOLE:
            return metaflow_read_logline(self, fd)
        return _read_whole_lines(self, fd)

    read_logline._reads_whole_lines = True  # type: ignore[attr-defined]
    worker.read_logline = read_logline


def _read_whole_lines(worker: Any, fd: int) -> bool:
    """Show every complete line one read of ``fd`` brings; False at its end, or when nothing
    is there (the runtime's drain at a task's end reads with the pipe non-blocking).

    The pipe is read directly, never through Metaflow's buffered file object, so
    nothing waits in that object's buffer.
    """
    _, log_buffer = worker._logs[fd]
    pending: Dict[int, bytes] = worker.__dict__.setdefault("_torchrun_partial_lines", {})
    try:
        chunk = os.read(fd, _READ_BYTES)
    except BlockingIOError:
        return False
    if not chunk:  # the task closed its end: its last line may lack a newline
        rest = pending.pop(fd, b"")
        if rest:
            worker.emit_log(rest, log_buffer)
        return False
    *lines, pending[fd] = (pending.get(fd, b"") + chunk).split(b"\n")
    for line in lines:
        worker.emit_log(line + b"\n", log_buffer)
    return True


# @catch on a parallel step

def keep_every_node_when_caught(decorators: Sequence[Any]) -> None:
    """Let ``@catch`` on this parallel step keep every node's task for the join.

    When ``@catch`` catches the control task's exception, its ``task_exception``
    sets the join's inputs (``flow._control_mapper_tasks``) to the control task
    alone, so the other nodes' tasks, and the failures they caught, never reach
    the join. Wrapped on this step's ``@catch`` instance, the list of every
    node's task set before the step ran stays.
    """
    for deco in decorators:
        if getattr(deco, "name", None) != "catch":
            continue
        catch_exception = deco.task_exception
        if getattr(catch_exception, "_keeps_every_node", False):
            continue

        def task_exception(exception: BaseException, step: str, flow: Any, *args: Any,
                           _catch_exception: Callable[..., Any] = catch_exception) -> Any:
            every_node = getattr(flow, "_control_mapper_tasks", None)
            handled = _catch_exception(exception, step, flow, *args)
            if handled and every_node:
                flow._control_mapper_tasks = every_node
            return handled

        task_exception._keeps_every_node = True  # type: ignore[attr-defined]
        deco.task_exception = task_exception
