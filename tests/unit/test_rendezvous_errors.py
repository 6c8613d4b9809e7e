"""rendezvous/errors.py: every error of the backend is a failure record of its kind."""

from rendezvous.errors import ConfigError, JoinTimeoutError, RestartAfterFinishError
from rendezvous.failure import FailureKind


def test_every_backend_error_is_a_record_of_its_kind():
    never = JoinTimeoutError("round 0 did not complete; missing nodes: 2, 3", [2, 3]).failure(0)
    assert (never.kind, never.node_index) == (FailureKind.NODE_NEVER_ARRIVED, 2)
    assert never.summary == ("node 2 never arrived: JoinTimeoutError: round 0 did not complete; "
                             "missing nodes: 2, 3")
    refused = RestartAfterFinishError("its workers failed and it asked for a restart").failure(1)
    assert (refused.kind, refused.node_index) == (FailureKind.RESTART_REFUSED, 1)
    assert refused.summary == ("node 1 failed first: RestartAfterFinishError: its workers failed "
                               "and it asked for a restart")
    config = ConfigError("join_timeout='x' is not a number").failure(1)
    assert (config.kind, config.summary) == (FailureKind.RENDEZVOUS, "ConfigError: join_timeout='x' is not a number")
