//! The throw-away Postgres and Redis that `make test` starts pick free
//! ports: they once used fixed ports inside the kernel's ephemeral range
//! (55432, 56379), and whenever an outgoing connection happened to hold one
//! of them as its local port the whole run failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::Command;

/// Runs `scripts/<script> <command>` with its directory variable set.
fn script(script: &str, dir_var: &str, dir: &std::path::Path, command: &str) -> (bool, String) {
    let out = Command::new(format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR")))
        .arg(command)
        .env(dir_var, dir)
        .env_remove("PALAVER_TEST_PG_PORT")
        .env_remove("PALAVER_TEST_REDIS_PORT")
        .output()
        .expect("run the script");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || command == "stop",
        "{script} {command} failed: {stdout}\n{stderr}"
    );
    (
        out.status.success(),
        stdout.lines().last().unwrap_or("").to_owned(),
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|tail| tail.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// The lowest port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[test]
fn test_databases_start_on_free_ports_below_the_ephemeral_range() {
    // The old fixed ports, taken (by us, or already by someone else).
    let _held: Vec<TcpListener> = [55432, 56379]
        .into_iter()
        .filter_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .collect();
    for (name, script_name, dir_var) in [
        ("postgres", "test-postgres.sh", "PALAVER_TEST_PG_DIR"),
        ("redis", "test-redis.sh", "PALAVER_TEST_REDIS_DIR"),
    ] {
        let dir = tempfile::Builder::new()
            .prefix("palaver-svc")
            .tempdir_in("/tmp")
            .unwrap();
        // Postgres runs as its own user when the tests run as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join(name);
        let (_, url) = script(script_name, dir_var, &home, "start");
        let stopped = script(script_name, dir_var, &home, "stop");
        let port = port_of(&url);
        assert!(stopped.0, "{name} did not stop");
        assert!(
            port < ephemeral_start() && ![55432, 56379].contains(&port),
            "{name} listened on {port}: {url}"
        );
    }
}
