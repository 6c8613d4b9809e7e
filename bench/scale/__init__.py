"""Scale of the ``metaflow`` backend: node 0's idle cost per node, rounds, failures, silent nodes.
"""
