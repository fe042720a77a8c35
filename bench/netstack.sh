#!/usr/bin/env bash
# Guest networking throughput and latency: our netstack vs pasta vs slirp4netns.
#
# Usage (root): bench/netstack.sh [SECONDS_PER_RUN]     (default 10)
#        NETSTACK_BIN=/path/to/netstack-tap bench/netstack.sh 5   (a given build, no cargo)
#        ROUNDS=5 bench/netstack.sh 5   (rounds of every measurement; default 3)
#
# Every measurement runs ROUNDS times, the three stacks in turn and their
# order rotated each round; the table shows the median of each cell (and,
# below it, the range), and the ratios are those of the medians. One run
# each was not enough: pasta's single stream varied 14-20 Gbit/s between
# back-to-back runs here while ours stayed within 2 %.
#
# Each peer gets its own network namespace whose only link leads to it; the
# client (iperf3 -c / sockperf pp) runs in the namespace and reaches servers
# on the host's 127.0.0.1: ours through a test-only dial forward on the
# gateway, pasta through its gateway address, slirp4netns through 10.0.2.2.
# All three run with MTU 65520. Traffic stays on this host.
#
# Socket buffers: pasta relays each guest connection to a host socket and
# advertises that socket's free send space as its window, so it needs the
# host's buffer limits above the guest's. With this machine's defaults
# (4 MiB on both sides) pasta measured 0.02-1 Gbit/s guest->host with
# hundreds of retransmits per run; with large host limits (those passt's
# own perf suite uses) and each namespace at the kernel's stock limits, as
# a guest has them, 4-7 Gbit/s and none. The bench sets exactly that for
# its run, the same for all three stacks, and restores the host's values.
# Needs: iperf3, sockperf, passt (pasta), slirp4netns, iproute2, jq.
set -euo pipefail

T=${1:-10}
LAT_T=5
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."

for p in iperf3 sockperf pasta slirp4netns ip jq; do
    command -v "$p" >/dev/null || { echo "missing $p (apt-get install iperf3 sockperf passt slirp4netns iproute2 jq)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, TAP)" >&2; exit 2; }

# NETSTACK_BIN=path runs that binary instead (to compare builds in the same conditions).
if [ -n "${NETSTACK_BIN:-}" ]; then
    BIN=$NETSTACK_BIN
else
    cargo build --release -q -p bottle-netstack --bin netstack-tap
    BIN=${CARGO_TARGET_DIR:-target}/release/netstack-tap
fi

IPERF_PORT=$((20000 + RANDOM % 10000))
SP_PORT=$((IPERF_PORT + 1))
TAG=bn$$
NS_OURS=$TAG-ours NS_PASTA=$TAG-pasta NS_SLIRP=$TAG-slirp
WORK=$(mktemp -d)
PIDS=()

BUFFER_SYSCTLS=(net.core.rmem_max net.core.wmem_max net.ipv4.tcp_rmem net.ipv4.tcp_wmem)
declare -A SAVED_SYSCTL
for k in "${BUFFER_SYSCTLS[@]}"; do SAVED_SYSCTL[$k]=$(sysctl -n "$k"); done

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for ns in "$NS_OURS" "$NS_PASTA" "$NS_SLIRP"; do ip netns del "$ns" 2>/dev/null || true; done
    for k in "${BUFFER_SYSCTLS[@]}"; do sysctl -qw "$k=${SAVED_SYSCTL[$k]}" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The host: the limits passt's perf suite uses.
sysctl -qw net.core.rmem_max=134217728 net.core.wmem_max=134217728 \
    net.ipv4.tcp_rmem="131072 524288 134217728" net.ipv4.tcp_wmem="131072 524288 134217728"
# A namespace (the guest side): the kernel's stock TCP buffer limits.
stock_buffers() {
    ip netns exec "$1" sysctl -qw net.ipv4.tcp_rmem="4096 131072 6291456" net.ipv4.tcp_wmem="4096 16384 4194304"
}

log() { echo "# $*" >&2; }

# Servers on the host's loopback.
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)
sockperf sr --tcp -i 127.0.0.1 -p "$SP_PORT" >"$WORK/sockperf-server.log" 2>&1 &
PIDS+=($!)

new_ns() { ip netns add "$1"; ip netns exec "$1" ip link set lo up; stock_buffers "$1"; }

wait_link() { # ns dev
    for _ in $(seq 100); do
        ip netns exec "$1" ip link show "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "no $2 in $1" >&2; return 1
}

wait_route() { # ns
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$1" ip -4 route show default)" ] && return 0
        sleep 0.1
    done
    echo "no default route in $1" >&2; return 1
}

# ours
new_ns "$NS_OURS"
"$BIN" --netns "$NS_OURS" --tap tap0 --mtu 65520 \
    --forward "$IPERF_PORT=dial:127.0.0.1:$IPERF_PORT" \
    --forward "$SP_PORT=dial:127.0.0.1:$SP_PORT" >"$WORK/ours.log" 2>&1 &
PIDS+=($!)
wait_link "$NS_OURS" tap0
ip netns exec "$NS_OURS" ip link set tap0 mtu 65520 up
ip netns exec "$NS_OURS" ip addr add 10.0.2.15/24 dev tap0
ip netns exec "$NS_OURS" ip route add default via 10.0.2.2 dev tap0
TARGET_OURS=10.0.2.2

# pasta
new_ns "$NS_PASTA"
pasta -f -q --runas 0 --config-net --netns "/run/netns/$NS_PASTA" \
    -t none -u none -T none -U none -P "$WORK/pasta.pid" >"$WORK/pasta.log" 2>&1 &
PIDS+=($!)
wait_route "$NS_PASTA"
TARGET_PASTA=$(ip netns exec "$NS_PASTA" ip -4 route show default | awk '{print $3; exit}')

# slirp4netns
new_ns "$NS_SLIRP"
slirp4netns --configure --mtu=65520 --netns-type=path "/run/netns/$NS_SLIRP" tap0 >"$WORK/slirp.log" 2>&1 &
PIDS+=($!)
wait_route "$NS_SLIRP"
TARGET_SLIRP=10.0.2.2

sleep 1

iperf() { # ns target extra-args... -> Gbit/s (receiver side)
    local ns=$1 target=$2; shift 2
    local out
    for _ in 1 2 3; do
        if out=$(ip netns exec "$ns" iperf3 -c "$target" -p "$IPERF_PORT" -t "$T" -J "$@" 2>/dev/null); then
            echo "$out" | jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100'
            return
        fi
        sleep 1 # the server is busy or the previous run is still closing
    done
    echo 0
}

latency() { # ns target -> average round trip in microseconds
    local out
    out=$(ip netns exec "$1" sockperf pp --tcp -i "$2" -p "$SP_PORT" -t "$LAT_T" 2>&1 || true)
    echo "$out" | sed -n 's/.*avg-latency=\([0-9.]*\).*/\1/p' | tail -1 | awk '{ if ($1 == "") print "n/a"; else printf "%.1f\n", $1 * 2 }'
}

declare -A RUNS # peer,key -> the rounds' values, space-separated
measure() { # peer
    local peer=$1 ns target
    case $peer in
        ours) ns=$NS_OURS target=$TARGET_OURS ;;
        pasta) ns=$NS_PASTA target=$TARGET_PASTA ;;
        slirp) ns=$NS_SLIRP target=$TARGET_SLIRP ;;
    esac
    log "round $round: $peer, target $target, ${T}s per run"
    RUNS[$peer,up1]+="$(iperf "$ns" "$target") "
    RUNS[$peer,up4]+="$(iperf "$ns" "$target" -P 4) "
    RUNS[$peer,down1]+="$(iperf "$ns" "$target" -R) "
    RUNS[$peer,down4]+="$(iperf "$ns" "$target" -R -P 4) "
    RUNS[$peer,rtt]+="$(latency "$ns" "$target") "
}
PEERS=(ours pasta slirp)
for round in $(seq "$ROUNDS"); do
    for i in 0 1 2; do measure "${PEERS[$(((i + round - 1) % 3))]}"; done
done

numbers() { tr ' ' '\n' | awk '$1 ~ /^[0-9.]+$/' | sort -g; }
median() { numbers | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { numbers | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR == 0) print "n/a"; else print lo "-" hi }'; }
declare -A R
for peer in "${PEERS[@]}"; do
    for k in up1 up4 down1 down4 rtt; do
        R[$peer,$k]=$(echo "${RUNS[$peer,$k]}" | median)
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo "host: $(nproc) cores, $(uname -r), MTU 65520, ${T}s per iperf3 run, $ROUNDS rounds, TCP ping-pong ${LAT_T}s (sockperf), tcp_[rw]mem max: host 128 MiB, guests stock (4-6 MiB), congestion control $(sysctl -n net.ipv4.tcp_congestion_control)"
printf '%-34s %10s %10s %12s\n' "Gbit/s (RTT in us)" netstack pasta slirp4netns
for k in up1 up4 down1 down4; do
    case $k in
        up1) name="guest->host, 1 stream" ;;
        up4) name="guest->host, 4 streams" ;;
        down1) name="host->guest, 1 stream" ;;
        down4) name="host->guest, 4 streams" ;;
    esac
    printf '%-34s %10s %10s %12s\n' "$name" "${R[ours,$k]}" "${R[pasta,$k]}" "${R[slirp,$k]}"
done
printf '%-34s %10s %10s %12s\n' "TCP ping-pong RTT (us)" "${R[ours,rtt]}" "${R[pasta,rtt]}" "${R[slirp,rtt]}"
echo "(medians of $ROUNDS rounds; ranges:)"
for k in up1 up4 down1 down4 rtt; do
    printf '%-34s %10s %10s %12s\n' "  $k" "$(echo "${RUNS[ours,$k]}" | range)" "$(echo "${RUNS[pasta,$k]}" | range)" "$(echo "${RUNS[slirp,$k]}" | range)"
done
for k in up4 down1 down4; do
    echo "netstack/pasta $k ratio: $(ratio "${R[ours,$k]}" "${R[pasta,$k]}"), netstack/slirp4netns $k ratio: $(ratio "${R[ours,$k]}" "${R[slirp,$k]}")"
done
echo "netstack/pasta throughput ratio: $(ratio "${R[ours,up1]}" "${R[pasta,up1]}")"
echo "netstack/slirp4netns throughput ratio: $(ratio "${R[ours,up1]}" "${R[slirp,up1]}")"
