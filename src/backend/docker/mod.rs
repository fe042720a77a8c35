//! Docker backend: the same bottle on dockerd with no container network.
