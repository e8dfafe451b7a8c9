#!/usr/bin/env bash
# The shell loop users write: one curl (POST /api/token/refresh) and one jq (.access) per refresh,
# every INTERVAL seconds (default 1). The PAT goes in a body file, not on curl's command line (where `ps`
# shows it). The pause uses `read -t` on a FIFO, so the only processes per refresh are curl and jq, and
# nothing wakes the loop between refreshes. Env: LS_URL, LS_PAT, OUT (directory: token, count), INTERVAL.
set -u
umask 077
printf '{"refresh": "%s"}' "$LS_PAT" >"$OUT/body.json"
rm -f "$OUT/wait"; mkfifo "$OUT/wait"; exec 3<>"$OUT/wait"
n=0
while :; do
  if curl -sS -f -X POST -H 'Content-Type: application/json' -d @"$OUT/body.json" \
      "$LS_URL/api/token/refresh" | jq -r .access >"$OUT/token"; then
    n=$((n + 1))
    echo "$n" >"$OUT/count"
  fi
  read -r -t "${INTERVAL:-1}" -u 3 _ || true
done
