#!/bin/sh
# First-time setup of the compose stack, safe to run again:
# - the stack's secrets (random, 32 characters) in deploy/secrets/; existing files are
#   kept, so running it again never changes a password in use;
# - .env (beside docker-compose.yml) from deploy/env.example, unless it exists.
# The directory is private (0700); the files inside are 0644 because compose bind-mounts
# them into containers whose users (uid 10001 for sensorcast) must be able to read them.
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="$HERE/secrets"
mkdir -p "$DIR"
chmod 700 "$DIR"
for name in mqtt_service_password mqtt_device_password influxdb_admin_password influxdb_password api_key read_key grafana_admin_password \
    nats_route_password nats_leaf_password; do
    f="$DIR/$name"
    if [ -s "$f" ]; then
        echo "kept    $f"
        continue
    fi
    # No shell metacharacters: values go through mosquitto_passwd and URLs unquoted.
    LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$f"
    chmod 644 "$f"
    echo "created $f"
done

if [ -e "$HERE/../.env" ]; then
    echo "kept    $(cd "$HERE/.." && pwd)/.env"
else
    cp "$HERE/env.example" "$HERE/../.env"
    echo "created $(cd "$HERE/.." && pwd)/.env (from deploy/env.example: edit to taste)"
fi
