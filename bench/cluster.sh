#!/usr/bin/env bash
# Herald on one node against three nodes on NATS and on Redis, same load, in one run.
#
#   bench/cluster.sh                   # 3 runs of every setup (about 6 minutes)
#   RUNS=1 bench/cluster.sh            # a quick pass
#   SETUPS="single nats" DURATION=10s RUNS=1 bench/cluster.sh
#
# Setups:
#   single  one `herald serve` with the in-process broker (--broker memory)
#   nats    NODES (3) `herald serve --broker nats://…` on one nats-server with
#           JetStream (-js, data in a temporary directory); history follows the
#           broker (JetStream)
#   redis   NODES (3) `herald serve --broker redis://…` on one redis-server
#           (appendonly yes, data in a temporary directory); history follows the
#           broker (Redis Streams)
#
# What it does: builds herald once; then, for every run, each setup in turn
# (the order rotates from run to run): starts the engine and the nodes fresh,
# waits until every node answers /readyz, runs one `herald bench` with the
# nodes' URLs comma-separated (each channel's subscribers are spread over
# every node, and the publishers too, so most deliveries cross nodes) and the
# nodes' pids (--server-pid sums them), stops everything, and records the CPU
# the nodes, the engine, the bench and the rest of the machine used. At the end
# it prints a markdown table (median and min–max over the runs) and how much
# the engine adds to p99 against the single node. Every JSON report, summary
# and log stays in $OUT.
#
# Everything listens on 127.0.0.1 only; every process it starts is stopped on
# exit (trap), and every wait is bounded.
#
# Environment (defaults: 100 000 deliveries/s in total):
#   RUNS=3                   runs per setup
#   SETUPS="single nats redis"
#   NODES=3                  nodes of the nats and redis setups
#   TRANSPORT=sse            sse or ws
#   SUBSCRIBERS=3000 CHANNELS=30 RATE=1000   subscribers, channels, messages/s in total
#   DURATION=20s WARMUP=3s DRAIN=5s          measured window, warm-up before it, drain after
#   PUBLISHERS=CHANNELS      concurrent publishers (publisher j sends to node j mod NODES)
#   PAYLOAD_BYTES=100
#   BENCH_WORKERS=1          bench subscriber processes (each ≤ 19 000 connections)
#   BENCH_ARGS=              more `herald bench` flags, e.g. "--reader goroutine"
#   BASE_PORT=18180          node k listens on 127.0.0.1:BASE_PORT+k-1
#   NATS_PORT=14222 REDIS_PORT=16379
#   NATS_SERVER=nats-server REDIS_SERVER=redis-server   the engines' binaries
#   BENCH_TIMEOUT=300        seconds one bench run may take before it is killed
#   OUT=DIR                  where reports go (default: a new /tmp/herald-cluster.XXXXXX, kept)
#   QUIET_WAIT=60            before each run, wait up to this many seconds for the
#                            rest of the machine to go quiet (under QUIET_CORES=0.2
#                            cores busy); the run goes ahead anyway after that
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD

RUNS=${RUNS:-3}
SETUPS=${SETUPS:-"single nats redis"}
NODES=${NODES:-3}
TRANSPORT=${TRANSPORT:-sse}
SUBSCRIBERS=${SUBSCRIBERS:-3000}
CHANNELS=${CHANNELS:-30}
RATE=${RATE:-1000}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
DRAIN=${DRAIN:-5s}
PUBLISHERS=${PUBLISHERS:-$CHANNELS}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-100}
BENCH_WORKERS=${BENCH_WORKERS:-1}
BENCH_ARGS=${BENCH_ARGS:-}
BASE_PORT=${BASE_PORT:-18180}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
NATS_SERVER=${NATS_SERVER:-nats-server}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_CORES=${QUIET_CORES:-0.2}

log() { printf '[cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Functions shared with the other bench scripts: stop_pid, port_open,
# wait_port, machine_busy, proc_ticks, wait_quiet.
# shellcheck source=bench/lib.sh
source bench/lib.sh # the scripts run from the repository root (cd above)

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS: want a positive integer"
if ! [[ $NODES =~ ^[1-9][0-9]*$ ]] || ((NODES > 16)); then die "NODES=$NODES: want 1-16"; fi
for v in SUBSCRIBERS CHANNELS PUBLISHERS PAYLOAD_BYTES BENCH_WORKERS BENCH_TIMEOUT QUIET_WAIT; do
	is_uint "${!v}" || die "$v=${!v}: want a whole number"
done
[[ $RATE =~ ^[0-9]*\.?[0-9]+$ ]] || die "RATE=$RATE: want a number"
[[ $QUIET_CORES =~ ^[0-9]*\.?[0-9]+$ ]] || die "QUIET_CORES=$QUIET_CORES: want a number"
for s in $SETUPS; do
	case $s in single | nats | redis) ;; *) die "unknown setup $s (single nats redis)" ;; esac
done
PORTS=()
for ((k = 0; k < NODES; k++)); do PORTS+=($((BASE_PORT + k))); done
for p in "${PORTS[@]}" "$NATS_PORT" "$REDIS_PORT"; do
	if ! is_uint "$p" || ((p <= 1024 || p >= 65536)); then die "port $p: want 1025-65535"; fi
done
[[ $(printf '%s\n' "${PORTS[@]}" "$NATS_PORT" "$REDIS_PORT" | sort -u | wc -l) -eq $((NODES + 2)) ]] ||
	die "the node ports (BASE_PORT…), NATS_PORT and REDIS_PORT must all differ"
command -v jq >/dev/null || die "jq is needed for the table (apt-get install jq)"
for s in $SETUPS; do
	case $s in
	nats) command -v "$NATS_SERVER" >/dev/null || die "$NATS_SERVER not found (set NATS_SERVER)" ;;
	redis) command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER not found (set REDIS_SERVER)" ;;
	esac
done

# Herald runs with its defaults: no HERALD_* variable of the caller applies.
while read -r v; do
	if [[ $v == HERALD_* ]]; then unset "$v"; fi
done < <(compgen -e)

WORK=$(mktemp -d /tmp/herald-cluster-work.XXXXXX)
OUT=${OUT:-$(mktemp -d /tmp/herald-cluster.XXXXXX)}
mkdir -p "$OUT"

# Processes started by this script, stopped on exit whatever happens.
NODE_PIDS=()
ENGINE_PID=
BENCH_PID=


# stop_nodes: SIGTERM to every node at once, then wait for each.
stop_nodes() {
	local pid
	for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${NODE_PIDS[@]}"; do stop_pid "$pid" "herald node" sent; done
	NODE_PIDS=()
}

stop_engine() {
	stop_pid "$ENGINE_PID" engine
	ENGINE_PID=
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$BENCH_PID" "herald bench"
	stop_nodes
	stop_engine
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



# wait_ready PORT PID NAME LOG: up to 20 s for /readyz to answer 200 (the
# node's broker is healthy).
wait_ready() {
	local port=$1 pid=$2 name=$3 logf=$4 i
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited at startup (log: $logf)"
		if [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null) == 200 ]]; then
			return 0
		fi
		sleep 0.1
	done
	die "$name is not ready (/readyz) after 20 s (log: $logf)"
}

# ---- CPU accounting ----------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)



# pids_ticks PID...: proc_ticks summed.
pids_ticks() {
	local pid sum=0
	for pid in "$@"; do sum=$((sum + $(proc_ticks "$pid"))); done
	echo "$sum"
}


# ---- setups ------------------------------------------------------------------

log "building herald"
go build -o "$WORK/herald" ./cmd/herald
HERALD=$WORK/herald

for p in "${PORTS[@]}" "$NATS_PORT" "$REDIS_PORT"; do
	if port_open "$p"; then die "127.0.0.1:$p is already in use: set BASE_PORT / NATS_PORT / REDIS_PORT"; fi
done

# start_engine SETUP BASE: a fresh nats-server or redis-server; sets
# ENGINE_PID and BROKER.
start_engine() {
	local dir=$WORK/engine
	rm -rf "$dir"
	mkdir -p "$dir"
	case $1 in
	single)
		BROKER=memory
		return
		;;
	nats)
		"$NATS_SERVER" -js -sd "$dir" -a 127.0.0.1 -p "$NATS_PORT" >"$2.engine.log" 2>&1 &
		ENGINE_PID=$!
		wait_port "$NATS_PORT" "$ENGINE_PID" nats-server "$2.engine.log"
		BROKER=nats://127.0.0.1:$NATS_PORT
		;;
	redis)
		"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" --appendonly yes --save '' \
			--daemonize no --logfile '' >"$2.engine.log" 2>&1 &
		ENGINE_PID=$!
		wait_port "$REDIS_PORT" "$ENGINE_PID" redis-server "$2.engine.log"
		BROKER=redis://127.0.0.1:$REDIS_PORT
		;;
	esac
}

# start_nodes SETUP BASE: fresh nodes on BROKER, each with its own data
# directory; sets NODE_PIDS and URLS.
start_nodes() {
	local n=$NODES k port
	[[ $1 != single ]] || n=1
	URLS=
	for ((k = 1; k <= n; k++)); do
		port=${PORTS[k - 1]}
		rm -rf "$WORK/node$k"
		mkdir -p "$WORK/node$k"
		HERALD_SHUTDOWN_TIMEOUT=3s "$HERALD" serve --listen "127.0.0.1:$port" --data-dir "$WORK/node$k" \
			--broker "$BROKER" --node-id "n$k" >"$2.node$k.log" 2>&1 &
		NODE_PIDS+=($!)
		URLS+=${URLS:+,}http://127.0.0.1:$port
	done
	for ((k = 1; k <= n; k++)); do
		wait_port "${PORTS[k - 1]}" "${NODE_PIDS[k - 1]}" "herald node n$k" "$2.node$k.log"
		wait_ready "${PORTS[k - 1]}" "${NODE_PIDS[k - 1]}" "herald node n$k" "$2.node$k.log"
	done
}

BENCH_FLAGS=(--transport "$TRANSPORT" --subscribers "$SUBSCRIBERS" --channels "$CHANNELS" --rate "$RATE"
	--duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" --publishers "$PUBLISHERS"
	--payload-bytes "$PAYLOAD_BYTES" --workers "$BENCH_WORKERS" --connect-timeout 60s --progress=false)
if [[ -n $BENCH_ARGS ]]; then
	read -ra extra <<<"$BENCH_ARGS"
	BENCH_FLAGS+=("${extra[@]}")
fi

TARGET_DPS=$(awk -v s="$SUBSCRIBERS" -v r="$RATE" -v c="$CHANNELS" 'BEGIN { printf "%.0f", s * r / c }')
{
	echo "date: $(date -u +%FT%TZ)"
	echo "host: $(nproc) CPUs, $(uname -sr), open files $(ulimit -n)"
	echo "herald: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (modified tree)')"
	echo "nats-server: $("$NATS_SERVER" --version 2>/dev/null || echo missing)"
	echo "redis-server: $("$REDIS_SERVER" --version 2>/dev/null | awk '{print $3}' || echo missing)"
	echo "runs: $RUNS; setups: $SETUPS; nodes: $NODES"
	echo "load: $SUBSCRIBERS $TRANSPORT subscribers over $CHANNELS channels, $RATE msg/s (~$TARGET_DPS deliveries/s), $WARMUP warm-up, $DURATION measured, $DRAIN drain, $PUBLISHERS publishers, $PAYLOAD_BYTES-byte payload"
	echo "bench: herald bench ${BENCH_FLAGS[*]} --url URLS --server-pid NODE_PIDS --json FILE"
} >"$OUT/environment.txt"
sed 's/^/    /' "$OUT/environment.txt" >&2
log "results in $OUT"

read -ra setups <<<"$SETUPS"
failures=0
for ((run = 1; run <= RUNS; run++)); do
	# Rotate the order so that no setup always runs first (or last).
	order=()
	for ((i = 0; i < ${#setups[@]}; i++)); do order+=("${setups[(i + run - 1) % ${#setups[@]}]}"); done
	for setup in "${order[@]}"; do
		base=$OUT/$setup.$run
		wait_quiet
		start_engine "$setup" "$base"
		start_nodes "$setup" "$base"
		pids=$(
			IFS=,
			echo "${NODE_PIDS[*]}"
		)
		log "run $run/$RUNS: $setup (nodes $URLS, pids $pids${ENGINE_PID:+, engine pid $ENGINE_PID})"
		t0=${EPOCHREALTIME/./} m0=$(machine_busy) n0=$(pids_ticks "${NODE_PIDS[@]}") c0=$(proc_ticks $$ children)
		e0=0
		if [[ -n $ENGINE_PID ]]; then e0=$(proc_ticks "$ENGINE_PID"); fi
		# In the background, so that a signal to this script is handled at
		# once (timeout forwards SIGTERM to the bench, which stops its workers).
		timeout --kill-after=10 "$BENCH_TIMEOUT" "$HERALD" bench "${BENCH_FLAGS[@]}" --url "$URLS" \
			--server-pid "$pids" --json "$base.json" >"$base.txt" 2>&1 &
		BENCH_PID=$!
		rc=0
		wait "$BENCH_PID" || rc=$?
		BENCH_PID=
		e1=0
		if [[ -n $ENGINE_PID ]]; then e1=$(proc_ticks "$ENGINE_PID"); fi
		# What the machine, the nodes, the engine and the bench (with its
		# worker processes, all waited for) used while the bench ran.
		printf '{"wall_us":%d,"clk_tck":%d,"cpus":%d,"machine_busy_ticks":%d,"nodes_ticks":%d,"engine_ticks":%d,"bench_ticks":%d,"bench_exit":%d}\n' \
			$((${EPOCHREALTIME/./} - t0)) "$CLK_TCK" "$(nproc)" $(($(machine_busy) - m0)) \
			$(($(pids_ticks "${NODE_PIDS[@]}") - n0)) $((e1 - e0)) $(($(proc_ticks $$ children) - c0)) "$rc" >"$base.machine.json"
		sed 's/^/    /' "$base.txt" | grep -E 'herald bench|publish |deliveries |latency |integrity|server |client |result|error' >&2 || true
		if ((rc == 2)); then
			cat "$base.txt" >&2
			die "herald bench refuses its flags: ${BENCH_FLAGS[*]}"
		fi
		if ((rc != 0)); then
			failures=$((failures + 1))
			log "run $run: $setup bench exit $rc (see $base.txt)"
		fi
		# Each node's view at the end (delivered, engine writes, cluster view).
		for ((k = 1; k <= ${#NODE_PIDS[@]}; k++)); do
			curl -s -m 5 "http://127.0.0.1:${PORTS[k - 1]}/v1/status" >"$base.node$k.status.json" 2>/dev/null || true
		done
		stop_nodes
		stop_engine
	done
done

# ---- table -------------------------------------------------------------------

# One row per run: setup, run, then the figures (tab-separated); "nan" where
# a run has no report.
rows=$OUT/runs.tsv
printf 'setup\trun\tok\tdeliveries_s\tp50_ms\tp99_ms\tlost\tdup\tbehind\tnodes_cpu_run_s\tengine_cpu_s\tnodes_cores\tengine_cores\tbench_cores\trest_cores\n' >"$rows"
for setup in "${setups[@]}"; do
	for ((run = 1; run <= RUNS; run++)); do
		base=$OUT/$setup.$run
		if [[ -s $base.json && -s $base.machine.json ]]; then
			jq -r --arg setup "$setup" --argjson run "$run" --slurpfile m "$base.machine.json" '
				$m[0] as $m | ($m.wall_us / 1e6) as $wall | ($m.clk_tck) as $t |
				[$setup, $run, (if .ok then 1 else 0 end), .delivery.per_second, .latency_ms.p50, .latency_ms.p99,
				 .delivery.lost, .delivery.duplicates, .publish.behind, (.server.cpu_run_s // "nan"),
				 ($m.engine_ticks / $t),
				 ($m.nodes_ticks / $t / $wall), ($m.engine_ticks / $t / $wall), ($m.bench_ticks / $t / $wall),
				 (($m.machine_busy_ticks - $m.nodes_ticks - $m.engine_ticks - $m.bench_ticks) / $t / $wall)]
				| @tsv' "$base.json" >>"$rows"
		else
			printf '%s\t%d\t0\tnan\tnan\tnan\tnan\tnan\tnan\tnan\tnan\tnan\tnan\tnan\tnan\n' "$setup" "$run" >>"$rows"
		fi
	done
done

# col SETUP COLUMN: that column's values of SETUP's runs, one a line ("nan" left out).
col() {
	awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $1 == s && $c != "nan" { print $c }' "$rows"
}

# summary FORMAT: "median (min–max)" of the numbers on stdin, in FORMAT.
summary() {
	sort -g | awk -v f="$1" '
		{ v[NR] = $1 }
		END {
			if (NR == 0) { print "–"; exit }
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			if (NR == 1) printf f "\n", m
			else printf f " (" f "–" f ")\n", m, v[1], v[NR]
		}'
}

# total: the sum of the numbers on stdin.
total() { awk '{ s += $1 } END { printf "%d\n", s }'; }

name_of() {
	case $1 in
	single) echo "1 node, in-process broker" ;;
	nats) echo "$NODES nodes, NATS (JetStream)" ;;
	redis) echo "$NODES nodes, Redis (AOF)" ;;
	esac
}

# p99 of SETUP minus p99 of single, run by run (runs alternate, so a run's
# setups ran within a minute of each other).
p99_delta() {
	join -t $'\t' <(awk -F'\t' -v s="$1" 'NR > 1 && $1 == s && $6 != "nan" { print $2 "\t" $6 }' "$rows" | sort) \
		<(awk -F'\t' 'NR > 1 && $1 == "single" && $6 != "nan" { print $2 "\t" $6 }' "$rows" | sort) |
		awk -F'\t' '{ printf "%.3f\n", $2 - $3 }'
}

{
	echo "### $SUBSCRIBERS $TRANSPORT subscribers, $CHANNELS channels, $RATE msg/s (~$TARGET_DPS deliveries/s), ${DURATION} measured after ${WARMUP} warm-up; medians of $RUNS runs (min–max)"
	echo
	echo "| setup | deliveries/s | latency p50 ms | latency p99 ms | lost, dup (all runs) | node CPU-s (publish + drain, summed) | engine CPU-s (whole bench) | cores busy: nodes / engine / bench / rest | runs OK |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for setup in "${setups[@]}"; do
		ok=$(col "$setup" 3 | total)
		engine="–"
		[[ $setup == single ]] || engine=$(col "$setup" 11 | summary '%.1f')
		printf '| %s | %s | %s | %s | %s, %s | %s | %s | %s / %s / %s / %s | %s/%s |\n' \
			"$(name_of "$setup")" \
			"$(col "$setup" 4 | summary '%.0f')" "$(col "$setup" 5 | summary '%.2f')" "$(col "$setup" 6 | summary '%.2f')" \
			"$(col "$setup" 7 | total)" "$(col "$setup" 8 | total)" \
			"$(col "$setup" 10 | summary '%.1f')" "$engine" \
			"$(col "$setup" 12 | summary '%.2f')" "$(col "$setup" 13 | summary '%.2f')" \
			"$(col "$setup" 14 | summary '%.2f')" "$(col "$setup" 15 | summary '%.2f')" \
			"$ok" "$RUNS"
	done
	echo
	if [[ " $SETUPS " == *" single "* ]]; then
		base_p99=$(col single 6 | summary '%.3f' | awk '{ print $1 }')
		for setup in "${setups[@]}"; do
			[[ $setup != single ]] || continue
			p99=$(col "$setup" 6 | summary '%.3f' | awk '{ print $1 }')
			[[ $p99 != "–" && $base_p99 != "–" ]] || continue
			delta=$(awk -v a="$p99" -v b="$base_p99" 'BEGIN { printf "%.2f", a - b }')
			per_run=$(p99_delta "$setup" | summary '%.2f')
			verdict=$(awk -v d="$delta" 'BEGIN { print (d < 2 ? "under 2 ms" : "NOT under 2 ms") }')
			echo "- $(name_of "$setup"): the engine adds **$delta ms** to p99 (median p99 $p99 ms against $base_p99 ms on one node; run by run: $per_run ms) — $verdict."
		done
	fi
	behind=$(awk -F'\t' 'NR > 1 && $9 != "nan" { s += $9 } END { printf "%d", s }' "$rows")
	if ((behind > 0)); then echo "- The publisher fell behind by $behind messages in total (see SETUP.RUN.txt)."; fi
	echo "- \"cores busy\" is CPU-s / wall time over each whole bench run (connect, warm-up, measure, drain, finish), on $(nproc) cores; \"rest\" is the machine's busy time minus the three others: other processes, and the kernel's softirq time (loopback TCP receive), which no process is charged for."
} | tee "$OUT/table.md"
log "reports: $OUT (table.md, runs.tsv, SETUP.RUN.json/.txt/.machine.json, logs); $failures bench runs did not end OK"
