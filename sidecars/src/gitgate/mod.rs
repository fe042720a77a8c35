//! git-gate: git:// server that mirrors fetches from upstream and scans
//! pushes before forwarding them over pinned SSH.
