#!/bin/sh
# Inside the nested runner's L1 VM (bench/nested.sh ships and runs it):
# the bare boot probes of `bottle doctor` (engine + kernel + init to the
# marker) and RUNS full `bottle run --vm -- /bin/true` per engine: libkrun
# (KVM in L1), qemu with KVM in L1, and qemu TCG in L1 (BOTTLE_ACCEL=tcg).
# Prints `name: p50 ms (min-max)` lines and `qemu-tcg/libkrun run ratio`.
RUNS="${1:-5}"
work=/tmp/nested-bench
mkdir -p "$work" && cd "$work" || exit 1
cat >bottle.toml <<'TOML'
[bottles.t]
image = "tiny"
cpus = 1
memory_mib = 256

[agents.a]
bottle = "t"
copy_cwd = false
command = ["/bin/true"]
TOML
bottle trust "$work/bottle.toml" >/dev/null 2>&1
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "%d ms (%d-%d, %d runs)\n", v[int((NR + 1) / 2)], v[1], v[NR], NR }'; }

bottle doctor >doctor 2>&1
for probe in libkrun/kvm qemu/kvm qemu/tcg; do
    line="$(grep " boot probe $probe:" doctor)"
    ms="$(echo "$line" | sed -n 's/.*(boot \([0-9]*\) ms).*/\1/p')"
    if [ -n "$ms" ]; then echo "bare boot $probe: $ms ms"; else echo "bare boot $probe: failed: $line"; fi
done

for variant in libkrun qemu-kvm qemu-tcg; do
    case "$variant" in
        libkrun) engine=libkrun accel= ;;
        qemu-kvm) engine=qemu accel= ;;
        qemu-tcg) engine=qemu accel=tcg ;;
    esac
    : >"times.$variant"
    i=0
    while [ "$i" -lt "$RUNS" ]; do
        i=$((i + 1))
        t0=$(now_ms)
        if BOTTLE_ACCEL="$accel" bottle run --vm --engine "$engine" --yes --manifest bottle.toml a -- /bin/true \
            >"out.$variant" 2>&1; then
            echo $(( $(now_ms) - t0 )) >>"times.$variant"
        else
            echo "run $variant failed:"
            grep -m 3 -E 'BUG|stall|panic|Oops|watchdog|error' "out.$variant"
            tail -n 3 "out.$variant"
        fi
    done
    echo "bottle run $variant: $(stats <"times.$variant")"
done
p50() { sort -n "times.$1" | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
k=$(p50 libkrun) t=$(p50 qemu-tcg)
[ -n "$k" ] && [ -n "$t" ] && awk -v k="$k" -v t="$t" 'BEGIN { printf "qemu-tcg/libkrun run ratio: %.2f\n", t / k }'
