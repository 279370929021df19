#!/bin/sh
# As eclipse-mosquitto's entrypoint: started as root, give /mosquitto to the mosquitto user
# (read-only mounts inside stay as they are), then run the command.
set -e
if [ "$(id -u)" = 0 ] && [ -d /mosquitto ]; then
    chown -R mosquitto:mosquitto /mosquitto 2>/dev/null || true
fi
exec "$@"
