"""rendezvous/__init__.py: register(), and the torchrun.handlers entry point it stands in for."""

from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

import rendezvous


def test_register_is_idempotent_and_entry_point_declared():
    rendezvous.register()
    rendezvous.register()
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="torchrun.handlers") if ep.name == "metaflow"]
    assert entry.load()() is rendezvous_handler_registry._registry["metaflow"]
