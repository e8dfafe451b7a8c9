# Shell helpers to run Debian's nginx (unpacked by tests/support/consumers/provision.sh) as the reference
# header-injecting proxy and as a trivial upstream. Source it; needs $LSTR_NGINX (source the provision env.sh).
#   nginx_render TEMPLATE OUT NAME=VALUE...   replace every @NAME@; fails if one is left
#   nginx_start DIR CONF PORT                 runs nginx in the foreground under DIR (pid file, logs, temp dirs),
#                                             in the background of this shell; waits until PORT accepts; sets NGINX_PID;
#                                             with NGINX_CPUS=LIST set, master and workers run on those CPUs (taskset)
#   nginx_stop PID                            graceful stop (SIGQUIT, then SIGKILL after 5 s) of one master we started
#   nginx_stop_all                            stops every master nginx_start started from this shell
#   nginx_local_refresh_location EXP          the @LOCAL_REFRESH@ snippet: POST /api/token/refresh[/] answered by
#                                             nginx itself with a stand-in access token (unsigned JWT, exp=EXP), the
#                                             way ls-token-refresher's proxy will answer it
#   free_port                                 a free 127.0.0.1 TCP port

NGINX_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGINX_PIDS=()

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

nginx_render() {
  local tmpl=$1 out=$2
  shift 2
  python3 - "$tmpl" "$out" "$@" <<'EOF'
import re, sys
tmpl, out, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
s = open(tmpl).read()
for p in pairs:
    k, v = p.split('=', 1)
    s = s.replace('@' + k + '@', v)
left = sorted(set(re.findall(r'@[A-Z_]+@', s)))
if left:
    sys.exit('nginx_render: unreplaced placeholders: ' + ' '.join(left))
open(out, 'w').write(s)
EOF
}

nginx_start() {
  local dir=$1 conf=$2 port=$3
  mkdir -p "$dir/tmp"
  "$LSTR_NGINX" -t -q -p "$dir" -c "$conf" -e "$dir/error.log" || { cat "$dir/error.log" >&2; return 1; }
  local pin=()
  [ -n "${NGINX_CPUS:-}" ] && pin=(taskset -c "$NGINX_CPUS")
  "${pin[@]}" "$LSTR_NGINX" -p "$dir" -c "$conf" -e "$dir/error.log" 2>>"$dir/error.log" &
  NGINX_PID=$!
  NGINX_PIDS+=("$NGINX_PID")
  local i
  for i in $(seq 1 100); do
    if ! kill -0 "$NGINX_PID" 2>/dev/null; then
      echo "nginx exited; error log:" >&2; tail -n 20 "$dir/error.log" >&2; return 1
    fi
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' "$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "nginx did not listen on $port" >&2
  return 1
}

nginx_stop() {
  local pid=$1 i
  kill -QUIT "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

nginx_stop_all() {
  local pid
  for pid in "${NGINX_PIDS[@]}"; do nginx_stop "$pid"; done
  NGINX_PIDS=()
}

nginx_local_refresh_location() {
  local exp=$1 standin
  standin=$(python3 "$NGINX_SH_DIR/../../tests/support/consumers/placeholder_jwt.py" --type access --exp "$exp")
  printf '%s' "location ~ ^/api/token/refresh/?\$ { default_type application/json; if (\$request_method != POST) { return 405; } return 200 '{\"access\": \"$standin\"}'; }"
}
