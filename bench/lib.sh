# Shell functions shared by bench/compare.sh and bench/cluster.sh, which
# source this file. They expect the caller to define log and die, and the
# variables CLK_TCK, QUIET_CORES and QUIET_WAIT.
# shellcheck shell=bash

# stop_pid PID NAME [sent]: SIGTERM (unless "sent": Herald takes a second
# signal for "kill at once"), up to 10 s, then SIGKILL; reaps it and says
# when it did not exit cleanly.
stop_pid() {
	local pid=$1 name=$2 i rc=0
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		if [[ ${3:-} != sent ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "$name (pid $pid) still running after 10 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || rc=$?
	# nats-server exits 1 on SIGTERM: only Herald's status tells something.
	if [[ $name == herald* ]] && ((rc != 0 && rc != 127)); then log "$name (pid $pid) exited with status $rc"; fi
}

# port_open PORT: something accepts connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID NAME [LOG]: up to 20 s for PORT to accept while PID
# lives. LOG, the process's log, is named when it fails (default: in $OUT).
wait_port() {
	local port=$1 pid=$2 name=$3 logf=${4:-"in $OUT"} i
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited at startup (log: $logf)"
		if port_open "$port"; then return 0; fi
		sleep 0.1
	done
	die "$name does not listen on 127.0.0.1:$port after 20 s (log: $logf)"
}

# machine_busy: CPU ticks the whole machine has spent busy (/proc/stat).
machine_busy() {
	local user nice system irq softirq steal _
	# cpu user nice system idle iowait irq softirq steal guest guest_nice
	read -r _ user nice system _ _ irq softirq steal _ </proc/stat
	echo $((user + nice + system + irq + softirq + steal))
}

# proc_ticks PID [children]: utime + stime of PID, or with "children" the
# cutime + cstime of its children it has waited for; 0 when it is gone.
proc_ticks() {
	local stat f
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
		echo 0
		return
	}
	# Fields after the command name, which is in parentheses: f[0] is field 3.
	read -ra f <<<"${stat##*) }"
	if [[ ${2:-} == children ]]; then
		echo $((f[13] + f[14]))
	else
		echo $((f[11] + f[12]))
	fi
}

# wait_quiet: up to QUIET_WAIT seconds for the machine to go quiet.
wait_quiet() {
	local start=$SECONDS a b limit
	limit=$(awk -v c="$QUIET_CORES" -v t="$CLK_TCK" 'BEGIN { printf "%d", c * t }')
	while :; do
		a=$(machine_busy)
		sleep 1
		b=$(machine_busy)
		if ((b - a <= limit)); then return 0; fi
		if ((SECONDS - start >= QUIET_WAIT)); then
			log "the machine stays busy ($(awk -v b=$((b - a)) -v t="$CLK_TCK" 'BEGIN { printf "%.2f", b / t }') cores) after ${QUIET_WAIT}s; running anyway"
			return 0
		fi
		if ((SECONDS - start < 2)); then log "waiting for the machine to go quiet (other processes use CPU)"; fi
	done
}
