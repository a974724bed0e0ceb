//! The `burrow` command line: run an edge, or put a local service behind one.

use anyhow::{bail, Context, Result};
use burrow_core::config::AgentConfig;
use burrow_core::{Edge, EdgeConfig, OptionValue, ProxyProto, Scope, TerminateAt};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "burrow",
    version,
    about = "A TLS tunnel: put a local service on a public tls:// address"
)]
struct Cli {
    /// Log filter (e.g. info, debug, burrow_core=trace); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info", env = "BURROW_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Expose a local service on a tls:// endpoint, routed by SNI.
    Tls(TlsArgs),
    /// Expose a local service on a tcp:// endpoint with a port of its own.
    Tcp(TcpArgs),
    /// Run an edge that agents connect to.
    Edge(EdgeArgs),
    /// Start endpoints from an agent config file (ngrok's v3 format).
    Start(StartArgs),
    /// Work with agent config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file and explain what is wrong, with line numbers.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct StartArgs {
    /// The agent config file.
    #[arg(long)]
    config: PathBuf,
    /// Start every endpoint in the file.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Names of the endpoints to start.
    names: Vec<String>,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Args)]
struct SessionArgs {
    /// Authtoken presented to the edge.
    #[arg(long, env = "BURROW_AUTHTOKEN", hide_env_values = true)]
    authtoken: Option<String>,
    /// The edge's tunnel address (host:port); without it an embedded edge runs in this process.
    #[arg(long, env = "BURROW_SERVER_ADDR")]
    server_addr: Option<String>,
    /// CA bundle (PEM file) that the edge's tunnel certificate chains to.
    #[arg(long)]
    root_cas: Option<PathBuf>,
}

#[derive(Args)]
struct TerminationArgs {
    /// Where TLS is terminated: edge, agent or upstream (default upstream, or edge when --crt/--key are given).
    #[arg(long)]
    terminate_at: Option<TerminateAt>,
    /// Certificate chain (PEM file) for edge or agent termination.
    #[arg(long)]
    crt: Option<PathBuf>,
    /// Private key (PEM file) for edge or agent termination.
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle (PEM file): clients must present a certificate it issued (mutual TLS).
    #[arg(long)]
    mutual_tls_cas: Option<PathBuf>,
    /// For a tls:// upstream: CA bundle (PEM file) to verify it against.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// For a tls:// upstream: skip verifying its certificate.
    #[arg(long)]
    upstream_insecure: bool,
    /// Traffic policy file (YAML or JSON) the edge runs on every connection.
    #[arg(long)]
    traffic_policy_file: Option<PathBuf>,
    /// Send a PROXY protocol header (1 or 2) to the upstream.
    #[arg(long)]
    proxy_proto: Option<ProxyProto>,
}

#[derive(Args)]
struct TlsArgs {
    /// The local service: 8080, host:port, tcp://host:port or tls://host:port.
    upstream: String,
    /// Endpoint URL, tls://NAME.
    #[arg(long, conflicts_with = "domain")]
    url: Option<String>,
    /// Endpoint hostname (older spelling of --url).
    #[arg(long)]
    domain: Option<String>,
    #[command(flatten)]
    termination: TerminationArgs,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Args)]
struct TcpArgs {
    /// The local service: 8080, host:port, tcp://host:port or tls://host:port.
    upstream: String,
    /// Ask for this public address (host:port; only the port is used).
    #[arg(long)]
    remote_addr: Option<String>,
    #[command(flatten)]
    termination: TerminationArgs,
    #[command(flatten)]
    session: SessionArgs,
}

#[derive(Args)]
struct EdgeArgs {
    /// Edge config file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} file {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Edge(args) => run_edge(args).await,
        Command::Start(args) => run_start(args).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = AgentConfig::from_file(&file)?;
            let names: Vec<&str> = config.endpoints.iter().map(|e| e.name.as_str()).collect();
            println!(
                "{}: ok, {} endpoint(s): {}",
                file.display(),
                names.len(),
                names.join(", ")
            );
            Ok(())
        }
        Command::Tls(args) => {
            let mut options = vec![("proto", "tls".into())];
            push(&mut options, "url", args.url);
            push(&mut options, "domain", args.domain);
            run_agent(args.session, args.termination, &args.upstream, options).await
        }
        Command::Tcp(args) => {
            let mut options = vec![("proto", "tcp".into())];
            push(&mut options, "remote_addr", args.remote_addr);
            run_agent(args.session, args.termination, &args.upstream, options).await
        }
    }
}

/// Forward options, by their ngrok names, for the core's option parser.
type Options = Vec<(&'static str, OptionValue)>;

fn push(options: &mut Options, name: &'static str, value: Option<impl Into<OptionValue>>) {
    if let Some(v) = value {
        options.push((name, v.into()));
    }
}

/// Reads a file named by a flag, for an option that takes its contents.
fn push_file(
    options: &mut Options,
    name: &'static str,
    flag: &str,
    path: Option<&Path>,
) -> Result<()> {
    if let Some(path) = path {
        options.push((name, read(path, flag)?.into()));
    }
    Ok(())
}

async fn run_edge(args: EdgeArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => EdgeConfig::from_file(path)?,
        None => {
            tracing::warn!(
                "no --config: running an open edge on loopback (any authtoken, any domain)"
            );
            EdgeConfig {
                open: true,
                ..EdgeConfig::default()
            }
        }
    };
    let edge = Edge::start(config).await?;
    println!("tunnel: {}", edge.tunnel_addr());
    println!("tls:    {}", edge.tls_addr());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    edge.shutdown().await;
    Ok(())
}

async fn run_agent(
    session_args: SessionArgs,
    t: TerminationArgs,
    upstream: &str,
    mut options: Options,
) -> Result<()> {
    options.push(("addr", upstream.into()));
    push(&mut options, "authtoken", session_args.authtoken);
    push(&mut options, "server_addr", session_args.server_addr);
    push_file(
        &mut options,
        "root_cas",
        "--root-cas",
        session_args.root_cas.as_deref(),
    )?;
    push(
        &mut options,
        "terminate_at",
        t.terminate_at.map(|a| a.to_string()),
    );
    push(
        &mut options,
        "proxy_proto",
        t.proxy_proto.map(|p| p.to_string()),
    );
    push_file(&mut options, "crt", "--crt", t.crt.as_deref())?;
    push_file(&mut options, "key", "--key", t.key.as_deref())?;
    push_file(
        &mut options,
        "mutual_tls_cas",
        "--mutual-tls-cas",
        t.mutual_tls_cas.as_deref(),
    )?;
    push_file(
        &mut options,
        "upstream_root_cas",
        "--upstream-ca",
        t.upstream_ca.as_deref(),
    )?;
    if t.upstream_insecure {
        options.push(("verify_upstream_tls", false.into()));
    }
    if let Some(path) = &t.traffic_policy_file {
        let text = String::from_utf8(read(path, "--traffic-policy-file")?)
            .with_context(|| format!("--traffic-policy-file {}: not UTF-8 text", path.display()))?;
        options.push(("traffic_policy", text.into()));
    }
    let options = options.into_iter().map(|(k, v)| (k.to_owned(), v));
    let forward = burrow_core::agent::options::parse(options, Scope::Forward, None)?;
    let upstream = forward.upstream;
    let session = forward.session.builder().connect().await?;
    let mut forwarder = session.forward(forward.endpoint, &upstream).await?;
    println!(
        "Forwarding {} -> {} (TLS terminated at {})",
        forwarder.url(),
        upstream,
        forwarder.terminate_at()
    );
    if let Some(edge) = session.embedded_edge() {
        print_openssl_hint(edge, forwarder.url(), forwarder.terminate_at())?;
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = forwarder.join() => {}
    }
    forwarder.close();
    session.close().await;
    Ok(())
}

async fn run_start(args: StartArgs) -> Result<()> {
    if !args.all && args.names.is_empty() {
        bail!("name the endpoints to start, or pass --all");
    }
    let config = AgentConfig::from_file(&args.config)?;
    let selected = config.select(&args.names)?;
    let mut builder = config.session_builder();
    if let Some(token) = args.session.authtoken {
        builder = builder.authtoken(token);
    }
    if let Some(addr) = args.session.server_addr {
        builder = builder.server_addr(addr);
    }
    if let Some(ca) = &args.session.root_cas {
        builder = builder.root_cas(read(ca, "--root-cas")?);
    }
    let session = builder.connect().await?;
    let mut forwarders = Vec::new();
    for endpoint in selected {
        let fwd = endpoint.start(&session).await?;
        println!(
            "{}: forwarding {} -> {} (TLS terminated at {})",
            endpoint.name,
            fwd.url(),
            fwd.forwards_to(),
            fwd.terminate_at()
        );
        if let Some(edge) = session.embedded_edge() {
            print_openssl_hint(edge, fwd.url(), fwd.terminate_at())?;
        }
        forwarders.push(fwd);
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    for fwd in &forwarders {
        fwd.close();
    }
    session.close().await;
    Ok(())
}

/// Prints a command that reaches the endpoint through the embedded edge.
fn print_openssl_hint(edge: &Edge, url: &str, at: TerminateAt) -> Result<()> {
    let ca_path =
        std::env::temp_dir().join(format!("burrow-embedded-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_path, edge.ca_pem())
        .with_context(|| format!("writing {}", ca_path.display()))?;
    let (scheme, rest) = url.split_once("://").unwrap_or(("tls", url));
    let host = rest.split(':').next().unwrap_or(rest);
    let line = if scheme == "tcp" {
        format!("openssl s_client -connect {rest}")
    } else {
        let ca = if at == TerminateAt::Edge {
            format!(" -CAfile {}", ca_path.display())
        } else {
            String::new()
        };
        format!(
            "openssl s_client -connect {} -servername {host}{ca}",
            edge.tls_addr()
        )
    };
    println!("Embedded edge (this process only). Try:\n  {line}");
    Ok(())
}
