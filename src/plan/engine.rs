//! The engine a bottle runs on, as its backend's `prepare` decided it: a
//! typed value in the code, one lower-case word in JSON (`qemu-tcg`,
//! `libkrun-kvm`, `auto`, `runsc`…), the form `bottle plan --json` and
//! `metadata.json` have always had.

use bottle_docker::Runtime;
use bottle_vmm::{Accel, EngineChoice, EngineKind};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A VM engine or a container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Engine {
    /// A VM engine chosen from cached boot probes: the bundle starts it
    /// without probing again (`qemu-tcg`, `libkrun-kvm`…).
    Vm(EngineKind, Accel),
    /// A VM engine the bundle chooses at launch by boot probes, within what
    /// was asked (`auto`, `libkrun`, `qemu`).
    VmProbed(EngineChoice),
    /// A container runtime (`runc`, `runsc`).
    Container(Runtime),
}

impl Engine {
    /// Every value, for parsing (each one's text is distinct).
    const ALL: [Engine; 9] = [
        Engine::Vm(EngineKind::Qemu, Accel::Kvm),
        Engine::Vm(EngineKind::Qemu, Accel::Tcg),
        Engine::Vm(EngineKind::Libkrun, Accel::Kvm),
        Engine::Vm(EngineKind::Libkrun, Accel::Tcg),
        Engine::VmProbed(EngineChoice::Auto),
        Engine::VmProbed(EngineChoice::Libkrun),
        Engine::VmProbed(EngineChoice::Qemu),
        Engine::Container(Runtime::Runc),
        Engine::Container(Runtime::Runsc),
    ];

    /// The engine and acceleration, when they are decided.
    pub fn decided_vm(self) -> Option<(EngineKind, Accel)> {
        match self {
            Engine::Vm(kind, accel) => Some((kind, accel)),
            Engine::VmProbed(_) | Engine::Container(_) => None,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Vm(kind, accel) => write!(f, "{kind}-{accel}"),
            Engine::VmProbed(EngineChoice::Auto) => f.write_str("auto"),
            Engine::VmProbed(EngineChoice::Libkrun) => EngineKind::Libkrun.fmt(f),
            Engine::VmProbed(EngineChoice::Qemu) => EngineKind::Qemu.fmt(f),
            Engine::Container(runtime) => runtime.fmt(f),
        }
    }
}

/// Text that names no engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an engine (qemu-kvm, qemu-tcg, libkrun-kvm, auto, libkrun, qemu, runc, runsc)"
)]
pub struct UnknownEngine(pub String);

impl std::str::FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.to_string() == s)
            .ok_or_else(|| UnknownEngine(s.to_string()))
    }
}

impl From<Engine> for String {
    fn from(e: Engine) -> Self {
        e.to_string()
    }
}

impl TryFrom<String> for Engine {
    type Error = UnknownEngine;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// For `metadata.json`: an engine this version does not know reads as
/// unknown (`None`) instead of making the whole file unreadable.
pub fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Engine>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    Ok(text.and_then(|t| t.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_round_trips_through_its_text_and_json() {
        for e in Engine::ALL {
            assert_eq!(e.to_string().parse::<Engine>(), Ok(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{e}\""));
            assert_eq!(serde_json::from_str::<Engine>(&json).unwrap(), e);
        }
    }

    #[test]
    fn the_texts_metadata_always_had_still_read() {
        let cases = [
            ("qemu-tcg", Engine::Vm(EngineKind::Qemu, Accel::Tcg)),
            ("libkrun-kvm", Engine::Vm(EngineKind::Libkrun, Accel::Kvm)),
            ("auto", Engine::VmProbed(EngineChoice::Auto)),
            ("runsc", Engine::Container(Runtime::Runsc)),
        ];
        for (text, engine) in cases {
            assert_eq!(text.parse::<Engine>(), Ok(engine));
        }
        assert!("firecracker".parse::<Engine>().is_err());
    }
}
