"""The creator torch registers as the ``metaflow`` backend, and the entry point that returns it.

torch loads the ``torchrun.handlers`` entry point while
``torch.distributed.elastic.rendezvous`` is still being imported, possibly
from inside an import of our own modules, so nothing here imports torch or the
handler until a handler is actually made. ``rendezvous.register()`` registers
the same function, which keeps registering twice harmless.
"""


# The handler create_handler made last: one torchrun agent per process makes one.
_made = None


def made_handler():
    """The handler ``create_handler`` made last in this process, None before it made one."""
    return _made


def create_handler(params):
    """Build the handler (``rendezvous.handler``) from torchrun's ``RendezvousParameters``
    and the Metaflow environment.

    Raises:
        TopologyError: the environment is incomplete or ``--nnodes`` differs
            from the number of Metaflow nodes.
        ConfigError: a bad ``--rdzv-conf`` or ``--rdzv-endpoint``.
    """
    from .endpoint import store_address
    from .errors import TopologyError
    from .handler import MetaflowRendezvousHandler
    from .settings import RendezvousSettings
    from .topology import NUM_NODES_VAR, read_topology

    topology = read_topology()
    settings = RendezvousSettings.from_config(params.config)
    if not params.min_nodes == params.max_nodes == topology.num_nodes:
        given = (
            str(params.min_nodes)
            if params.min_nodes == params.max_nodes
            else f"{params.min_nodes}:{params.max_nodes}"
        )
        raise TopologyError(
            f"--nnodes={given}, but this Metaflow step runs {topology.num_nodes} nodes "
            f"({NUM_NODES_VAR}={topology.num_nodes}). The metaflow backend has a fixed "
            f"membership: pass --nnodes={topology.num_nodes}."
        )
    # A port the compute layer declared for node 0 (@kubernetes(port=...)) is
    # the one its network policy opens; a port in the endpoint wins over it.
    host, port = store_address(params.endpoint, params.run_id, topology)
    global _made
    _made = MetaflowRendezvousHandler(topology, settings, params.run_id, host, port)
    return _made


def handler_creator():
    """Entry point of group ``torchrun.handlers``: torch calls it and registers the result."""
    return create_handler
