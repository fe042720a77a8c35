//! The qemu argument vector for a [`VmSpec`]. Pure, so it is unit-tested.

use bottle_contract::Channel;

use crate::engine::Accel;
use crate::spec::{common_cmdline, AGENT_PORT_NAME};
use crate::VmSpec;

/// The guest kernel command line under qemu.
pub fn guest_cmdline(spec: &VmSpec) -> String {
    let mut words = vec!["console=ttyS0".to_string()];
    words.extend(common_cmdline(
        spec,
        Channel::VirtioPort(AGENT_PORT_NAME.to_string()),
    ));
    words.join(" ")
}

/// Every argument after the binary name. Paths were checked for commas by
/// [`VmSpec::validate`], so they cannot inject qemu options.
pub fn command_line(spec: &VmSpec, accel: Accel) -> Vec<String> {
    let p = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    // pit/pic/rtc stay on: turning them off hangs the guest.
    push(&[
        "-machine",
        "microvm,acpi=off,x-option-roms=off,isa-serial=on",
    ]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&[
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-kernel", &p(&spec.kernel), "-initrd", &p(&spec.initramfs)]);
    push(&["-append", &guest_cmdline(spec)]);
    push(&[
        "-chardev",
        &format!("file,id=con,path={}", p(&spec.console_log)),
        "-serial",
        "chardev:con",
    ]);
    push(&[
        "-netdev",
        &format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            p(&spec.net_socket)
        ),
        "-device",
        &format!("virtio-net-device,netdev=n0,mac={}", spec.guest_mac),
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=off,reconnect=1",
            p(&spec.agent_socket)
        ),
        "-device",
        "virtio-serial-device",
        "-device",
        &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
    ]);
    push(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng0",
    ]);
    if let Some(disk) = &spec.root_disk {
        push(&[
            "-drive",
            &format!("id=root,file={},format=raw,if=none,readonly=on", p(disk)),
            "-device",
            "virtio-blk-device,drive=root",
        ]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec;

    fn value_after(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn tcg_uses_cpu_max_and_kvm_uses_cpu_host() {
        let t = command_line(&test_spec(), Accel::Tcg);
        assert_eq!(value_after(&t, "-accel"), ["tcg"]);
        assert_eq!(value_after(&t, "-cpu"), ["max"]);
        let k = command_line(&test_spec(), Accel::Kvm);
        assert_eq!(value_after(&k, "-accel"), ["kvm"]);
        assert_eq!(value_after(&k, "-cpu"), ["host"]);
    }

    #[test]
    fn net_is_a_stream_client_on_the_netstack_socket() {
        let a = command_line(&test_spec(), Accel::Tcg);
        assert_eq!(
            value_after(&a, "-netdev"),
            ["stream,id=n0,server=off,addr.type=unix,addr.path=/run/b/net.sock"]
        );
        assert!(value_after(&a, "-device")
            .contains(&"virtio-net-device,netdev=n0,mac=02:00:00:00:00:01".to_string()));
    }

    #[test]
    fn agent_channel_is_a_virtio_serial_port_named_agent() {
        let a = command_line(&test_spec(), Accel::Tcg);
        assert!(value_after(&a, "-chardev").contains(
            &"socket,id=agent,path=/run/b/agent.sock,server=off,reconnect=1".to_string()
        ));
        assert!(value_after(&a, "-device")
            .contains(&"virtserialport,chardev=agent,name=agent".to_string()));
        assert!(guest_cmdline(&test_spec()).contains("bottle.channel=virtio-port:agent"));
    }

    #[test]
    fn no_root_disk_means_no_drive() {
        let a = command_line(&test_spec(), Accel::Tcg);
        assert!(value_after(&a, "-drive").is_empty());
    }

    #[test]
    fn root_disk_is_attached_read_only() {
        let mut s = test_spec();
        s.root_disk = Some("/img/root.ext4".into());
        let a = command_line(&s, Accel::Tcg);
        assert_eq!(
            value_after(&a, "-drive"),
            ["id=root,file=/img/root.ext4,format=raw,if=none,readonly=on"]
        );
        assert!(guest_cmdline(&s).contains("bottle.root=/dev/vda"));
    }

    #[test]
    fn guest_cmdline_starts_with_serial_console_and_keeps_extra_words() {
        let c = guest_cmdline(&test_spec());
        assert!(c.starts_with("console=ttyS0 "));
        assert!(c.contains(" bottle.hostname=demo"));
        assert!(c.contains("panic=-1"));
    }

    #[test]
    fn vm_exits_instead_of_rebooting() {
        let a = command_line(&test_spec(), Accel::Tcg);
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(a.contains(&"-nodefaults".to_string()));
    }
}
