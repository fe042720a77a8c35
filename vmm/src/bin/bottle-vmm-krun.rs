//! VM helper process for the libkrun engine: `bottle-vmm-krun <spec-json>`.

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    bottle_vmm::krun::krun_main(&arg)
}
