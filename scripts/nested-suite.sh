#!/bin/sh
# The libkrun engine's end-to-end suite, run inside the nested runner's L1 VM
# (busybox sh; tests/nested.rs runs it as
# `scripts/nested-runner -- /nested-suite.sh`). Prints `PASS name` or
# `FAIL name: why` per check, timings as `TIME name ms`, and exits non-zero
# on any FAIL.
#
# Network rule: the escape probes aim only at the decoy namespace this
# script makes itself (10.200.0.1, 169.254.200.1 behind a veth) and at a
# listener on L1's loopback; L1 itself has no network device at all.
#
# Env: NESTED_ENGINE (default libkrun), NESTED_CHECKS (space-separated
# subset of: doctor demo escape exec kill stop; default all). The exec
# check includes exec on a terminal (util-linux's script) getting a pty.
ENGINE="${NESTED_ENGINE:-libkrun}"
CHECKS="${NESTED_CHECKS:-doctor demo escape exec kill stop}"
# iproute2's ip (busybox's, which its sh prefers, has no netns or veth).
IP=/usr/sbin/ip
pass=0
fail=0
work=/tmp/nested-suite
mkdir -p "$work"

ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
# Milliseconds since boot (10 ms resolution; busybox date has no %N).
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
want() { case " $CHECKS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
show() { sed 's/^/    | /' "$1"; }
# A process other than a zombie or this suite whose command line mentions $1.
leftover() {
    for d in /proc/[0-9]*; do
        [ "${d#/proc/}" = "$$" ] && continue
        cmd="$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)" || continue
        case "$cmd" in *"$1"*) echo "${d#/proc/}: $cmd" ;; esac
    done
}
nothing_left() { # name
    entries="$(ls -A "$BOTTLE_STATE_DIR" 2>/dev/null | grep -v -e '^logs$' -e '^trust' || true)"
    procs="$(leftover "$BOTTLE_STATE_DIR")"
    if [ -z "$entries" ] && [ -z "$procs" ]; then
        ok "$1"
    else
        bad "$1" "left behind: state [$entries] processes [$procs]"
    fi
}

cat >"$work/bottle.toml" <<'EOF'
[bottles.t]
image = "tiny"
cpus = 1
memory_mib = 256
allow = ["allowed.localhost"]

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
EOF
bottle trust "$work/bottle.toml" >/dev/null 2>&1
cd "$work" || exit 1

echo "nested-suite: engine $ENGINE, checks: $CHECKS"
if [ -c /dev/kvm ]; then ok kvm-device; else bad kvm-device "no /dev/kvm in L1"; fi

if want doctor; then
    t0=$(now_ms)
    bottle doctor >"$work/doctor" 2>&1
    echo "TIME doctor $(( $(now_ms) - t0 ))"
    grep -E '^(ok  |FAIL) (libkrun|boot probe|kvm|guest kernel|tiny)' "$work/doctor" | sed 's/^/    | /'
    if grep -q "^ok   boot probe $ENGINE/kvm" "$work/doctor"; then
        ok "doctor-$ENGINE-probe"
    else
        bad "doctor-$ENGINE-probe" "bottle doctor does not show the $ENGINE/kvm boot probe passing"
        show "$work/doctor"
    fi
fi

if want demo; then
    t0=$(now_ms)
    # The built-in demo: from a directory without a bottle.toml.
    (cd / && bottle run --vm --engine "$ENGINE" --yes demo) >"$work/demo" 2>"$work/demo.err"
    rc=$?
    echo "TIME demo $(( $(now_ms) - t0 ))"
    show "$work/demo"
    missing=""
    for line in "== bottle demo: the view from inside ==" \
        "example.org: NXDOMAIN (only proxy.internal exists)" \
        "403" "refused (no route out)" "== done =="; do
        grep -qF -- "$line" "$work/demo" || missing="$missing [$line]"
    done
    if [ "$rc" = 0 ] && [ -z "$missing" ]; then
        ok demo-view
    else
        bad demo-view "exit $rc, missing:$missing"
        show "$work/demo.err"
    fi
    grep -i 'engine\|libkrun\|qemu' "$work/demo.err" | head -n 3 | sed 's/^/    | /'
    nothing_left demo-leaves-nothing
fi

if want escape; then
    # The decoy: a namespace of our own behind a veth, holding a private and
    # a link-local address, answering TCP 80; its IPv4 counters record any
    # packet that reaches it. Plus a listener on L1's loopback.
    $IP netns add nested-decoy
    $IP link add nsdh type veth peer name nsdn
    $IP link set nsdn netns nested-decoy
    $IP addr add 10.200.0.2/24 dev nsdh
    $IP addr add 169.254.200.2/24 dev nsdh
    $IP link set nsdh up
    $IP netns exec nested-decoy $IP addr add 10.200.0.1/24 dev nsdn
    $IP netns exec nested-decoy $IP addr add 169.254.200.1/24 dev nsdn
    $IP netns exec nested-decoy $IP link set nsdn up
    $IP netns exec nested-decoy $IP link set lo up
    $IP netns exec nested-decoy nc -ll -p 80 -e true >/dev/null 2>&1 &
    decoy_pid=$!
    decoy_in() { # IPv4 packets received in the decoy namespace (Ip: InReceives)
        $IP netns exec nested-decoy cat /proc/net/snmp | awk '$1 == "Ip:" && $2 ~ /^[0-9]/ { print $4 }'
    }
    nc -l -p 47123 >/dev/null 2>&1 &
    loop_pid=$!
    sleep 1
    # Self-test: the counters must see a connection from L1, or their
    # silence proves nothing.
    before=$(decoy_in)
    timeout 5 nc -w 2 10.200.0.1 80 </dev/null >/dev/null 2>&1
    if [ "$(decoy_in)" -gt "$before" ]; then ok escape-decoy-self-test; else bad escape-decoy-self-test "the decoy counted nothing from L1"; fi
    before=$(decoy_in)
    sed -e 's/HOST_PORT/47123/g' -e 's/DECOY_PRIVATE/10.200.0.1/g' -e 's/DECOY_LINK_LOCAL/169.254.200.1/g' \
        /nested/escape.sh >"$work/escape.sh"
    {
        echo 'echo "resolv: $(grep nameserver /etc/resolv.conf)"'
        echo "echo \"dns: \$(nslookup -type=a proxy.internal 2>&1 | grep -A1 'Name:' | grep Address | head -n1)\""
        cat "$work/escape.sh"
    } >"$work/escape-full.sh"
    t0=$(now_ms)
    bottle run --vm --engine "$ENGINE" --yes --manifest "$work/bottle.toml" a -- /bin/sh -c "$(cat "$work/escape-full.sh")" \
        >"$work/escape.out" 2>"$work/escape.err"
    rc=$?
    echo "TIME escape $(( $(now_ms) - t0 ))"
    show "$work/escape.out"
    missing=""
    for line in "resolv: nameserver 10.0.2.2" "dns: Address: 10.0.2.2" \
        "other-name: fails" "other-resolver: fails" "direct-ip: fails" "metadata: fails" \
        "host-loopback: fails" "proxy-other-port: fails" "proxy-port: open" "docker-socket: fails" \
        "agent-channel: fails" "ipv6: none"; do
        grep -qF -- "$line" "$work/escape.out" || missing="$missing [$line]"
    done
    for probe in unlisted traversal double-encoded; do
        grep "^$probe: " "$work/escape.out" | grep -q 403 || missing="$missing [$probe: 403]"
    done
    if [ "$rc" = 0 ] && [ -z "$missing" ]; then ok escape-probes; else bad escape-probes "exit $rc, missing:$missing"; show "$work/escape.err"; fi
    after=$(decoy_in)
    if [ "$after" = "$before" ]; then ok escape-decoy-untouched; else bad escape-decoy-untouched "the decoy received $((after - before)) packets"; fi
    if kill -0 "$loop_pid" 2>/dev/null; then ok escape-loopback-untouched; else bad escape-loopback-untouched "L1's loopback listener got a connection"; fi
    kill "$loop_pid" "$decoy_pid" 2>/dev/null
    $IP link del nsdh 2>/dev/null
    $IP netns del nested-decoy 2>/dev/null
    nothing_left escape-leaves-nothing
fi

detach() { # prints the identity of a detached bottle of agent a
    bottle run --vm --engine "$ENGINE" --yes --detach --manifest "$work/bottle.toml" a >"$work/detach.out" 2>"$work/detach.err"
    sed -n 's/.*(identity \([^)]*\)).*/\1/p' "$work/detach.err" | head -n1
}

if want exec; then
    t0=$(now_ms)
    id=$(detach)
    echo "TIME detach $(( $(now_ms) - t0 ))"
    if [ -z "$id" ]; then
        bad exec-detach "no identity from bottle run --detach"
        show "$work/detach.err"
    else
        ok exec-detach
        t0=$(now_ms)
        bottle exec "$id" -- /bin/sh -c 'echo to-stdout; echo to-stderr >&2; hostname; id -u; exit 7' \
            >"$work/exec.out" 2>"$work/exec.err"
        rc=$?
        echo "TIME exec $(( $(now_ms) - t0 ))"
        show "$work/exec.out"
        if [ "$rc" = 7 ] && grep -qx to-stdout "$work/exec.out" && grep -qx "$id" "$work/exec.out" \
            && grep -qx 1000 "$work/exec.out" && grep -q to-stderr "$work/exec.err" \
            && ! grep -q to-stderr "$work/exec.out"; then
            ok exec-output-and-status
        else
            bad exec-output-and-status "exit $rc (want 7); stdout/stderr not as sent"
            show "$work/exec.err"
        fi
        # On a terminal, exec gives the command a pty in the guest.
        /usr/bin/script -qec "bottle exec $id -- /bin/sh -c 'tty; exit 3'" /dev/null \
            >"$work/pty.out" 2>&1
        rc=$?
        { cat "$work/pty.out"; echo; } | tr -d '\000\r' | grep -v '^$' | sed 's/^/    | /'
        # (L1's console may type a NUL first, which the guest's pty echoes as ^@)
        if [ "$rc" = 3 ] && grep -q '/dev/pts/[0-9]' "$work/pty.out"; then
            ok exec-pty
        else
            bad exec-pty "exit $rc (want 3), want a /dev/pts/N terminal in the guest"
        fi
        if want stop; then
            bottle stop "$id" >"$work/stop.out" 2>&1
            rc=$?
            if [ "$rc" = 0 ]; then ok stop; else bad stop "exit $rc"; show "$work/stop.out"; fi
            nothing_left stop-leaves-nothing
        fi
    fi
fi

if want kill; then
    id=$(detach)
    meta="$BOTTLE_STATE_DIR/$id/metadata.json"
    bundle=$(sed -n 's/.*"bundle_pid": *\([0-9]*\).*/\1/p' "$meta" 2>/dev/null | head -n1)
    vm=$(sed -n 's/.*"vm_pid": *\([0-9]*\).*/\1/p' "$meta" 2>/dev/null | head -n1)
    if [ -z "$id" ] || [ -z "$bundle" ] || [ -z "$vm" ]; then
        bad kill-9 "no detached bottle with bundle and VM pids ($id)"
        show "$work/detach.err"
    else
        kill -9 "$bundle"
        gone=no
        for _ in $(seq 1 100); do
            if [ ! -s "/proc/$vm/cmdline" ]; then gone=yes; break; fi
            sleep 0.1
        done
        if [ "$gone" = yes ]; then ok kill-9-takes-the-vm-down; else bad kill-9-takes-the-vm-down "VM $vm outlived its bundle by 10 s"; fi
        bottle ls 2>&1 | grep -q "	dead	" && ok kill-9-listed-dead || bad kill-9-listed-dead "bottle ls: $(bottle ls 2>&1)"
        bottle cleanup >/dev/null 2>&1
        nothing_left kill-9-cleanup-leaves-nothing
    fi
fi

echo "nested-suite: $pass passed, $fail failed"
[ "$fail" = 0 ]
