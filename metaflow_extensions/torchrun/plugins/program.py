"""The user's program: which file or module the workers run, and the arguments it gets.

``resolve_entrypoint`` looks for the script or module on the file system; the
rest is pure. Every check fails with ``TorchrunArgumentError`` before anything
starts.
"""

import importlib.machinery
import os
import re
import sys
from typing import List, Mapping, NamedTuple, Optional, Sequence, Union

from .exceptions import TorchrunArgumentError

ArgsSpec = Union[Mapping[str, object], Sequence[object], None]
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def entrypoint_argv(entrypoint_args: ArgsSpec) -> List[str]:
    """The program's own arguments.

    A mapping becomes ``--key value`` in order: ``True`` is a bare ``--key``,
    ``False`` and ``None`` are left out, a list or tuple gives ``--key v1 v2``.
    Values go through ``str()`` and nothing else. A sequence is passed as given.
    """
    if entrypoint_args is None:
        return []
    if isinstance(entrypoint_args, Mapping):
        argv: List[str] = []
        for key, value in entrypoint_args.items():
            if not isinstance(key, str) or not key.strip("-"):
                raise TorchrunArgumentError(
                    f"entrypoint_args key {key!r} is not an option name: use strings like "
                    f"'epochs' (which becomes --epochs)."
                )
            if value is None or value is False:
                continue
            flag = "--" + key.lstrip("-")
            if value is True:
                argv.append(flag)
            elif isinstance(value, (list, tuple)):
                argv.extend([flag, *map(str, value)])
            else:
                argv.extend([flag, str(value)])
    elif isinstance(entrypoint_args, (str, bytes)) or not isinstance(entrypoint_args, Sequence):
        raise TorchrunArgumentError(
            f"entrypoint_args must be a dict (becomes --key value) or a list of arguments, "
            f"not {type(entrypoint_args).__name__}: {entrypoint_args!r}."
        )
    else:
        argv = [str(item) for item in entrypoint_args]
    for arg in argv:
        check_command_line_text(arg, "entrypoint_args")
    return argv


def check_command_line_text(text: Optional[str], where: str) -> None:
    """Refuse what no command line can carry: NUL, or text the file system encoding cannot encode."""
    if text is None:
        return
    if "\0" in text:
        raise TorchrunArgumentError(
            f"{where}: {text!r} holds a NUL character, which no command line can carry."
        )
    try:
        os.fsencode(text)
    except UnicodeError as error:
        raise TorchrunArgumentError(
            f"{where}: {text!r} cannot go on a command line ({error.reason})."
        ) from None


class Entrypoint(NamedTuple):
    """What the worker bootstrap runs: ``kind`` is ``"script"`` (``target`` is
    a file) or ``"module"`` (``target`` is a dotted name found from ``search_dir``)."""

    kind: str
    target: str
    search_dir: str


def resolve_entrypoint(
    entrypoint: Optional[str], module: Optional[str], flow_dir: str
) -> Entrypoint:
    """The program to run, checked against the file system.

    A script path is taken relative to the flow file's directory unless
    absolute, and must exist. A module name must be a dotted name whose top
    package or module is found in the flow's directory or on ``sys.path``.
    """
    if (entrypoint is None) == (module is None):
        raise TorchrunArgumentError(
            "give exactly one of entrypoint='train.py' (a script) or module='pkg.train' "
            "(run like python -m pkg.train)."
        )
    if module is not None:
        if not isinstance(module, str) or not _MODULE_NAME.match(module):
            raise TorchrunArgumentError(
                f"module={module!r} is not a dotted module name such as 'pkg.train'."
            )
        top = module.split(".")[0]
        if importlib.machinery.PathFinder.find_spec(top, [flow_dir, *sys.path]) is None:
            raise TorchrunArgumentError(
                f"module={module!r}: no module or package {top!r} in the flow's directory "
                f"{flow_dir} or on sys.path. Put it next to the flow file (Metaflow packages "
                f"that directory for remote runs) or install it."
            )
        return Entrypoint("module", module, flow_dir)
    if not isinstance(entrypoint, (str, os.PathLike)):
        raise TorchrunArgumentError(
            f"entrypoint must be the path of a script, not {type(entrypoint).__name__}: "
            f"{entrypoint!r}."
        )
    path = os.path.normpath(os.path.join(flow_dir, os.fspath(entrypoint)))
    if not os.path.isfile(path):
        raise TorchrunArgumentError(
            f"entrypoint {os.fspath(entrypoint)!r} not found: looked for {path} (relative "
            f"paths start at the flow file's directory {flow_dir}). Keep the script next to "
            f"the flow file so that Metaflow's code package carries it to remote nodes."
        )
    return Entrypoint("script", path, os.path.dirname(path))
