//! The `burrow` command line: run an edge, or put a local service behind one.

use anyhow::{bail, Context, Result};
use burrow_core::config::AgentConfig;
use burrow_core::{Edge, EdgeConfig, ProxyProto, Session, TerminateAt, Upstream};
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
            let domain = match (&args.url, &args.domain) {
                (Some(url), _) => Some(url_host(url)?),
                (None, Some(d)) => Some(d.clone()),
                (None, None) => None,
            };
            run_agent(
                args.session,
                args.termination,
                &args.upstream,
                Endpoint::Tls { domain },
            )
            .await
        }
        Command::Tcp(args) => {
            run_agent(
                args.session,
                args.termination,
                &args.upstream,
                Endpoint::Tcp {
                    remote_addr: args.remote_addr,
                },
            )
            .await
        }
    }
}

fn url_host(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("tls://") else {
        bail!("--url {url:?} must start with tls://");
    };
    Ok(rest.split(':').next().unwrap_or_default().to_owned())
}

enum Endpoint {
    Tls { domain: Option<String> },
    Tcp { remote_addr: Option<String> },
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
    endpoint: Endpoint,
) -> Result<()> {
    let mut upstream: Upstream = upstream.parse()?;
    if let Some(ca) = &t.upstream_ca {
        upstream = upstream.root_cas(read(ca, "--upstream-ca")?);
    }
    if t.upstream_insecure {
        upstream = upstream.verify_tls(false);
    }
    let mut builder = Session::builder();
    if let Some(token) = session_args.authtoken {
        builder = builder.authtoken(token);
    }
    if let Some(addr) = session_args.server_addr {
        builder = builder.server_addr(addr);
    }
    if let Some(ca) = &session_args.root_cas {
        builder = builder.root_cas(read(ca, "--root-cas")?);
    }
    let session = builder.connect().await?;
    let policy = t
        .traffic_policy_file
        .as_deref()
        .map(|p| read(p, "--traffic-policy-file"))
        .transpose()?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let crt = t.crt.as_deref().map(|p| read(p, "--crt")).transpose()?;
    let key = t.key.as_deref().map(|p| read(p, "--key")).transpose()?;
    let cas = t
        .mutual_tls_cas
        .as_deref()
        .map(|p| read(p, "--mutual-tls-cas"))
        .transpose()?;

    macro_rules! configure {
        ($b:expr) => {{
            let mut b = $b;
            if let Some(at) = t.terminate_at {
                b = b.terminate_at(at);
            }
            if let Some(c) = crt.clone() {
                b = b.crt(c);
            }
            if let Some(k) = key.clone() {
                b = b.key(k);
            }
            if let Some(c) = cas.clone() {
                b = b.mutual_tlsca(c);
            }
            if let Some(p) = policy.clone() {
                b = b.traffic_policy(p);
            }
            if let Some(v) = t.proxy_proto {
                b = b.proxy_proto(v);
            }
            b.listen_and_forward(upstream.clone()).await?
        }};
    }
    let mut forwarder = match &endpoint {
        Endpoint::Tls { domain } => {
            let mut b = session.tls_endpoint();
            if let Some(d) = domain {
                b = b.domain(d.clone());
            }
            configure!(b)
        }
        Endpoint::Tcp { remote_addr } => {
            let mut b = session.tcp_endpoint();
            if let Some(a) = remote_addr {
                b = b.remote_addr(a)?;
            }
            configure!(b)
        }
    };
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
