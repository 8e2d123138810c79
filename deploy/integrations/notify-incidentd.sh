#!/bin/sh
# Nagios / Icinga notification command for incidentd: posts one native alert per notification.
#
#   notify-incidentd.sh host    NOTIFICATIONTYPE HOSTNAME HOSTSTATE HOSTOUTPUT
#   notify-incidentd.sh service NOTIFICATIONTYPE HOSTNAME SERVICEDESC SERVICESTATE SERVICEOUTPUT
#
# INCIDENTD_URL (default http://127.0.0.1:9080) and INCIDENTD_SOURCE (default nagios) override.
# PROBLEM fires, RECOVERY resolves; ACKNOWLEDGEMENT, FLAPPING* and DOWNTIME* are ignored
# (incidentd acknowledges incidents itself, detects flapping itself, and takes maintenance
# windows from its rules). Exit status is non-zero when incidentd refused the alert, so
# Nagios logs the failure.
set -eu
url="${INCIDENTD_URL:-http://127.0.0.1:9080}"
source="${INCIDENTD_SOURCE:-nagios}"

json() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\r\t' '   '; }

kind="$1"; type="$2"; host="$3"
case "$kind" in
  host)    name="HostDown"; state="$4"; output="${5:-}"; check="host" ;;
  service) name="$4"; state="$5"; output="${6:-}"; check="$4" ;;
  *) echo "usage: $0 host|service ..." >&2; exit 2 ;;
esac
case "$type" in
  PROBLEM) status=firing ;;
  RECOVERY) status=resolved ;;
  *) exit 0 ;;
esac
case "$state" in
  CRITICAL|DOWN|UNREACHABLE) severity=critical ;;
  WARNING) severity=warning ;;
  UNKNOWN) severity=minor ;;
  *) severity=info ;;
esac
body=$(printf '{"source":"%s","name":"%s","ci":"%s","severity":"%s","status":"%s","summary":"%s","labels":{"check":"%s","state":"%s"},"dedup_key":"%s"}' \
  "$(json "$source")" "$(json "$name")" "$(json "$host")" "$severity" "$status" \
  "$(json "$output")" "$(json "$check")" "$(json "$state")" "$(json "$host/$check")")
curl -fsS -m 10 -H 'content-type: application/json' -d "$body" "$url/api/v1/alerts" >/dev/null
