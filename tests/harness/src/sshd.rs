//! A real `sshd` upstream on a loopback port with a bare repo (filled by the git-gate work).
