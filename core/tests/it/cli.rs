//! The `burrow` binary, run as a user would.

use crate::common::*;
use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

pub(crate) struct Proc {
    pub(crate) child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Everything written to stderr, drained continuously so the child never blocks on it.
    stderr: tokio::task::JoinHandle<String>,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_burrow"));
        cmd.args(args)
            .env_remove("BURROW_SERVER_ADDR")
            .env_remove("BURROW_AUTHTOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn burrow")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut err_pipe = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let stderr = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut bytes = Vec::new();
            let _ = err_pipe.read_to_end(&mut bytes).await;
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Ok(Proc {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// Kills the process and returns everything it wrote to stderr.
    pub(crate) async fn kill_and_stderr(mut self) -> Result<String> {
        let _ = self.child.start_kill();
        self.child.wait().await?;
        Ok(self.stderr.await?)
    }

    /// Waits for the process to exit by itself and returns its stderr.
    pub(crate) async fn wait_stderr(mut self) -> Result<String> {
        self.child.wait().await?;
        Ok(self.stderr.await?)
    }

    /// The next stdout line containing `needle`.
    pub(crate) async fn line_with(&mut self, needle: &str) -> Result<String> {
        let wait = async {
            while let Some(line) = self.lines.next_line().await? {
                if line.contains(needle) {
                    return Ok(line);
                }
            }
            Err(anyhow!("burrow exited before printing {needle:?}"))
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .context(format!("waiting for {needle:?}"))?
    }

    /// What follows `label` on the next stdout line that has it, trimmed.
    pub(crate) async fn field(&mut self, label: &str) -> Result<String> {
        let line = self.line_with(label).await?;
        Ok(line.replace(label, "").trim().to_owned())
    }

    /// The tunnel and public TLS addresses a `burrow edge` prints as it starts.
    pub(crate) async fn edge_addrs(&mut self) -> Result<(String, std::net::SocketAddr)> {
        let tunnel = self.field("tunnel:").await?;
        let tls = self.field("tls:").await?.parse()?;
        Ok((tunnel, tls))
    }
}

pub(crate) fn temp_file(name: &str, contents: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("burrow-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path)
}

/// `openssl s_client -connect A -servername N [-CAfile F]` → (A, N, F).
pub(crate) fn parse_hint(line: &str) -> Result<(std::net::SocketAddr, String, Option<String>)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    let addr = after("-connect")
        .ok_or_else(|| anyhow!("no -connect in {line}"))?
        .parse()?;
    let name = after("-servername").ok_or_else(|| anyhow!("no -servername in {line}"))?;
    Ok((addr, name, after("-CAfile")))
}

#[tokio::test]
async fn embedded_edge_passthrough_prints_a_working_openssl_line() -> Result<()> {
    let pki = Pki::new("service CA");
    let cert = pki.leaf(&["app.cli.test"]);
    let service = tls_echo_server(&cert).await;
    let port = service.addr.port().to_string();
    let mut proc = Proc::spawn(&["tls", &port, "--domain", "app.cli.test"], &[])?;
    let url = proc.line_with("Forwarding").await?;
    assert!(url.contains("tls://app.cli.test:"), "{url}");
    assert!(url.contains("terminated at upstream"), "{url}");
    let (addr, name, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    assert_eq!(name, "app.cli.test");
    assert!(
        ca.is_none(),
        "passthrough needs the upstream's CA, not the edge's"
    );
    let tls = tls_connect(addr, &name, &pki.ca_pem).await?;
    assert_eq!(peer_cert(&tls), cert.der());
    echo_check(tls, &pseudo_random(MIB, 20)).await?;
    Ok(())
}

#[tokio::test]
async fn embedded_edge_with_automatic_cert_and_url_flag() -> Result<()> {
    let service = echo_server().await;
    let upstream = service.addr.to_string();
    let mut proc = Proc::spawn(
        &[
            "tls",
            &upstream,
            "--url",
            "tls://auto.cli.test",
            "--terminate-at",
            "edge",
        ],
        &[],
    )?;
    proc.line_with("Forwarding").await?;
    let (addr, name, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    let ca = std::fs::read_to_string(ca.ok_or_else(|| anyhow!("edge mode prints -CAfile"))?)?;
    echo_check(
        tls_connect(addr, &name, &ca).await?,
        &pseudo_random(MIB, 21),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn agent_termination_from_files() -> Result<()> {
    let pki = Pki::new("agent CA");
    let cert = pki.leaf(&["app.example.com"]);
    let crt = temp_file("agent-crt.pem", &cert.crt)?;
    let key = temp_file("agent-key.pem", &cert.key)?;
    let service = echo_server().await;
    let upstream = service.addr.to_string();
    let mut proc = Proc::spawn(
        &[
            "tls",
            &upstream,
            "--terminate-at",
            "agent",
            "--domain",
            "app.example.com",
            "--crt",
            crt.to_str().unwrap_or_default(),
            "--key",
            key.to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    proc.line_with("Forwarding").await?;
    let (addr, name, _) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    let tls = tls_connect(addr, &name, &pki.ca_pem).await?;
    assert_eq!(peer_cert(&tls), cert.der());
    echo_check(tls, &pseudo_random(MIB, 22)).await?;
    Ok(())
}

#[tokio::test]
async fn separate_edge_process_with_tokens_and_a_killed_agent() -> Result<()> {
    let state = std::env::temp_dir().join(format!("burrow-cli-state-{}", std::process::id()));
    let config = temp_file(
        "edge.toml",
        &format!(
            "heartbeat_ms = 2000\nstate_dir = {state:?}\n[[authtokens]]\ntoken = \"cli-token\"\ndomains = [\"*.cli.test\"]\n"
        ),
    )?;
    let mut edge = Proc::spawn(
        &["edge", "--config", config.to_str().unwrap_or_default()],
        &[],
    )?;
    let (tunnel, tls_addr) = edge.edge_addrs().await?;
    let ca_path = state.join("ca.pem");
    let ca = std::fs::read_to_string(&ca_path)?;
    let service = echo_server().await;
    let upstream = service.addr.to_string();
    let ca_arg = ca_path.to_str().unwrap_or_default().to_owned();

    // A wrong token fails with the edge's coded refusal and a non-zero exit.
    let bad = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args([
            "tls",
            &upstream,
            "--url",
            "tls://x.cli.test",
            "--server-addr",
            &tunnel,
            "--root-cas",
            &ca_arg,
        ])
        .env("BURROW_AUTHTOKEN", "nope")
        .output()
        .await?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("AUTH_FAILED"), "{stderr}");
    assert!(
        !stderr.contains("nope"),
        "token must not be printed: {stderr}"
    );

    let mut agent = Proc::spawn(
        &[
            "tls",
            &upstream,
            "--url",
            "tls://app.cli.test",
            "--terminate-at",
            "edge",
            "--server-addr",
            &tunnel,
            "--root-cas",
            &ca_arg,
        ],
        &[("BURROW_AUTHTOKEN", "cli-token")],
    )?;
    let line = agent.line_with("Forwarding").await?;
    assert!(
        line.contains(&format!("tls://app.cli.test:{}", tls_addr.port())),
        "{line}"
    );
    echo_check(
        tls_connect(tls_addr, "app.cli.test", &ca).await?,
        &pseudo_random(MIB, 23),
    )
    .await?;

    agent.child.start_kill()?;
    agent.child.wait().await?;
    let mut refused = false;
    for _ in 0..100 {
        if tls_connect(tls_addr, "app.cli.test", &ca).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a killed agent's route must disappear");
    edge.child.start_kill()?;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

#[tokio::test]
async fn bad_cli_input_fails_with_a_clear_message() -> Result<()> {
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"));
        cmd.args(args).env_remove("BURROW_SERVER_ADDR");
        cmd.output()
    };
    let out = run(&["tls", "ftp://x:1"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_URL"));
    let out = run(&["tls", "8080", "--url", "tls://a.test", "--domain", "a.test"])?;
    assert!(
        !out.status.success(),
        "--url and --domain together are refused"
    );
    let out = run(&["tls", "8080", "--terminate-at", "nowhere"])?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("nowhere") && err.contains("possible values: edge, agent, upstream"),
        "{err}"
    );
    let out = run(&[
        "tls",
        "8080",
        "--crt",
        "/nonexistent/crt.pem",
        "--key",
        "/nonexistent/key.pem",
    ])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/crt.pem"));
    Ok(())
}
