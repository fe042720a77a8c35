//! Network namespaces and TAP devices for netstack tests (filled by the netstack work).
