"""The user's program: which script, module or function the workers run, and its arguments.

``resolve_entrypoint`` looks for the script or module on the file system (and
for a function's module among the imported ones); the rest is pure. Every check
fails with ``TorchrunArgumentError`` before anything starts.
"""

import builtins
import dis
import importlib.machinery
import inspect
import os
import pickle
import re
import sys
from types import CodeType
from typing import Callable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Union

from ..errors import TorchrunArgumentError

ArgsSpec = Union[Mapping[str, object], Sequence[object], None]
EntrypointSpec = Union[str, "os.PathLike[str]", Callable[..., object], None]
SCRIPT, MODULE, FUNCTION = "script", "module", "function"
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
    """What the worker bootstrap runs, found from ``search_dir``: ``kind`` is
    ``"script"`` (``target`` is a file), ``"module"`` (``target`` is a dotted
    module name, run like ``python -m``) or ``"function"`` (``target`` is
    ``"module:qualified.name"`` of a function defined at a module's top level)."""

    kind: str
    target: str
    search_dir: str


def resolve_entrypoint(
    entrypoint: EntrypointSpec, module: Optional[str], flow_dir: str
) -> Entrypoint:
    """The program to run, checked against the file system.

    A script path is taken relative to the flow file's directory unless
    absolute, and must exist. A module name must be a dotted name whose top
    package or module is found in the flow's directory or on ``sys.path``.
    A function is checked by ``function_entrypoint``.
    """
    if (entrypoint is None) == (module is None):
        raise TorchrunArgumentError(
            "give exactly one of entrypoint='train.py' (a script), entrypoint=train (a "
            "function) or module='pkg.train' (run like python -m pkg.train)."
        )
    if module is not None:
        if not isinstance(module, str) or not _MODULE_NAME.match(module):
            raise TorchrunArgumentError(
                f"module={module!r} is not a dotted module name such as 'pkg.train'."
            )
        _check_importable(module, flow_dir, f"module={module!r}")
        return Entrypoint(MODULE, module, flow_dir)
    if callable(entrypoint):
        return function_entrypoint(entrypoint, flow_dir)
    if not isinstance(entrypoint, (str, os.PathLike)):
        raise TorchrunArgumentError(
            f"entrypoint must be the path of a script or a function, not "
            f"{type(entrypoint).__name__}: {entrypoint!r}."
        )
    path = os.path.normpath(os.path.join(flow_dir, os.fspath(entrypoint)))
    if not os.path.isfile(path):
        raise TorchrunArgumentError(
            f"entrypoint {os.fspath(entrypoint)!r} not found: looked for {path} (relative "
            f"paths start at the flow file's directory {flow_dir}). Keep the script next to "
            f"the flow file so that Metaflow's code package carries it to remote nodes."
        )
    return Entrypoint(SCRIPT, path, os.path.dirname(path))


def _check_importable(module: str, flow_dir: str, what: str) -> None:
    """Refuse a module whose top package a worker would not find (flow directory, sys.path)."""
    top = module.split(".")[0]
    if importlib.machinery.PathFinder.find_spec(top, [flow_dir, *sys.path]) is None:
        raise TorchrunArgumentError(
            f"{what}: no module or package {top!r} in the flow's directory {flow_dir} or on "
            f"sys.path. Put it next to the flow file (Metaflow packages that directory for "
            f"remote runs) or install it."
        )


_DEFINE_IT_AT_TOP_LEVEL = (
    "Define the function with `def` at the top level of the flow file or of a module next "
    "to it (Metaflow's code package carries both to remote nodes), and pass what it needs "
    "with entrypoint_args."
)


def function_entrypoint(function: Callable[..., object], flow_dir: str) -> Entrypoint:
    """A function as the workers' program, named so that each worker can import it.

    Workers find the function again by module and qualified name: it must be
    defined with ``def`` at the top level of a module (or as a static function of
    a top-level class). A function of the flow file (``__main__`` in a Metaflow
    task) is imported by the flow file's name from its directory, where the
    flow's ``if __name__ == "__main__"`` block does not run. Lambdas, nested
    functions, bound methods and other callables are refused: no worker could
    import them.
    """
    if inspect.ismethod(function):
        raise TorchrunArgumentError(
            f"entrypoint={function.__qualname__} is a bound method: the workers cannot get "
            f"its object (self). {_DEFINE_IT_AT_TOP_LEVEL}"
        )
    if not inspect.isfunction(function):
        raise TorchrunArgumentError(
            f"entrypoint={function!r} is a {type(function).__name__}, not a function defined "
            f"with `def`. {_DEFINE_IT_AT_TOP_LEVEL}"
        )
    if function.__name__ == "<lambda>" or "<locals>" in function.__qualname__:
        kind = "a lambda" if function.__name__ == "<lambda>" else "defined inside another function"
        raise TorchrunArgumentError(
            f"entrypoint={function.__qualname__} is {kind}: the workers cannot import it by "
            f"name. {_DEFINE_IT_AT_TOP_LEVEL}"
        )
    module_name = function.__module__
    if module_name == "__main__":
        search_dir, module_name = _flow_file_module(function)
    else:
        search_dir = flow_dir
        _check_importable(module_name, flow_dir, f"entrypoint={function.__qualname__}")
    found = sys.modules.get(function.__module__)
    for part in function.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not function:
        raise TorchrunArgumentError(
            f"entrypoint={function.__qualname__}: the module {function.__module__} holds "
            f"something else under that name, so the workers would not find this function. "
            f"Give it a name of its own at the module's top level."
        )
    return Entrypoint(FUNCTION, f"{module_name}:{function.__qualname__}", search_dir)


def _flow_file_module(function: Callable[..., object]) -> "tuple[str, str]":
    """Where and by what name workers import a function of the script run as ``__main__``."""
    path = function.__globals__.get("__file__")  # type: ignore[attr-defined]
    if not path:
        raise TorchrunArgumentError(
            f"entrypoint={function.__qualname__} was defined interactively (no file holds it). "
            f"{_DEFINE_IT_AT_TOP_LEVEL}"
        )
    path = os.path.abspath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.isidentifier() or name in sys.modules or name in sys.builtin_module_names:
        raise TorchrunArgumentError(
            f"entrypoint={function.__qualname__}: workers import it from {path} as module "
            f"{name!r}, which is not a free module name. Rename the file, or move the function "
            f"into a module next to it."
        )
    return os.path.dirname(path), name


def function_call(entrypoint_args: ArgsSpec) -> bytes:
    """A function's arguments, pickled for the workers: a mapping gives keyword
    arguments, a list or tuple positional ones, ``None`` none."""
    if entrypoint_args is None:
        args, kwargs = (), {}
    elif isinstance(entrypoint_args, Mapping):
        if not all(isinstance(key, str) and key.isidentifier() for key in entrypoint_args):
            raise TorchrunArgumentError(
                f"entrypoint_args for a function: the keys of a dict are its keyword "
                f"arguments and must be names, not {sorted(map(repr, entrypoint_args))}."
            )
        args, kwargs = (), dict(entrypoint_args)
    elif isinstance(entrypoint_args, (list, tuple)):
        args, kwargs = tuple(entrypoint_args), {}
    else:
        raise TorchrunArgumentError(
            f"entrypoint_args for a function must be a dict (keyword arguments) or a list or "
            f"tuple (positional arguments), not {type(entrypoint_args).__name__}."
        )
    try:
        return pickle.dumps((args, kwargs))
    except Exception as error:  # pickle raises many types (PicklingError, TypeError, ...)
        raise TorchrunArgumentError(
            f"entrypoint_args cannot be sent to the workers: pickling failed ({error}). Pass "
            f"values that pickle (numbers, strings, lists, dicts, tensors)."
        ) from None


def check_step_names(step_function: Callable[..., object], step_name: str) -> None:
    """Refuse a step that reads a global name its module does not define, before anything runs.

    A notebook's flow meets this: Metaflow's ``NBRunner`` writes only the cell that
    holds the flow class to the flow file, so a function defined in another cell,
    an entrypoint say, is not in it. Without this check the run would start, and
    every node fail with a ``NameError`` once its step reached the name.
    """
    function = inspect.unwrap(step_function)
    if not inspect.isfunction(function):
        return
    known = function.__globals__
    missing = sorted({name for name in _global_names(function.__code__)
                      if name not in known and not hasattr(builtins, name)})
    if missing:
        names = ", ".join(missing)
        raise TorchrunArgumentError(
            f"step {step_name} uses {names}, which its flow file does not define or import. "
            f"Define or import {'it' if len(missing) == 1 else 'them'} at the top level of "
            f"the flow file. In a notebook, Metaflow's NBRunner writes only the cell that "
            f"holds the flow class to the flow file: define or import {names} in that cell, "
            f"above the class."
        )


def _global_names(code: CodeType) -> Iterator[str]:
    """The global names ``code`` and the code nested in it read (and do not assign)."""
    assigned = set()
    read = []
    for instruction in dis.get_instructions(code):
        if instruction.opname == "LOAD_GLOBAL":
            read.append(instruction.argval)
        elif instruction.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            assigned.add(instruction.argval)
    yield from (name for name in read if name not in assigned)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            yield from _global_names(constant)
