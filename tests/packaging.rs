//! What the README, the shipped configs and the Dockerfile promise, checked against the
//! binary: there is no Docker engine here, so everything the image relies on (flags,
//! paths, user, ports) is checked from its text.

use portico_test_support as common;
use std::path::Path;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn check(config: &str) -> (Option<i32>, String) {
    let out = common::portico()
        .args(["check", "--config", config])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn shipped_configs_pass_check() {
    let (code, out) = check("config/local.toml");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("https 127.0.0.1:8443"), "{out}");
    assert!(out.contains("http 127.0.0.1:8080"), "{out}");
    assert!(
        out.contains("internal CA (root: ./portico-data/ca/root.pem)"),
        "{out}"
    );
    assert!(out.contains("respond 200"), "{out}");
    let (code, out) = check("config/example.toml");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("acme from https://acme-v02.api.letsencrypt.org/directory"),
        "{out}"
    );
}

#[test]
fn readme_starts_with_the_two_fresh_machine_commands() {
    let readme = repo("README.md");
    let commands: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(
        commands[0].starts_with("cargo run --release -- run --config config/local.toml"),
        "{commands:?}"
    );
    assert!(commands[1].starts_with("scripts/test"), "{commands:?}");
    assert!(repo(".ci/run").lines().any(|l| l == "scripts/test"));
    assert!(repo("scripts/test").contains("cargo test"));
    // The URL the first command promises is the one local.toml serves.
    assert!(commands[0].contains("https://localhost:8443/"));
    assert!(commands[0].contains("--cacert portico-data/ca/root.pem"));
}

#[test]
fn the_image_runs_the_binary_as_a_non_root_user_with_the_documented_command() {
    let docker = repo("Dockerfile");
    let line = |prefix: &str| {
        docker
            .lines()
            .rfind(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in Dockerfile"))
            .to_string()
    };
    assert_eq!(line("USER "), "USER 65532:65532");
    // The runtime stage: distroless/cc carries the CA certificates the ACME client
    // verifies its directory with (and glibc), nothing else.
    assert_eq!(line("FROM "), "FROM gcr.io/distroless/cc-debian12:nonroot");
    // The header's `docker run` publishes ports the image exposes, on 80 and 443.
    let expose = line("EXPOSE ");
    let exposed: Vec<&str> = expose["EXPOSE ".len()..].split_whitespace().collect();
    let published: Vec<(&str, &str)> = docker
        .lines()
        .take_while(|l| l.starts_with('#'))
        .flat_map(|l| l.split(" -p ").skip(1))
        .map(|p| {
            p.split_whitespace()
                .next()
                .unwrap()
                .split_once(':')
                .unwrap()
        })
        .collect();
    assert_eq!(
        published.iter().map(|(host, _)| *host).collect::<Vec<_>>(),
        ["80", "443"]
    );
    for (_, port) in &published {
        assert!(
            exposed.contains(port),
            "{port} is not in EXPOSE {exposed:?}"
        );
    }
    assert_eq!(
        line("ENTRYPOINT "),
        "ENTRYPOINT [\"/usr/local/bin/portico\"]"
    );
    assert!(docker.contains("COPY --from=build /out/portico /usr/local/bin/portico"));
    assert!(docker.contains("--chown=65532:65532 /out/var/lib/portico /var/lib/portico"));
    assert_eq!(line("WORKDIR "), "WORKDIR /var/lib/portico");
    // The CMD's arguments are ones the binary takes: with the file missing it is a
    // config error naming the path (64), not a usage error (2).
    let cmd = line("CMD ");
    let args: Vec<String> = cmd
        .trim_start_matches("CMD [")
        .trim_end_matches(']')
        .split(", ")
        .map(|a| a.trim_matches('"').to_string())
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/portico/portico.toml"]);
    let out = common::portico().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/etc/portico/portico.toml"));
}

/// The binary commits mimalloc's arenas as it uses them (the build-time default from
/// .cargo/config.toml: docs/benchmarks.md has what it saves), and the environment can
/// still choose otherwise. mimalloc lists its options on stderr when verbose. The image
/// builds with that config too.
#[test]
fn the_allocator_commits_memory_as_it_is_used() {
    let docker = repo("Dockerfile");
    let build_stage = docker.split("\nFROM ").nth(1).unwrap_or_default();
    assert!(
        build_stage.contains("\nCOPY .cargo ./.cargo\n")
            && build_stage.find("COPY .cargo") < build_stage.find("RUN cargo build"),
        "the image's build stage must copy .cargo/ before building"
    );
    let option = |env: Option<&str>| {
        let mut cmd = common::portico();
        cmd.arg("--help").env("MIMALLOC_VERBOSE", "1");
        match env {
            Some(v) => cmd.env("MIMALLOC_ARENA_EAGER_COMMIT", v),
            None => cmd.env_remove("MIMALLOC_ARENA_EAGER_COMMIT"),
        };
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.lines()
            .find(|l| l.contains("option 'arena_eager_commit'"))
            .unwrap_or_else(|| panic!("mimalloc listed no options:\n{err}"))
            .trim()
            .to_string()
    };
    assert_eq!(option(None), "option 'arena_eager_commit': 0");
    assert_eq!(option(Some("1")), "option 'arena_eager_commit': 1");
}
