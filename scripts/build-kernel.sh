#!/usr/bin/env bash
# Build bottle's guest kernel (an uncompressed vmlinux with a PVH entry) from
# Debian's linux-source package plus vmm/kernel/bottle.config, and install it
# into the cache:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/bottle/kernel/<key>/vmlinux
# <key> = first 16 hex digits of sha256("<source id>\n" + fragment), where
# <source id> = "<tarball name without .tar.xz>-<tarball size in bytes>".
# bottle_vmm::kernel::locate() computes the same key. Skips the build when the
# kernel for this key is already installed.
#
# Env: LINUX_SOURCE  path to a linux-source tarball (default: newest
#                    /usr/src/linux-source-*.tar.xz, 6.1 preferred)
#      JOBS          make -j (default: number of cores)
#      FORCE=1       rebuild even when cached
#      KEEP_BUILD=1  keep the unpacked tree (~1.5 GB) in the cache so a
#                    changed fragment rebuilds incrementally (removed by default)
# Prints the installed vmlinux path as the last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fragment="$here/vmm/kernel/bottle.config"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bottle/kernel"

die() { echo "build-kernel: $*" >&2; exit 1; }
log() { echo "build-kernel: $*" >&2; }

[ -f "$fragment" ] || die "config fragment missing: $fragment"

src="${LINUX_SOURCE:-}"
if [ -z "$src" ]; then
  if [ -f /usr/src/linux-source-6.1.tar.xz ]; then
    src=/usr/src/linux-source-6.1.tar.xz
  else
    src="$(ls -1 /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n1 || true)"
  fi
fi
[ -n "$src" ] && [ -f "$src" ] || die "no kernel source tarball found; install it: apt-get install linux-source-6.1 (or set LINUX_SOURCE=/path/linux-source-X.tar.xz)"

for tool in make gcc flex bison bc xz tar sha256sum; do
  command -v "$tool" >/dev/null || die "missing tool '$tool'; install: apt-get install build-essential flex bison bc xz-utils libelf-dev libssl-dev"
done

# One build at a time (scripts/setup runs this in the background).
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9

source_id="$(basename "$src" .tar.xz)-$(stat -c %s "$src")"
key="$( { printf '%s\n' "$source_id"; cat "$fragment"; } | sha256sum | cut -c1-16)"
fragment_sha="$(sha256sum "$fragment" | cut -d' ' -f1)"
dest="$cache/$key"

if [ -f "$dest/vmlinux" ] && [ "${FORCE:-0}" != 1 ]; then
  log "cached: $dest/vmlinux ($source_id)"
  echo "$dest/vmlinux"
  exit 0
fi

jobs="${JOBS:-$(nproc)}"
work="$cache/build/$source_id"
start=$(date +%s)
mkdir -p "$work"
tree="$work/linux"
if [ ! -f "$tree/Makefile" ]; then
  log "unpacking $src ..."
  rm -rf "$tree.tmp" && mkdir -p "$tree.tmp"
  tar -xJf "$src" -C "$tree.tmp" --strip-components=1
  mv "$tree.tmp" "$tree"
fi

cd "$tree"
export ARCH=x86_64
log "configuring: tinyconfig + $(basename "$fragment")"
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig >/dev/null

# Every option in the fragment must have stuck; kconfig drops silently what
# it cannot satisfy, so say which ones did not.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      opt="${line%%=*}"
      if ! grep -qx -- "$line" .config; then
        log "option did not stick: $line (got: $(grep -E "^(# )?$opt[= ]" .config || echo 'absent'))"
        bad=1
      fi ;;
    "# CONFIG_"*" is not set")
      opt="${line#\# }"; opt="${opt%% *}"
      if grep -q "^$opt=" .config; then
        log "option should be off: $opt (got: $(grep "^$opt=" .config))"
        bad=1
      fi ;;
  esac
done < "$fragment"
[ "$bad" = 0 ] || die "config fragment did not apply cleanly (see above); fix vmm/kernel/bottle.config"

# Build with a progress display: one counter line, rewritten in place on a TTY.
total=$(grep -c '=y' .config)
log "building vmlinux with make -j$jobs (several minutes on 2 cores) ..."
n=0
set +e
make -j"$jobs" vmlinux 2>"$work/make.err" | while IFS= read -r l; do
  case "$l" in
    *" CC "*|*" AS "*|*" LD "*|*" AR "*)
      n=$((n + 1))
      if [ -t 2 ]; then
        printf '\rbuild-kernel: %5d steps  %-60.60s' "$n" "${l##* }" >&2
      elif [ $((n % 100)) = 0 ]; then
        log "$n steps ($(( $(date +%s) - start ))s)"
      fi ;;
  esac
done
rc=${PIPESTATUS[0]}
set -e
[ -t 2 ] && printf '\n' >&2
if [ "$rc" != 0 ]; then
  tail -n 30 "$work/make.err" >&2
  die "make vmlinux failed (exit $rc); full log: $work/make.err"
fi
[ -f vmlinux ] || die "make succeeded but vmlinux is missing"

mkdir -p "$dest.tmp"
cp vmlinux "$dest.tmp/vmlinux"
cp .config "$dest.tmp/config"
printf '%s\n' "$source_id" > "$dest.tmp/source"
printf '%s\n' "$fragment_sha" > "$dest.tmp/fragment.sha256"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
log "built in $(( $(date +%s) - start ))s (${total} options on): $dest/vmlinux ($(du -h "$dest/vmlinux" | cut -f1))"
if [ "${KEEP_BUILD:-0}" != 1 ]; then rm -rf "$work"; fi
echo "$dest/vmlinux"
