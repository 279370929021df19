#!/bin/bash
# As influxdb:1.8's /entrypoint.sh: flags alone mean `influxd FLAGS`; before influxd starts,
# /init-influxdb.sh creates the database and users (first start only); then exec.
set -e
if [ "${1:0:1}" = '-' ]; then
    set -- influxd "$@"
fi
if [ "$1" = influxd ]; then
    /init-influxdb.sh "${@:2}"
fi
exec "$@"
