#!/bin/sh
# Start mosquitto; at first start create its password file from the compose secrets.
# The file lives in the data volume, so later starts keep it; to change a password,
# delete /mosquitto/data/passwd (docker compose exec mosquitto rm /mosquitto/data/passwd)
# and restart, or use mosquitto_passwd inside the container.
set -eu
PASSWD="${MOSQUITTO_PASSWD:-/mosquitto/data/passwd}"
SECRETS="${SECRETS_DIR:-/run/secrets}"
CONF="${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}"

if [ ! -s "$PASSWD" ]; then
    for name in mqtt_service_password mqtt_device_password; do
        if [ ! -s "$SECRETS/$name" ]; then
            echo "start.sh: secret $SECRETS/$name is missing or empty (run deploy/init.sh)" >&2
            exit 1
        fi
    done
    umask 077
    mosquitto_passwd -b -c "$PASSWD" "${MQTT_SERVICE_USER:-sensorcast}" "$(cat "$SECRETS/mqtt_service_password")"
    mosquitto_passwd -b "$PASSWD" "${MQTT_DEVICE_USER:-device}" "$(cat "$SECRETS/mqtt_device_password")"
    if id mosquitto >/dev/null 2>&1; then chown mosquitto:mosquitto "$PASSWD"; fi
    echo "start.sh: created $PASSWD for users ${MQTT_SERVICE_USER:-sensorcast} and ${MQTT_DEVICE_USER:-device}"
fi
exec mosquitto -c "$CONF"
