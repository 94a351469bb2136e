#!/bin/sh
# The image's entrypoint: name this container's network namespace (with hostNetwork, the
# node's own) for `dataplane sync --netns NAME`, then run `dataplane` with the arguments.
# The name lives in the container's own /run, so it goes away with the container.
set -eu
name="${DATAPLANE_NETNS_NAME:-node}"
if [ ! -e "/run/netns/$name" ]; then
    ip netns attach "$name" "$$"
fi
exec dataplane "$@"
