"""card/render.py: the card's Markdown and timeline from a snapshot; it imports neither
Metaflow nor torch."""

import subprocess
import sys
from collections import deque
from pathlib import Path

from metaflow_extensions.torchrun.plugins.card.render import _code, _quote, render
from metaflow_extensions.torchrun.plugins.card.ranks import RUNNING, RankState, Segment
from metaflow_extensions.torchrun.plugins.card.state import CallLayout, Snapshot


def _layout(log_dir: Path, node_index: int, nproc: int = 2) -> CallLayout:
    return CallLayout(call=1, node_index=node_index, num_nodes=2, nproc_per_node=str(nproc),
                      nproc=nproc, rdzv_id="job-a0-c1", log_dir=str(log_dir))


def test_the_model_and_its_rendering_import_without_metaflow():
    code = ("import sys; sys.modules['metaflow'] = None\n"
            "import metaflow_extensions.torchrun.plugins.card.render\n"
            "print([name for name in sys.modules if name.split('.')[0] in ('torch', 'metaflow')"
            " and sys.modules[name] is not None])")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_markdown_cells_and_timeline_survive_odd_output():
    # Metaflow's card drops Markdown's backslash escapes ("all\\_reduce \\#4" shows as
    # "allreduce 4"): odd text goes in code spans and HTML blocks, which need none.
    assert _code("a|b`c<d\ne __init__") == "``a\\|b`c<d e __init__``"
    assert _code("`x`", cell=False) == "`` `x` ``"
    assert _quote("all_reduce #4 at <module>\n *x*") == (
        "<blockquote>all_reduce #4 at &lt;module&gt; *x*</blockquote>")
    rank = RankState(0, 0, 0, state=RUNNING, lines=deque(["x | y"]),
                     segments=[Segment(0, 100.0)])

    snapshot = Snapshot(_layout(Path("/logs"), node_index=0), settings=(), store_endpoint="h:1",
                        started=99.0, ended=None, ranks=(rank,), rounds=((100.0, 0),),
                        failure=None, version=1)
    sections = render(snapshot, now=101.0)
    assert "`x \\| y`" in sections.rank_table
    bars = render(snapshot, now=102.0).timeline["layer"][0]["data"]["values"]
    assert bars == [{"rank": "rank 0 (node 0)", "order": 0, "start": 1.0, "end": 3.0,
                     "state": RUNNING, "attempt": 0}]
