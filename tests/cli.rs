//! The `portico` binary as an operator runs it: `check`, `certs`, `run` with curl over
//! HTTP/2 and HTTP/1.1, exit codes, and SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Bound;
use common::pebble::free_port;
use portico_test_support as common;

fn run(args: &[&str], cwd: &Path) -> Output {
    common::portico()
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("portico.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `portico run` on loopback port 0, with `sites` (TOML) after the `[listen]` and
/// `[storage]` tables, in `dir`. Returns the child once it serves, its stderr as
/// collected so far, and the addresses it bound.
fn run_sites(dir: &Path, sites: &str) -> (Child, Log, Bound) {
    let path = write(
        dir,
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n{sites}"
        ),
    );
    spawn_run(dir, &path)
}

type Log = Arc<Mutex<String>>;

/// `portico run --config path` in `dir`; returns once it says where it serves.
fn spawn_run(dir: &Path, path: &Path) -> (Child, Log, Bound) {
    let mut child = common::portico()
        .args(["run", "--config", path.to_str().unwrap()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::collect_stderr(&mut child);
    let bound = Bound::wait(&mut child, || log.lock().unwrap().clone());
    (child, log, bound)
}

#[test]
fn check_prints_sites_and_certificate_sources() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[storage]\npath = \"data\"\n[[site]]\nhosts = [\"localhost\"]\nupstreams = [\"127.0.0.1:9\"]\n[[site]]\nhosts = [\"example.com\"]\nupstreams = [\"127.0.0.1:9\"]\n",
    );
    let out = run(&["check", "--config", path.to_str().unwrap()], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("site[0] localhost"), "{stdout}");
    assert!(
        stdout.contains("internal CA (root: data/ca/root.pem)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("acme from https://acme-v02.api.letsencrypt.org/directory"),
        "{stdout}"
    );
    assert!(!dir.path().join("data").exists(), "check touches nothing");
}

/// `check` cannot know which profiles a CA offers (it talks to no one: here the
/// directory is a closed port), so any well-formed `acme.profile` passes and is shown; a
/// malformed one, and the host rules of `tls = "acme"`, are errors.
#[test]
fn check_takes_any_well_formed_acme_profile_offline_and_ip_hosts_under_explicit_acme() {
    let dir = tempfile::tempdir().unwrap();
    let acme = format!(
        "[storage]\npath = \"data\"\n[acme]\ndirectory = \"https://127.0.0.1:{}/dir\"\n",
        free_port()
    );
    let site = "[[site]]\nhosts = [\"192.0.2.7\", \"example.com\"]\ntls = \"acme\"\nupstreams = [\"127.0.0.1:9\"]\n";
    let path = write(
        dir.path(),
        &format!("{acme}profile = \"no-ca-offers-this\"\n{site}"),
    );
    let out = run(&["check", "--config", path.to_str().unwrap()], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("site[0] 192.0.2.7, example.com"),
        "{stdout}"
    );
    assert!(stdout.contains("(profile no-ca-offers-this)"), "{stdout}");
    assert!(!dir.path().join("data").exists(), "check touches nothing");

    let cases = [
        (
            format!("{acme}profile = \"short lived\"\n{site}"),
            ":5: acme.profile",
            "not a profile name",
        ),
        (
            format!("{acme}{}", site.replace("tls = \"acme\"\n", "")),
            ":6: site[0].hosts[0]",
            "explicit tls = \"acme\"",
        ),
        (
            format!("{acme}{}", site.replace("192.0.2.7", "localhost")),
            ":6: site[0].hosts[0]",
            "no public CA issues for a local name",
        ),
    ];
    for (text, location, message) in cases {
        let path = write(dir.path(), &text);
        let out = run(&["check", "--config", path.to_str().unwrap()], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains(&format!("portico.toml{location}")),
            "{stderr}"
        );
        assert!(stderr.contains(message), "{stderr}");
    }
}

#[test]
fn bad_configs_exit_64_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[listen]\nhttps = \"0.0.0.0:8443\"\nhtps = \"x\"\n",
            ":3: listen.htps",
            "unknown field",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = 8080\n",
            ":3: site[0].upstreams",
            "invalid type",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n[[site]]\nhosts = [\"b.test\"]\n",
            ":4: site[1].upstreams",
            "needs upstreams",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":6: site[1].hosts[0]",
            "already a host of site[0]",
        ),
        (
            "[listen]\nhttps = \"nowhere\"\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":2: listen.https",
            "not an address",
        ),
        // A syntax error on the last line is that line, in the table it is written in
        // (it was reported a line early and blamed on site[1].upstreams).
        (
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n[[site]]\nhosts = [\"b.test\"]\nupstreams = [\"h:1\"]\nthis line is not toml\n",
            ":7: site[1]",
            "expected",
        ),
        // Limits out of range: they passed `check` and then overflowed (a panic on every
        // connection), wrapped to 0 s, or failed every handshake.
        (
            "[limits]\nidle_timeout = \"5000000000000000h\"\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":2: limits.idle_timeout",
            "out of range",
        ),
        (
            "[limits]\nidle_timeout = \"1152921504606846976h\"\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":2: limits.idle_timeout",
            "out of range; use \"100ms\" to \"24h\"",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n[limits]\nhandshake_timeout = \"0s\"\n",
            ":5: limits.handshake_timeout",
            "out of range; use \"100ms\" to \"5m\"",
        ),
        (
            "[limits]\nmax_connections = 0\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":2: limits.max_connections",
            "out of range",
        ),
        (
            "[listen]\nproxy_protocol = true\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":2: listen.proxy_protocol",
            "trusted_proxies",
        ),
        (
            "[listen]\ntrusted_proxies = [\"10.0.0.1/8\"]\n[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n",
            ":2: listen.trusted_proxies[0]",
            "host bits",
        ),
        (
            "[[site]]\nhosts = [\"a.test\"]\nupstreams = [\"h:1\"]\n[[site.route]]\npath = \"/a/../b\"\nrespond = {}\n",
            ":5: site[0].route[0].path",
            "write it as \"/b\"",
        ),
    ];
    for (text, location, message) in cases {
        let path = write(dir.path(), text);
        for cmd in ["check", "run"] {
            let out = run(&[cmd, "--config", path.to_str().unwrap()], dir.path());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd}: {stderr}");
            assert!(
                stderr.contains(&format!("portico.toml{location}")),
                "{cmd}: {stderr}"
            );
            assert!(stderr.contains(message), "{cmd}: {stderr}");
        }
    }
    let out = run(&["check", "--config", "missing.toml"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let out = run(&["check"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(64),
        "no --config reads ./portico.toml"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("portico.toml"));
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed by scripts/test");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_serves_curl_over_h2_and_h1_then_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, log, bound) = run_sites(
        dir.path(),
        "[[site]]\nhosts = [\"localhost\", \"app.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"hi\" }\n",
    );
    let (http, https) = (bound.http.port(), bound.https.port());
    let root = dir.path().join("data/ca/root.pem");
    let resolve = format!("app.internal:{https}:127.0.0.1");
    let url = format!("https://app.internal:{https}/");
    let fmt = "%{http_version} %{http_code} ";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if root.exists() {
            let (out, err) = curl(&[
                "--http2",
                "--resolve",
                &resolve,
                "--cacert",
                root.to_str().unwrap(),
                "-w",
                fmt,
                &url,
            ]);
            last = format!("{out} {err}");
            if out.starts_with("hi") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last.starts_with("hi2 200"), "h2: {last}");
    let (out, _) = curl(&[
        "--http1.1",
        "--resolve",
        &resolve,
        "--cacert",
        root.to_str().unwrap(),
        "-w",
        fmt,
        &url,
    ]);
    assert_eq!(out, "hi1.1 200 ");

    // Port 80 redirects; a client that typed the http port gets the https one.
    let (out, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://127.0.0.1:{http}/p?q=1"),
        "-H",
        &format!("Host: app.internal:{http}"),
    ]);
    assert_eq!(out, format!("308 https://app.internal:{https}/p?q=1"));

    // The key files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let out = run(&["certs", "--config", "portico.toml"], dir.path());
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(table.contains("app.internal,localhost"), "{table}");
    assert!(table.contains("portico local CA root"), "{table}");
    assert!(table.contains("internal"), "{table}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "SIGTERM exits 0");
    // The reader thread may still be taking the last lines from the closed pipe.
    wait_for("the shutdown line", || {
        log.lock().unwrap().contains("shutting down")
    });
    let stderr = log.lock().unwrap().clone();
    assert!(!stderr.contains("PRIVATE KEY"), "no key material in logs");
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_through_with_flat_memory() {
    common::edge::install_provider();
    let up = common::backend("up", common::Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _log, bound) = run_sites(
        dir.path(),
        &format!("[[site]]\nhosts = [\"big.internal\"]\nupstreams = [\"{up}\"]\n"),
    );
    let addr = bound.https;
    let root_path = dir.path().join("data/ca/root.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    let tls = loop {
        if let Ok(root) = std::fs::read(&root_path) {
            let config = common::edge::client_config(&[&root], &[b"h2"]);
            if let Ok(tls) = common::edge::tls_connect(addr, "big.internal", config).await {
                break tls;
            }
        }
        assert!(Instant::now() < deadline, "portico did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let before = peak_rss_kib(child.id());
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, common::TestBody>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    const LEN: usize = 1 << 30;
    let req = hyper::Request::put("https://big.internal/upload")
        .body(common::pattern_body(LEN, 256 * 1024))
        .unwrap();
    let reply = common::read(send.send_request(req).await.unwrap()).await;
    let report = reply.text();
    assert!(report.contains(&format!("len: {LEN}\n")), "{report}");
    let after = peak_rss_kib(child.id());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Buffering the body would need a GiB; streaming needs a few flow-control windows.
    eprintln!("portico peak RSS: {before} KiB before, {after} KiB after a 1 GiB upload");
    assert!(
        after < 128 * 1024,
        "peak RSS {after} KiB (before the upload: {before} KiB)"
    );
}

/// Polls `probe` every 100 ms until it returns true; fails after a generous guard.
fn wait_for(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_applies_a_changed_file_and_keeps_serving_through_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = |body: &str, extra: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n[[site]]\nhosts = [\"app.internal\"]\n{extra}[[site.route]]\npath = \"/\"\nrespond = {{ status = 200, body = \"{body}\" }}\n"
        )
    };
    // Replaced atomically, as editors and deploy tools do.
    let replace = |text: &str| {
        std::fs::write(dir.path().join("next.toml"), text).unwrap();
        std::fs::rename(
            dir.path().join("next.toml"),
            dir.path().join("portico.toml"),
        )
        .unwrap();
    };
    let path = write(dir.path(), &config("one", ""));
    let (mut child, log, bound) = spawn_run(dir.path(), &path);
    let https = bound.https.port();
    let root = dir.path().join("data/ca/root.pem");
    let resolve = format!("app.internal:{https}:127.0.0.1");
    let url = format!("https://app.internal:{https}/");
    let get = || {
        if !root.exists() {
            return String::new();
        }
        curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            root.to_str().unwrap(),
            &url,
        ])
        .0
    };
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    wait_for("portico serves", || get() == "one");

    replace(&config("two", ""));
    hup();
    wait_for("the changed file applies", || get() == "two");
    let text = log.lock().unwrap().clone();
    let after_hup = text
        .split_once("SIGHUP: reloading the config")
        .unwrap_or_else(|| panic!("no SIGHUP line: {text}"))
        .1;
    assert!(
        after_hup.contains("config reloaded") && after_hup.contains("changed=[\"app.internal\"]"),
        "{text}"
    );

    // Line 8 of the broken file is `bogus = 1`, inside site[0].
    let broken = config("three", "bogus = 1\n");
    assert_eq!(broken.lines().nth(7), Some("bogus = 1"));
    replace(&broken);
    hup();
    let expected = format!("{}:8: site[0].bogus", path.display());
    wait_for("the refusal is logged with file:line: key", || {
        log.lock().unwrap().contains(&expected)
    });
    assert!(
        log.lock()
            .unwrap()
            .contains("config not reloaded; the running config keeps serving"),
        "{}",
        log.lock().unwrap()
    );
    assert_eq!(get(), "two", "the running config keeps serving");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// The binary on the Kubernetes backend, credentials from `KUBECONFIG` (the real API
/// server, through a front that counts requests): `run` keeps the local CA and the
/// site's certificate in Secrets, `certs` reads them back, and `check` never talks to the
/// cluster.
#[test]
fn the_kubernetes_backend_takes_kubeconfig_and_certs_reads_the_secrets() {
    use common::api_front::Front;
    use common::control_plane::control_plane;
    let ns = control_plane().namespace("cli-kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(Front::start(ns.plane()));
    let token = ns.token("operator");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = ns.kubeconfig_via(dir.path(), "operator", &api.url());
    let path = write(
        dir.path(),
        &format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n[storage]\nbackend = \"kubernetes\"\nnamespace = \"{}\"\n[[site]]\nhosts = [\"app.internal\"]\ntls = \"internal\"\nupstreams = [\"127.0.0.1:9\"]\n",
            ns.name
        ),
    );
    let config = path.to_str().unwrap();

    let before = api.requests().len();
    let out = common::portico()
        .args(["check", "--config", config])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(api.requests().len(), before, "check contacted the cluster");

    let mut child = common::portico()
        .args(["run", "--config", config])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("POD_NAME", "portico-test-0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = loop {
        let names = ns.names("secrets");
        if names
            .iter()
            .any(|n| n.starts_with("portico-tls-app.internal-"))
        {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate Secret: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(names.contains(&"portico-local-ca".to_string()), "{names:?}");
    let tls = ns
        .list("secrets")
        .into_iter()
        .find(|s| {
            s["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("portico-tls-")
        })
        .unwrap();
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(tls["metadata"]["labels"]["portico.dev/kind"], "certificate");

    let out = common::portico()
        .args(["certs", "--config", config])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(table.contains("app.internal"), "{table}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains(token), "the token is never logged:\n{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_logged_once_a_second_with_a_count() {
    common::edge::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, log, bound) = run_sites(
        dir.path(),
        "[[site]]\nhosts = [\"flood.internal\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"hi\" }\n",
    );
    let addr = bound.https;
    let root_path = dir.path().join("data/ca/root.pem");
    wait_for("the local CA root", || root_path.exists());
    let root = std::fs::read(&root_path).unwrap();
    const ATTACKS: usize = 40;
    let started = Instant::now();
    let mut ended = 0;
    for _ in 0..ATTACKS {
        if common::attack::rapid_reset(addr, "flood.internal", &root).await == Some(0xb) {
            ended += 1;
        }
    }
    let elapsed = started.elapsed();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(ended, ATTACKS);
    let log = log.lock().unwrap().clone();
    // h2's own line per connection stays off.
    assert!(!log.contains("reached limit"), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ended for protocol errors"))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    // One line per second at most (plus the first), each with a count.
    assert!(
        lines.len() as u64 <= elapsed.as_secs() + 1,
        "{} lines in {elapsed:?}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let counted: usize = lines
        .iter()
        .filter_map(|l| {
            l.split("count=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!((1..=ATTACKS).contains(&counted), "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .all(|l| l.contains("reason=\"h2_too_many_resets\"")
                || l.contains("reason=h2_too_many_resets")),
        "{}",
        lines.join("\n")
    );
}
