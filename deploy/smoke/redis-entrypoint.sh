#!/bin/sh
# The part of the official redis image's entrypoint that compose.yaml relies on, for the stand-in image:
# `redis-server ...` started as root runs as the redis user, owning /data; anything else runs as given.
set -e
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec runuser -u redis -- "$0" "$@"
fi
exec "$@"
