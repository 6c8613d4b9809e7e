"""The one place that turns ``current.torch.run`` arguments into a torchrun command.

Pure functions (``plan_launch`` only makes the log directory absolute): they
check the user's input and build the agent's argv and environment, and launch
nothing, so they are tested without torch or Metaflow running. Every check
fails with ``TorchrunArgumentError`` before anything starts. The program and
its arguments come checked from ``program``.
"""

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import rendezvous

from ..errors import TorchrunArgumentError
from .program import ArgsSpec, Entrypoint, check_command_line_text

NprocSpec = Union[int, str, None]
Flag = Tuple[str, Optional[str]]  # (name as written without dashes, value or None for a bare flag)

# Each worker line is prefixed with its global rank by torchrun's log tailer.
LINE_PREFIX_TEMPLATE = "[rank${rank}]: "
# What torchrun sets to 1 for the workers when unset and more than one process runs per node.
OMP_NUM_THREADS = "OMP_NUM_THREADS"

# torchrun flags that run() sets itself, keyed by their canonical name, with
# the reason a user cannot set them.
MANAGED_FLAGS: Dict[str, str] = {
    "nnodes": "the number of nodes is the step's num_parallel",
    "node-rank": "each node's rank is its Metaflow node index",
    "rdzv-backend": "run() always uses the metaflow rendezvous backend",
    "rdzv-endpoint": "node 0 hosts the rendezvous store; pin its port with "
    "@torchrun(master_port=...)",
    "rdzv-id": "each call gets its own id, built from the flow, run, step, task, attempt "
    "and call number",
    "master-addr": "the rendezvous hands node 0's address to every worker",
    "master-port": "the workers share the rendezvous store's port; pin it with "
    "@torchrun(master_port=...)",
    "standalone": "run() forms the job from the Metaflow nodes",
    "tee": "run() streams every rank's output itself, prefixed with the global rank",
    "redirects": "run() keeps every rank's output in per-rank files itself "
    "(choose where with --log-dir)",
    "module": "run a module with run(module='pkg.train')",
    "m": "run a module with run(module='pkg.train')",
    "no-python": "run() starts Python programs under its worker bootstrap",
    "run-path": "run() starts the entrypoint itself",
    "help": "torchrun would print its help and start nothing",
}
_NPROC = "nproc-per-node"
_RDZV_CONF = "rdzv-conf"
_LOG_DIR = "log-dir"
_JOIN_TIMEOUT = "join_timeout"
# torchrun flags that run() reads into TorchrunFlags and combines with its own.
_HANDLED = (_NPROC, _RDZV_CONF, _LOG_DIR)
# torchrun's parser expands an unambiguous abbreviation (--nnode is --nnodes):
# one of these flags, which run() refuses or handles itself, must be written
# in full so that the checks above see it.
_ABBREVIATED = (*MANAGED_FLAGS, *_HANDLED)
# A name that torchrun reads as one flag: no "=", space or bare "--" in it.
_FLAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_WHOLE_NUMBER = re.compile(r"[0-9]+")


def canonical_flag(name: str) -> str:
    """``--max_restarts`` and ``max-restarts`` are the same torchrun flag: ``max-restarts``."""
    return name.lstrip("-").replace("_", "-")


@dataclass(frozen=True)
class TorchrunFlags:
    """``torchrun_args``, parsed and checked once: the flags run() handles itself, and the rest.

    Attributes:
        passed_on: the flags torchrun gets as given, in order.
        nproc_per_node: ``--nproc-per-node``, checked (a whole number or
            ``"auto"``), or None.
        rdzv_conf: ``--rdzv-conf`` as ``(key, value)`` pairs, or empty.
        log_dir: ``--log-dir`` as given, or None.
    """

    passed_on: Tuple[Flag, ...] = ()
    nproc_per_node: Optional[str] = None
    rdzv_conf: Tuple[Tuple[str, str], ...] = ()
    log_dir: Optional[str] = None


def parse_torchrun_args(torchrun_args: ArgsSpec) -> TorchrunFlags:
    """Extra torchrun flags from a mapping or a list of command-line tokens.

    A mapping ``{"max_restarts": 1}`` gives ``--max_restarts=1`` (``True`` a
    bare flag, ``False``/``None`` left out). A list holds tokens as on the
    command line: ``["--max-restarts=1"]`` or ``["--max-restarts", "1"]``.
    Flags that run() manages are refused, saying why, and so are abbreviations
    that torchrun would expand into one of them or into a flag run() handles.
    """
    flags = _flags_as_written(torchrun_args)
    _check_flags(flags)
    handled: Dict[str, str] = {}
    passed_on: List[Flag] = []
    for name, value in flags:
        canonical = canonical_flag(name)
        if canonical not in _HANDLED:
            passed_on.append((name, value))
        elif value is None:
            raise TorchrunArgumentError(f"torchrun_args --{name} needs a value.")
        else:
            handled[canonical] = value
    nproc = handled.get(_NPROC)
    return TorchrunFlags(
        passed_on=tuple(passed_on),
        nproc_per_node=None if nproc is None else check_nproc_per_node(
            nproc, "torchrun_args nproc_per_node"
        ),
        rdzv_conf=_parse_rdzv_conf(handled[_RDZV_CONF]) if _RDZV_CONF in handled else (),
        log_dir=handled.get(_LOG_DIR),
    )


def _flags_as_written(torchrun_args: ArgsSpec) -> List[Flag]:
    """``torchrun_args`` as ``(name, value)`` pairs in order, names without their dashes."""
    if torchrun_args is None:
        return []
    flags: List[Flag] = []
    if isinstance(torchrun_args, Mapping):
        for key, value in torchrun_args.items():
            if not isinstance(key, str) or not _FLAG_NAME.fullmatch(key.lstrip("-")):
                raise TorchrunArgumentError(
                    f"torchrun_args key {key!r} is not a torchrun flag name such as "
                    f"'max_restarts'."
                )
            if value is None or value is False:
                continue
            if isinstance(value, (list, tuple, dict, set)):
                raise TorchrunArgumentError(
                    f"torchrun_args[{key!r}] = {value!r}: torchrun flags take one value; "
                    f"write lists the way torchrun expects them (e.g. '0,1')."
                )
            flags.append((key.lstrip("-"), None if value is True else str(value)))
    elif isinstance(torchrun_args, (str, bytes)) or not isinstance(torchrun_args, Sequence):
        raise TorchrunArgumentError(
            f"torchrun_args must be a dict ({{'max_restarts': 1}}) or a list of command-line "
            f"tokens (['--max-restarts', '1']), not {type(torchrun_args).__name__}."
        )
    else:
        tokens = [str(token) for token in torchrun_args]
        index = 0
        while index < len(tokens):
            token = tokens[index]
            name, equals, value = token.partition("=")
            if not token.startswith("-") or not _FLAG_NAME.fullmatch(name.lstrip("-")):
                raise TorchrunArgumentError(
                    f"torchrun_args: {token!r} is neither a flag nor the value of one. A list "
                    f"holds command-line tokens such as ['--max-restarts', '1'] (a value that "
                    f"starts with '-' goes after '=': '--flag=-1'); for key/value pairs pass "
                    f"a dict."
                )
            if equals:
                flags.append((name.lstrip("-"), value))
            elif index + 1 < len(tokens) and not tokens[index + 1].startswith("-"):
                flags.append((name.lstrip("-"), tokens[index + 1]))
                index += 1
            else:
                flags.append((name.lstrip("-"), None))
            index += 1
    return flags


def _check_flags(flags: Sequence[Flag]) -> None:
    """Refuse managed flags, abbreviations torchrun would expand, text no command line
    carries, and a flag given twice."""
    seen: Dict[str, str] = {}
    for name, value in flags:
        canonical = canonical_flag(name)
        if canonical in MANAGED_FLAGS:
            raise TorchrunArgumentError(
                f"torchrun_args may not set --{name}: {MANAGED_FLAGS[canonical]}."
            )
        expanded = [flag for flag in _ABBREVIATED if flag.startswith(canonical) and flag != canonical]
        if expanded and canonical not in _ABBREVIATED:
            raise TorchrunArgumentError(
                f"torchrun_args: torchrun would read --{name} as "
                f"{' or '.join('--' + flag for flag in expanded)}; write the flag in full."
            )
        check_command_line_text(value, f"torchrun_args --{name}")
        if canonical in seen:
            raise TorchrunArgumentError(
                f"torchrun_args sets --{canonical} twice (as --{seen[canonical]} and "
                f"--{name}); keep one."
            )
        seen[canonical] = name


def whole_number(text: str) -> Optional[int]:
    """``text`` as a whole number written in ASCII digits (spaces around allowed), else None.

    Not ``str.isdigit``: it accepts characters such as "\u00b2" that ``int`` refuses.
    """
    stripped = text.strip()
    return int(stripped) if _WHOLE_NUMBER.fullmatch(stripped) else None


def check_nproc_per_node(value: object, where: str) -> str:
    """``value`` as torchrun's ``--nproc-per-node``: a whole number >= 1, or ``"auto"``."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip() == "auto":
        return "auto"
    elif isinstance(value, str):
        number = whole_number(value)
    else:
        number = None
    if number is None or number < 1:
        raise TorchrunArgumentError(
            f"{where}={value!r}: give the number of worker processes per node, a whole "
            f"number of at least 1, or 'auto' (one per GPU, else one per CPU)."
        )
    return str(number)


def resolve_nproc_per_node(
    argument: NprocSpec, from_flags: Optional[str], attribute: Optional[str], requested_gpus: int
) -> str:
    """Processes per node: the argument (or ``--nproc-per-node`` in torchrun_args), else the
    decorator attribute, else the GPUs requested for the step, else 1.

    ``from_flags`` (``TorchrunFlags.nproc_per_node``) and ``attribute``
    (``StepSettings.nproc_per_node``) were checked where they were read; the
    argument is checked here.
    """
    if argument is not None and from_flags is not None:
        raise TorchrunArgumentError(
            f"nproc_per_node is given twice: as run(nproc_per_node={argument!r}) and in "
            f"torchrun_args ({from_flags!r}); keep one."
        )
    if argument is not None:
        return check_nproc_per_node(argument, "nproc_per_node")
    if from_flags is not None:
        return from_flags
    if attribute is not None:
        return attribute
    return str(requested_gpus) if requested_gpus > 0 else "1"


def rendezvous_id(
    flow: str, run_id: str, step: str, control_task_id: str, attempt: int, call: int
) -> str:
    """An id equal on every node of one ``run()`` call and different for every other call."""
    return f"{flow}-{run_id}-{step}-{control_task_id}-a{attempt}-c{call}"


def _parse_rdzv_conf(text: str) -> Tuple[Tuple[str, str], ...]:
    conf: Dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise TorchrunArgumentError(
                f"torchrun_args rdzv_conf {text!r}: write key=value pairs separated by commas, "
                f"e.g. 'heartbeat_timeout=30'."
            )
        conf[key.strip()] = value.strip()
    return tuple(conf.items())


@dataclass(frozen=True)
class LaunchPlan:
    """Everything one node needs to start its torchrun agent for one ``run()`` call."""

    python: str
    num_nodes: int
    nproc_per_node: str
    rdzv_id: str
    rdzv_endpoint: str
    rdzv_conf: Tuple[Tuple[str, str], ...]
    log_dir: str
    flags: Tuple[Flag, ...]
    bootstrap: str
    entry: Entrypoint
    program_args: Tuple[str, ...]

    @property
    def command(self) -> List[str]:
        """The agent's argv: ``python -u -m rendezvous`` (torchrun plus our backend).

        The user's flags come first: a bare flag that takes a value (``{"role":
        True}``) then meets one of ours and torchrun refuses it, where last it
        would swallow the bootstrap's path as its value. And where torchrun sees
        a flag twice the last one wins, so ours do.
        """
        conf = ",".join(f"{key}={value}" for key, value in self.rdzv_conf)
        return [
            self.python,
            "-u",  # the agent's tailer lines must reach us as they come
            "-m",
            rendezvous.__name__,
            *(f"--{name}" if value is None else f"--{name}={value}" for name, value in self.flags),
            f"--nnodes={self.num_nodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--rdzv-backend={rendezvous.BACKEND_NAME}",
            f"--rdzv-id={self.rdzv_id}",
            f"--rdzv-endpoint={self.rdzv_endpoint}",
            f"--rdzv-conf={conf}",
            f"--log-dir={self.log_dir}",
            "--tee=3",
            self.bootstrap,
            *self.entry,
            *self.program_args,
        ]

    def environment(self, base: Mapping[str, str]) -> Dict[str, str]:
        """The agent's environment: ``base`` plus the rank prefix of worker lines and,
        with more than one process per node, ``OMP_NUM_THREADS=1`` unless ``base`` sets it.

        The workers inherit it. torchrun sets ``OMP_NUM_THREADS=1`` itself in
        that case, so that N processes do not each start a thread per core,
        and logs an 8-line banner saying so; setting it here keeps torchrun's
        behaviour without the banner. With ``nproc_per_node="auto"`` the count
        is known only to torchrun, which then decides (and says so) itself.
        """
        env = dict(base)
        env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = LINE_PREFIX_TEMPLATE
        processes = whole_number(self.nproc_per_node)
        if OMP_NUM_THREADS not in env and processes is not None and processes > 1:
            env[OMP_NUM_THREADS] = "1"
        return env


def plan_launch(
    *,
    python: str,
    num_nodes: int,
    nproc_per_node: str,
    rdzv_id: str,
    rdzv_endpoint: str,
    join_timeout: float,
    default_log_dir: str,
    flags: TorchrunFlags,
    bootstrap: str,
    entry: Entrypoint,
    program_args: Sequence[str],
    hang_timeout: Optional[float] = None,
    hang_fail_after: Optional[float] = None,
) -> LaunchPlan:
    """Combine checked inputs into a plan.

    ``nproc_per_node`` was already resolved (``flags.nproc_per_node`` among
    its sources); ``flags.rdzv_conf`` is merged over ``join_timeout`` and the
    ``hang_*`` settings given (a user's ``--rdzv-conf`` key wins; one not given
    keeps the backend's default); ``flags.log_dir`` replaces ``default_log_dir``.
    """
    hang_conf = {key: f"{value:g}" for key, value in
                 (("hang_timeout", hang_timeout), ("hang_fail_after", hang_fail_after))
                 if value is not None}
    rdzv_conf = {_JOIN_TIMEOUT: f"{join_timeout:g}", **hang_conf, **dict(flags.rdzv_conf)}
    return LaunchPlan(
        python=python,
        num_nodes=num_nodes,
        nproc_per_node=nproc_per_node,
        rdzv_id=rdzv_id,
        rdzv_endpoint=rdzv_endpoint,
        rdzv_conf=tuple(rdzv_conf.items()),
        log_dir=os.path.abspath(default_log_dir if flags.log_dir is None else flags.log_dir),
        flags=flags.passed_on,
        bootstrap=bootstrap,
        entry=entry,
        program_args=tuple(program_args),
    )
