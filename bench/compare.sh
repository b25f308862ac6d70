#!/usr/bin/env bash
# Herald against nginx + Nchan, side by side, in one run (issue 3).
#
#   bench/compare.sh                   # 3 runs of every scenario (about 15 minutes)
#   RUNS=1 bench/compare.sh            # a quick pass
#   SCENARIOS="idle-sse fanout-ws" RUNS=1 bench/compare.sh
#
# What it does:
#   1. installs nginx and the Nchan module from apt when they are missing
#      (never starts, stops or reconfigures the system's nginx service);
#   2. builds Herald from this tree;
#   3. for every scenario and run, starts a fresh server, runs `herald bench`
#      against it, stops it, and does the same for the other server with the
#      same bench parameters (the order alternates from run to run);
#   4. prints a markdown table (median and min–max over the runs) and keeps
#      every JSON report and server log in $OUT.
#
# Both servers listen on 127.0.0.1 only (HERALD_PORT, NCHAN_PORT), each
# process stays under 19 000 sockets. nginx runs from bench/nginx/nchan.conf
# with a private prefix in a temporary directory; its figures are summed
# over the master and the worker process (worker_processes 1).
#
# Environment:
#   RUNS=3                 runs per scenario and server
#   SCENARIOS="idle-sse idle-ws fanout-sse fanout-ws hot-sse hot-ws"
#   HERALD_PORT=18080 NCHAN_PORT=18081
#   IDLE_HOLD=5s           how long idle connections are held
#   DURATION=20s DRAIN=10s publishing time and drain of the fan-out and hot scenarios
#   BENCH_WORKERS=2        bench subscriber processes
#   BENCH_TIMEOUT=400      seconds one bench run may take before it is killed
#   OUT=DIR                where reports go (default: a new /tmp/herald-compare.XXXXXX, kept)
#   NO_INSTALL=1           fail instead of installing nginx / Nchan
#   QUIET_WAIT=120         before each run, wait up to this many seconds for the
#                          rest of the machine to go quiet (under QUIET_CORES=0.2
#                          cores busy); the run goes ahead anyway after that
#
# The load generator shares the machine with the server, so other work on it
# skews both: for every run the script records the CPU the rest of the machine
# used (SCENARIO.SERVER.RUN.machine.json), and the table shows it.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD

RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-"idle-sse idle-ws fanout-sse fanout-ws hot-sse hot-ws"}
HERALD_PORT=${HERALD_PORT:-18080}
NCHAN_PORT=${NCHAN_PORT:-18081}
IDLE_HOLD=${IDLE_HOLD:-5s}
DURATION=${DURATION:-20s}
DRAIN=${DRAIN:-10s}
BENCH_WORKERS=${BENCH_WORKERS:-2}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-400}
QUIET_WAIT=${QUIET_WAIT:-120}
QUIET_CORES=${QUIET_CORES:-0.2}
NCHAN_CONF_TEMPLATE=$REPO/bench/nginx/nchan.conf

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Functions shared with the other bench scripts: stop_pid, port_open,
# wait_port, machine_busy, proc_ticks, wait_quiet.
# shellcheck source=bench/lib.sh
source bench/lib.sh # the scripts run from the repository root (cd above)

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS: want a positive integer"
for p in "$HERALD_PORT" "$NCHAN_PORT"; do
	if ! [[ $p =~ ^[0-9]+$ ]] || ((p <= 1024 || p >= 65536)); then die "port $p: want 1025-65535"; fi
done
[[ $HERALD_PORT != "$NCHAN_PORT" ]] || die "HERALD_PORT and NCHAN_PORT must differ"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "QUIET_WAIT=$QUIET_WAIT: want whole seconds"
[[ $QUIET_CORES =~ ^[0-9]*\.?[0-9]+$ ]] || die "QUIET_CORES=$QUIET_CORES: want a number"

# Herald runs with its defaults: no HERALD_* variable of the caller applies.
while read -r v; do
	if [[ $v == HERALD_* ]]; then unset "$v"; fi
done < <(compgen -e)

WORK=$(mktemp -d /tmp/herald-compare-work.XXXXXX)
OUT=${OUT:-$(mktemp -d /tmp/herald-compare.XXXXXX)}
mkdir -p "$OUT"

# Processes started by this script, stopped on exit whatever happens.
HERALD_PID=
NGINX_PID=
BENCH_PID=


# nginx_workers MASTER: the PIDs of the master's children, one a line.
nginx_workers() { pgrep -P "$1" || true; }

stop_herald() {
	stop_pid "$HERALD_PID" herald
	HERALD_PID=
}

stop_nginx() {
	local master=$NGINX_PID w i
	[[ -n $master ]] || return 0
	local workers
	workers=$(nginx_workers "$master")
	stop_pid "$master" "nginx master"
	# The master waits for its workers on SIGTERM; make sure none outlives it.
	for w in $workers; do
		for ((i = 0; i < 50; i++)); do
			kill -0 "$w" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$w" 2>/dev/null || true
	done
	NGINX_PID=
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$BENCH_PID" "herald bench"
	stop_herald
	stop_nginx
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



# ---- CPU accounting ----------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)



# server_ticks PIDS: proc_ticks summed over comma-separated PIDS.
server_ticks() {
	local pid sum=0
	for pid in ${1//,/ }; do sum=$((sum + $(proc_ticks "$pid"))); done
	echo "$sum"
}


# ---- 1. nginx + Nchan ------------------------------------------------------

NCHAN_MODULE=

find_nchan() {
	local m
	NCHAN_MODULE=
	command -v nginx >/dev/null || return 1
	for m in /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so; do
		if [[ -f $m ]]; then
			NCHAN_MODULE=$m
			return 0
		fi
	done
	return 1
}

install_nchan() {
	local sudo=() pkgs=() policy_added=0 p
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "nginx / Nchan missing and not root: apt-get install nginx-light libnginx-mod-nchan"
		sudo=(sudo)
	fi
	log "installing nginx and the Nchan module from apt"
	"${sudo[@]}" apt-get update -qq
	# Debian 12 has nginx-light; later releases fold the flavours into nginx.
	for p in nginx-light nginx; do
		if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
			pkgs+=("$p")
			break
		fi
	done
	((${#pkgs[@]} > 0)) || die "apt has no nginx package"
	apt-cache policy libnginx-mod-nchan 2>/dev/null | grep -q 'Candidate: [0-9]' ||
		die "apt has no libnginx-mod-nchan package"
	pkgs+=(libnginx-mod-nchan)
	# Installing must not start the system's nginx service: without a
	# policy-rc.d (Docker images ship one), add one for the install only.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
		"${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
		policy_added=1
	fi
	local rc=0
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 || rc=$?
	if ((policy_added)); then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
	((rc == 0)) || die "apt-get install ${pkgs[*]} failed"
}

if ! find_nchan; then
	[[ -z ${NO_INSTALL:-} ]] || die "nginx or the Nchan module is missing (NO_INSTALL is set)"
	install_nchan
	find_nchan || die "nginx / ngx_nchan_module.so still missing after the install"
fi
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
NCHAN_VERSION=$(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown)
log "using $NGINX_VERSION, Nchan $NCHAN_VERSION ($NCHAN_MODULE)"

# ---- 2. Herald ---------------------------------------------------------------

log "building herald and compare-table"
go build -o "$WORK/herald" ./cmd/herald
go build -o "$WORK/compare-table" ./bench/cmd/compare-table
HERALD=$WORK/herald

for p in "$HERALD_PORT" "$NCHAN_PORT"; do
	if port_open "$p"; then die "127.0.0.1:$p is already in use: set HERALD_PORT / NCHAN_PORT"; fi
done

# start_herald LOG: a fresh herald serve with its defaults; sets SERVER_PIDS.
start_herald() {
	rm -rf "$WORK/herald-data"
	mkdir -p "$WORK/herald-data"
	HERALD_SHUTDOWN_TIMEOUT=3s "$HERALD" serve --listen "127.0.0.1:$HERALD_PORT" \
		--data-dir "$WORK/herald-data" >"$1" 2>&1 &
	HERALD_PID=$!
	wait_port "$HERALD_PORT" "$HERALD_PID" herald
	SERVER_PIDS=$HERALD_PID
}

# start_nginx LOG: a fresh nginx + Nchan from the template; sets SERVER_PIDS
# to the master's and the worker's PIDs.
start_nginx() {
	local prefix=$WORK/nginx workers i
	rm -rf "$prefix"
	mkdir -p "$prefix"
	# The worker runs as an unprivileged user when nginx starts as root.
	chmod 755 "$WORK" "$prefix"
	sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$NCHAN_PORT|g" -e "s|@NCHAN_MODULE@|$NCHAN_MODULE|g" \
		"$NCHAN_CONF_TEMPLATE" >"$prefix/nchan.conf"
	nginx -p "$prefix/" -e "$prefix/error.log" -c "$prefix/nchan.conf" -g 'daemon off;' >"$1" 2>&1 &
	NGINX_PID=$!
	wait_port "$NCHAN_PORT" "$NGINX_PID" nginx
	for ((i = 0; i < 50; i++)); do
		workers=$(nginx_workers "$NGINX_PID" | paste -sd, -)
		[[ -z $workers ]] || break
		sleep 0.1
	done
	[[ -n $workers ]] || die "no nginx worker process"
	SERVER_PIDS=$NGINX_PID,$workers
}

# ---- 3. scenarios ------------------------------------------------------------

# scenario_args NAME: the bench flags of a scenario (both servers).
scenario_args() {
	local common=(--workers "$BENCH_WORKERS" --progress=false --connect-timeout 60s)
	case $1 in
	idle-sse | idle-ws)
		echo "${common[@]}" --transport "${1#idle-}" --subscribers 15000 --channels 100 --rate 0 --duration "$IDLE_HOLD"
		;;
	fanout-sse | fanout-ws)
		echo "${common[@]}" --transport "${1#fanout-}" --subscribers 10000 --channels 100 --rate 2000 \
			--duration "$DURATION" --drain "$DRAIN" --publishers 100
		;;
	hot-sse | hot-ws)
		echo "${common[@]}" --transport "${1#hot-}" --subscribers 10000 --channels 1 --rate 50 \
			--duration "$DURATION" --drain "$DRAIN" --publishers 1
		;;
	*) die "unknown scenario $1 (idle-sse idle-ws fanout-sse fanout-ws hot-sse hot-ws)" ;;
	esac
}

# server_args SERVER TRANSPORT: the endpoints of a server; both publish the
# bench payload as the raw request body.
server_args() {
	case $1 in
	herald) echo --url "http://127.0.0.1:$HERALD_PORT" --publish-path '/v1/publish/{channel}' \
		--subscribe-path "/v1/$2?channel={channel}" ;;
	nchan) echo --url "http://127.0.0.1:$NCHAN_PORT" --publish-path '/pub/{channel}' \
		--subscribe-path '/sub/{channel}' ;;
	esac
}

for s in $SCENARIOS; do scenario_args "$s" >/dev/null; done
{
	echo "date: $(date -u +%FT%TZ)"
	echo "host: $(nproc) CPUs, $(uname -sr)"
	echo "herald: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (modified tree)')"
	echo "nchan: $NGINX_VERSION, libnginx-mod-nchan $NCHAN_VERSION, worker_processes 1"
	echo "runs: $RUNS; scenarios: $SCENARIOS"
} >"$OUT/environment.txt"
log "results in $OUT"

failures=0
for scenario in $SCENARIOS; do
	read -ra sargs <<<"$(scenario_args "$scenario")"
	transport=${scenario##*-}
	for ((run = 1; run <= RUNS; run++)); do
		order=(herald nchan)
		if ((run % 2 == 0)); then order=(nchan herald); fi
		for server in "${order[@]}"; do
			base=$OUT/$scenario.$server.$run
			wait_quiet
			case $server in
			herald) start_herald "$base.server.log" ;;
			nchan) start_nginx "$base.server.log" ;;
			esac
			read -ra targs <<<"$(server_args "$server" "$transport")"
			log "$scenario run $run/$RUNS: $server (server pids $SERVER_PIDS)"
			# In the background, so that a signal to this script is handled
			# at once (timeout forwards SIGTERM to the bench, which stops its
			# worker processes).
			t0=${EPOCHREALTIME/./} m0=$(machine_busy) s0=$(server_ticks "$SERVER_PIDS") c0=$(proc_ticks $$ children)
			timeout --kill-after=10 "$BENCH_TIMEOUT" "$HERALD" bench "${sargs[@]}" "${targs[@]}" \
				--server-pid "$SERVER_PIDS" --json "$base.json" >"$base.txt" 2>&1 &
			BENCH_PID=$!
			rc=0
			wait "$BENCH_PID" || rc=$?
			BENCH_PID=
			# What the machine, the server and the bench (with its worker
			# processes, all waited for) used while the bench ran.
			printf '{"wall_us":%d,"clk_tck":%d,"cpus":%d,"machine_busy_ticks":%d,"server_ticks":%d,"bench_ticks":%d}\n' \
				$((${EPOCHREALTIME/./} - t0)) "$CLK_TCK" "$(nproc)" $(($(machine_busy) - m0)) \
				$(($(server_ticks "$SERVER_PIDS") - s0)) $(($(proc_ticks $$ children) - c0)) >"$base.machine.json"
			sed 's/^/    /' "$base.txt" | grep -E 'connect |deliveries |latency |integrity|server |result|error' >&2 || true
			if ((rc != 0)); then
				failures=$((failures + 1))
				log "$scenario run $run: $server bench exit $rc (see $base.txt)"
			fi
			case $server in
			herald) stop_herald ;;
			nchan)
				cp "$WORK/nginx/error.log" "$base.nginx-error.log" 2>/dev/null || true
				stop_nginx
				;;
			esac
		done
	done
done

# ---- 4. table ----------------------------------------------------------------

"$WORK/compare-table" -scenarios "$SCENARIOS" -servers herald,nchan "$OUT" | tee "$OUT/table.md"
log "reports: $OUT (table.md, SCENARIO.SERVER.RUN.json/.txt); $failures bench runs did not end OK"
