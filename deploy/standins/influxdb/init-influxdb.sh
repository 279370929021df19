#!/bin/bash
# As influxdb:1.8's /init-influxdb.sh, with the same variables and first-start rule: when
# the meta directory does not exist yet and the database, an admin user (with HTTP auth
# enabled) or /docker-entrypoint-initdb.d/* ask for it, start influxd on 127.0.0.1:8086,
# create INFLUXDB_DB (with INFLUXDB_DB_RETENTION_POLICY), the admin INFLUXDB_ADMIN_USER with
# all privileges, INFLUXDB_USER (ALL on the database), INFLUXDB_WRITE_USER (WRITE) and
# INFLUXDB_READ_USER (READ); an empty password is generated and printed; run the *.sh and
# *.iql files of /docker-entrypoint-initdb.d; stop influxd.
set -e
shopt -s nullglob

auth=""
if [ -n "${INFLUXDB_HTTP_AUTH_ENABLED:-}" ]; then
    if echo "$INFLUXDB_HTTP_AUTH_ENABLED" | grep -qi true; then auth=1; fi
elif grep -qiE '^\s*auth-enabled\s*=\s*true' /etc/influxdb/influxdb.conf; then
    auth=1
fi
users=""
if [ -n "$auth" ] && [ -n "${INFLUXDB_ADMIN_USER:-}" ]; then users=1; fi
scripts=(/docker-entrypoint-initdb.d/*)
meta="${INFLUXDB_META_DIR:-/var/lib/influxdb/meta}"

if [ -e "$meta" ]; then exit 0; fi
if [ -z "$users" ] && [ -z "${INFLUXDB_DB:-}" ] && [ "${#scripts[@]}" = 0 ]; then exit 0; fi

generate() { tr -dc '_A-Za-z0-9-' </dev/urandom | head -c32; }
create_db="CREATE DATABASE ${INFLUXDB_DB:-} ${INFLUXDB_DB_RETENTION_POLICY:-}"

if [ -n "$users" ]; then
    if [ -z "${INFLUXDB_ADMIN_PASSWORD:-}" ]; then
        INFLUXDB_ADMIN_PASSWORD="$(generate)"
        echo "INFLUXDB_ADMIN_PASSWORD:$INFLUXDB_ADMIN_PASSWORD"
    fi
    first="CREATE USER \"$INFLUXDB_ADMIN_USER\" WITH PASSWORD '$INFLUXDB_ADMIN_PASSWORD' WITH ALL PRIVILEGES"
elif [ -n "${INFLUXDB_DB:-}" ]; then
    first="$create_db"
else
    first="SHOW DATABASES"
fi

INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:8086 INFLUXDB_HTTP_HTTPS_ENABLED=false influxd "$@" &
pid=$!
influx=(influx -host 127.0.0.1 -port 8086)
ok=""
for _ in $(seq 30); do
    if "${influx[@]}" -execute "$first" >/dev/null 2>&1; then ok=1; break; fi
    echo 'influxdb init process in progress...'
    sleep 1
done
if [ -z "$ok" ]; then
    echo >&2 'influxdb init process failed.'
    exit 1
fi

if [ -n "$users" ]; then
    influx+=(-username "$INFLUXDB_ADMIN_USER" -password "$INFLUXDB_ADMIN_PASSWORD")
    if [ -n "${INFLUXDB_DB:-}" ]; then "${influx[@]}" -execute "$create_db"; fi
    for pair in USER:ALL WRITE_USER:WRITE READ_USER:READ; do
        var="INFLUXDB_${pair%%:*}"
        user="${!var:-}"
        if [ -z "$user" ]; then continue; fi
        pvar="${var}_PASSWORD"
        password="${!pvar:-}"
        if [ -z "$password" ]; then
            password="$(generate)"
            echo "$pvar:$password"
        fi
        "${influx[@]}" -execute "CREATE USER \"$user\" WITH PASSWORD '$password'"
        "${influx[@]}" -execute "REVOKE ALL PRIVILEGES FROM \"$user\""
        if [ -n "${INFLUXDB_DB:-}" ]; then
            "${influx[@]}" -execute "GRANT ${pair#*:} ON \"$INFLUXDB_DB\" TO \"$user\""
        fi
    done
fi

for f in "${scripts[@]}"; do
    # shellcheck source=/dev/null
    case "$f" in
        *.sh) echo "$0: running $f"; . "$f" ;;
        *.iql) echo "$0: running $f"; "${influx[@]}" -execute "$(cat "$f")"; echo ;;
        *) echo "$0: ignoring $f" ;;
    esac
done

if ! kill -s TERM "$pid" || ! wait "$pid"; then
    echo >&2 'influxdb init process failed. (Could not stop influxdb)'
    exit 1
fi
