"""Two nodes x two ranks; each current.torch.run call is one scenario of workers/hang.py.

Each scenario prints one line per node, ``SCENARIO {json}``: how its call ended and, when it
failed, the hang diagnosis TorchrunFailed carried.
"""
import json

from metaflow import FlowSpec, Parameter, TorchrunFailed, current, step, torchrun

from lines import say


class HangsFlow(FlowSpec):
    scenarios = Parameter(
        "scenarios", default='[{"scenario": "sleep", "culprit": 1}]',
        help="JSON: one dict per call, workers/hang.py's arguments, and rdzv_conf if any",
    )

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun(nproc_per_node=2, hang_timeout=3, hang_fail_after=2)
    @step
    def train(self):
        node = current.parallel.node_index
        for scenario in json.loads(self.scenarios):
            arguments = dict(scenario)
            rdzv_conf = arguments.pop("rdzv_conf", None)
            outcome = {"node": node, "scenario": scenario["scenario"], "kind": "ok"}
            try:
                current.torch.run(
                    entrypoint="workers/hang.py", entrypoint_args=arguments,
                    torchrun_args={"rdzv_conf": rdzv_conf} if rdzv_conf else None,
                )
            except TorchrunFailed as failure:
                hang = failure.hang
                outcome.update(kind=failure.kind.value, rank=failure.rank, hang=hang and {
                    "verdict": hang.verdict.value,
                    "culprits": [[c.node, c.rank, c.local_rank, c.where and c.where.where]
                                 for c in hang.culprits],
                    "waits": [[w.op, w.seq, list(w.ranks)] for w in hang.waits],
                })
            say("SCENARIO " + json.dumps(outcome))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HangsFlow()
