//! Local TLS upstreams on loopback with a test CA (filled by the proxy work).
