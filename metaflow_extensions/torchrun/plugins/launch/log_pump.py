"""The one place that copies the torchrun agent's output into the task's own streams.

torchrun's tailer already prefixes every worker line with the global rank and
keeps per-rank files; this pump moves the agent's stdout and stderr to ours.
Each stream has its own thread, so a flood on one never stalls the other or the
agent; bytes that are not UTF-8 are replaced, never dropped; ``join`` returns
only when both streams reached their end, so nothing is lost. An observer
(``on_line``, the card's job state) may see every line as it is copied.
"""

import threading
from collections import deque
from typing import BinaryIO, Callable, Deque, List, Optional, TextIO

_CHUNK = 1 << 16
# A "line" longer than this is passed on in pieces, so that output without line
# ends cannot grow the buffer without bound.
_MAX_LINE = 1 << 20
# POSIX PIPE_BUF on Linux.
_ATOMIC_WRITE = 4096


class LogPump:
    """Copy ``sources[i]`` to ``sinks[i]`` line by line, each pair in its own thread.

    The last ``keep_lines`` lines of every stream are kept for error messages.
    ``on_line``, if given, is called with every line (without its line end)
    after it was written, from the stream's thread; it must be quick and
    thread-safe, and what it raises is not caught.
    """

    def __init__(self, sources: List[BinaryIO], sinks: List[TextIO], keep_lines: int = 200,
                 on_line: Optional[Callable[[str], None]] = None):
        self._pairs = list(zip(sources, sinks))
        self._on_line = on_line
        self._tails: List[Deque[str]] = [deque(maxlen=keep_lines) for _ in self._pairs]
        self._threads = [
            threading.Thread(
                target=self._copy, args=(index,), name=f"torchrun-log-pump-{index}", daemon=True
            )
            for index in range(len(self._pairs))
        ]

    def start(self) -> "LogPump":
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until every stream is drained; False if ``timeout`` passed first."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def tail(self, index: int) -> List[str]:
        """The last lines seen on stream ``index`` (without line ends)."""
        return list(self._tails[index])

    def _copy(self, index: int) -> None:
        source, sink = self._pairs[index]
        tail = self._tails[index]
        pending = b""
        while True:
            chunk = source.read1(_CHUNK)
            if not chunk:
                break
            pending += chunk
            end = pending.rfind(b"\n") + 1
            if end:
                self._emit(sink, tail, pending[:end])
                pending = pending[end:]
            if len(pending) > _MAX_LINE:
                self._emit(sink, tail, pending + b"\n")
                pending = b""
        if pending:
            self._emit(sink, tail, pending + b"\n")
        source.close()

    def _emit(self, sink: TextIO, tail: Deque[str], data: bytes) -> None:
        """Write ``data`` (whole lines) one line per write, each flushed at once.

        One line per write because in a local run every node writes into the
        same pipe (the control task's log), where writes of at most PIPE_BUF
        bytes are never interleaved with another writer's; and because
        Metaflow's local runtime takes one line per read event, so lines
        written together would wait for the next output to show.
        """
        start = 0
        while start < len(data):
            end = min(data.find(b"\n", start) + 1 or len(data), start + _ATOMIC_WRITE)
            text = data[start:end].decode("utf-8", errors="replace")
            try:
                sink.write(text)
            except UnicodeEncodeError:  # a sink that cannot encode U+FFFD or other characters
                sink.write(text.encode("ascii", errors="backslashreplace").decode("ascii"))
            sink.flush()
            line = text.rstrip("\n")
            tail.append(line)
            if self._on_line is not None:
                self._on_line(line)
            start = end
