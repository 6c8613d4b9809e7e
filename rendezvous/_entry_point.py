"""Target of the ``torchrun.handlers`` entry point named ``metaflow``.

torch imports this while ``torch.distributed.elastic.rendezvous`` is still being
imported, so nothing here may import that package at module level.
"""


def handler_creator():
    """Return the creator torch registers: ``RendezvousParameters -> handler``."""
    from .handler import create_handler

    return create_handler
