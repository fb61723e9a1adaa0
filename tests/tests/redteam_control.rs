//! Red team, local side: a second user on the daemon's machine (`nobody`, uid 65534, a
//! member of the control socket's group) with the `weft` CLI and a raw control client
//! (`weft-control-raw`, what anyone could write). Before issue 17 the control socket checked
//! nothing: nobody cut links, set loss, took over root's listener, stole a waiting session
//! by scanning claims, read another user's session by its inode and sent from root's ports.
//! Each attack must now be refused with the kernel's errno and a readable message, and
//! counted; an admin-group member may administer, and anyone in the socket group may read
//! the status.

use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use weft_core::{Endpoint, NodeId};
use weft_ipc::{ListenDelivery, Request};
use weft_tests::{as_user, weft_bin, Overlay};

const NOBODY: u32 = 65534;
/// The socket's group: `nogroup`, nobody's primary group.
const SOCKET_GID: u32 = 65534;
/// The admin group: a bare gid (no name needed).
const ADMIN_GID: u32 = 4242;
/// A gid that is neither.
const OUTSIDER_GID: u32 = 4343;

fn overlay() -> Overlay {
    let o = Overlay::builder()
        .link(1, 2, "")
        .flag("--socket-group")
        .flag(&SOCKET_GID.to_string())
        .flag("--admin-group")
        .flag(&ADMIN_GID.to_string())
        .start();
    o.wait_converged(Duration::from_secs(10));
    o
}

/// `weft ARGS` against node `n` as `uid`/`gid` with `groups`.
fn weft_as(o: &Overlay, n: usize, ids: (u32, u32, &[u32]), args: &[&str]) -> Output {
    let mut c = Command::new(weft_bin());
    c.arg("--socket").arg(o.socket(n)).args(args);
    as_user(&mut c, ids.0, ids.1, ids.2);
    c.output().expect("run weft as another user")
}

const AS_NOBODY: (u32, u32, &[u32]) = (NOBODY, SOCKET_GID, &[]);
const AS_ADMIN_MEMBER: (u32, u32, &[u32]) = (NOBODY, SOCKET_GID, &[ADMIN_GID]);

/// The raw control client as nobody (or as root): one reply line per request.
fn raw(o: &Overlay, n: usize, root: bool, requests: &[Request]) -> Vec<String> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-control-raw"));
    c.arg(o.socket(n));
    for r in requests {
        c.arg(serde_json::to_string(r).expect("request JSON"));
    }
    if !root {
        as_user(&mut c, NOBODY, SOCKET_GID, &[]);
    }
    let out = c.output().expect("run weft-control-raw");
    assert!(
        out.status.success(),
        "weft-control-raw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    for (r, l) in requests.iter().zip(&lines) {
        println!("{} {r:?} -> {l}", if root { "root  " } else { "nobody" });
    }
    lines
}

fn errno_of(line: &str) -> Option<i64> {
    let json = line.rsplit_once(" fds=").map_or(line, |(j, _)| j);
    let v: Value = serde_json::from_str(json).ok()?;
    v["Error"]["errno"].as_i64()
}

fn refused(o: &Overlay, n: usize) -> (u64, u64) {
    let a = &o.status(n)["access"];
    (
        a["refused_admin"].as_u64().expect("refused_admin"),
        a["refused_owner"].as_u64().expect("refused_owner"),
    )
}

fn failed_with(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} succeeded: {err}");
    err
}

#[test]
fn nobody_cannot_administer_the_overlay_an_admin_member_can() {
    let o = overlay();
    let peer = o.ip(2);
    let peer_addr = format!("{peer}:7470");

    // The socket: mode 0660, the configured group.
    let meta = std::fs::metadata(o.socket(1)).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), SOCKET_GID);

    // Anyone in the socket's group reads the status.
    let out = weft_as(&o, 1, AS_NOBODY, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["schema_version"], 1);
    assert_eq!(st["access"]["socket_gid"], SOCKET_GID);
    // A user outside it cannot connect at all.
    let out = weft_as(&o, 1, (NOBODY, OUTSIDER_GID, &[]), &["status"]);
    let err = failed_with(&out, "status from outside the socket's group");
    assert!(err.contains("Permission denied"), "{err}");

    // Nobody's administration, each refused with a message that says why.
    let attacks: [&[&str]; 5] = [
        &["link", "cut", &peer],
        &["link", "set", &peer, "loss=99.9%"],
        &["link", "heal", &peer],
        &["neighbor", "remove", &peer_addr],
        &["neighbor", "add", "127.0.0.99:7470"],
    ];
    for args in attacks {
        let out = weft_as(&o, 1, AS_NOBODY, args);
        let err = failed_with(&out, &format!("nobody's `weft {}`", args.join(" ")));
        println!("nobody weft {}: {}", args.join(" "), err.trim());
        assert!(
            err.contains("needs root or the daemon's admin group") && err.contains("65534"),
            "{err}"
        );
    }
    let st = o.status(1);
    let n = &st["neighbors"][0];
    assert_eq!(st["neighbors"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(n["cut"], false, "{n}");
    assert_eq!(
        n["emulation"]["params"]["loss_ratio"].as_f64(),
        Some(0.0),
        "{n}"
    );
    assert_eq!(refused(&o, 1), (5, 0));
    let log = std::fs::read_to_string(o.log(1)).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("control request refused") && l.contains("uid=65534")),
        "the refusals are not logged:\n{log}"
    );
    // Reloading is SIGHUP, which the kernel keeps from other users.
    let mut kill = Command::new("kill");
    kill.args(["-HUP", &o.daemon_pid(1).to_string()])
        .stderr(Stdio::null());
    as_user(&mut kill, NOBODY, SOCKET_GID, &[]);
    assert!(!kill.status().expect("kill").success());

    // A member of the admin group administers.
    let ok = |args: &[&str]| {
        let out = weft_as(&o, 1, AS_ADMIN_MEMBER, args);
        assert!(
            out.status.success(),
            "admin member's `weft {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["link", "set", &peer, "loss=1%"]);
    let loss = o.status(1)["neighbors"][0]["emulation"]["params"]["loss_ratio"].as_f64();
    assert_eq!(loss, Some(0.01));
    ok(&["link", "cut", &peer]);
    assert_eq!(o.status(1)["neighbors"][0]["cut"], true);
    ok(&["link", "heal", &peer]);
    assert_eq!(o.status(1)["neighbors"][0]["cut"], false);
    ok(&["neighbor", "remove", &peer_addr]);
    assert_eq!(o.status(1)["neighbors"].as_array().map(Vec::len), Some(0));
    ok(&["neighbor", "add", &peer_addr]);
    assert_eq!(o.status(1)["neighbors"].as_array().map(Vec::len), Some(1));
    assert_eq!(refused(&o, 1), (5, 0));
}

/// Socket inodes a process holds (from /proc, as root).
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| {
            let l = std::fs::read_link(e.ok()?.path()).ok()?;
            let l = l.to_str()?;
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect::<std::collections::BTreeSet<u64>>()
        .into_iter()
        .collect()
}

#[test]
fn nobody_cannot_touch_root_sessions_listeners_or_ports() {
    let o = overlay();
    let node2: std::net::Ipv4Addr = o.ip(2).parse().expect("ip");

    // Root's listener on node 2, and root's session to it from node 1.
    let mut listen = o.spawn_listen(2, 7100, Stdio::null());
    o.wait_listening(2, 7100);
    let lines = raw(
        &o,
        2,
        false,
        &[Request::Listen {
            port: 7100,
            delivery: ListenDelivery::Control,
            backlog: 8,
        }],
    );
    assert_eq!(
        errno_of(&lines[0]),
        Some(libc::EADDRINUSE as i64),
        "{lines:?}"
    );
    let mut cat = Command::new(weft_bin())
        .arg("--socket")
        .arg(o.socket(1))
        .args(["cat", &format!("{node2}:7100")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("weft cat");
    cat.stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"root's secret\n")
        .expect("write");
    weft_tests::wait_for(
        Duration::from_secs(10),
        || {
            o.status(1)["sessions"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        },
        || "root's session did not start".into(),
    );

    // Root's session by the inodes of `weft cat`'s sockets: nobody learns nothing.
    let inodes = socket_inodes(cat.id());
    let ask = |root: bool| {
        let reqs: Vec<Request> = inodes
            .iter()
            .flat_map(|&inode| {
                [
                    Request::SessionInfo { inode },
                    Request::ConnectStatus { inode },
                    Request::SessionOptions {
                        inode,
                        options: Default::default(),
                    },
                ]
            })
            .collect();
        raw(&o, 1, root, &reqs)
    };
    let nobody = ask(false);
    assert!(nobody.iter().all(|l| errno_of(l).is_some()), "{nobody:?}");
    let denied = nobody
        .iter()
        .filter(|l| errno_of(l) == Some(libc::EACCES as i64))
        .count();
    assert_eq!(denied, 3, "{nobody:?}");
    // The same questions from root find the session (the attack aims at something real).
    let root = ask(true);
    assert!(
        root.iter().any(|l| l.starts_with("{\"Session\"")),
        "{root:?}"
    );

    // Root's datagram port on node 1: nobody neither sends from it nor sets its multicast
    // options; on a port of its own it does both.
    let mut recv = o.spawn_weft(1, &["recv", "--port", "7200"]);
    weft_tests::wait_for(
        Duration::from_secs(10),
        || {
            o.status(1)["datagram_ports"]
                .as_array()
                .is_some_and(|p| p.iter().any(|v| v == 7200))
        },
        || "`weft recv` did not bind".into(),
    );
    let dst = Endpoint::new(NodeId::from(node2), 7201);
    let from = |src_port| Request::SendDatagram {
        src_port,
        dst,
        ttl: 0,
        payload: b"spoofed".to_vec(),
    };
    let options = |port| Request::MulticastSend {
        port,
        hops: 0,
        loopback: false,
    };
    let lines = raw(
        &o,
        1,
        false,
        &[
            from(7200),
            options(7200),
            Request::BindDatagram {
                port: 7300,
                deliver_to: None,
            },
            from(7300),
            options(7300),
        ],
    );
    assert_eq!(errno_of(&lines[0]), Some(libc::EACCES as i64), "{lines:?}");
    assert_eq!(errno_of(&lines[1]), Some(libc::EACCES as i64), "{lines:?}");
    assert!(lines[2].starts_with("{\"Bound\""), "{lines:?}");
    assert!(lines[3].starts_with("\"Ok\""), "{lines:?}");
    assert!(lines[4].starts_with("\"Ok\""), "{lines:?}");

    assert_eq!(refused(&o, 2), (0, 1));
    assert_eq!(refused(&o, 1), (0, 5));
    let _ = cat.kill();
    let _ = cat.wait();
    let _ = listen.kill();
    let _ = listen.wait();
    let _ = recv.kill();
    let _ = recv.wait();
}

/// The local port range, where the daemon's injected connections come from.
fn ephemeral_ports() -> (u16, u16) {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("range");
    let mut it = s.split_whitespace().map(|p| p.parse().expect("port"));
    (it.next().expect("low"), it.next().expect("high"))
}

#[test]
fn nobody_cannot_steal_a_session_waiting_for_roots_accept() {
    let o = overlay();
    // Root's server under the shim on node 2, which has not called accept yet.
    let port = weft_tests::shim::free_port();
    let mut server = o
        .shim(2, weft_tests::shim::PYTHON)
        .args([
            "-c",
            &format!(
                "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',{port}))\n\
                 s.listen(8)\ntime.sleep(60)"
            ),
        ])
        .spawn()
        .expect("python");
    o.wait_listener(2, port);
    let mut cat = Command::new(weft_bin())
        .arg("--socket")
        .arg(o.socket(1))
        .args(["cat", &format!("{}:{port}", o.ip(2))])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("weft cat");
    weft_tests::wait_for(
        Duration::from_secs(10),
        || {
            o.status(2)["sessions"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        },
        || "no session waits on node 2".into(),
    );
    let (lo, hi) = ephemeral_ports();
    let scan = |root: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weft-control-raw"));
        c.arg(o.socket(2))
            .args(["--scan-claims", &lo.to_string(), &hi.to_string()]);
        if !root {
            as_user(&mut c, NOBODY, SOCKET_GID, &[]);
        }
        let out = c.output().expect("scan");
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!(
            "{} scans claims {lo}..={hi}: {s}",
            if root { "root" } else { "nobody" }
        );
        s
    };
    let nobody = scan(false);
    assert!(nobody.starts_with("claimed=0 refused=1 "), "{nobody}");
    assert_eq!(refused(&o, 2), (0, 1));
    // Root (who could take it anyway) finds it: the scan aimed at a real session.
    let root = scan(true);
    assert!(root.starts_with("claimed=1 "), "{root}");
    let _ = cat.kill();
    let _ = cat.wait();
    let _ = server.kill();
    let _ = server.wait();
}

/// `weftd --socket PATH` as the issue found it: it deleted whatever was at PATH and created
/// missing parents as root. Now it replaces only a dead socket, creates only the socket's own
/// directory, and refuses a directory another user could write to.
#[test]
fn weftd_never_replaces_a_file_nor_trusts_another_users_directory() {
    let subnet = weft_tests::Subnet::claim();
    let dir = std::path::PathBuf::from(format!("/tmp/weft-tests/{}-sockets", subnet.t));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let start = |socket: &std::path::Path| {
        let out = Command::new(weft_tests::weftd_bin())
            .args([
                "--listen",
                &format!("127.{}.0.1:7470", subnet.t),
                "--insecure",
            ])
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .output()
            .expect("weftd");
        assert!(
            !out.status.success(),
            "weftd started on {}",
            socket.display()
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let precious = dir.join("precious");
    std::fs::write(&precious, b"keep me").expect("file");
    let err = start(&precious);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&precious).expect("file"), b"keep me");

    let deep = dir.join("a/b/weftd.sock");
    let err = start(&deep);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.join("a").exists());

    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).expect("dir");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), None).expect("chown");
    let err = start(&theirs.join("weftd.sock"));
    assert!(err.contains("belongs to uid 65534"), "{err}");

    let open = dir.join("open");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = start(&open.join("weftd.sock"));
    assert!(err.contains("writable by every user"), "{err}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A server that accepts after dropping privileges (root's listener, a worker running as
/// nobody): the worker holds the accepted connection, which proves the claim whatever its uid.
#[test]
fn a_worker_that_dropped_privileges_still_gets_its_session() {
    let o = overlay();
    let port = weft_tests::shim::free_port();
    let script = format!(
        "import os,socket,sys\ns=socket.socket()\ns.bind(('0.0.0.0',{port}))\ns.listen(8)\n\
         print('listening',flush=True)\npid=os.fork()\nif pid==0:\n    os.setgroups([])\n\
         \x20   os.setgid({SOCKET_GID})\n    os.setuid({NOBODY})\n    c,_=s.accept()\n\
         \x20   sys.stdout.write(c.recv(100).decode())\n    sys.stdout.flush()\n    os._exit(0)\n\
         os.waitpid(pid,0)\n"
    );
    let mut cmd = o.shim(2, weft_tests::shim::PYTHON);
    cmd.args(["-c", &script]);
    let mut server = weft_tests::shim::Bg::spawn(cmd, &o.dir, "worker");
    o.wait_listener(2, port);
    let mut cat = Command::new(weft_bin())
        .arg("--socket")
        .arg(o.socket(1))
        .args(["cat", &format!("{}:{port}", o.ip(2))])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("weft cat");
    cat.stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"for the worker\n")
        .expect("write");
    let got = server.success(Duration::from_secs(20));
    assert!(got.contains("for the worker"), "the worker got {got:?}");
    assert_eq!(refused(&o, 2), (0, 0));
    let _ = cat.kill();
    let _ = cat.wait();
}

/// Root's UDP socket (this test's own): nobody may neither join nor leave groups for it nor
/// set its filter; a join for its own connection (the CLI's way) is fine.
#[test]
fn nobody_cannot_change_the_memberships_of_roots_socket() {
    use std::os::fd::AsRawFd;
    let o = overlay();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let std::net::SocketAddr::V4(addr) = sock.local_addr().expect("addr") else {
        panic!("v4")
    };
    // SAFETY: fstat into a zeroed buffer on a socket we own.
    let inode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(sock.as_raw_fd(), &mut st), 0);
        st.st_ino
    };
    let group = NodeId::from(std::net::Ipv4Addr::new(239, 1, 2, 3));
    let lines = raw(
        &o,
        1,
        false,
        &[
            Request::Join {
                group,
                source: None,
                deliver_to: addr,
                reliable: false,
            },
            Request::Leave {
                group,
                source: None,
                deliver_to: addr,
            },
            Request::GroupFilter {
                socket: weft_ipc::GroupSocket::Kernel { inode },
                group,
                filter: None,
                reliable: false,
            },
            Request::GroupFilter {
                socket: weft_ipc::GroupSocket::Delivery(addr),
                group,
                filter: None,
                reliable: false,
            },
            Request::Join {
                group,
                source: None,
                deliver_to: std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 5000),
                reliable: false,
            },
        ],
    );
    for l in &lines[..4] {
        assert_eq!(errno_of(l), Some(libc::EACCES as i64), "{lines:?}");
    }
    assert!(lines[4].starts_with("\"Ok\""), "{lines:?}");
    assert_eq!(refused(&o, 1), (0, 4));
    drop(sock);
}
