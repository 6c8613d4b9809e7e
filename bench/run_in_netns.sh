#!/usr/bin/env bash
# Run one command inside a throwaway network namespace that has only loopback.
#
#   sudo bench/run_in_netns.sh python -m bench.rendezvous_round --nodes 2,8,32
#
# Why: every TCPStore connection makes reverse DNS lookups of the peer address,
# on the client and on the server side, whatever the log level. Some resolvers
# drop such queries instead of answering, and then one connection in a few
# dozen stalls for the resolver's 5 s timeout, which swamps a benchmark that
# measures rendezvous rounds in milliseconds. Inside the namespace only `lo`
# is up and resolv.conf names 127.0.0.1 as the nameserver, where nothing
# listens: every DNS query is refused at once, and the lookups fall back to
# the numeric address without waiting. `ip netns exec` bind-mounts
# /etc/netns/NAME/resolv.conf over /etc/resolv.conf for the command.
#
# Side effect worth knowing: nothing inside can reach any address but
# loopback, which is also what keeps the benchmark's traffic on loopback and
# its ports apart from anything else running on the machine.
#
# Needs root (creating namespaces). The namespace and its /etc/netns folder are
# removed on exit, also when the command fails or is interrupted.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "$0: creating a network namespace needs root" >&2
    exit 2
fi

# The PID keeps concurrent runs apart.
NETNS="mftr-bench-$$"

cleanup() {
    ip netns delete "$NETNS" 2>/dev/null || true
    rm -rf "/etc/netns/$NETNS"
    # Drop /etc/netns too when this run created it and nobody else uses it.
    rmdir /etc/netns 2>/dev/null || true
}
trap cleanup EXIT
# Turn INT/TERM into a normal exit so that the EXIT trap removes the namespace.
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
mkdir -p "/etc/netns/$NETNS"
echo "nameserver 127.0.0.1" > "/etc/netns/$NETNS/resolv.conf"

# Not exec: the shell has to outlive the command to run the cleanup.
status=0
ip netns exec "$NETNS" "$@" || status=$?
exit "$status"
