use super::*;

fn shape() -> Shape {
    Shape {
        engine: EngineKind::Qemu,
        accel: Accel::Tcg,
        kernel: "/k/vmlinux".into(),
        initramfs: "/img/tiny-abc/initramfs.cpio".into(),
        root_disk: None,
        image: "tiny".into(),
        cpus: 1,
        memory_mib: 512,
        gateway: Ipv4Addr::new(10, 0, 2, 2),
        guest: Ipv4Addr::new(10, 0, 2, 15),
        prefix_len: 24,
        mtu: 1500,
        limits: Limits::default(),
    }
}

fn entry(name: &str) -> Entry {
    Entry {
        name: name.into(),
        ready: true,
        started_at: "now".into(),
        boot_ms: None,
    }
}

#[test]
fn a_pooled_guest_boots_with_nothing_of_any_bottle() {
    let config = entry_config("pool-abcde", &shape());
    assert!(config.pooled);
    assert_eq!(config.identity, "pool-abcde");
    // No policy (deny-all), no git remotes, no extra roots, no pins.
    assert_eq!(config.policy, bottle_sidecars::policy::Policy::default());
    assert!(config.policy.allow.is_empty() && config.policy.routes.is_empty());
    assert!(!config.policy.supervise);
    assert!(config.git.is_empty() && config.extra_root_pems.is_empty());
    assert!(config.resolve.is_empty());
    let Mode::Vm(vm) = &config.mode else {
        panic!("a pooled guest is a VM")
    };
    // Its kernel command line: the shape's network, no hostname (the guest
    // keeps its default until the claiming bottle's is set at provisioning).
    let boot = crate::bundle::vm_boot(&config, vm);
    assert_eq!(boot.hostname, None);
    let line = boot.to_cmdline().unwrap();
    assert!(!line.contains("bottle.hostname"), "{line}");
    assert!(!line.contains("pool-abcde"), "{line}");
    // Two pooled guests of one shape boot with the same command line: it
    // cannot carry anything that differs between bottles.
    let other = entry_config("pool-fghij", &shape());
    let Mode::Vm(vm2) = &other.mode else {
        panic!("a pooled guest is a VM")
    };
    assert_eq!(
        crate::bundle::vm_boot(&other, vm2).to_cmdline().unwrap(),
        line
    );
    // A bottle booted for itself does carry its name.
    let mut own = config.clone();
    own.pooled = false;
    own.identity = "demo-ab12c".into();
    let own = crate::bundle::vm_boot(&own, vm);
    assert!(own
        .to_cmdline()
        .unwrap()
        .contains("bottle.hostname=demo-ab12c"));
}

#[test]
fn a_shape_mismatch_says_what_differs() {
    let pool = shape();
    assert_eq!(shape().mismatch(&pool), None);
    let mut want = shape();
    want.memory_mib = 1024;
    assert!(want.mismatch(&pool).unwrap().contains("1024 MiB"));
    let mut want = shape();
    want.image = "debian".into();
    want.root_disk = Some("/img/debian/root.img".into());
    assert!(want.mismatch(&pool).unwrap().contains("image debian"));
    let mut want = shape();
    want.limits.flows = 10;
    assert!(want.mismatch(&pool).unwrap().contains("limits"));
}

#[test]
fn pool_state_is_written_atomically_and_removed_when_stopped() {
    let root = tempfile::tempdir().unwrap();
    assert!(read(root.path()).unwrap().is_none());
    update(root.path(), |p| {
        *p = Some(PoolState {
            version: VERSION,
            pools: vec![ShapePool {
                size: 2,
                shape: shape(),
                entries: vec![entry("pool-abcde")],
            }],
        })
    })
    .unwrap();
    let back = read(root.path()).unwrap().unwrap();
    assert_eq!(back.pools[0].size, 2);
    assert_eq!(back.pools[0].entries[0].name, "pool-abcde");
    let leftovers: Vec<_> = std::fs::read_dir(dir(root.path()))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // The pool's directory is not a bottle's.
    assert!(crate::state::list(root.path()).unwrap().is_empty());
    update(root.path(), |p| *p = None).unwrap();
    assert!(read(root.path()).unwrap().is_none());
}

#[test]
fn pools_of_two_shapes_serve_each_its_own_and_say_what_differs_otherwise() {
    let tiny = shape();
    let mut debian = shape();
    debian.image = "debian".into();
    debian.root_disk = Some("/img/debian/root.ext4".into());
    debian.cpus = 2;
    let one = PoolState {
        version: VERSION,
        pools: vec![ShapePool {
            size: 1,
            shape: tiny.clone(),
            entries: vec![entry("pool-aaaaa")],
        }],
    };
    assert_eq!(one.pool_for(&tiny), Ok(0));
    // One pool: what differs from it.
    assert!(one.pool_for(&debian).unwrap_err().contains("image debian"));
    let mut two = one.clone();
    two.pools.push(ShapePool {
        size: 2,
        shape: debian.clone(),
        entries: vec![entry("pool-bbbbb"), entry("pool-ccccc")],
    });
    assert_eq!(two.pool_for(&tiny), Ok(0));
    assert_eq!(two.pool_for(&debian), Ok(1));
    assert_eq!(two.pools[1].entries.len(), 2);
    assert_eq!(two.entries().count(), 3);
    let mut other = shape();
    other.memory_mib = 4096;
    let why = two.pool_for(&other).unwrap_err();
    assert!(
        why.contains("4096 MiB") && why.contains("none of the 2"),
        "{why}"
    );
}

#[test]
fn a_pool_file_of_the_one_shape_format_reads_as_one_pool() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir(root.path())).unwrap();
    let v1 = serde_json::json!({
        "version": 1,
        "size": 2,
        "shape": shape(),
        "entries": [entry("pool-abcde")],
    });
    std::fs::write(dir(root.path()).join(STATE), v1.to_string()).unwrap();
    let back = read(root.path()).unwrap().unwrap();
    assert_eq!(back.pools.len(), 1);
    assert_eq!(back.pools[0].size, 2);
    assert_eq!(back.pools[0].shape, shape());
    assert_eq!(back.pools[0].entries[0].name, "pool-abcde");
    // Written back in the current format.
    update(root.path(), |_| ()).unwrap();
    let text = std::fs::read_to_string(dir(root.path()).join(STATE)).unwrap();
    assert!(
        text.contains("\"pools\"") && text.contains("\"version\": 2"),
        "{text}"
    );
}
