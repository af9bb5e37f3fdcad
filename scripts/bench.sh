#!/usr/bin/env bash
# scripts/bench.sh — the side-by-side benchmark: offload against nginx (sendfile on), on
# 127.0.0.1, in one run, alternating the targets. Installs nginx, wrk and curl when they
# are missing (as root, via apt-get), makes the data set, runs the four measurements of
# issue #5 and writes bench-results.md (also printed). Takes a few minutes.
#   scripts/bench.sh [OUTPUT.md]
# Environment: ROUNDS (default 3), SLOW_CONNS (10000), SLOW_SECS (20), SLOW_RATE (4K),
# COLD_MB (384: size of each of the 8 cold files of 5b.; at 128 a round lasts under a
# second), COLD_ROUNDS (8: rounds of 5b., after one not counted; 0 skips 5b),
# PROBE_RATE (200: hot-file requests a second in 5., on a fixed schedule; 0 for back to back),
# COLD_BPS (268435456: the read cap, bytes/s, of 5a.'s disk-bound run; 0 skips it), COLD_CAP_MB (128: its files),
# COLD_CAP_ROUNDS (8), ONLY=cold (run 5. alone),
# ONLY=tls (run 6., HTTPS, alone), TLS_ROUNDS (7), TLS_SLOW ("2000 9000": slow HTTPS downloads held in 6.).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results.md}
ROUNDS=${ROUNDS:-3}
SLOW_CONNS=${SLOW_CONNS:-10000}
SLOW_SECS=${SLOW_SECS:-20}
SLOW_RATE=${SLOW_RATE:-4K}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "bench.sh: install ${need[*]} (or run as root)" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/offload-bench-XXXXXX)
pids=()
COLD_PIDS=() # step 5's client processes of the moment
cleanup() {
  for p in "${pids[@]}" ${COLD_PIDS[@]+"${COLD_PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"
  rmdir "/sys/fs/cgroup/blkio/offload-bench-$$" "/sys/fs/cgroup/offload-bench-$$" 2>/dev/null || true # disk_cap's
}
trap cleanup EXIT

echo "bench: building offload and the data set in $work"
go build -o "$work/offload" .
mkdir -p "$work/www" "$work/cache"
chmod 755 "$work" "$work/www"  # nginx workers run as nobody when started as root
head -c 1024 /dev/urandom > "$work/www/1k.bin"
mkdir -p "$work/hot"; cp "$work/www/1k.bin" "$work/hot/1k.bin" # the base's only: see cold_disk
head -c $((100 << 10)) /dev/urandom > "$work/www/100k.bin"
head -c $((10 << 20)) /dev/urandom > "$work/www/10m.bin"
head -c $((1 << 30)) /dev/urandom > "$work/www/1g.bin"
head -c $((100 << 20)) /dev/urandom > "$work/www/cold100m.bin"
cp "$work/www/cold100m.bin" "$work/www/cold100m-paced.bin"
COLD_MB=${COLD_MB:-384}; COLD_ROUNDS=${COLD_ROUNDS:-8}; TLS_ROUNDS=${TLS_ROUNDS:-7}; PROBE_RATE=${PROBE_RATE:-200}
COLD_BPS=${COLD_BPS:-$((256 << 20))}; COLD_CAP_MB=${COLD_CAP_MB:-128}; COLD_CAP_ROUNDS=${COLD_CAP_ROUNDS:-8}
mkdir -p "$work/www/s0"
for i in 1 2 3 4 5 6 7 8; do head -c $((COLD_MB << 20)) /dev/urandom > "$work/www/s0/disk$i.bin"; done
chmod -R a+rX "$work/www"

# HTTPS: one ECDSA P-256 certificate for 127.0.0.1, used by both servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem"  # nginx's workers read it as nobody when started as root

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BASE_PORT=$(free_port); NGINX_PORT=$(free_port); OFF_PORT=$(free_port); ADMIN_PORT=$(free_port)
NGINX_TLS_PORT=$(free_port); OFF_TLS_PORT=$(free_port)

# nginx: one worker, sendfile on. One instance is the base, another the peer under test.
nginx_conf() { # name port
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log;
events { worker_connections 20000; }
http {
  access_log $work/$1/access.log;
  client_body_temp_path $work/$1/body; proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/fcgi; uwsgi_temp_path $work/$1/uwsgi; scgi_temp_path $work/$1/scgi;
  sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 60s;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$2; root $work/www; ${3:-} }
}
CONF
  "$NGINX" -c "$work/$1/nginx.conf" -e "$work/$1/error.log" &
  pids+=($!)
}
nginx_conf base "$BASE_PORT" "location /hot/ { alias $work/hot/; }"
PEER_TLS="listen 127.0.0.1:$NGINX_TLS_PORT ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
nginx_conf peer "$NGINX_PORT" "$PEER_TLS"
AIO_PORT=$(free_port)
nginx_conf aio "$AIO_PORT" "aio threads;"
start_offload() {
  env ${OFF_ENV:-} "$work/offload" serve --base "http://127.0.0.1:$BASE_PORT" --listen "127.0.0.1:$OFF_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    --tls-listen "127.0.0.1:$OFF_TLS_PORT" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --max-conns 20000 --max-conns-per-ip 0 \
    --cache "$work/cache" --max-dupes 0 --revalidate 1h --loops "${OFF_LOOPS:-1}" ${OFF_ARGS:-} 2>> "$work/offload.log" &
  OFF_PID=$!
  pids+=($OFF_PID)
  sleep 1
}
start_offload
OFF="http://127.0.0.1:$OFF_PORT"; NGX="http://127.0.0.1:$NGINX_PORT"

cold_disk() {
  echo "bench: 5. cold disk: 8 clients read 8 different files, page cache emptied first, while a probe asks for the hot 1 KiB file"
  # As nginx's aio threads use the second core for the reads and copies of cold data,
  # offload runs here with its default, one loop per core (2 here). The servers read the
  # same files, offload from its local copy of the web space (--docroot: the same loop,
  # disk pool and sendfile as its cache files).
  kill "$OFF_PID"; wait "$OFF_PID" 2>/dev/null || true
  OFF_LOOPS=${COLD_LOOPS:-$(nproc)} OFF_ARGS="--docroot $work/www ${COLD_ARGS:-}" start_offload
  for k in 1 2 3; do cp -r "$work/www/s0" "$work/www/s$k"; done
  mkdir -p "$work/www/cap"
  for i in 1 2 3 4 5 6 7 8; do head -c $((COLD_CAP_MB << 20)) "$work/www/s0/disk$i.bin" > "$work/www/cap/disk$i.bin"; done
  chmod -R a+rX "$work/www"
  for k in s0 s1 s2 s3 cap; do for i in 1 2 3 4 5 6 7 8; do curl -sf -o /dev/null -r 0-0 "$OFF/$k/disk$i.bin"; done; done
  # offload's hot file is one of its cache, as in production (answered from memory on
  # the loop): /hot/ is only on the base, not in the --docroot, whose files are opened
  # afresh, off the loop, for every request. nginx's is the same file in its root.
  curl -sf -o /dev/null "$OFF/hot/1k.bin"; curl -sf -o /dev/null "$OFF/hot/1k.bin"
  NGX_PID=$(pgrep -P "$(cat "$work/peer/nginx.pid")" | head -1); AIO_PID=$(pgrep -P "$(cat "$work/aio/nginx.pid")" | head -1)
  COLD_TABLE=""
  # a. A disk-bound host: the servers' reads capped at COLD_BPS by the kernel's block
  # throttle (a cgroup), as a real disk caps them, and as this machine's did when issue
  # #14 was filed (253 MiB/s for all three servers). One copy of the files will do: the
  # cap is well below what the host's cache gives.
  local cg why="COLD_BPS=0" p procs
  procs=("$OFF_PID" "$(cat "$work/peer/nginx.pid")" "$NGX_PID" "$(cat "$work/aio/nginx.pid")" "$AIO_PID")
  local moved=() from=() f i
  if [ "$COLD_BPS" != 0 ] && cg=$(disk_cap "$work" "$COLD_BPS" 2>"$work/disk_cap.err"); then
    for p in "${procs[@]}"; do
      if ! f=$(cgroup_of "$p" "$cg") || ! echo "$p" 2>/dev/null > "$cg/cgroup.procs"; then
        echo "cannot move process ${p:-?} into $cg" > "$work/disk_cap.err"; break
      fi
      moved+=("$p"); from+=("$f")
    done
    [ ${#moved[@]} != ${#procs[@]} ] || cold_rounds cap "$COLD_CAP_ROUNDS"
  fi
  # Back where they were, and the cap gone: 5b and 6 must not run capped.
  for i in "${!moved[@]}"; do echo "${moved[$i]}" 2>/dev/null > "${from[$i]}/cgroup.procs" || true; done
  if [ -n "${cg:-}" ] && [ -d "$cg" ] && ! rmdir "$cg" 2>/dev/null; then
    echo "bench: cannot remove $cg (processes left in it: $(cat "$cg/cgroup.procs" | tr '\n' ' ')): the rest would run capped" >&2
    exit 1
  fi
  if [ -s "$work/cold_cap" ]; then
    COLD_TABLE=$(cold_table cap "5a. Cold disk, disk-bound: the servers' reads capped at $((COLD_BPS >> 20)) MiB/s (block throttle of a cgroup); 8 clients each read a different ${COLD_CAP_MB} MiB file")
  else
    [ "$COLD_BPS" = 0 ] || why=$(cat "$work/disk_cap.err")
    COLD_TABLE="5a. Cold disk, disk-bound: not run ($why).
"
  fi
  # b. This machine's own virtual disk, which its host caches: the same cold read runs
  # at 700 MiB/s to 3.7 GiB/s depending on the file's history (three cold reads of the
  # same 1.1 GiB in a row: 707, 1824, 3706 MiB/s; one copy of the files read at 750 MiB/s
  # a round by nginx-aio, another at 1550), whatever this machine's page cache holds.
  # So there are four copies, each read once a round, and the copy each server reads
  # turns with the rounds (a Latin square: over four rounds each server reads each copy
  # once). At these speeds the run is bound by the two cores that client, servers and
  # loopback share, not by the disk.
  [ "$COLD_ROUNDS" -gt 0 ] || return 0
  cold_rounds host "$COLD_ROUNDS"
  COLD_TABLE="$COLD_TABLE
$(cold_table host "5b. Cold disk, host-cached: the virtual disk as it is (its host caches it); 8 clients each read a different ${COLD_MB} MiB file, from four copies of the files, the copy each server reads turning with the rounds")"
}
# disk_cap DIR BPS: makes a cgroup whose reads from the disk holding DIR are capped at
# BPS bytes a second and prints its folder; where that cannot be done, says why on
# stderr and fails.
disk_cap() {
  local mm dev g
  mm=$(findmnt -no MAJ:MIN -T "$1" 2>/dev/null | head -1 | tr -d " ")
  if [ -z "$mm" ] || [ ! -e "/sys/dev/block/$mm" ]; then
    echo "$1 is on no block device (${mm:-?}: tmpfs, overlay or btrfs?), so nothing to cap" >&2; return 1
  fi
  dev=$mm; [ -e "/sys/dev/block/$mm/partition" ] && dev=$(cat "/sys/dev/block/$mm/../dev")
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then # cgroup v2
    g=/sys/fs/cgroup/offload-bench-$$
    if ! grep -qw io /sys/fs/cgroup/cgroup.controllers; then
      echo "no cgroup v2 io controller here" >&2; return 1
    fi
    if ! grep -qw io /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null && ! echo +io > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
      echo "cannot turn the cgroup v2 io controller on (needs root, outside a container's cgroup namespace)" >&2; return 1
    fi
    mkdir -p "$g" 2>/dev/null && echo "$dev rbps=$2" > "$g/io.max" 2>/dev/null ||
      { rmdir "$g" 2>/dev/null; echo "cannot cap $dev's reads in $g (needs root)" >&2; return 1; }
  elif [ -d /sys/fs/cgroup/blkio ]; then # cgroup v1
    g=/sys/fs/cgroup/blkio/offload-bench-$$
    mkdir -p "$g" 2>/dev/null && echo "$dev $2" > "$g/blkio.throttle.read_bps_device" 2>/dev/null ||
      { rmdir "$g" 2>/dev/null; echo "cannot cap $dev's reads in $g (needs root, and the kernel's block throttle)" >&2; return 1; }
  else
    echo "no cgroup blkio or io controller here" >&2; return 1
  fi
  echo "$g"
}
# cgroup_of PID CG: the folder of PID's cgroup in the hierarchy CG is in.
cgroup_of() {
  local root rel
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    root=/sys/fs/cgroup; rel=$(awk -F: '$1 == "0" {print $3}' "/proc/$1/cgroup")
  else
    root=$(dirname "$2"); rel=$(awk -F: '$2 ~ /(^|,)blkio(,|$)/ {print $3}' "/proc/$1/cgroup")
  fi
  echo "$root${rel%/}"
}
# cold_rounds MODE ROUNDS: ROUNDS rounds (after one not counted) of the four runs, into
# $work/cold_MODE: off, ngx and aio each serve the 8 cold readers while the probe asks
# them for the hot file; floor is the same cold load on nginx-aio while the probe asks an
# idle offload, which shows what the probe's latency owes to the machine (two cores for
# servers, client and loopback) rather than to the server under load. Every other round
# runs them in the opposite order, so that none always comes first, or always after the
# same one. The probe asks at a fixed rate (--probe-rate), timing each request from when
# it was due, so every server gets the same hot work meanwhile (back to back, a server
# that answers faster gets more: offload made 1500-1650 probe requests a round where
# nginx-aio made 300-450) and a stall counts for every request it held back.
cold_rounds() {
  local mode=$1 servers=(off ngx aio floor) rows="$work/cold_$1"
  : > "$rows"
  for round in $(seq 0 "$2"); do
    local order="0 1 2 3"; [ $((round % 2)) = 0 ] || order="3 2 1 0"
    for j in $order; do
      local t=${servers[$j]} set=cap host urls="" spid probe cpu0
      [ "$mode" = cap ] || set=s$(( (j + round) % 4 ))
      case $t in off) host=$OFF; probe=$OFF/hot/1k.bin; spid=$OFF_PID ;; ngx) host=$NGX; probe=$NGX/1k.bin; spid=$NGX_PID ;;
        aio|floor) host=http://127.0.0.1:$AIO_PORT; spid=$AIO_PID; probe=$host/1k.bin; [ "$t" = aio ] || probe=$OFF/hot/1k.bin ;; esac
      for i in 1 2 3 4 5 6 7 8; do urls="$urls $host/$set/disk$i.bin"; done
      drop=(--drop-cache "$work/www" --drop-cache "$work/cache"); [ "${COLD_DROP:-1}" = 1 ] || drop=()
      cpu0=$(cpu_ticks "$spid")
      # The probe is a process of its own (its main load: one connection reading the
      # hot file at 1 KB/s), started once the page cache is emptied and stopped (SIGTERM:
      # it reports) when the cold readers are done: in the cold readers' process its p99
      # was 15-16 ms even against an idle server, the client's own delays.
      # shellcheck disable=SC2086
      # (The background jobs drop the script's EXIT trap, which a subshell keeps until
      # it runs the command, and would run if killed before.)
      (trap - EXIT; exec "$work/offload" bench -c 8 -n 8 "${drop[@]}" --json $urls > "$work/disk.json") &
      local cold=$! ppid
      COLD_PIDS=("$cold")
      sleep 0.3 # the page cache emptied (--drop-cache), the hot file is read in again
      curl -sf -o /dev/null "$probe" || true
      (trap - EXIT; exec "$work/offload" bench -c 1 -d 2h --rate 1K --probe "$probe" --probe-rate "$PROBE_RATE" --json "$probe" > "$work/probe.json") &
      ppid=$!
      COLD_PIDS+=("$ppid")
      wait "$cold" || true
      sleep 0.5 # the probe has its signal handler by now, however short the cold run
      # SIGTERM, not SIGINT: a background job of a script starts with SIGINT ignored.
      # The probe ends its run on it and reports.
      kill -TERM "$ppid" 2>/dev/null || true
      wait "$ppid" || true
      COLD_PIDS=()
      # Rows: round, server, probe p99, bytes/s, probe requests, the server's CPU seconds
      # per GiB sent (all its threads), the client's CPU %.
      [ "$round" = 0 ] || echo "$round $t $(jget "$work/probe.json" "['probe']['latency_ms']['P99']") $(jget "$work/disk.json" "['bytes_per_second']") $(jget "$work/probe.json" "['probe']['requests']") $(awk -v d=$(( $(cpu_ticks "$spid") - cpu0 )) -v hz="$(getconf CLK_TCK)" -v b="$(jget "$work/disk.json" "['bytes']")" 'BEGIN {printf "%.3f", (b > 0 ? d / hz / (b / 2^30) : 0)}') $(jget "$work/disk.json" "['client_cpu_percent']")" >> "$rows"
    done
  done
}
# cold_table MODE TITLE: the table of cold_rounds MODE.
cold_table() {
  local rows="$work/cold_$1" p99 bps cpu t
  declare -A p99 bps cpu
  for t in off ngx aio floor; do
    p99[$t]=$(awk -v t=$t '$2==t {print $3}' "$rows" | median)
    bps[$t]=$(awk -v t=$t '$2==t {print $4}' "$rows" | median | awk '{printf "%.0f", $1 / 1048576}')
    cpu[$t]=$(awk -v t=$t '$2==t {print $6}' "$rows" | median | awk '{printf "%.2f", $1}')
  done
  # Ratios of each round (offload and nginx-aio ran back to back), then their median.
  local each rp99 rbps
  each=$(awk '{p[$1" "$2]=$3; b[$1" "$2]=$4; n[$1]++} END {for (r = 1; r in n; r++) if (p[r" off"] > 0 && p[r" aio"] > 0) printf "(%.2f, %.2f) ", p[r" off"]/p[r" aio"], b[r" off"]/b[r" aio"]}' "$rows")
  rp99=$(awk '{p[$1" "$2]=$3; n[$1]++} END {for (r in n) if (p[r" off"] > 0 && p[r" aio"] > 0) print p[r" off"]/p[r" aio"]}' "$rows" | median)
  rbps=$(awk '{b[$1" "$2]=$4; n[$1]++} END {for (r in n) if (b[r" off"] > 0 && b[r" aio"] > 0) print b[r" off"]/b[r" aio"]}' "$rows" | median)
  cat <<TABLE
$2, the page cache of the files emptied first (offload bench --drop-cache), while 2 keep-alive connections ask for a
hot 1 KiB file (a second process) $([ "$PROBE_RATE" = 0 ] && echo "back to back (--probe)" || echo "$PROBE_RATE times a second (--probe-rate), each timed from when it was due");
medians of $(awk '$2=="off"' "$rows" | wc -l) rounds, the servers' order reversed every other round, after a first round not counted.

| server | p99 of the hot 1 KiB file, ms | aggregate MiB/s of the 8 cold readers | server CPU s per GiB |
| --- | --- | --- | --- |
| offload (--disk-workers 16, --loops ${COLD_LOOPS:-$(nproc)}) | ${p99[off]} | ${bps[off]} | ${cpu[off]} |
| nginx, sendfile on | ${p99[ngx]} | ${bps[ngx]} | ${cpu[ngx]} |
| nginx, sendfile on + aio threads (1 worker, thread pool of 32) | ${p99[aio]} | ${bps[aio]} | ${cpu[aio]} |

offload / nginx-aio, the median of each round's ratio: hot p99 $(printf %.2f "$rp99") (lower is better), cold throughput $(printf %.2f "$rbps");
each round (p99, throughput): $each.
The probe made about $(awk '$2!="floor" {print $5}' "$rows" | median) requests a run, and the client (offload bench) used $(awk '$2!="floor" {print $7}' "$rows" | median | awk '{printf "%.0f", $1}')% CPU of $(nproc) cores' $(( $(nproc) * 100 ))%;
the probe's p99 against an idle offload while the same cold load ran on nginx-aio (the machine's floor) was ${p99[floor]} ms.
The probe runs in a process of its own; offload answers it from its cache (/hot/1k.bin, a file of the base's only), nginx from its root.
offload's disk deferrals so far (offload_disk_deferrals_total): $(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^offload_disk_deferrals_total/ {print $2}').
TABLE
}
https_step() {
  local offs="https://127.0.0.1:$OFF_TLS_PORT" ngxs="https://127.0.0.1:$NGINX_TLS_PORT"
  echo "bench: 6. HTTPS (TLS 1.3, ECDSA P-256, userspace TLS in both): one 1 GiB download, 1 KiB keep-alive, new connections, slow downloads"
  # The offload of step 5 has two loops and a --docroot: back to the one of steps 1-3.
  kill "$OFF_PID"; wait "$OFF_PID" 2>/dev/null || true
  start_offload
  for f in 1k.bin 10m.bin 1g.bin; do curl -sf --cacert "$work/cert.pem" -o /dev/null "$offs/$f"; curl -sf --cacert "$work/cert.pem" -o /dev/null "$ngxs/$f"; done
  : > "$work/tls_rows"
  for _ in $(seq "$TLS_ROUNDS"); do
    echo "t off $(curl -s --cacert "$work/cert.pem" -o /dev/null -w '%{speed_download}' "$offs/1g.bin")" >> "$work/tls_rows"
    echo "t ngx $(curl -s --cacert "$work/cert.pem" -o /dev/null -w '%{speed_download}' "$ngxs/1g.bin")" >> "$work/tls_rows"
    echo "k off $(wrk -t1 -c64 -d5s "$offs/1k.bin" | awk '/Requests\/sec/ {print $2}')" >> "$work/tls_rows"
    echo "k ngx $(wrk -t1 -c64 -d5s "$ngxs/1k.bin" | awk '/Requests\/sec/ {print $2}')" >> "$work/tls_rows"
    echo "h off $(wrk -t1 -c64 -d5s -H 'Connection: close' "$offs/1k.bin" | awk '/Requests\/sec/ {print $2}')" >> "$work/tls_rows"
    echo "h ngx $(wrk -t1 -c64 -d5s -H 'Connection: close' "$ngxs/1k.bin" | awk '/Requests\/sec/ {print $2}')" >> "$work/tls_rows"
  done
  row() { awk -v k="$1" -v t="$2" '$1==k && $2==t {print $3}' "$work/tls_rows" | median; }
  # The median of each round's ratio (the two ran back to back): this machine's speed
  # drifts by a fifth from one round to the next, more than between the servers.
  rratio() { awk -v k="$1" '$1==k && $2=="off" {o=$3} $1==k && $2=="ngx" && $3 > 0 {print o/$3}' "$work/tls_rows" | median; }
  TT_OFF=$(row t off); TT_NGX=$(row t ngx); TK_OFF=$(row k off); TK_NGX=$(row k ngx); TH_OFF=$(row h off); TH_NGX=$(row h ngx)
  TLS_TABLE=$(cat <<TABLE
6. HTTPS (TLS 1.3, ECDSA P-256; this kernel has no kTLS, so both encrypt in userspace); offload --loops 1, nginx 1 worker; medians of $TLS_ROUNDS rounds
(both in turn in each round; nginx negotiates TLS_AES_256_GCM_SHA384 with curl and wrk, offload TLS_AES_128_GCM_SHA256, as Go prefers with AES hardware).

| measurement | offload | nginx | offload / nginx |
| --- | --- | --- | --- |
| one client, cached 1 GiB file (curl), MiB/s | $(awk -v v="$TT_OFF" 'BEGIN{printf "%.0f", v/1048576}') | $(awk -v v="$TT_NGX" 'BEGIN{printf "%.0f", v/1048576}') | $(ratio "$TT_OFF" "$TT_NGX") |
| 1 KiB cached file, keep-alive, 64 conns (wrk -t1), req/s | $(printf '%.0f' "$TK_OFF") | $(printf '%.0f' "$TK_NGX") | $(ratio "$TK_OFF" "$TK_NGX") |
| new connections (a handshake per request: wrk -t1 -c64, Connection: close), req/s | $(printf '%.0f' "$TH_OFF") | $(printf '%.0f' "$TH_NGX") | $(ratio "$TH_OFF" "$TH_NGX") |
TABLE
)
  for n in ${TLS_SLOW:-2000 9000}; do
    # Fresh processes, as in 3.
    kill "$OFF_PID"; wait "$OFF_PID" 2>/dev/null || true
    start_offload
    curl -sf --cacert "$work/cert.pem" -o /dev/null -r 0-0 "$offs/10m.bin"
    kill -QUIT "$(cat "$work/peer/nginx.pid")"; sleep 1
    nginx_conf peer "$NGINX_PORT" "$PEER_TLS"; sleep 1
    NGINX_WORKER=$(pgrep -P "$(cat "$work/peer/nginx.pid")" | head -1)
    curl -sf --cacert "$work/cert.pem" -o /dev/null -r 0-0 "$ngxs/10m.bin"
    "$work/offload" bench -c "$n" -d "${SLOW_SECS}s" --rate "$SLOW_RATE" --cacert "$work/cert.pem" --pid "$OFF_PID" --json "$offs/10m.bin" > "$work/tslow_off.json" || true
    "$work/offload" bench -c "$n" -d "${SLOW_SECS}s" --rate "$SLOW_RATE" --cacert "$work/cert.pem" --pid "$NGINX_WORKER" --json "$ngxs/10m.bin" > "$work/tslow_ngx.json" || true
    local so sn po pn
    so=$(jget "$work/tslow_off.json" "['target_rss_per_connection_bytes']"); sn=$(jget "$work/tslow_ngx.json" "['target_rss_per_connection_bytes']")
    po=$(jget "$work/tslow_off.json" "['peak_open_connections']"); pn=$(jget "$work/tslow_ngx.json" "['peak_open_connections']")
    TLS_TABLE="$TLS_TABLE
| RSS per download, $n slow HTTPS downloads of 10 MiB at $SLOW_RATE/s (peak open) | $(awk -v v="$so" 'BEGIN{printf "%.2f KiB", v/1024}') ($po) | $(awk -v v="$sn" 'BEGIN{printf "%.2f KiB", v/1024}') ($pn) | $(ratio "$so" "$sn") |"
  done
  HS=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^offload_tls_handshakes_total/ {printf "%s %s; ", $1, $2}')
  TLS_TABLE="$TLS_TABLE

offload / nginx, the median of each round's ratio: one download $(printf %.2f "$(rratio t)"), keep-alive $(printf %.2f "$(rratio k)"), new connections $(printf %.2f "$(rratio h)").
Each round (offload, nginx): 1 GiB MiB/s $(awk '$1=="t" {printf "%s %.0f%s", ($2=="off" ? "(" : ""), $3/1048576, ($2=="off" ? "," : ") ")}' "$work/tls_rows");
keep-alive req/s $(awk '$1=="k" {printf "%s %.0f%s", ($2=="off" ? "(" : ""), $3, ($2=="off" ? "," : ") ")}' "$work/tls_rows");
new connections/s $(awk '$1=="h" {printf "%s %.0f%s", ($2=="off" ? "(" : ""), $3, ($2=="off" ? "," : ") ")}' "$work/tls_rows").
offload's handshake counters after the slow runs: $HS"
}
jget() { python3 -c "import json,sys; d=json.load(open('$1')); print(d$2)"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # a process's user+system CPU, in clock ticks
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
if [ "${ONLY:-}" = tls ]; then
  https_step
  { echo "# offload benchmark results (HTTPS only)"; echo; echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, Linux $(uname -r), $("$NGINX" -v 2>&1 | sed 's/.*: //')."; echo; echo "$TLS_TABLE"; } > "$out"
  cat "$out"
  exit 0
fi
if [ "${ONLY:-}" = cold ]; then
  cold_disk
  { echo "# offload benchmark results (cold disk only)"; echo; echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, Linux $(uname -r)."; echo; echo "$COLD_TABLE"; } > "$out"
  cat "$out"
  exit 0
fi

echo "bench: warming the offload cache"
for f in 1k.bin 100k.bin 10m.bin 1g.bin; do curl -sf -o /dev/null "$OFF/$f"; curl -sf -o /dev/null "$NGX/$f"; done

echo "bench: 1. one client, cached 1 GiB file ($ROUNDS rounds each, alternating)"
: > "$work/t_off"; : > "$work/t_ngx"
for _ in $(seq "$ROUNDS"); do
  curl -s -o /dev/null -w '%{speed_download}\n' "$OFF/1g.bin" >> "$work/t_off"
  curl -s -o /dev/null -w '%{speed_download}\n' "$NGX/1g.bin" >> "$work/t_ngx"
done
T_OFF=$(median < "$work/t_off"); T_NGX=$(median < "$work/t_ngx")

echo "bench: 2. 1 KiB file, keep-alive, 256 connections (wrk, $ROUNDS rounds each)"
: > "$work/r_off"; : > "$work/r_ngx"
for _ in $(seq "$ROUNDS"); do
  wrk -t1 -c256 -d5s "$OFF/1k.bin" | awk '/Requests\/sec/ {print $2}' >> "$work/r_off"
  wrk -t1 -c256 -d5s "$NGX/1k.bin" | awk '/Requests\/sec/ {print $2}' >> "$work/r_ngx"
done
R_OFF=$(median < "$work/r_off"); R_NGX=$(median < "$work/r_ngx")

echo "bench: 3. $SLOW_CONNS slow downloads of the 10 MiB file at $SLOW_RATE/s each, ${SLOW_SECS}s"
# Fresh processes, so the RSS measured is what the downloads cost, not what earlier
# tests left in the allocator. offload finds its cache on disk again when it starts.
kill "$OFF_PID"; wait "$OFF_PID" 2>/dev/null || true
start_offload
curl -sf -o /dev/null -r 0-0 "$OFF/10m.bin"
kill -QUIT "$(cat "$work/peer/nginx.pid")"; sleep 1
nginx_conf peer "$NGINX_PORT" "$PEER_TLS"; sleep 1
NGINX_WORKER=$(pgrep -P "$(cat "$work/peer/nginx.pid")" | head -1)
curl -sf -o /dev/null -r 0-0 "$NGX/10m.bin"
"$work/offload" bench -c "$SLOW_CONNS" -d "${SLOW_SECS}s" --rate "$SLOW_RATE" --pid "$OFF_PID" --json "$OFF/10m.bin" > "$work/slow_off.json" || true
"$work/offload" bench -c "$SLOW_CONNS" -d "${SLOW_SECS}s" --rate "$SLOW_RATE" --pid "$NGINX_WORKER" --json "$NGX/10m.bin" > "$work/slow_ngx.json" || true
S_OFF=$(jget "$work/slow_off.json" "['target_rss_per_connection_bytes']"); S_NGX=$(jget "$work/slow_ngx.json" "['target_rss_per_connection_bytes']")
P_OFF=$(jget "$work/slow_off.json" "['peak_open_connections']"); P_NGX=$(jget "$work/slow_ngx.json" "['peak_open_connections']")
PR_OFF=$(jget "$work/slow_off.json" "['target_peak_rss_bytes']"); PR_NGX=$(jget "$work/slow_ngx.json" "['target_peak_rss_bytes']")
CPU_B=$(jget "$work/slow_off.json" "['client_cpu_percent']")

echo "bench: 4. 100 simultaneous cold requests for a 100 MiB file"
grep -c 'cold100m' "$work/base/access.log" > /dev/null 2>&1 || true
"$work/offload" bench -c 100 -n 100 --verify --json "$OFF/cold100m.bin" > "$work/cold.json" || true
sleep 1
GETS=$(grep -c '"GET /cold100m.bin' "$work/base/access.log" || true)
HEADS=$(grep -c '"HEAD /cold100m.bin' "$work/base/access.log" || true)
C_OK=$(jget "$work/cold.json" "['statuses'].get('200', 0)")
C_TTFB50=$(jget "$work/cold.json" "['first_byte_ms']['P50']"); C_TTFB99=$(jget "$work/cold.json" "['first_byte_ms']['P99']")
C_TTLB50=$(jget "$work/cold.json" "['last_byte_ms']['P50']"); C_TTLB99=$(jget "$work/cold.json" "['last_byte_ms']['P99']")
# The same with clients reading 1 MiB/s each, so that the first byte measures the server
# rather than 100 clients competing with it for 2 cores.
"$work/offload" bench -c 100 -d 5s --rate 1M --json "$OFF/cold100m-paced.bin" > "$work/cold_paced.json" || true
sleep 1
P_GETS=$(grep -c '"GET /cold100m-paced.bin' "$work/base/access.log" || true)
P_TTFB50=$(jget "$work/cold_paced.json" "['first_byte_ms']['P50']"); P_TTFB99=$(jget "$work/cold_paced.json" "['first_byte_ms']['P99']")
cold_disk
https_step
BASE_TTFB=$(curl -s -o /dev/null -w '%{time_starttransfer}' -H 'X-Mod-Offload-Bypass: true' "http://127.0.0.1:$BASE_PORT/cold100m.bin" | awk '{printf "%.2f", $1*1000}')

{
  echo "# offload benchmark results"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/ {print $2}') GiB,"
  echo "Linux $(uname -r); offload $("$work/offload" version | awk '{print $2}'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(go version | awk '{print $3}')."
  echo "Both servers on 127.0.0.1 with one worker (nginx worker_processes 1, sendfile on; offload --loops 1 --revalidate 1h --max-dupes 0, so a hit asks nothing of the base), same files, alternating, medians of $ROUNDS rounds."
  echo
  echo "| measurement | offload | nginx | offload / nginx |"
  echo "| --- | --- | --- | --- |"
  echo "| 1. one client, cached 1 GiB file (curl), MiB/s | $(awk -v v="$T_OFF" 'BEGIN{printf "%.0f", v/1048576}') | $(awk -v v="$T_NGX" 'BEGIN{printf "%.0f", v/1048576}') | $(ratio "$T_OFF" "$T_NGX") |"
  echo "| 2. 1 KiB cached file, keep-alive, 256 conns (wrk -t1), req/s | $(printf '%.0f' "$R_OFF") | $(printf '%.0f' "$R_NGX") | $(ratio "$R_OFF" "$R_NGX") |"
  echo "| 3. RSS per download, $SLOW_CONNS slow downloads of 10 MiB at $SLOW_RATE/s (peak open) | $(awk -v v="$S_OFF" 'BEGIN{printf "%.2f KiB", v/1024}') ($P_OFF) | $(awk -v v="$S_NGX" 'BEGIN{printf "%.2f KiB", v/1024}') ($P_NGX) | $(ratio "$S_OFF" "$S_NGX") |"
  echo "| 3. peak RSS of the server process | $(awk -v v="$PR_OFF" 'BEGIN{printf "%.1f MiB", v/1048576}') | $(awk -v v="$PR_NGX" 'BEGIN{printf "%.1f MiB", v/1048576}') | |"
  echo
  echo "4. 100 simultaneous cold requests for a 100 MiB file through offload: $C_OK of 100 got 200 with identical bytes;"
  echo "the base saw $GETS GET and $HEADS HEAD for it; first byte p50 ${C_TTFB50} ms, p99 ${C_TTFB99} ms; last byte p50 ${C_TTLB50} ms, p99 ${C_TTLB99} ms."
  echo "With the 100 clients reading 1 MiB/s each: the base saw $P_GETS GET; first byte p50 ${P_TTFB50} ms, p99 ${P_TTFB99} ms"
  echo "(the base's own time to first byte for that file: ${BASE_TTFB} ms)."
  echo
  echo "$COLD_TABLE"
  echo
  echo "$TLS_TABLE"
  echo
  echo "offload bench's own CPU during 3.: $(printf "%.0f" "$CPU_B")% of one core. Reproduce: \`scripts/bench.sh\`."
} > "$out"
cat "$out"
