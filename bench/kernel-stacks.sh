#!/bin/sh
# kernel-stacks.sh PID [SAMPLES] - where a process's threads wait in the kernel.
#
# Go's profiles stop at the system call; mynet's endpoint calls spend most
# of their time below it (RTNL, RCU grace periods, fsync). This samples
# /proc/PID/task/*/stack (root only) SAMPLES times, keeps the top frames of
# each stack, and prints the stacks by how often they were seen. Idle
# threads (futex, epoll, nanosleep) are left out.
#
# docs/benchmarks.md used it on the namespace instance during phase 4:
#   bin/mynet-bench -phases 4 -api-cycles 4096 -api-concurrency 64 &
#   sleep 3; sudo bench/kernel-stacks.sh "$(pgrep -f 'mynet serve --name mynet-bench-ns')" 400
set -eu
pid=${1:?usage: kernel-stacks.sh PID [SAMPLES]}
samples=${2:-300}
i=0
while [ "$i" -lt "$samples" ]; do
	for t in /proc/"$pid"/task/*; do
		s=$(head -n 8 "$t/stack" 2>/dev/null | awk '{print $2}' | tr '\n' ' ') || true
		[ -n "$s" ] && echo "$s"
	done
	i=$((i + 1))
done | grep -Ev 'futex_wait|ep_poll|do_epoll|hrtimer_nanosleep|^exit_to_user_mode' | sort | uniq -c | sort -rn | head -n 25
