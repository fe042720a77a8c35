//! The in-VM / in-container agent and the host<->guest exec protocol.
#![deny(unsafe_code)]
