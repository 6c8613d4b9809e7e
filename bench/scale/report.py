"""The table: one row per backend and node count, ratios against metaflow at the same count."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .parent import Figures


@dataclass
class Row:
    """What one backend measured at one node count (``figures`` is None when it failed).

    ``inline_calls``: the simulated nodes called the store on the calling thread.
    """

    backend: str
    inline_calls: bool
    nodes: int
    figures: Optional[Figures]
    baseline_cpu_s_per_s: Optional[float]
    error: Optional[str]
    load: str

    def idle_us_per_node(self) -> Optional[float]:
        """Node 0's CPU per other node and second, in microseconds, over node 0 alone."""
        if self.figures is None or self.figures.idle_cpu_s_per_s is None:
            return None
        extra = self.figures.idle_cpu_s_per_s - (self.baseline_cpu_s_per_s or 0.0)
        return extra / (self.nodes - 1) * 1e6

    def label(self) -> str:
        return f"{self.backend}, inline calls" if self.inline_calls else self.backend

    def is_reference(self) -> bool:
        """Whether the other rows of its node count are compared with this one."""
        return self.backend == "metaflow" and not self.inline_calls


def _value(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(value: Optional[float], ours: Optional[float]) -> str:
    if value is None or not ours:
        return "n/a"
    return f"{value / ours:.1f}x"


def _round_cpu(figures: Figures) -> str:
    if figures.round_cpu_node0_s is None or figures.nodes < 2:
        return "n/a"
    others_ms = figures.round_cpu_others_s / (figures.nodes - 1) * 1e3
    return f"{figures.round_cpu_node0_s:.2f}, {others_ms:.2f}"


def format_table(rows: List[Row]) -> str:
    """A markdown table; "vs metaflow" is the row's figure over metaflow's (threaded
    calls) at the same count."""
    ours: Dict[Tuple[int, str], Optional[float]] = {}
    for row in rows:
        if row.is_reference() and row.figures is not None:
            ours[(row.nodes, "idle")] = row.idle_us_per_node()
            ours[(row.nodes, "restart")] = row.figures.restart_s
    lines = [
        "| nodes | backend | node 0 CPU per node, us/s | vs metaflow | first round s "
        "| its CPU: node 0 s, other nodes ms each "
        "| restart round s | vs metaflow | failure to all stopped s | silent node failed after s "
        "| load |",
        "| ---: | :--- | ---: | ---: | ---: | :--- | ---: | ---: | ---: | ---: | :--- |",
    ]
    for row in rows:
        if row.figures is None:
            lines.append(f"| {row.nodes} | {row.label()} | failed: {row.error} "
                         f"| | | | | | | | {row.load} |")
            continue
        figures = row.figures
        idle = row.idle_us_per_node()
        lines.append(
            f"| {row.nodes} | {row.label()} | {_value(idle, 1)} "
            f"| {_ratio(idle, ours.get((row.nodes, 'idle')))} | {_value(figures.round_s, 2)} "
            f"| {_round_cpu(figures)} "
            f"| {_value(figures.restart_s, 2)} "
            f"| {_ratio(figures.restart_s, ours.get((row.nodes, 'restart')))} "
            f"| {_value(figures.failure_to_stopped_s, 2)} "
            f"| {_value(figures.silent_detected_s, 2)} | {row.load} |")
    return "\n".join(lines)
