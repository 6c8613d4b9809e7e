"""What a ``@torchrun`` task starts from: the step's checked attributes and the task's names.

The decorator builds both in Metaflow's hooks and hands them to
``current.torch`` (the launcher), which only reads them. A bad attribute
fails with ``TorchrunArgumentError`` when a task starts, before any program runs.
"""

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ..errors import TorchrunArgumentError
from ..metaflow_compat import merged_resource_attributes
from .command import check_nproc_per_node, rendezvous_id, whole_number


@dataclass(frozen=True)
class StepSettings:
    """The ``@torchrun`` attributes and step facts ``current.torch.run`` starts from.

    Attributes:
        nproc_per_node: ``@torchrun(nproc_per_node)`` checked (a whole number
            as text, or ``"auto"``), or None.
        master_port: port of node 0's rendezvous store, or None: each call
            derives its own.
        join_timeout: seconds to wait for every node to join.
        requested_gpus: GPUs per node requested with ``@resources``,
            ``@kubernetes`` or ``@batch`` (0 if none).
        hang_timeout, hang_fail_after: the backend's settings of those names
            (``rendezvous.settings``), or None for its defaults.
    """

    nproc_per_node: Optional[str]
    master_port: Optional[int]
    join_timeout: float
    requested_gpus: int
    hang_timeout: Optional[float] = None
    hang_fail_after: Optional[float] = None

    @classmethod
    def from_attributes(
        cls, attributes: Mapping[str, object], decorators: Sequence[object]
    ) -> "StepSettings":
        """Check the ``@torchrun`` ``attributes``; ``decorators`` (the step's) give its GPUs.

        Raises:
            TorchrunArgumentError: an attribute cannot be used; the message
                names it and says what to give instead.
        """
        nproc = attributes["nproc_per_node"]
        return cls(
            nproc_per_node=None if nproc is None else check_nproc_per_node(
                nproc, "@torchrun(nproc_per_node)"
            ),
            master_port=_checked_port(attributes["master_port"]),
            join_timeout=_checked_timeout(attributes["all_nodes_started_timeout"]),
            requested_gpus=_requested_gpus(decorators),
            hang_timeout=_checked_hang_setting("hang_timeout", attributes.get("hang_timeout")),
            hang_fail_after=_checked_hang_setting(
                "hang_fail_after", attributes.get("hang_fail_after")
            ),
        )


@dataclass(frozen=True)
class TaskIdentity:
    """Names of the Metaflow task; with the call number they make the rendezvous id."""

    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int

    def rendezvous_id(self, control_task_id: Optional[str], call: int) -> str:
        """The id of this task's ``call``-th ``run()``, equal on every node of the job.

        ``control_task_id`` is the job's control task when Metaflow names it,
        else this task is the whole job.
        """
        return rendezvous_id(
            self.flow, self.run_id, self.step, control_task_id or self.task_id, self.attempt, call
        )


def _checked_port(value: object) -> Optional[int]:
    if value is None:
        return None
    port = None if isinstance(value, bool) else whole_number(str(value))
    if port is None or not 1 <= port <= 65535:
        raise TorchrunArgumentError(
            f"@torchrun(master_port={value!r}): give a TCP port from 1 to 65535, or leave it "
            f"out to let each current.torch.run call pick its own."
        )
    return port


def _checked_timeout(value: object) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise TorchrunArgumentError(
            f"@torchrun(all_nodes_started_timeout={value!r}): give the number of seconds to "
            f"wait for every node to join, a positive number (default 600)."
        )
    return seconds


def _checked_hang_setting(name: str, value: object) -> Optional[float]:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds >= 0):
        what = ("how long a rank may wait in one collective before the job is diagnosed as "
                "hung (default 300), or 0 for no hang diagnosis" if name == "hang_timeout" else
                "how long a hang may last before the job is failed for it, or 0 (the default) "
                "to only report it")
        raise TorchrunArgumentError(f"@torchrun({name}={value!r}): give {what}, in seconds.")
    return seconds


def _requested_gpus(decorators: Sequence[object]) -> int:
    """GPUs per node requested through @resources, @kubernetes or @batch (0 if none)."""
    compute = [deco for deco in decorators if deco.name in ("kubernetes", "batch")]
    if compute:
        gpu = merged_resource_attributes(decorators, compute[0], {"gpu": "0"}).get("gpu")
    else:
        gpu = next(
            (deco.attributes.get("gpu") for deco in decorators if deco.name == "resources"), None
        )
    try:
        return max(0, int(float(gpu or 0)))
    except (TypeError, ValueError):
        return 0
