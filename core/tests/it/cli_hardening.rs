//! The `burrow` binary after hardening round two (issue 14, items 4-8): signals and
//! graceful shutdown, temporary files, configuration that cannot work, messages, and
//! what the CLI prints.

use crate::cli::{parse_hint, temp_file, Proc};
use crate::common::*;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Sends `signal` (e.g. "TERM", "INT") to a child process.
fn signal(proc: &Proc, signal: &str) -> Result<()> {
    let pid = proc.child.id().ok_or_else(|| anyhow!("already exited"))?;
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Runs `burrow ARGS` to completion (30 s at most), without an edge address in the env.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burrow"));
    cmd.args(args)
        .env_remove("BURROW_SERVER_ADDR")
        .env_remove("BURROW_AUTHTOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .context("burrow did not finish")?
        .context("running burrow")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh, empty directory of its own for one test.
fn fresh_dir(tag: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "burrow-clih-{tag}-{}-{nanos:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits for the process to exit (up to `limit`) and returns its exit code and stderr.
async fn exit_of(mut proc: Proc, limit: Duration) -> Result<(Option<i32>, String)> {
    let status = tokio::time::timeout(limit, proc.child.wait())
        .await
        .context("burrow did not exit")??;
    let err = proc.wait_stderr().await?;
    Ok((status.code(), err))
}

/// Lines that show an intended close taken for a lost tunnel, or yamux noise.
fn assert_quiet_close(stderr: &str) {
    for bad in [
        "tunnel lost",
        "reconnecting",
        "Broken pipe",
        "WARN",
        "ERROR",
    ] {
        assert!(
            !stderr.contains(bad),
            "an intended shutdown logged {bad:?}:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn sigterm_and_sigint_unbind_let_open_connections_finish_and_exit_0() -> Result<()> {
    let service = echo_server().await;
    let upstream = service.addr.to_string();
    for sig in ["TERM", "INT"] {
        let name = format!("sig{}.cli.test", sig.to_lowercase());
        let url = format!("tls://{name}");
        let mut proc = Proc::spawn(
            &[
                "tls",
                &upstream,
                "--url",
                &url,
                "--terminate-at",
                "edge",
                "--shutdown-timeout",
                "20s",
            ],
            &[],
        )?;
        proc.line_with("Forwarding").await?;
        let (addr, name, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
        let ca = std::fs::read_to_string(ca.ok_or_else(|| anyhow!("no -CAfile"))?)?;
        let open = tls_connect(addr, &name, &ca).await?;
        let (mut r, mut w) = tokio::io::split(open);
        w.write_all(b"before the signal").await?;
        let mut got = vec![0u8; 17];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut got).await?;

        signal(&proc, sig)?;
        // The endpoint is unbound at once: new clients are refused...
        let mut refused = false;
        for _ in 0..100 {
            if tls_connect(addr, &name, &ca).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "SIG{sig}: the endpoint must be unbound at once");
        // ...while the open connection still works during the grace period.
        w.write_all(b"during the grace")
            .await
            .with_context(|| format!("SIG{sig}: writing during the grace period"))?;
        let mut got = vec![0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut got)
            .await
            .with_context(|| format!("SIG{sig}: reading during the grace period"))?;
        assert_eq!(&got, b"during the grace");
        let closed_at = Instant::now();
        w.shutdown().await?;
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
            .await
            .with_context(|| format!("SIG{sig}: the clean end after the client's close"))?;
        drop((r, w));
        let (code, err) = exit_of(proc, Duration::from_secs(15)).await?;
        assert_eq!(code, Some(0), "SIG{sig}: exit code\n{err}");
        assert!(
            closed_at.elapsed() < Duration::from_secs(10),
            "SIG{sig}: the process waited past its last connection"
        );
        assert!(err.contains(&format!("signal=SIG{sig}")), "{err}");
        assert_quiet_close(&err);
    }
    Ok(())
}

#[tokio::test]
async fn the_grace_period_ends_at_the_shutdown_timeout() -> Result<()> {
    let service = echo_server().await;
    let mut proc = Proc::spawn(
        &[
            "tls",
            &service.addr.to_string(),
            "--url",
            "tls://grace.cli.test",
            "--terminate-at",
            "edge",
            "--shutdown-timeout",
            "1s",
        ],
        &[],
    )?;
    let (addr, name, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    let ca = std::fs::read_to_string(ca.ok_or_else(|| anyhow!("no -CAfile"))?)?;
    let mut held = tls_connect(addr, &name, &ca).await?;
    held.write_all(b"x").await?;
    let mut one = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut held, &mut one).await?;
    let start = Instant::now();
    signal(&proc, "TERM")?;
    let (code, err) = exit_of(proc, Duration::from_secs(10)).await?;
    assert_eq!(code, Some(0), "{err}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the open connection got no grace ({took:?})"
    );
    assert!(err.contains("grace period over"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_separate_edge_logs_the_end_of_a_session_and_stops_on_sigterm() -> Result<()> {
    let state = fresh_dir("edge-state")?;
    let config = temp_file(
        "clih-edge.toml",
        &format!("state_dir = {state:?}\n[[authtokens]]\ntoken = \"clih\"\ndomains = [\"*\"]\n"),
    )?;
    let mut edge = Proc::spawn(
        &["edge", "--config", config.to_str().unwrap_or_default()],
        &[],
    )?;
    let tunnel = edge.field("tunnel:").await?;
    let ca = state.join("ca.pem");
    let service = echo_server().await;
    let mut agent = Proc::spawn(
        &[
            "tls",
            &service.addr.to_string(),
            "--server-addr",
            &tunnel,
            "--root-cas",
            ca.to_str().unwrap_or_default(),
            "--authtoken",
            "clih",
        ],
        &[],
    )?;
    agent.line_with("Forwarding").await?;
    signal(&agent, "TERM")?;
    let (code, agent_err) = exit_of(agent, Duration::from_secs(15)).await?;
    assert_eq!(code, Some(0), "{agent_err}");
    assert_quiet_close(&agent_err);
    signal(&edge, "TERM")?;
    let (code, edge_err) = exit_of(edge, Duration::from_secs(15)).await?;
    assert_eq!(code, Some(0), "the edge exits 0 on SIGTERM\n{edge_err}");
    let ended = edge_err
        .lines()
        .find(|l| l.contains("agent session ended"))
        .ok_or_else(|| anyhow!("the edge did not log the session's end:\n{edge_err}"))?;
    assert!(ended.contains("INFO"), "{ended}");
    assert!(ended.contains("routes are freed"), "{ended}");
    assert!(ended.contains("reason=the agent closed it"), "{ended}");
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// Files and directories under `dir`, recursively, as paths.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path());
            out.extend(listing(&e.path()));
        }
    }
    out
}

#[tokio::test]
async fn the_embedded_edge_leaves_no_temporary_files() -> Result<()> {
    let service = echo_server().await;
    let upstream = service.addr.to_string();
    for (mode, needs_ca) in [("upstream", false), ("edge", true)] {
        let tmp = fresh_dir(&format!("tmp-{mode}"))?;
        let tmp_env = tmp.display().to_string();
        let mut proc = Proc::spawn(
            &["tls", &upstream, "--terminate-at", mode],
            &[("TMPDIR", &tmp_env)],
        )?;
        let (_, _, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
        match (&ca, needs_ca) {
            (Some(ca), true) => {
                assert!(Path::new(ca).starts_with(&tmp), "{ca} is under TMPDIR");
                assert!(Path::new(ca).is_file(), "the printed -CAfile exists");
            }
            (None, false) => assert!(
                listing(&tmp).is_empty(),
                "{mode} mode needs no CA file, yet wrote {:?}",
                listing(&tmp)
            ),
            _ => return Err(anyhow!("{mode} mode: unexpected -CAfile {ca:?}")),
        }
        signal(&proc, "INT")?;
        let (code, err) = exit_of(proc, Duration::from_secs(15)).await?;
        assert_eq!(code, Some(0), "{err}");
        assert!(
            listing(&tmp).is_empty(),
            "{mode} mode left {:?} behind",
            listing(&tmp)
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

#[tokio::test]
async fn edge_configuration_that_cannot_work_is_refused_or_warned_about() -> Result<()> {
    let zero = temp_file(
        "clih-zero.toml",
        "open = true\n\nhandshake_timeout_ms = 0\n",
    )?;
    let out = run(
        &["edge", "--config", zero.to_str().unwrap_or_default()],
        &[],
    )
    .await?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("handshake_timeout_ms") && err.contains("line 3"),
        "{err}"
    );

    let certs = temp_file(
        "clih-certs.toml",
        "open = true\n[[certs]]\ncrt = \"/nonexistent/clih.crt\"\nkey = \"/nonexistent/clih.key\"\n",
    )?;
    let out = run(
        &["edge", "--config", certs.to_str().unwrap_or_default()],
        &[],
    )
    .await?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("certs[0].crt")
            && err.contains("line 3")
            && err.contains("/nonexistent/clih.crt"),
        "{err}"
    );

    // Accepted, but refuses every agent: say so loudly.
    let closed = temp_file("clih-closed.toml", "heartbeat_ms = 2000\n")?;
    let mut edge = Proc::spawn(
        &["edge", "--config", closed.to_str().unwrap_or_default()],
        &[],
    )?;
    edge.line_with("tunnel:").await?;
    let err = edge.kill_and_stderr().await?;
    assert!(
        err.contains("WARN") && err.contains("refuse every agent"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_edge_without_config_prints_a_root_cas_path_an_agent_can_use() -> Result<()> {
    let tmp = fresh_dir("open-edge")?;
    let tmp_env = tmp.display().to_string();
    let mut edge = Proc::spawn(&["edge"], &[("TMPDIR", &tmp_env)])?;
    let (tunnel, tls_addr) = edge.edge_addrs().await?;
    let root_cas = edge
        .line_with("root-cas:")
        .await?
        .replace("root-cas:", "")
        .trim()
        .to_owned();
    let ca = std::fs::read_to_string(&root_cas)?;
    let service = echo_server().await;
    let mut agent = Proc::spawn(
        &[
            "tls",
            &service.addr.to_string(),
            "--url",
            "tls://open.cli.test",
            "--terminate-at",
            "edge",
            "--server-addr",
            &tunnel,
            "--root-cas",
            &root_cas,
        ],
        &[],
    )?;
    agent.line_with("Forwarding").await?;
    echo_check(
        tls_connect(tls_addr, "open.cli.test", &ca).await?,
        b"through an edge without --config",
    )
    .await?;
    signal(&agent, "TERM")?;
    exit_of(agent, Duration::from_secs(15)).await?;
    signal(&edge, "TERM")?;
    let (code, err) = exit_of(edge, Duration::from_secs(15)).await?;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !Path::new(&root_cas).exists(),
        "the CA file is removed at exit"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[tokio::test]
async fn config_check_names_the_line_of_an_unreadable_file_and_takes_config() -> Result<()> {
    let file = temp_file(
        "clih-agent.yml",
        "version: 3\nagent:\n  authtoken: x\n  root_cas: /nonexistent/clih-ca.pem\nendpoints: []\n",
    )?;
    let path = file.to_str().unwrap_or_default();
    for args in [
        vec!["config", "check", path],
        vec!["config", "check", "--config", path],
    ] {
        let out = run(&args, &[]).await?;
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("agent.root_cas")
                && err.contains("line 4")
                && err.contains("/nonexistent/clih-ca.pem"),
            "{args:?}: {err}"
        );
    }
    let ok = temp_file(
        "clih-ok.yml",
        "version: 3\nendpoints:\n  - name: a\n    url: tls://a.cli.test\n    upstream:\n      url: 8080\n",
    )?;
    let out = run(
        &[
            "config",
            "check",
            "--config",
            ok.to_str().unwrap_or_default(),
        ],
        &[],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[tokio::test]
async fn messages_say_what_to_do() -> Result<()> {
    // A PEM error names the missing marker as text.
    let pki = Pki::new("messages CA");
    let leaf = pki.leaf(&["msg.cli.test"]);
    let cut = leaf.crt.lines().take(3).collect::<Vec<_>>().join("\n");
    let crt = temp_file("clih-cut-crt.pem", &cut)?;
    let key = temp_file("clih-key.pem", &leaf.key)?;
    let out = run(
        &[
            "tls",
            "8080",
            "--url",
            "tls://msg.cli.test",
            "--crt",
            crt.to_str().unwrap_or_default(),
            "--key",
            key.to_str().unwrap_or_default(),
        ],
        &[],
    )
    .await?;
    let err = stderr(&out);
    assert!(
        err.contains("missing section end marker \"-----END CERTIFICATE-----\""),
        "{err}"
    );
    assert!(!err.contains("[45, 45"), "{err}");

    // A missing --key file is reported before connecting anywhere.
    let good_crt = temp_file("clih-crt.pem", &leaf.crt)?;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let out = run(
        &[
            "tls",
            "8080",
            "--crt",
            good_crt.to_str().unwrap_or_default(),
            "--key",
            "/nonexistent/clih-key.pem",
            "--server-addr",
            &dead,
        ],
        &[],
    )
    .await?;
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/clih-key.pem"), "{err}");
    assert!(!err.contains("CONNECT_FAILED"), "{err}");

    // A user error is one line, even with RUST_BACKTRACE set.
    let out = run(&["tls", "ftp://x:1"], &[("RUST_BACKTRACE", "1")]).await?;
    let err = stderr(&out);
    assert!(err.contains("INVALID_URL"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, no backtrace:\n{err}"
    );

    // An untrusted edge: pass --root-cas. A missing token: --authtoken / BURROW_AUTHTOKEN.
    let state = fresh_dir("msg-edge")?;
    let config = temp_file(
        "clih-msg-edge.toml",
        &format!("state_dir = {state:?}\n[[authtokens]]\ntoken = \"t\"\n"),
    )?;
    let mut edge = Proc::spawn(
        &["edge", "--config", config.to_str().unwrap_or_default()],
        &[],
    )?;
    let tunnel = edge.field("tunnel:").await?;
    let out = run(&["tls", "8080", "--server-addr", &tunnel], &[]).await?;
    let err = stderr(&out);
    assert!(
        err.contains("CONNECT_FAILED") && err.contains("--root-cas"),
        "{err}"
    );
    let ca = state.join("ca.pem");
    let out = run(
        &[
            "tls",
            "8080",
            "--server-addr",
            &tunnel,
            "--root-cas",
            ca.to_str().unwrap_or_default(),
        ],
        &[],
    )
    .await?;
    let err = stderr(&out);
    assert!(
        err.contains("AUTH_FAILED")
            && err.contains("--authtoken")
            && err.contains("BURROW_AUTHTOKEN"),
        "{err}"
    );
    edge.kill_and_stderr().await?;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

#[tokio::test]
async fn a_policy_with_a_bad_mutual_tls_ca_fails_with_its_path() -> Result<()> {
    let policy = temp_file(
        "clih-policy.yml",
        "on_tls_request:\n  - actions:\n      - type: terminate-tls\n        config:\n          mutual_tls_certificate_authorities: [\"-----BEGIN CERTIFICATE-----\\n...\"]\n",
    )?;
    let out = run(
        &[
            "tls",
            "8080",
            "--traffic-policy-file",
            policy.to_str().unwrap_or_default(),
        ],
        &[],
    )
    .await?;
    let err = stderr(&out);
    assert!(err.contains("INVALID_POLICY"), "{err}");
    assert!(
        err.contains("mutual_tls_certificate_authorities[0]"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn what_the_cli_prints_is_true() -> Result<()> {
    // A plain TCP endpoint is not "TLS terminated at upstream"; suggest nc.
    let service = echo_server().await;
    let mut proc = Proc::spawn(&["tcp", &service.addr.to_string()], &[])?;
    let line = proc.line_with("Forwarding").await?;
    assert!(!line.contains("TLS terminated"), "{line}");
    let hint = proc.line_with("nc ").await?;
    assert!(!hint.contains("openssl"), "{hint}");
    let err = proc.kill_and_stderr().await?;
    // Logs into a pipe carry no colour codes.
    assert!(
        !err.contains('\u{1b}'),
        "ANSI codes in non-terminal output: {err:?}"
    );

    let out = run(&["tls", "--help"], &[]).await?;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("[possible values: edge, agent, upstream]"),
        "{help}"
    );
    assert!(help.contains("[possible values: 1, 2]"), "{help}");
    assert!(help.contains("--shutdown-timeout"), "{help}");
    Ok(())
}

/// Spawns `burrow args` (which connects to `silent` while starting), and once `silent`
/// has the connection, sends SIGTERM: burrow must stop at once, cleanly, saying so.
async fn stops_at_once_while_starting(
    args: &[&str],
    silent: tokio::net::TcpListener,
    waited_for: &str,
) -> Result<()> {
    let proc = Proc::spawn(args, &[])?;
    let (_held, _) = tokio::time::timeout(Duration::from_secs(10), silent.accept()).await??;
    let start = Instant::now();
    signal(&proc, "TERM")?;
    let (code, err) = exit_of(proc, Duration::from_secs(8)).await?;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "SIGTERM waited for {waited_for} ({:?})",
        start.elapsed()
    );
    assert!(err.contains("stopped while starting"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_signal_while_connecting_stops_at_once() -> Result<()> {
    // An "edge" that accepts the tunnel's TCP connection and never answers its TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?.to_string();
    stops_at_once_while_starting(
        &["tls", "8080", "--server-addr", &addr],
        silent,
        "the connect timeout",
    )
    .await
}

#[tokio::test]
async fn colour_only_on_a_terminal_and_never_with_no_color() -> Result<()> {
    // util-linux's `script` (Debian's essential bsdutils) gives burrow a terminal.
    anyhow::ensure!(
        which("script").is_some(),
        "`script` (util-linux) is needed to run burrow on a pseudo-terminal"
    );
    let tty = |no_color: bool| {
        let mut cmd = std::process::Command::new("script");
        cmd.args([
            "-qec",
            &format!(
                "timeout -s INT 2 {} edge --log info",
                env!("CARGO_BIN_EXE_burrow")
            ),
            "/dev/null",
        ])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.output()
    };
    let coloured = String::from_utf8_lossy(&tty(false)?.stdout).into_owned();
    assert!(
        coloured.contains("edge listening") && coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = String::from_utf8_lossy(&tty(true)?.stdout).into_owned();
    assert!(plain.contains("edge listening"), "{plain:?}");
    assert!(
        !plain.contains('\u{1b}'),
        "NO_COLOR is respected: {plain:?}"
    );
    Ok(())
}

/// The path of `program` on PATH, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

#[tokio::test]
async fn a_url_with_a_port_the_edge_does_not_serve_is_refused() -> Result<()> {
    let out = run(&["tls", "8080", "--url", "tls://a.example.com:9999"], &[]).await?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("port 9999")
            && err.contains("leave the port out")
            && err.contains("INVALID_URL"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_edge_waiting_for_etcd_stops_at_once_on_a_signal() -> Result<()> {
    // An "etcd" that accepts TCP and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let link = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = temp_file(
        "cluster-silent-etcd.toml",
        &format!(
            "open = true\n[cluster]\netcd = [\"http://{}\"]\nedge_id = \"a\"\nlink_addr = \"{link}\"\n",
            silent.local_addr()?
        ),
    )?;
    let path = config.display().to_string();
    stops_at_once_while_starting(&["edge", "--config", &path], silent, "etcd").await
}
