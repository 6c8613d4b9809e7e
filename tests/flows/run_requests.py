"""One @torchrun step on one node (num_parallel=1) that makes current.torch.run calls on request.

The test writes $TORCHRUN_TEST_REQUESTS/<n>.request.json, n = 1, 2, ...: either
{"call": {arguments of run()}} or {"stop": true}. The step runs workers/echo_args.py
with those arguments and answers in <n>.response.json with the result's fields
or the error's type and message. Each call's workers write <n>-<rank>.json.
"""
import json
import os
import time
from pathlib import Path

from metaflow import FlowSpec, current, step, torchrun

REQUESTS = Path(os.environ.get("TORCHRUN_TEST_REQUESTS", "."))
# Without a request for this long the test is gone: end rather than wait forever.
IDLE_LIMIT_SECONDS = 300


def next_request(number: int) -> dict:
    path = REQUESTS / f"{number}.request.json"
    deadline = time.monotonic() + IDLE_LIMIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no request {number} within {IDLE_LIMIT_SECONDS} s")
        time.sleep(0.05)
    return json.loads(path.read_text())


def answer(number: int, response: dict) -> None:
    path = REQUESTS / f"{number}.response.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(response))
    partial.replace(path)  # the test never reads half an answer


class RunRequestsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=1)

    @torchrun
    @step
    def train(self):
        number = 1
        request = next_request(number)
        while "call" in request:
            os.environ["ECHO_PREFIX"] = str(REQUESTS / str(number))
            try:
                result = current.torch.run(entrypoint="workers/echo_args.py", **request["call"])
            except Exception as error:
                answer(number, {"outcome": "error", "type": type(error).__name__, "message": str(error)})
            else:
                answer(number, {"outcome": "ok", "exit_code": result.exit_code,
                                "restarts": result.restarts, "log_dir": result.log_dir})
            number += 1
            request = next_request(number)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RunRequestsFlow()
