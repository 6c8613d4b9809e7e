"""rendezvous/torch_compat.py: what the backend asks of the installed torch, and the fallbacks
where a release lacks it. The fallbacks' effect on a restart round:
integration/test_torch_releases.py; every check on each release: ``make compat``."""

from types import SimpleNamespace

from torch.distributed import TCPStore
from torch.distributed.launcher.api import LaunchConfig

from rendezvous.torch_compat import STORE_LISTS_KEYS, event_log_handler, set_remaining_restarts


def test_store_lists_keys_where_tcpstore_can():
    assert STORE_LISTS_KEYS == hasattr(TCPStore, "list_keys")


def test_event_log_handler_of_a_launch_config_and_of_one_without():
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=1)
    assert event_log_handler(config) == getattr(config, "event_log_handler", None)
    assert event_log_handler(SimpleNamespace(nproc_per_node=1)) is None


def test_remaining_restarts_are_set_only_where_the_agent_counts_them():
    counting = SimpleNamespace(_remaining_restarts=3)
    assert set_remaining_restarts(counting, 1) and counting._remaining_restarts == 1
    renamed = SimpleNamespace()
    assert not set_remaining_restarts(renamed, 1) and not hasattr(renamed, "_remaining_restarts")
