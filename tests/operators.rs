//! What operators expect every day, through the binary over real sockets:
//! the one-line `portico proxy` and `portico respond`, the access log in both formats
//! (and what it must never contain), JSON logs, request ids, and `portico trust`
//! against a trust store in a temporary folder that curl then uses with no `--cacert`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_test_support as common;

use common::Bound;

/// curl's exit code, stdout and stderr.
fn curl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("curl is installed by scripts/test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Collects what a child writes to one of its pipes, line by line, as it comes.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits (up to a minute: the machine may be busy) until `lines` has one for which
/// `want` holds, and returns it; panics with everything seen otherwise.
fn wait_line(lines: &Mutex<Vec<String>>, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| want(l)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such line in: {:#?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `https://HOST:PORT/ready-probe` with the local CA's root until portico answers.
fn wait_ready(dir: &Path, host: &str, https: u16) {
    let root = dir.join("data/ca/root.pem");
    let resolve = format!("{host}:{https}:127.0.0.1");
    let url = format!("https://{host}:{https}/ready-probe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if root.exists() {
            let (code, _, err) = curl(
                &[
                    "--resolve",
                    &resolve,
                    "--cacert",
                    root.to_str().unwrap(),
                    &url,
                ],
                &[],
            );
            if code == 0 {
                return;
            }
            last = err;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("portico did not answer on {https}: {last}");
}

fn stop(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0), "SIGTERM exits 0");
}

/// `portico proxy` forwards with no config file; each request is one text access log
/// line on stdout with the fields the docs list; request ids are kept when sane and
/// replaced (never logged) when not; cookies, authorization and the query never
/// appear in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_one_liner_logs_each_request_and_passes_request_ids() {
    let upstream = common::backend("up", common::Proto::Http1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::portico()
        .args(["proxy", "--from", "app.localhost", "--to"])
        .arg(upstream.to_string())
        .args(["--https", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--data", "data", "--access-log"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let https = Bound::wait_async(&mut child, || stderr.lock().unwrap().join("\n"))
        .await
        .https
        .port();
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || wait_ready(&dir_path, "app.localhost", https))
        .await
        .unwrap();

    let root = dir.path().join("data/ca/root.pem");
    let resolve = format!("app.localhost:{https}:127.0.0.1");
    let base = format!("https://app.localhost:{https}");
    let send = |id: &str, path: &str| {
        let (code, out, err) = curl(
            &[
                "--resolve",
                &resolve,
                "--cacert",
                root.to_str().unwrap(),
                "-H",
                &format!("X-Request-Id: {id}"),
                "-H",
                "Cookie: session=SECRET-COOKIE",
                "-H",
                "Authorization: Bearer SECRET-TOKEN",
                "--data-binary",
                "hello",
                &format!("{base}{path}?token=SECRET-QUERY"),
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        common::Report::parse(&out)
    };
    // curl blocks this worker; the backend runs on the other one.
    let report = send("client-id-1", "/kept");
    assert_eq!(report.header("x-request-id"), Some("client-id-1"));
    let oversized = "a".repeat(201);
    let attacks = [oversized.as_str(), "forged\" status=200 x=\"y", "tab\there"];
    let mut replaced = Vec::new();
    for (i, attack) in attacks.iter().enumerate() {
        let report = send(attack, &format!("/attack{i}"));
        let id = report.header("x-request-id").unwrap().to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        replaced.push(id);
    }

    // A client that gives up before the upstream answers (it waits a minute on /slow)
    // still gets its line, with nginx's 499.
    let (code, _, _) = curl(
        &[
            "--resolve",
            &resolve,
            "--cacert",
            root.to_str().unwrap(),
            "--max-time",
            "2",
            &format!("{base}/slow"),
        ],
        &[],
    );
    assert_eq!(code, 28, "curl timed out");
    let line = wait_line(&stdout, |l| l.contains(" path=/slow "));
    assert!(line.contains(" status=499 "), "{line}");
    assert!(
        line.contains(&format!(" host=app.localhost:{https} ")),
        "{line}"
    );
    assert!(line.contains(&format!(" upstream={upstream} ")), "{line}");
    assert!(line.contains(" upstream_ms=- "), "{line}");

    let line = wait_line(&stdout, |l| l.contains(" path=/kept "));
    for field in [
        "site=app.localhost ",
        " client=127.0.0.1 ",
        " method=POST ",
        &format!(" host=app.localhost:{https} "),
        " status=200 ",
        " bytes_in=5 ",
        &format!(" upstream={upstream} "),
        " sni=app.localhost ",
        " request_id=client-id-1",
    ] {
        assert!(line.contains(field), "{field:?} in {line}");
    }
    assert!(line.starts_with("time=20"), "{line}");
    assert!(line.contains(" tls=TLSv1.3 "), "{line}");
    assert!(line.contains(" proto=HTTP/2 "), "{line}");
    assert!(line.contains(" upstream_ms="), "{line}");
    let bytes_out: u64 = line
        .split(" bytes_out=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes_out > 0, "{line}");
    for (i, id) in replaced.iter().enumerate() {
        let line = wait_line(&stdout, |l| l.contains(&format!(" path=/attack{i} ")));
        assert!(line.ends_with(&format!(" request_id={id}")), "{line}");
    }
    stop(&mut child);
    let all = stdout.lock().unwrap().join("\n");
    for secret in ["SECRET", "token=", "aaaaaaaaaa", "forged", "tab"] {
        assert!(!all.contains(secret), "{secret} logged: {all}");
    }
    let errors = stderr.lock().unwrap().join("\n");
    assert!(!errors.contains("SECRET"), "{errors}");
}

/// `[log] format = "json"`: access log lines and portico's own log lines are JSON
/// objects; `check` says what the log does, and in a pod the access log is on unless
/// the file turns it off.
#[test]
fn json_format_for_access_and_own_logs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    let site = "[[site]]\nhosts = [\"localhost\"]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200, body = \"hi\" }\n";
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n[log]\naccess = true\nformat = \"json\"\n{site}"
        ),
    )
    .unwrap();
    let out = common::portico()
        .args(["check", "--config", "portico.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("log: access on (stdout), format json"),
        "{text}"
    );

    let mut child = common::portico()
        .args(["run", "--config", "portico.toml"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let https = Bound::wait(&mut child, || stderr.lock().unwrap().join("\n"))
        .https
        .port();
    wait_ready(dir.path(), "localhost", https);
    let (code, body, _) = curl(
        &[
            "--http1.1",
            "--cacert",
            dir.path().join("data/ca/root.pem").to_str().unwrap(),
            &format!("https://localhost:{https}/json?q=SECRET"),
        ],
        &[],
    );
    assert_eq!((code, body.as_str()), (0, "hi"));
    let line = wait_line(&stdout, |l| l.contains("\"/json\""));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["site"], "localhost");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/json");
    assert_eq!(v["proto"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_in"], 0);
    assert_eq!(v["bytes_out"], 2);
    assert_eq!(v["upstream"], serde_json::Value::Null);
    assert_eq!(v["tls"], "TLSv1.3");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 32);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    let serving = wait_line(&stderr, |l| l.contains("portico is serving"));
    let v: serde_json::Value = serde_json::from_str(&serving).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "portico is serving");
    assert_eq!(v["access_log"], true);
    stop(&mut child);
    for line in stderr.lock().unwrap().iter() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert!(!stdout.lock().unwrap().join("\n").contains("SECRET"));

    // In a pod (the kubelet sets KUBERNETES_SERVICE_HOST) the default is on.
    std::fs::write(&path, site).unwrap();
    let check = |env: Option<&str>| {
        let mut cmd = common::portico();
        cmd.args(["check", "--config", "portico.toml"])
            .current_dir(dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST");
        if let Some(v) = env {
            cmd.env("KUBERNETES_SERVICE_HOST", v);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    assert!(check(Some("10.96.0.1")).contains("log: access on (stdout), format text"));
    assert!(check(None).contains("log: access off, format text"));
}

/// `portico respond` answers with no config file; `portico trust` puts the local CA's
/// root into a trust store (in a temporary folder, laid out like Debian's), after which
/// curl verifies portico's certificate from that store's bundle alone, as it would with
/// the system's; `portico untrust` takes it out again.
#[test]
fn trust_lets_curl_verify_with_the_store_bundle_and_untrust_undoes_it() {
    let dir = tempfile::tempdir().unwrap();
    // Before portico has run there is no root to trust.
    let out = common::portico()
        .args(["trust", "--data", "data", "--store-root", "store"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root.pem"));

    let mut child = common::portico()
        .args(["respond", "--from", "localhost", "--body", "trusted\n"])
        .args(["--https", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--data", "data"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = collect(child.stderr.take().unwrap());
    let https = Bound::wait(&mut child, || stderr.lock().unwrap().join("\n"))
        .https
        .port();
    wait_ready(dir.path(), "localhost", https);

    // A store like a real one: one other CA, listed in its config file.
    let store = dir.path().join("store");
    let mozilla = std::fs::read_dir("/usr/share/ca-certificates/mozilla")
        .expect("ca-certificates is installed by scripts/test")
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "crt"))
        .unwrap();
    let name = mozilla.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::create_dir_all(store.join("usr/share/ca-certificates/mozilla")).unwrap();
    std::fs::create_dir_all(store.join("etc/ssl/certs")).unwrap();
    std::fs::copy(
        &mozilla,
        store.join("usr/share/ca-certificates/mozilla").join(&name),
    )
    .unwrap();
    std::fs::write(
        store.join("etc/ca-certificates.conf"),
        format!("mozilla/{name}\n"),
    )
    .unwrap();

    // ...and the bundle it has before portico touches it.
    let bundle = store.join("etc/ssl/certs/ca-certificates.crt");
    std::fs::copy(&mozilla, &bundle).unwrap();
    let env = [("CURL_CA_BUNDLE", bundle.to_str().unwrap())];
    let url = format!("https://localhost:{https}/");
    let trust = |cmd: &str| {
        let out = common::portico()
            .args([cmd, "--data", "data", "--store-root", "store"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    assert!(trust("untrust").contains("was not installed"));
    let (code, _, err) = curl(&[&url], &env);
    assert_eq!(code, 60, "not trusted yet: {err}");

    let said = trust("trust");
    assert!(said.contains("installed as"), "{said}");
    assert!(said.contains("portico-local-ca-"), "{said}");
    let (code, out, err) = curl(&[&url], &env);
    assert_eq!((code, out.as_str()), (0, "trusted\n"), "{err}");
    assert!(trust("trust").contains("already installed"));
    let installed: Vec<_> = std::fs::read_dir(store.join("usr/local/share/ca-certificates"))
        .unwrap()
        .collect();
    assert_eq!(installed.len(), 1, "one file per root, however often");

    assert!(trust("untrust").contains("removed"));
    let (code, _, err) = curl(&[&url], &env);
    assert_eq!(code, 60, "trusted after untrust: {err}");
    let left = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(
        left.matches("BEGIN CERTIFICATE").count(),
        1,
        "the other CA stays"
    );
    stop(&mut child);
}

/// `proxy` and `respond` validate their one site like a file: a bad flag exits 64 and
/// the error names the flag.
#[test]
fn quick_commands_refuse_bad_flags_with_exit_64_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["proxy", "--from", "bad host/", "--to", ":3000"],
            "portico proxy:1: --from: ",
        ),
        (
            &["proxy", "--from", "app.localhost", "--to", "nowhere"],
            "portico proxy:1: --to: ",
        ),
        (
            &[
                "respond",
                "--from",
                "localhost",
                "--body",
                "x",
                "--https",
                "nope",
            ],
            "portico respond:1: --https: ",
        ),
    ];
    for (args, want) in cases {
        let out = common::portico()
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("portico-data").exists(),
        "nothing was started"
    );
}
