"""faulthandler's dump of every thread, as frames: the main thread's, and where the user's code is.

faulthandler writes from a signal handler, without the GIL, so it also answers
for a rank stuck in a C call that holds the GIL; its format is for people,
so this is the one place that reads it::

    Thread 0x00007f2b8b7fe700 (most recent call first):
      File "/usr/lib/python3.11/threading.py", line 320 in wait
      ...

    Current thread 0x00007f2b8c1bbb80 (most recent call first):
      File "/job/train.py", line 40 in prepare

(Python 3.13 adds the thread's name in brackets after its id.) Pure, standard library only.
"""

import re
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .records import Frame

_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')


def thread_stacks(text: str) -> Dict[int, Tuple[Frame, ...]]:
    """Every thread's frames, most recent call first, by thread id (``threading.get_ident()``).

    A dump cut short (the process died while writing) gives the frames written.
    """
    stacks: Dict[int, List[Frame]] = {}
    current: Optional[List[Frame]] = None
    for line in text.splitlines():
        thread = _THREAD.match(line)
        if thread:
            current = stacks.setdefault(int(thread.group(1), 16), [])
            continue
        frame = _FRAME.match(line)
        if frame and current is not None:
            current.append(Frame(frame.group(1), int(frame.group(2)), frame.group(3).strip()))
    return {ident: tuple(frames) for ident, frames in stacks.items()}


def user_frame(stack: Iterable[Frame], library_dirs: Iterable[str]) -> Optional[Frame]:
    """The most recent frame of the user's code: not in a library directory (the standard
    library, site-packages) and not Python's own (``<frozen ...>``). None if there is none."""
    is_users = _is_users(library_dirs)
    return next((frame for frame in stack if is_users(frame)), None)


def below_the_program(stack: Tuple[Frame, ...], library_dirs: Iterable[str]) -> Tuple[Frame, ...]:
    """``stack`` without its outermost frames that are not the user's (``runpy``, a launcher's
    bootstrap): from the most recent call to the user's outermost frame. Whole without one."""
    is_users = _is_users(library_dirs)
    users = [index for index, frame in enumerate(stack) if is_users(frame)]
    return stack[:users[-1] + 1] if users else stack


def _is_users(library_dirs: Iterable[str]) -> Callable[[Frame], bool]:
    prefixes = tuple(directory.rstrip("/") + "/" for directory in library_dirs if directory)
    return lambda frame: not (frame.file.startswith("<")
                              or (prefixes and frame.file.startswith(prefixes)))


__all__ = ["below_the_program", "thread_stacks", "user_frame"]
