//! What an operator installs and checks before starting anything: `weftd --check-config`
//! names the key in every broken sample, the packaged example is valid, and
//! `packaging/install.sh` stages binaries, shim, man pages, completions, units and config.

use std::path::{Path, PathBuf};
use std::process::Command;
use weft_tests::{bin_dir, weft_bin, weftd_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn check_config_names_the_key_in_every_broken_sample() {
    let dir = repo().join("tests/data/broken-config");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 25, "{} samples", samples.len());
    for path in samples {
        let text = std::fs::read_to_string(&path).unwrap();
        let key = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# key: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# key: NAME`", path.display()));
        let out = Command::new(weftd_bin())
            .arg("--check-config")
            .arg(&path)
            .env_remove("WEFT_SOCKET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert_eq!(
            err.lines().count(),
            1,
            "{}: one line: {err}",
            path.display()
        );
        assert!(
            err.contains(&format!("`{key}`")),
            "{}: the error does not name `{key}`: {err}",
            path.display()
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn the_packaged_example_passes_check_config() {
    let example = repo().join("packaging/weftd.toml");
    // The example names /etc/weft/weftd.key and /etc/weft/admitted; the flags stand in for
    // them with a key and a list made here (flags win over the file, as documented).
    let dir = std::env::temp_dir().join(format!("weft-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = weft_secure::SecretKey::generate();
    weft_secure::write_key_file(&dir.join("weftd.key"), &key, true).unwrap();
    let mut list = weft_secure::Admitted::new();
    list.insert(
        weft_core::NodeId::from(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        key.public(),
    );
    std::fs::write(dir.join("admitted"), weft_secure::admitted::render(&list)).unwrap();
    let out = Command::new(weftd_bin())
        .arg("--check-config")
        .arg(&example)
        .arg("--key")
        .arg(dir.join("weftd.key"))
        .arg("--admitted-keys")
        .arg(dir.join("admitted"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(": ok (node 192.0.2.1"), "{said}");
}

#[test]
fn install_stages_everything_an_operator_needs() {
    let stage = std::env::temp_dir().join(format!("weft-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    let out = Command::new("bash")
        .arg(repo().join("packaging/install.sh"))
        .arg("--built")
        .arg(bin_dir())
        .env("DESTDIR", &stage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/local/bin/weftd",
        "usr/local/bin/weft",
        "usr/local/lib/weft/libweft.so",
        "usr/local/share/man/man8/weftd.8",
        "usr/local/share/man/man1/weft.1",
        "usr/local/share/man/man1/weft-ping.1",
        "usr/local/share/bash-completion/completions/weft",
        "usr/local/share/zsh/site-functions/_weftd",
        "etc/systemd/system/weftd.service",
        "etc/weft/weftd.toml",
        "usr/lib/sysusers.d/weft.conf",
        "etc/sysctl.d/60-weftd.conf",
    ] {
        assert!(stage.join(f).is_file(), "{f} not installed");
    }
    let man = std::fs::read_to_string(stage.join("usr/local/share/man/man8/weftd.8")).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH weftd 8"),
        "{man}"
    );
    assert!(man.contains("check\\-config"));
    let bash =
        std::fs::read_to_string(stage.join("usr/local/share/bash-completion/completions/weft"))
            .unwrap();
    assert!(bash.contains("neighbor") && bash.contains("completions"));
    let unit = std::fs::read_to_string(stage.join("etc/systemd/system/weftd.service")).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "ExecReload=",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // The installed weft finds the installed shim.
    let out = Command::new(stage.join("usr/local/bin/weft"))
        .args([
            "--socket",
            "/nonexistent/weft.sock",
            "run",
            "-q",
            "--",
            "true",
        ])
        .env_remove("WEFT_PRELOAD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&stage).ok();
    let _ = weft_bin();
}
