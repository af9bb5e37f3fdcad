#!/usr/bin/env bash
# scripts/cold-ab.sh — A/B of two offload builds on the cold-disk scenario (bench.sh
# step 5), interleaved with nginx (sendfile + aio threads) in every round, so that the
# machine's noise hits all three alike; prints each build's throughput and hot-file p99
# as ratios to nginx's, per round and as medians.
#   scripts/cold-ab.sh OFFLOAD_A OFFLOAD_B      (ROUNDS, default 6; COLD_MB, default 384;
#   PROBE_RATE, default 200: hot-file requests a second, as in bench.sh)
# A build may be a script that runs offload with other flags or environment.
# As in bench.sh, all three read the same three copies of the files (the builds from
# their --docroot), the copy each reads turning with the rounds, and a first round is
# not counted: this machine's virtual disk is cached by its host, so that a server's
# speed depended on which copy it read and how lately it was read. Every other round runs
# them in the opposite order.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${ROUNDS:-6}; MB=${COLD_MB:-384}
W=$(mktemp -d /tmp/offload-cold-ab-XXXXXX)
pids=()
cold=""; probe=""
trap 'for p in "${pids[@]}" $cold $probe; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/www/s0" "$W/cA" "$W/cB" "$W/ngx"
# The client (offload bench) is built from this tree, whatever the builds compared are.
(cd "$(dirname "$0")/.." && go build -o "$W/client" .)
for i in 1 2 3 4 5 6 7 8; do head -c $((MB << 20)) /dev/urandom > "$W/www/s0/disk$i.bin"; done
cp -r "$W/www/s0" "$W/www/s1"; cp -r "$W/www/s0" "$W/www/s2"
head -c 1024 /dev/urandom > "$W/www/1k.bin"; chmod -R a+rX "$W"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BASE=$(port); AIO=$(port); PA=$(port); PB=$(port)
cat > "$W/ngx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/ngx/nginx.pid; error_log $W/ngx/error.log;
events { worker_connections 2000; }
http { access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream;
  client_body_temp_path $W/ngx/b; proxy_temp_path $W/ngx/p; fastcgi_temp_path $W/ngx/f; uwsgi_temp_path $W/ngx/u; scgi_temp_path $W/ngx/s;
  server { listen 127.0.0.1:$BASE; root $W/www; }
  server { listen 127.0.0.1:$AIO; root $W/www; aio threads; } }
CONF
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$W/ngx/nginx.conf" & pids+=($!)
for v in A B; do
  if [ $v = A ]; then bin=$A p=$PA; else bin=$B p=$PB; fi
  "$bin" serve --base "http://127.0.0.1:$BASE" --listen "127.0.0.1:$p" --admin "127.0.0.1:$(port)" --cache "$W/c$v" --docroot "$W/www" \
    --revalidate 1h --max-dupes 0 --loops "$(nproc)" 2>/dev/null & pids+=($!)
done
for p in $BASE $PA $PB; do for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$p/1k.bin" && break; sleep 0.2; done; done
for p in $PA $PB; do for k in 0 1 2; do for i in 1 2 3 4 5 6 7 8; do curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$p/s$k/disk$i.bin"; done; done; done
: > "$W/rows"
servers=(A B aio)
for r in $(seq 0 "$ROUNDS"); do
  order="0 1 2"; [ $((r % 2)) = 0 ] || order="2 1 0" # none always first, or after the same one
  for j in $order; do
    t=${servers[$j]}; set=s$(( (j + r) % 3 ))
    case $t in A) p=$PA;; B) p=$PB;; aio) p=$AIO;; esac
    urls=""; for i in 1 2 3 4 5 6 7 8; do urls="$urls http://127.0.0.1:$p/$set/disk$i.bin"; done
    # The probe is a process of its own, as in bench.sh (in the cold readers' process
    # its p99 was 15-16 ms even against an idle server).
    # shellcheck disable=SC2086
    "$W/client" bench -c 8 -n 8 --drop-cache "$W/www" --json $urls > "$W/r.json" &
    cold=$!
    sleep 0.3; curl -sf -o /dev/null "http://127.0.0.1:$p/1k.bin" || true
    "$W/client" bench -c 1 -d 10m --rate 1K --probe "http://127.0.0.1:$p/1k.bin" --probe-rate "${PROBE_RATE:-200}" --json "http://127.0.0.1:$p/1k.bin" > "$W/p.json" &
    probe=$!
    wait "$cold" || true
    kill -TERM "$probe" 2>/dev/null || true
    wait "$probe" || true
    [ "$r" = 0 ] || python3 -c "import json; d=json.load(open('$W/r.json')); q=json.load(open('$W/p.json')); print('$r $t', q['probe']['latency_ms']['P99'], d['bytes_per_second'])" >> "$W/rows"
  done
done
python3 - "$W/rows" <<'PY'
import statistics as st, sys
by = {}
for line in open(sys.argv[1]):
    r, t, p99, bps = line.split()
    print(f"round {r} {t}: hot p99 {float(p99):.1f} ms, {float(bps) / 2**20:.0f} MiB/s")
    by.setdefault(r, {})[t] = (float(p99), float(bps))
for v in "AB":
    tp = [by[r][v][1] / by[r]["aio"][1] for r in by]
    lp = [by[r][v][0] / by[r]["aio"][0] for r in by]
    print(f"{v}: throughput / nginx-aio median {st.median(tp):.2f} {[round(x, 2) for x in tp]}; hot p99 / nginx-aio median {st.median(lp):.2f} {[round(x, 2) for x in lp]}")
PY
