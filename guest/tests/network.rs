//! Static network configuration by ioctls, in a network namespace of its own.

use std::process::Command;

#[test]
fn lo_and_eth0_get_address_mtu_and_default_route_without_ip() {
    if !bottle_test_harness::skip::require_root("creating a network namespace")
        || !bottle_test_harness::skip::require_programs(&[
            ("unshare", "util-linux"),
            ("ip", "iproute2"),
        ])
    {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_bottle-guest");
    // A veth pair stands in for the VM's virtio-net eth0; `ip` only creates
    // it and reads the result back.
    let script = format!(
        "ip link add eth0 type veth peer name peer0 && \
         {bin} net bottle.net=10.200.7.2/24,10.200.7.1 bottle.mtu=1400 && \
         ip -o -4 addr show dev eth0 && ip -o link show dev eth0 && \
         ip -o link show dev lo && ip route show default"
    );
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("inet 10.200.7.2/24"), "{text}");
    assert!(text.contains("mtu 1400"), "{text}");
    assert!(text.contains("default via 10.200.7.1 dev eth0"), "{text}");
    let lo = text.lines().find(|l| l.contains(": lo:")).unwrap();
    assert!(lo.contains("UP"), "{lo}");
}

#[test]
fn a_bad_net_key_is_refused_before_touching_interfaces() {
    let out = Command::new(env!("CARGO_BIN_EXE_bottle-guest"))
        .args(["net", "bottle.net=10.0.0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bottle.net"));
}
