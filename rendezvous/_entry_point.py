"""The creator torch registers as the ``metaflow`` backend, and the entry point that returns it.

torch loads the ``torchrun.handlers`` entry point while
``torch.distributed.elastic.rendezvous`` is still being imported, possibly
from inside an import of our own modules, so nothing here imports torch or the
handler until a handler is actually made. ``rendezvous.register()`` registers
the same function, which keeps registering twice harmless.
"""


def create_handler(params):
    """``RendezvousParameters -> MetaflowRendezvousHandler``; see ``rendezvous.handler``."""
    from .handler import create_handler as create

    return create(params)


def handler_creator():
    """Entry point of group ``torchrun.handlers``: torch calls it and registers the result."""
    return create_handler
