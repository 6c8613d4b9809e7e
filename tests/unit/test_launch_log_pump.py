"""launch/log_pump.py: both streams read at once, drained, bad bytes replaced, the tails kept."""

import io
import os
import threading
import time

import pytest

from metaflow_extensions.torchrun.plugins.launch.log_pump import LogPump

pytestmark = pytest.mark.timeout(60)


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
