"""Two nodes x two processes in a @torchrun step with @card: the card shows each call's job.

TORCHRUN_TEST_CARD_TYPE names the card type (default: Metaflow's "default").
Each node prints its task's pathspec, so that a test can fetch its card.
"""
import json
import os

from metaflow import FlowSpec, Parameter, card, current, step, torchrun

from lines import say

CARD_TYPE = os.environ.get("TORCHRUN_TEST_CARD_TYPE", "default")


class CardJobFlow(FlowSpec):
    script = Parameter("script", default="workers/card_ranks.py")
    script_args = Parameter("script_args", default="{}",
                            help="JSON: entrypoint_args of the script, or a list "
                                 "of them for one call each")
    torchrun_args = Parameter("torchrun_args", default="{}", help="JSON: torchrun_args")

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @card(type=CARD_TYPE, refresh_interval=2)
    @torchrun
    @step
    def train(self):
        say(f"CARD TASK node={current.parallel.node_index} pathspec={current.pathspec}")
        calls = json.loads(self.script_args)
        for args in calls if isinstance(calls, list) else [calls]:
            current.torch.run(entrypoint=self.script, entrypoint_args=args, nproc_per_node=2,
                              torchrun_args=json.loads(self.torchrun_args))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CardJobFlow()
