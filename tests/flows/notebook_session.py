"""A notebook, without Jupyter: cells run one after another in IPython's InteractiveShell (the
shell Jupyter's kernel runs), each stored in the history that Metaflow's NBRunner reads.

    python notebook_session.py

Run in the notebook's directory, which holds ``train.py`` (a torchrun script). Cell 2
defines a flow whose @torchrun step runs that script and a function of its own cell;
cell 3 a flow whose step uses a function of cell 1, which NBRunner's flow file lacks.
The shell prints each cell's error, as a notebook shows it, and goes on.
"""
from IPython.core.interactiveshell import InteractiveShell

CELLS = [
    '''
def from_another_cell():
    return "defined in cell 1"
''',
    '''
import os

from metaflow import FlowSpec, NBRunner, current, step, torchrun


def rank_value(offset):
    return int(os.environ["RANK"]) + offset


class NotebookFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun
    @step
    def train(self):
        script = current.torch.run(entrypoint="train.py", nproc_per_node=1)
        function = current.torch.run(entrypoint=rank_value, entrypoint_args={"offset": 100},
                                     nproc_per_node=1)
        self.values = function.return_values
        print(f"NOTEBOOK node={current.parallel.node_index} script_exit={script.exit_code} "
              f"values={sorted(function.return_values.items())}")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.values = sorted(value for task in inputs for value in task.values.values())
        self.next(self.end)

    @step
    def end(self):
        pass


run = NBRunner(NotebookFlow, show_output=False).nbrun()
print(f"CELL 2 successful={run.successful} values={run['join'].task.data.values}")
for task in run["train"]:
    print(task.stdout)
''',
    '''
from metaflow import FlowSpec, NBRunner, current, step, torchrun


class OtherCellFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @torchrun
    @step
    def train(self):
        current.torch.run(entrypoint=from_another_cell, nproc_per_node=1)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


NBRunner(OtherCellFlow, show_output=False).nbrun()
''',
]

shell = InteractiveShell.instance(colors="nocolor")
for number, cell in enumerate(CELLS, 1):
    print(f"=== cell {number}", flush=True)
    shell.run_cell(cell, store_history=True)
