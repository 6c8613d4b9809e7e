"""A torchrun rendezvous backend named ``metaflow`` for Metaflow ``@parallel`` steps.

``torchrun --rdzv-backend=metaflow`` finds it through the ``torchrun.handlers``
entry point when the package is installed; where entry points are missing
(Metaflow's code package on a remote node) run ``python -m rendezvous`` instead
of ``torchrun``, or call :func:`register` before launching in-process.

This package imports torch and the standard library only, never Metaflow.
"""

BACKEND_NAME = "metaflow"


def register() -> None:
    """Register the ``metaflow`` backend in torch's rendezvous handler registry.

    Safe to call any number of times, also after the entry point registered it.
    """
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    from ._entry_point import create_handler

    rendezvous_handler_registry.register(BACKEND_NAME, create_handler)


__all__ = ["BACKEND_NAME", "register"]
