//! The `burrow` command line: run an edge, or put a local service behind one.

use anyhow::{bail, Context, Result};
use burrow_core::config::AgentConfig;
use burrow_core::{
    Edge, EdgeConfig, Forwarder, OptionValue, ProxyProto, Scope, Session, TerminateAt,
};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    /// Expose a local web app on an https:// endpoint (the edge's reverse proxy).
    Http(Box<HttpArgs>),
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
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// The agent config file (as `burrow start --config FILE` takes it).
    #[arg(long = "config", value_name = "FILE", conflicts_with = "file")]
    config: Option<PathBuf>,
    /// The agent config file (the same, without --config).
    #[arg(value_name = "FILE", required_unless_present = "config")]
    file: Option<PathBuf>,
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
    /// The edge's tunnel address (host:port), or several separated by commas (one tunnel
    /// connection to each edge); without it an embedded edge runs in this process.
    #[arg(long, env = "BURROW_SERVER_ADDR")]
    server_addr: Option<String>,
    /// CA bundle (PEM file) that the edge's tunnel certificate chains to.
    #[arg(long)]
    root_cas: Option<PathBuf>,
    /// On SIGINT or SIGTERM: endpoints are unbound at once, and open connections get this
    /// long to finish (e.g. 30s, 500ms; a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
}

/// `30s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Args)]
struct TerminationArgs {
    /// Where TLS is terminated (default upstream, or edge when --crt/--key are given).
    #[arg(long, value_parser = PossibleValuesParser::new(["edge", "agent", "upstream"]).try_map(|s| s.parse::<TerminateAt>()))]
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
    /// Send a PROXY protocol header of this version to the upstream.
    #[arg(long, value_parser = PossibleValuesParser::new(["1", "2"]).try_map(|s| s.parse::<ProxyProto>()))]
    proxy_proto: Option<ProxyProto>,
}

#[derive(Args)]
struct TlsArgs {
    /// Endpoint URL, tls://NAME.
    #[arg(long, conflicts_with = "domain")]
    url: Option<String>,
    /// Endpoint hostname (older spelling of --url).
    #[arg(long)]
    domain: Option<String>,
    /// Share the name with other agents that pool it too (ngrok's pooling_enabled):
    /// the edge spreads connections across them.
    #[arg(long)]
    pooling_enabled: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Args)]
struct HttpArgs {
    /// Endpoint URL: https://NAME (or http://NAME for plain HTTP only).
    #[arg(long, conflicts_with = "domain")]
    url: Option<String>,
    /// Endpoint hostname.
    #[arg(long)]
    domain: Option<String>,
    /// Schemes to serve: HTTPS (default), HTTP, or both (repeat the flag).
    #[arg(long = "scheme")]
    schemes: Vec<String>,
    /// Require HTTP basic auth: user:password (repeat for several users).
    #[arg(long)]
    basic_auth: Vec<String>,
    /// Compress responses with gzip or brotli, as the client accepts.
    #[arg(long)]
    compression: bool,
    /// Answer 503 for a while once this fraction of responses are 5xx (e.g. 0.5).
    #[arg(long)]
    circuit_breaker: Option<f64>,
    /// Add a header to requests: "Name: value" (repeatable).
    #[arg(long)]
    request_header_add: Vec<String>,
    /// Remove a header from requests (repeatable).
    #[arg(long)]
    request_header_remove: Vec<String>,
    /// Add a header to responses: "Name: value" (repeatable).
    #[arg(long)]
    response_header_add: Vec<String>,
    /// Remove a header from responses (repeatable).
    #[arg(long)]
    response_header_remove: Vec<String>,
    /// Only User-Agents matching this regex (repeatable).
    #[arg(long)]
    allow_user_agent: Vec<String>,
    /// Refuse User-Agents matching this regex (repeatable).
    #[arg(long)]
    deny_user_agent: Vec<String>,
    /// Allow only clients in this CIDR range (repeatable).
    #[arg(long)]
    allow_cidr: Vec<String>,
    /// Refuse clients in this CIDR range (repeatable).
    #[arg(long)]
    deny_cidr: Vec<String>,
    /// Accept websockets at the edge and give the upstream a plain byte stream.
    #[arg(long)]
    websocket_tcp_converter: bool,
    /// Speak to the upstream in http1 (default) or http2 (h2c).
    #[arg(long)]
    app_protocol: Option<String>,
    /// Verify webhook signatures of this provider (github, stripe, slack).
    #[arg(long, requires = "verify_webhook_secret")]
    verify_webhook_provider: Option<String>,
    /// The secret the webhook provider signs with.
    #[arg(long, env = "BURROW_WEBHOOK_SECRET", hide_env_values = true)]
    verify_webhook_secret: Option<String>,
    /// The Host header sent upstream instead of the client's.
    #[arg(long)]
    host_header: Option<String>,
    /// Share the name with other agents that pool it too.
    #[arg(long)]
    pooling_enabled: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Args)]
struct TcpArgs {
    /// Ask for this public address (host:port; only the port is used).
    #[arg(long)]
    remote_addr: Option<String>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// What `burrow tls` and `burrow tcp` share: the upstream, termination and session.
#[derive(Args)]
struct AgentArgs {
    /// The local service: 8080, host:port, tcp://host:port, tls://host:port,
    /// http://host:port, https://host:port or unix:/path.
    upstream: String,
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
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    // yamux warns about every tunnel whose peer closed first (`Broken pipe`): noise
    // at a normal shutdown. Its errors still show, and a filter naming yamux wins.
    if !filter.contains("yamux") {
        filter.push_str(",yamux=error");
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => return fail(anyhow::anyhow!("--log {filter:?}: {e}")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted())
        .init();
    let signals = match Signals::listen() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match run(cli.command, signals).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// A user error is one line (its causes joined), never a backtrace: those are for panics.
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// Colour only for a terminal, and never when `NO_COLOR` is set (no-color.org).
fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty())
}

async fn run(command: Command, signals: Signals) -> Result<()> {
    match command {
        Command::Edge(args) => run_edge(args, signals).await,
        Command::Start(args) => run_start(args, signals).await,
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let Some(file) = args.config.or(args.file) else {
                bail!("name the config file: burrow config check --config FILE");
            };
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
        Command::Http(args) => {
            let mut options = vec![("proto", "http".into())];
            push(&mut options, "url", args.url);
            push(&mut options, "domain", args.domain);
            let lists = [
                ("schemes", args.schemes),
                ("basic_auth", args.basic_auth),
                ("request_header_add", args.request_header_add),
                ("request_header_remove", args.request_header_remove),
                ("response_header_add", args.response_header_add),
                ("response_header_remove", args.response_header_remove),
                ("allow_user_agent", args.allow_user_agent),
                ("deny_user_agent", args.deny_user_agent),
                ("allow_cidr", args.allow_cidr),
                ("deny_cidr", args.deny_cidr),
            ];
            for (name, values) in lists {
                if !values.is_empty() {
                    let list = values.into_iter().map(OptionValue::Str).collect();
                    options.push((name, OptionValue::List(list)));
                }
            }
            push(
                &mut options,
                "compression",
                args.compression.then_some(true),
            );
            push(
                &mut options,
                "circuit_breaker",
                args.circuit_breaker.map(OptionValue::Float),
            );
            push(
                &mut options,
                "websocket_tcp_converter",
                args.websocket_tcp_converter.then_some(true),
            );
            push(&mut options, "app_protocol", args.app_protocol);
            push(
                &mut options,
                "verify_webhook_provider",
                args.verify_webhook_provider,
            );
            push(
                &mut options,
                "verify_webhook_secret",
                args.verify_webhook_secret,
            );
            push(&mut options, "host_header", args.host_header);
            push(
                &mut options,
                "pooling_enabled",
                args.pooling_enabled.then_some(true),
            );
            run_agent(args.agent, options, signals).await
        }
        Command::Tls(args) => {
            let mut options = vec![("proto", "tls".into())];
            push(&mut options, "url", args.url);
            push(&mut options, "domain", args.domain);
            push(
                &mut options,
                "pooling_enabled",
                args.pooling_enabled.then_some(true),
            );
            run_agent(args.agent, options, signals).await
        }
        Command::Tcp(args) => {
            let mut options = vec![("proto", "tcp".into())];
            push(&mut options, "remote_addr", args.remote_addr);
            run_agent(args.agent, options, signals).await
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

/// SIGINT (Ctrl-C) and SIGTERM (what systemd, Docker and Kubernetes send), listened to
/// from the start, so that a signal arriving while the command starts up is neither
/// lost nor fatal before the clean-up; a clone sees the same signals.
#[derive(Clone)]
struct Signals(tokio::sync::watch::Receiver<Option<&'static str>>);

impl Signals {
    fn listen() -> Result<Signals> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
            let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
            tokio::spawn(async move {
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    };
                    if tx.send(Some(name)).is_err() {
                        return;
                    }
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if tx.send(Some("Ctrl-C")).is_err() {
                    return;
                }
            }
        });
        Ok(Signals(rx))
    }

    /// Resolves once a signal has arrived (at once if one already has) and names it.
    async fn next(&mut self) -> Result<&'static str> {
        loop {
            if let Some(name) = *self.0.borrow_and_update() {
                return Ok(name);
            }
            self.0
                .changed()
                .await
                .context("the signal listener stopped")?;
        }
    }

    /// Runs a start-up step (connecting, binding); `None` when a signal came first.
    async fn unless_stopped<T>(
        &mut self,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        tokio::select! {
            r = step => r.map(Some),
            s = self.next() => {
                tracing::info!(signal = %s?, "stopped while starting");
                Ok(None)
            }
        }
    }
}

/// Stops forwarders gracefully: endpoints unbound at once, open connections given
/// `grace` to finish, then the session closed.
async fn shut_down(signal: &str, forwarders: &[Forwarder], session: &Session, grace: Duration) {
    let open: usize = forwarders.iter().map(Forwarder::open_connections).sum();
    tracing::info!(%signal, open_connections = open, grace = ?grace, "shutting down: endpoints unbound, open connections may finish");
    for fwd in forwarders {
        fwd.close();
    }
    let drain = all_connections_ended(forwarders);
    if tokio::time::timeout(grace, drain).await.is_err() {
        let left: usize = forwarders.iter().map(Forwarder::open_connections).sum();
        tracing::info!(
            open_connections = left,
            "grace period over: closing the connections still open"
        );
    }
    session.close().await;
}

/// Waits for every forwarder's connections to end.
async fn all_connections_ended(forwarders: &[Forwarder]) {
    for fwd in forwarders {
        fwd.wait_connections().await;
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

async fn run_edge(args: EdgeArgs, mut signals: Signals) -> Result<()> {
    let open_edge = args.config.is_none();
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
    let cluster = config.cluster.clone();
    // In a cluster the edge waits for etcd at start: a signal meanwhile stops it.
    let Some(edge) = signals
        .unless_stopped(async { Ok(Edge::start(config).await?) })
        .await?
    else {
        return Ok(());
    };
    println!("tunnel: {}", edge.tunnel_addr());
    println!("tls:    {}", edge.tls_addr());
    if let Some(http) = edge.http_addr() {
        println!("http:   {http}");
    }
    if let Some(metrics) = edge.metrics_addr() {
        println!("metrics: http://{metrics}/metrics");
    }
    if let Some(admin) = edge.admin_addr() {
        println!("admin:  http://{admin}/api/status");
    }
    // Without a state_dir the CA lives in memory, and a cluster's CA lives in etcd:
    // agents need it in a file.
    let mut run_dir = None;
    if let Some(cluster) = &cluster {
        let ca = RunDir::file(&mut run_dir, "cluster-ca.pem", edge.ca_pem())?;
        println!(
            "cluster: edge {} linked at {}",
            cluster.edge_id, cluster.link_addr
        );
        println!("root-cas: {}", ca.display());
    } else if open_edge {
        let ca = RunDir::file(&mut run_dir, "edge-ca.pem", edge.ca_pem())?;
        println!("root-cas: {}", ca.display());
        println!(
            "Agents connect with:\n  burrow http 8080 --server-addr {} --root-cas {}",
            edge.tunnel_addr(),
            ca.display()
        );
    }
    // A drain (admin API) ends the edge by itself: the process then exits 0.
    let drained = edge.drained();
    tokio::select! {
        signal = signals.next() => {
            let signal = signal?;
            tracing::info!(%signal, "edge shutting down");
        }
        _ = drained => tracing::info!("edge drained; exiting"),
    }
    edge.shutdown().await;
    Ok(())
}

/// A directory of this run's files (e.g. the embedded edge's CA), made when the first
/// file is needed and removed when the command ends.
struct RunDir(PathBuf);

impl RunDir {
    /// Writes `name` into the run's directory (creating it) and returns its path.
    fn file(dir: &mut Option<RunDir>, name: &str, contents: &str) -> Result<PathBuf> {
        let dir = match dir {
            Some(d) => d,
            None => dir.insert(RunDir::create()?),
        };
        let path = dir.0.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn create() -> Result<RunDir> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("burrow-run-{}-{nonce:08x}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(RunDir(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run_agent(args: AgentArgs, mut options: Options, mut signals: Signals) -> Result<()> {
    let (session_args, t) = (args.session, args.termination);
    options.push(("addr", args.upstream.into()));
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
    let builder = forward.session.builder();
    let Some(session) = signals
        .unless_stopped(async { Ok(builder.connect().await?) })
        .await?
    else {
        return Ok(());
    };
    let endpoint = forward.endpoint;
    let bind = async { Ok(session.forward(endpoint, &upstream).await?) };
    let Some(forwarder) = signals.unless_stopped(bind).await? else {
        session.close().await;
        return Ok(());
    };
    println!(
        "Forwarding {} -> {} ({})",
        forwarder.url(),
        upstream,
        mode_words(&forwarder)
    );
    let mut run_dir = None;
    if let Some(edge) = session.embedded_edge() {
        print_hint(edge, &forwarder, &mut run_dir)?;
    }
    let grace = session_args.shutdown_timeout;
    serve_until_signal(vec![forwarder], &session, grace, signals).await
}

/// Serves until SIGINT/SIGTERM (then shuts down gracefully) or until the session ends
/// by itself (then fails with the edge's reason, if it gave one).
async fn serve_until_signal(
    mut forwarders: Vec<Forwarder>,
    session: &Session,
    grace: Duration,
    mut signals: Signals,
) -> Result<()> {
    let all_stopped = async {
        for fwd in forwarders.iter_mut() {
            fwd.join().await;
        }
    };
    let signal = tokio::select! {
        s = signals.next() => Some(s?),
        _ = all_stopped => None,
    };
    match signal {
        Some(signal) => shut_down(signal, &forwarders, session, grace).await,
        None => session.close().await,
    }
    match session.failure() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// How the endpoint carries bytes, in words for the `Forwarding` line.
fn mode_words(fwd: &Forwarder) -> String {
    match (fwd.proto(), fwd.terminate_at()) {
        ("tcp", TerminateAt::Upstream) => "TCP: bytes are forwarded as they are".to_owned(),
        ("http", _) if fwd.url().starts_with("http://") => {
            "plain HTTP, reverse proxy at the edge".to_owned()
        }
        ("http", _) => "HTTPS terminated at the edge, reverse proxy".to_owned(),
        (_, at) => format!("TLS terminated at {at}"),
    }
}

async fn run_start(args: StartArgs, mut signals: Signals) -> Result<()> {
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
    let Some(session) = signals
        .unless_stopped(async { Ok(builder.connect().await?) })
        .await?
    else {
        return Ok(());
    };
    let mut forwarders = Vec::new();
    let mut run_dir = None;
    for endpoint in selected {
        let Some(fwd) = signals
            .unless_stopped(async { Ok(endpoint.start(&session).await?) })
            .await?
        else {
            session.close().await;
            return Ok(());
        };
        println!(
            "{}: forwarding {} -> {} ({})",
            endpoint.name,
            fwd.url(),
            fwd.forwards_to(),
            mode_words(&fwd)
        );
        if let Some(edge) = session.embedded_edge() {
            print_hint(edge, &fwd, &mut run_dir)?;
        }
        forwarders.push(fwd);
    }
    serve_until_signal(forwarders, &session, args.session.shutdown_timeout, signals).await
}

/// Prints a command that reaches the endpoint through the embedded edge. The edge's CA
/// is written to a file (removed at exit) only when the client needs it.
fn print_hint(edge: &Edge, fwd: &Forwarder, run_dir: &mut Option<RunDir>) -> Result<()> {
    let url = fwd.url();
    let (scheme, rest) = url.split_once("://").unwrap_or(("tls", url));
    let host = rest.split(':').next().unwrap_or(rest);
    let edge_ca = |dir: &mut Option<RunDir>| -> Result<String> {
        let path = RunDir::file(dir, "embedded-edge-ca.pem", edge.ca_pem())?;
        Ok(format!(" -CAfile {}", path.display()))
    };
    let line = match (scheme, fwd.terminate_at()) {
        ("https", _) => {
            let port = edge.tls_addr().port();
            let path = RunDir::file(run_dir, "embedded-edge-ca.pem", edge.ca_pem())?;
            format!(
                "curl --cacert {} --resolve {host}:{port}:{} https://{host}:{port}/",
                path.display(),
                edge.tls_addr().ip()
            )
        }
        ("http", _) => match edge.http_addr() {
            Some(addr) => format!(
                "curl --resolve {host}:{}:{} http://{host}:{}/",
                addr.port(),
                addr.ip(),
                addr.port()
            ),
            None => format!("curl {url}"),
        },
        ("tcp", TerminateAt::Upstream) => format!(
            "nc {} {}   (plain TCP; or curl, psql, ... at {rest})",
            host,
            rest.rsplit(':').next().unwrap_or_default()
        ),
        ("tcp", TerminateAt::Edge) => {
            format!("openssl s_client -connect {rest}{}", edge_ca(run_dir)?)
        }
        ("tcp", _) => format!("openssl s_client -connect {rest}"),
        (_, at) => {
            let ca = if at == TerminateAt::Edge {
                edge_ca(run_dir)?
            } else {
                String::new()
            };
            format!(
                "openssl s_client -connect {} -servername {host}{ca}",
                edge.tls_addr()
            )
        }
    };
    println!("Embedded edge (this process only). Try:\n  {line}");
    Ok(())
}
