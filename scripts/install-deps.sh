#!/usr/bin/env bash
# Install the Debian 12 packages bottle and its tests use. Idempotent; needs root.
set -euo pipefail
PACKAGES=(
  # VM backend: QEMU microvm engine, guest kernel build, images
  qemu-system-x86 linux-source-6.1 bc bison flex libelf-dev libssl-dev cpio xz-utils
  busybox-static mmdebstrap e2fsprogs erofs-utils
  # Docker backend
  docker.io runsc
  # git-gate and its tests
  git openssh-client openssh-server
  # netstack tests and benchmarks
  iproute2 udhcpc dnsutils curl netcat-openbsd iputils-ping iperf3 passt slirp4netns sockperf socat
  # proxy tests and benchmarks
  openssl ca-certificates python3 python3-venv wrk
  # session and dashboard tests (a terminal for the binary: script, tmux)
  bsdutils tmux
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# supervise tests: the official MCP Python SDK as the client, in a venv.
MCP_VENV="${HOME}/.cache/bottle/mcp-venv"
if ! "${MCP_VENV}/bin/python" -c 'import mcp' 2>/dev/null; then
  echo "installing the MCP Python SDK in ${MCP_VENV}"
  mkdir -p "$(dirname "${MCP_VENV}")"
  python3 -m venv "${MCP_VENV}"
  "${MCP_VENV}/bin/pip" install -q 'mcp>=1.30,<2'
fi
