#!/bin/sh
# Snapshot restore vs cold boot of the bare tiny probe image; see bench/snapshot.py.
exec python3 "$(dirname "$0")/snapshot.py" "$@"
