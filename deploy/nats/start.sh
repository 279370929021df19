#!/bin/sh
# Start nats-server with the secrets its configuration reads from the environment
# (deploy/nats/cluster.conf, leaf.conf): nats-server reads variables, not files.
#   NATS_CONF         the configuration: /etc/nats/nats1.conf (a cluster node) or leaf.conf
#   NATS_HUB          set on a gateway's leaf node: the cluster's leaf port, host:7422
#   NATS_ROUTE_HOSTS  a cluster node's three peers (default nats1:6222 nats2:6222 nats3:6222)
#   SECRETS_DIR       where the password files are (default /run/secrets)
set -eu
SECRETS="${SECRETS_DIR:-/run/secrets}"
CONF="${NATS_CONF:-/etc/nats/nats1.conf}"

secret() {
    if [ ! -s "$SECRETS/$1" ]; then
        echo "start.sh: secret $SECRETS/$1 is missing or empty (run deploy/init.sh)" >&2
        exit 1
    fi
    cat "$SECRETS/$1"
}

# Devices log in with the same password as on mosquitto (the compose secret of that name).
NATS_DEVICE_PASSWORD="$(secret mqtt_device_password)"
export NATS_DEVICE_PASSWORD
if [ -n "${NATS_HUB:-}" ]; then
    leaf="$(secret nats_leaf_password)"
    NATS_HUB_URL="nats-leaf://leaf:$leaf@$NATS_HUB"
    export NATS_HUB_URL
else
    NATS_SERVICE_PASSWORD="$(secret mqtt_service_password)"
    NATS_ROUTE_PASSWORD="$(secret nats_route_password)"
    NATS_LEAF_PASSWORD="$(secret nats_leaf_password)"
    # shellcheck disable=SC2086  # a list of host:port words
    set -- ${NATS_ROUTE_HOSTS:-nats1:6222 nats2:6222 nats3:6222}
    if [ $# -ne 3 ]; then
        echo "start.sh: NATS_ROUTE_HOSTS needs the three nodes' host:port, got: $*" >&2
        exit 1
    fi
    NATS_ROUTE_1="nats-route://route:$NATS_ROUTE_PASSWORD@$1"
    NATS_ROUTE_2="nats-route://route:$NATS_ROUTE_PASSWORD@$2"
    NATS_ROUTE_3="nats-route://route:$NATS_ROUTE_PASSWORD@$3"
    export NATS_SERVICE_PASSWORD NATS_ROUTE_PASSWORD NATS_LEAF_PASSWORD NATS_ROUTE_1 NATS_ROUTE_2 NATS_ROUTE_3
fi
exec "${NATS_SERVER:-nats-server}" -c "$CONF"
