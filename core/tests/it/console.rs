//! The live console, driven in a real terminal: `burrow` runs inside a detached tmux
//! session, the test reads the screen with `capture-pane`, connects through the tunnel,
//! resizes the window and quits with Ctrl-C, `q` or SIGTERM.

use crate::cli::{parse_hint, Proc};
use crate::common::*;
use crate::web::web_app;
use anyhow::{anyhow, bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the screen may take to show what a step expects.
const DEADLINE: Duration = Duration::from_secs(30);

/// A tmux server of this test's own (`-L SOCKET`), killed when dropped, even when the
/// test fails.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` in a detached 120x40 window; an `echo` before it leaves text that
    /// must be visible again once burrow gives the terminal back, and `EXITED:CODE`
    /// after it tells how burrow ended.
    fn start(command: &str) -> Result<Tmux> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "burrow-console-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let tmux = Tmux { socket };
        let script = format!(
            "echo BEFORE-CONSOLE; env -u BURROW_SERVER_ADDR -u BURROW_AUTHTOKEN -u BURROW_LOG \
             -u BURROW_LOG_FORMAT -u RUST_LOG -u NO_COLOR {command}; echo EXITED:$?; sleep 60"
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            "-s",
            "console",
            &script,
        ])?;
        Ok(tmux)
    }

    /// Runs one tmux command against this server and returns its stdout.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .context("running tmux (scripts/setup.sh installs it)")?;
        if !out.status.success() {
            bail!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The visible screen, as text.
    fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", "console"])
    }

    /// Whether the pane is on the alternate screen.
    fn alternate_on(&self) -> Result<bool> {
        Ok(self
            .run(&["display-message", "-p", "-t", "console", "#{alternate_on}"])?
            .trim()
            == "1")
    }

    /// The pane's size, `WIDTHxHEIGHT`.
    fn size(&self) -> Result<String> {
        Ok(self
            .run(&[
                "display-message",
                "-p",
                "-t",
                "console",
                "#{pane_width}x#{pane_height}",
            ])?
            .trim()
            .to_owned())
    }

    /// Polls the screen until `ready` accepts it; fails with the last screen at the deadline.
    async fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> Result<String> {
        let start = Instant::now();
        loop {
            let screen = self.screen()?;
            if ready(&screen) {
                return Ok(screen);
            }
            if start.elapsed() > DEADLINE {
                bail!("the screen never showed {what}:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pid of burrow: the child of the pane's shell.
    fn burrow_pid(&self) -> Result<i32> {
        let shell = self.run(&["display-message", "-p", "-t", "console", "#{pane_pid}"])?;
        let shell = shell.trim();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))?;
        let pid = children
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow!("the pane's shell has no child"))?;
        Ok(pid.parse()?)
    }
}

impl Drop for Tmux {
    /// Kills the server and removes its socket file (tmux leaves it behind).
    fn drop(&mut self) {
        let socket = self.run(&["display-message", "-p", "#{socket_path}"]);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        if let Ok(path) = socket {
            let _ = std::fs::remove_file(path.trim());
        }
    }
}

/// The `burrow` binary and its arguments, as one shell word list.
fn burrow(args: &[&str]) -> String {
    let mut words = vec![env!("CARGO_BIN_EXE_burrow").to_owned()];
    words.extend(args.iter().map(|a| a.to_string()));
    words.join(" ")
}

/// The row under the `Connections` header: ttl, opn, rt1, rt5, p50, p90.
fn counters(screen: &str) -> Vec<String> {
    let mut lines = screen.lines();
    let header = lines.by_ref().find(|l| l.starts_with("Connections"));
    match (header, lines.next()) {
        (Some(_), Some(row)) => row.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The screen's line that starts with `label`.
fn line<'a>(screen: &'a str, label: &str) -> Result<&'a str> {
    screen
        .lines()
        .find(|l| l.starts_with(label))
        .ok_or_else(|| anyhow!("no {label:?} line on the screen:\n{screen}"))
}

/// The console is gone, the exit code was 0 and the shell's earlier text is back.
async fn exited_cleanly(tmux: &Tmux) -> Result<()> {
    let screen = tmux.wait_for("EXITED:", |s| s.contains("EXITED:")).await?;
    assert!(screen.contains("EXITED:0"), "{screen}");
    assert!(
        screen.contains("BEFORE-CONSOLE"),
        "the normal screen is back:\n{screen}"
    );
    assert!(!tmux.alternate_on()?, "the alternate screen was left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_console_counts_a_connection_redraws_on_resize_and_quits_on_ctrl_c() -> Result<()> {
    let pki = Pki::new("console CA");
    let cert = pki.leaf(&["app.console.test"]);
    let service = tls_echo_server(&cert).await;
    let port = service.addr.port().to_string();
    let tmux = Tmux::start(&burrow(&[
        "tls",
        &port,
        "--domain",
        "app.console.test",
        "--web-addr",
        "127.0.0.1:0",
    ]))?;
    let screen = tmux
        .wait_for("the forwarding line", |s| s.contains("Forwarding"))
        .await?;
    assert!(
        tmux.alternate_on()?,
        "the console draws on the alternate screen"
    );
    assert!(!screen.contains("BEFORE-CONSOLE"), "{screen}");
    let forwarding = line(&screen, "Forwarding")?;
    assert!(
        forwarding.contains("tls://app.console.test:")
            && forwarding.contains(&format!("localhost:{port} ("))
            && forwarding.contains("(TLS terminated at upstream)"),
        "{forwarding}"
    );
    assert!(
        line(&screen, "Session Status")?.ends_with("online"),
        "{screen}"
    );
    assert!(
        line(&screen, "Web Interface")?.contains("http://127.0.0.1:"),
        "{screen}"
    );
    assert!(
        line(&screen, "Edge")?.contains("(embedded edge)"),
        "{screen}"
    );
    assert_eq!(counters(&screen)[..2], ["0", "0"], "{screen}");
    assert!(screen.contains("(none yet)"), "{screen}");

    let (addr, name, ca) = parse_hint(line(&screen, "Try")?)?;
    assert_eq!((name.as_str(), ca), ("app.console.test", None));
    let tls = tls_connect(addr, &name, &pki.ca_pem).await?;
    let client = tls.get_ref().0.local_addr()?.to_string();
    echo_check(tls, &pseudo_random(4096, 7)).await?;
    let screen = tmux
        .wait_for("one closed connection from the client", |s| {
            counters(s).first().map(String::as_str) == Some("1")
                && s.lines().any(|l| {
                    l.contains(&client) && l.contains("app.console.test") && l.contains("closed")
                })
        })
        .await?;
    assert_eq!(counters(&screen)[1], "0", "no connection open:\n{screen}");

    tmux.run(&["resize-window", "-t", "console", "-x", "80", "-y", "24"])?;
    assert_eq!(tmux.size()?, "80x24");
    let small = tmux
        .wait_for("the screen redrawn at 80x24", |s| {
            s.lines().count() <= 24
                && s.lines().all(|l| l.chars().count() <= 80)
                && s.contains("Forwarding")
                && s.lines().any(|l| l.starts_with("Connections"))
                && s.lines()
                    .any(|l| l.trim_end().ends_with("(Ctrl+C or q to quit)"))
        })
        .await?;
    assert_eq!(
        counters(&small).first().map(String::as_str),
        Some("1"),
        "{small}"
    );

    tmux.run(&["send-keys", "-t", "console", "C-c"])?;
    exited_cleanly(&tmux).await
}

#[tokio::test(flavor = "multi_thread")]
async fn http_console_shows_a_request_and_quits_on_q() -> Result<()> {
    let app = web_app().await;
    let upstream = app.addr.to_string();
    let tmux = Tmux::start(&burrow(&[
        "http",
        &upstream,
        "--url",
        "http://web.console.test",
        "--web-addr",
        "false",
    ]))?;
    let screen = tmux
        .wait_for("the forwarding line", |s| s.contains("Forwarding"))
        .await?;
    let forwarding = line(&screen, "Forwarding")?;
    assert!(
        forwarding.contains("http://web.console.test:")
            && forwarding.contains("(plain HTTP, reverse proxy"),
        "{forwarding}"
    );
    assert!(
        !screen.contains("Web Interface"),
        "--web-addr false:\n{screen}"
    );
    assert_eq!(counters(&screen)[..2], ["0", "0"], "{screen}");
    // `curl --resolve HOST:PORT:IP http://HOST:PORT/`: the edge's plain HTTP listener.
    let hint = line(&screen, "Try")?;
    let resolve = hint
        .split_whitespace()
        .skip_while(|w| *w != "--resolve")
        .nth(1)
        .ok_or_else(|| anyhow!("no --resolve in {hint}"))?;
    let mut parts = resolve.splitn(3, ':');
    let (host, port, ip) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(i)) => (h, p, i),
        _ => bail!("--resolve {resolve}"),
    };
    let mut tcp = tokio::net::TcpStream::connect(format!("{ip}:{port}")).await?;
    let client = tcp.local_addr()?.to_string();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    tmux.wait_for("the request counted and listed", |s| {
        counters(s).first().map(String::as_str) == Some("1") && s.contains(&client)
    })
    .await?;
    tmux.run(&["send-keys", "-t", "console", "q"])?;
    exited_cleanly(&tmux).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_console_and_restores_the_terminal() -> Result<()> {
    let service = echo_server().await;
    let tmux = Tmux::start(&burrow(&[
        "tcp",
        &service.addr.to_string(),
        "--web-addr",
        "false",
    ]))?;
    tmux.wait_for("the forwarding line", |s| s.contains("Forwarding"))
        .await?;
    let pid = tmux.burrow_pid()?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    exited_cleanly(&tmux).await
}

#[tokio::test(flavor = "multi_thread")]
async fn log_stdout_and_json_logs_keep_plain_lines_in_a_terminal() -> Result<()> {
    let service = echo_server().await;
    let upstream = service.addr.to_string();
    for (flags, log_line) in [
        (["--log", "stdout"], "INFO"),
        (["--log-format", "json"], "\"level\":\"INFO\""),
    ] {
        let mut args = vec!["tcp", upstream.as_str(), "--web-addr", "false"];
        args.extend(flags);
        let tmux = Tmux::start(&burrow(&args))?;
        let screen = tmux
            .wait_for("plain forwarding lines", |s| {
                s.contains("Forwarding tcp://") && s.contains("nc ")
            })
            .await?;
        assert!(!tmux.alternate_on()?, "{flags:?}: no console");
        assert!(screen.contains("BEFORE-CONSOLE"), "{screen}");
        tmux.run(&["send-keys", "-t", "console", "C-c"])?;
        let screen = tmux.wait_for("EXITED:", |s| s.contains("EXITED:")).await?;
        assert!(screen.contains("EXITED:0"), "{screen}");
        assert!(
            screen.contains(log_line),
            "{flags:?}: {log_line} in\n{screen}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn warnings_go_to_the_log_pane_not_over_the_screen() -> Result<()> {
    // Two edges: a real one, and a port nothing listens on, which the session keeps
    // retrying with a warning each time.
    let mut edge = Proc::spawn(&["edge"], &[])?;
    let (tunnel, _) = edge.edge_addrs().await?;
    let ca = edge.field("root-cas:").await?;
    let dead = free_port()?;
    let service = echo_server().await;
    let tmux = Tmux::start(&burrow(&[
        "tls",
        &service.addr.to_string(),
        "--domain",
        "warn.console.test",
        "--server-addr",
        &format!("{tunnel},127.0.0.1:{dead}"),
        "--root-cas",
        &ca,
        "--web-addr",
        "false",
    ]))?;
    let dead_edge = format!("127.0.0.1:{dead}");
    let screen = tmux
        .wait_for("a warning in the log pane", |s| {
            s.contains("Log (warnings and errors") && s.contains("WARN")
        })
        .await?;
    let rows: Vec<&str> = screen.lines().collect();
    assert!(
        rows[0].starts_with("burrow"),
        "the header is intact:\n{screen}"
    );
    assert!(
        line(&screen, "Session Status")?.ends_with("online"),
        "{screen}"
    );
    let edges: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|r| r.starts_with("Edge"))
        .collect();
    assert_eq!(edges.len(), 2, "{screen}");
    assert!(edges[0].ends_with(&format!("{tunnel} up")), "{screen}");
    assert!(edges[1].ends_with(&format!("{dead_edge} down")), "{screen}");
    let pane = rows
        .iter()
        .position(|r| r.starts_with("Log (warnings and errors"))
        .ok_or_else(|| anyhow!("no log pane"))?;
    assert!(
        rows[..pane].iter().all(|r| !r.contains("WARN")),
        "log lines only in the pane:\n{screen}"
    );
    assert!(rows[pane + 1..]
        .iter()
        .all(|r| r.contains("WARN") || r.trim().is_empty()));
    tmux.run(&["send-keys", "-t", "console", "C-c"])?;
    exited_cleanly(&tmux).await?;
    let after = tmux.screen()?;
    assert!(
        after.contains("connecting failed"),
        "the pane's warnings are printed once the terminal is back:\n{after}"
    );
    edge.kill_and_stderr().await?;
    Ok(())
}

/// A field's value, with the rows it was cut into (under the value column) joined.
fn field_value(screen: &str, label: &str) -> Result<String> {
    let mut rows = screen.lines().skip_while(|l| !l.starts_with(label));
    let first = rows
        .next()
        .ok_or_else(|| anyhow!("no {label:?} line on the screen:\n{screen}"))?;
    let mut value = first[label.len()..].trim().to_owned();
    for row in rows.take_while(|r| r.starts_with(&" ".repeat(30)) && !r.trim().is_empty()) {
        value.push(' ');
        value.push_str(row.trim());
    }
    Ok(value)
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_lets_an_open_connection_finish_as_sigint_does() -> Result<()> {
    let service = echo_server().await;
    let tmux = Tmux::start(&burrow(&[
        "tls",
        &service.addr.to_string(),
        "--url",
        "tls://grace.test",
        "--terminate-at",
        "edge",
        "--web-addr",
        "false",
        "--shutdown-timeout",
        "30s",
    ]))?;
    let screen = tmux
        .wait_for("the forwarding line", |s| s.contains("Forwarding"))
        .await?;
    let (addr, name, ca) = parse_hint(&field_value(&screen, "Try")?)?;
    let ca = std::fs::read_to_string(ca.ok_or_else(|| anyhow!("edge mode gives -CAfile"))?)?;
    let tls = tls_connect(addr, &name, &ca).await?;
    let (mut r, mut w) = tokio::io::split(tls);
    let mut echoed = [0u8; 6];
    w.write_all(b"before").await?;
    r.read_exact(&mut echoed)
        .await
        .context("the echo before Ctrl-C")?;
    assert_eq!(&echoed, b"before");
    tmux.wait_for("one open connection", |s| {
        counters(s).get(1).map(String::as_str) == Some("1")
    })
    .await?;

    tmux.run(&["send-keys", "-t", "console", "C-c"])?;
    tmux.wait_for("the session stopping", |s| {
        line(s, "Session Status").is_ok_and(|l| l.contains("stopping"))
    })
    .await?;
    let mut echoed = [0u8; 5];
    w.write_all(b"after").await?;
    r.read_exact(&mut echoed)
        .await
        .context("the echo after Ctrl-C")?;
    assert_eq!(&echoed, b"after", "the open connection still works");
    assert!(!tmux.screen()?.contains("EXITED:"), "burrow waits for it");
    w.shutdown().await?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await?;
    drop((r, w));
    exited_cleanly(&tmux).await
}
