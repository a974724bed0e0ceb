//! The README runs as written: every code block marked `<!-- readme-run: KIND -->` is
//! run with the `burrow` binary, its placeholder files replaced by real ones made here.
//!
//! Kinds: `sh` (each `burrow ...` command; a long-running one must come up, then stop
//! with exit code 0 on SIGTERM), `file NAME` (saved as NAME for the commands),
//! `bash` (the whole block run with bash; it must exit 0), `edge-config` (an edge started from it), `policy` (an endpoint bound with it on the
//! embedded edge: http when it has HTTP phases, else tls), `agent-config` (`config check`, then `start --all` against a test edge).
//! `python`, `pytest` and `node` blocks are run by `tests-py/test_readme.py` and
//! `tests-js/readme.test.js`.

use crate::common::*;
use anyhow::{anyhow, bail, Context, Result};
use burrow_core::edge::TokenRule;
use burrow_core::{Edge, EdgeConfig};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// One marked block: its kind and its text.
struct Block {
    kind: String,
    line: usize,
    text: String,
}

/// The blocks of `readme` that a `<!-- readme-run: KIND -->` line precedes.
fn marked_blocks(readme: &str) -> Result<Vec<Block>> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(kind) = lines[i]
            .trim()
            .strip_prefix("<!-- readme-run:")
            .and_then(|k| k.strip_suffix("-->"))
        else {
            i += 1;
            continue;
        };
        let open = i + 1;
        if !lines.get(open).is_some_and(|l| l.starts_with("```")) {
            bail!(
                "README line {}: a readme-run marker must precede a code block",
                i + 1
            );
        }
        let close = lines[open + 1..]
            .iter()
            .position(|l| l.starts_with("```"))
            .map(|p| open + 1 + p)
            .ok_or_else(|| anyhow!("README line {}: unclosed code block", open + 1))?;
        blocks.push(Block {
            kind: kind.trim().to_owned(),
            line: open + 1,
            text: lines[open + 1..close].join("\n") + "\n",
        });
        i = close + 1;
    }
    Ok(blocks)
}

/// The `burrow` commands of a shell block: comments dropped, `\` continuations joined.
fn commands(text: &str) -> Vec<Vec<String>> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let code = match line.find('#') {
            Some(i) => &line[..i],
            None => line,
        };
        let code = code.trim_end();
        match code.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(code);
                if !current.trim().is_empty() {
                    joined.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    joined
        .iter()
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Placeholders of the README and the real values they stand for in a test.
struct Placeholders {
    dir: PathBuf,
    /// Whole words of commands (file names).
    words: Vec<(String, String)>,
    /// Substrings of files (addresses, paths).
    text: Vec<(String, String)>,
    ca_pem: String,
}

impl Placeholders {
    fn new(tag: &str) -> Result<Placeholders> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "burrow-readme-{tag}-{}-{nanos:x}",
            std::process::id()
        ));
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let pki = Pki::new("README CA");
        let app = pki.leaf(&["app.example.com"]);
        let wildcard = pki.leaf(&["*.example.com"]);
        let write = |name: &str, text: &str| -> Result<String> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path.display().to_string())
        };
        // Relative names (as in the agent config) resolve next to the files made here.
        let app_crt = write("app-example-com-crt.pem", &app.crt)?;
        let app_key = write("app-example-com-key.pem", &app.key)?;
        write("clients-ca.pem", &pki.ca_pem)?;
        let crt = write("crt.pem", &app.crt)?;
        let key = write("key.pem", &app.key)?;
        let wild_crt = write("wildcard.crt", &wildcard.crt)?;
        let wild_key = write("wildcard.key", &wildcard.key)?;
        let words = vec![
            ("app-example-com-crt.pem".to_owned(), app_crt),
            ("app-example-com-key.pem".to_owned(), app_key),
            ("crt.pem".to_owned(), crt),
            ("key.pem".to_owned(), key),
        ];
        // Loopback only, and ports of the OS's choosing.
        let text = vec![
            ("\"0.0.0.0:4443\"".to_owned(), "\"127.0.0.1:0\"".to_owned()),
            ("\"0.0.0.0:443\"".to_owned(), "\"127.0.0.1:0\"".to_owned()),
            ("\"0.0.0.0\"".to_owned(), "\"127.0.0.1\"".to_owned()),
            ("/etc/burrow/wildcard.example.com.crt".to_owned(), wild_crt),
            ("/etc/burrow/wildcard.example.com.key".to_owned(), wild_key),
            ("/var/lib/burrow".to_owned(), state.display().to_string()),
        ];
        Ok(Placeholders {
            dir,
            words,
            text,
            ca_pem: pki.ca_pem,
        })
    }

    fn word(&self, w: &str) -> String {
        self.words
            .iter()
            .find(|(k, _)| k == w)
            .map_or_else(|| w.to_owned(), |(_, v)| v.clone())
    }

    /// File text with the placeholders replaced; a PEM placeholder block becomes the
    /// test CA, at the same indentation.
    fn file(&self, text: &str) -> String {
        let mut out = String::new();
        let mut skipping = false;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("-----BEGIN CERTIFICATE-----") {
                let indent = &line[..line.len() - trimmed.len()];
                for pem_line in self.ca_pem.lines() {
                    out.push_str(indent);
                    out.push_str(pem_line);
                    out.push('\n');
                }
                skipping = !trimmed.contains("-----END CERTIFICATE-----");
                continue;
            }
            if skipping {
                skipping = !trimmed.starts_with("-----END CERTIFICATE-----");
                continue;
            }
            let mut line = line.to_owned();
            for (from, to) in &self.text {
                line = line.replace(from.as_str(), to);
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn save(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, self.file(text))?;
        Ok(path)
    }
}

impl Drop for Placeholders {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `burrow ARGS` in `dir`: a command that comes up (prints `ready` lines `count`
/// times) is then stopped with SIGTERM; either way it must exit 0.
async fn run_burrow(dir: &Path, args: &[String], ready: &str, count: usize) -> Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .current_dir(dir)
        .env_remove("BURROW_SERVER_ADDR")
        .env_remove("BURROW_AUTHTOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn burrow")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut err_pipe = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let stderr = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = err_pipe.read_to_end(&mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let mut lines = BufReader::new(stdout).lines();
    let came_up = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = 0;
        while let Some(line) = lines.next_line().await? {
            if line.contains(ready) {
                seen += 1;
                if seen == count {
                    return anyhow::Ok(true);
                }
            }
        }
        anyhow::Ok(false)
    })
    .await
    .context("neither came up nor exited within 30 s")??;
    if came_up {
        let pid = child.id().ok_or_else(|| anyhow!("exited"))?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
    }
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .context("did not exit")??;
    let stderr = stderr.await?;
    if !status.success() {
        bail!("exit {status}: {stderr}");
    }
    Ok(())
}

/// Runs a whole block with bash (`-euo pipefail`), `burrow` first on the PATH; it must
/// end with exit code 0 within two minutes.
async fn run_script(dir: &Path, text: &str) -> Result<()> {
    let bin = Path::new(env!("CARGO_BIN_EXE_burrow"))
        .parent()
        .ok_or_else(|| anyhow!("no bin dir"))?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", text])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .context("the script did not finish within 120 s")??;
    if !out.status.success() {
        bail!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A test edge for the agent config: its CA in the placeholder state dir, the README's
/// token, any domain.
async fn test_edge(p: &Placeholders) -> Result<Edge> {
    Ok(Edge::start(EdgeConfig {
        state_dir: Some(p.dir.join("state")),
        authtokens: vec![TokenRule {
            token: "change-me".into(),
            domains: vec!["*".into()],
        }],
        ..Default::default()
    })
    .await?)
}

async fn run_block(block: &Block, files: &[(String, String)]) -> Result<()> {
    let p = Placeholders::new(&format!("l{}", block.line))?;
    let kind: Vec<&str> = block.kind.split_whitespace().collect();
    match kind.as_slice() {
        // Saved for the commands; run by the Python and Node suites.
        ["file", _] | ["python"] | ["pytest"] | ["node"] => Ok(()),
        ["sh"] => {
            let mut saved = Vec::new();
            for (name, text) in files {
                saved.push((name.clone(), p.save(name, text)?.display().to_string()));
            }
            for cmd in commands(&block.text) {
                let (first, rest) = cmd.split_first().ok_or_else(|| anyhow!("empty"))?;
                if first != "burrow" {
                    bail!("only burrow commands are run, not {first:?}");
                }
                let args: Vec<String> = rest
                    .iter()
                    .map(|w| {
                        saved
                            .iter()
                            .find(|(n, _)| n == w)
                            .map_or_else(|| p.word(w), |(_, path)| path.clone())
                    })
                    .collect();
                let ready = if args.first().is_some_and(|a| a == "edge") {
                    "tunnel:"
                } else {
                    "Forwarding"
                };
                run_burrow(&p.dir, &args, ready, 1)
                    .await
                    .with_context(|| format!("`{}`", cmd.join(" ")))?;
            }
            Ok(())
        }
        ["bash"] => run_script(&p.dir, &block.text).await,
        ["edge-config"] => {
            let file = p.save("edge.toml", &block.text)?;
            let args = ["edge".into(), "--config".into(), file.display().to_string()];
            run_burrow(&p.dir, &args, "tunnel:", 1).await
        }
        ["policy"] => {
            let service = echo_server().await;
            let file = p.save("policy.yml", &block.text)?;
            // A policy with HTTP phases goes on an http endpoint.
            let http = [
                "on_http_request",
                "on_http_response",
                "inbound:",
                "outbound:",
            ]
            .iter()
            .any(|phase| block.text.contains(phase));
            let args = [
                if http { "http" } else { "tls" }.into(),
                service.addr.to_string(),
                "--traffic-policy-file".into(),
                file.display().to_string(),
            ];
            run_burrow(&p.dir, &args, "Forwarding", 1).await
        }
        ["agent-config"] => {
            let edge = test_edge(&p).await?;
            let text = block
                .text
                .replace("edge.example.com:4443", &edge.tunnel_addr().to_string());
            let file = p.save("burrow.yml", &text)?;
            let path = file.display().to_string();
            let check = ["config".into(), "check".into(), path.clone()];
            run_burrow(&p.dir, &check, "\u{0}", 1)
                .await
                .context("config check")?;
            let endpoints = text.matches("- name:").count();
            let start = ["start".into(), "--config".into(), path, "--all".into()];
            run_burrow(&p.dir, &start, "forwarding", endpoints)
                .await
                .context("start --all")
        }
        _ => bail!("unknown readme-run kind {:?}", block.kind),
    }
}

#[tokio::test]
async fn every_marked_readme_block_runs_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let blocks = marked_blocks(&readme)?;
    assert!(blocks.len() >= 8, "only {} marked blocks", blocks.len());
    let files: Vec<(String, String)> = blocks
        .iter()
        .filter_map(|b| {
            b.kind
                .strip_prefix("file ")
                .map(|name| (name.trim().to_owned(), b.text.clone()))
        })
        .collect();
    let mut failures = Vec::new();
    for block in &blocks {
        if let Err(e) = run_block(block, &files).await {
            failures.push(format!(
                "README line {} ({}): {e:#}",
                block.line, block.kind
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn shell_blocks_are_split_into_commands() {
    let cmds =
        commands("burrow tls 80 --a x \\\n  --b y   # comment\n# only a comment\nburrow edge\n");
    assert_eq!(
        cmds,
        vec![
            vec!["burrow", "tls", "80", "--a", "x", "--b", "y"],
            vec!["burrow", "edge"],
        ]
    );
}
