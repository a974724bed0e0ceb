//! The `burrow` command line: run an edge, or put a local service behind one.

#[path = "burrow/console.rs"]
mod console;
#[path = "burrow/logs.rs"]
mod logs;

use anyhow::{bail, Context, Result};
use burrow_core::agent::{AgentApi, ApiKind};
use burrow_core::config::AgentConfig;
use burrow_core::{
    Edge, EdgeConfig, Forwarder, OptionValue, ProxyProto, Scope, Session, TerminateAt,
};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "burrow",
    version,
    about = "A TLS tunnel: put a local service on a public tls:// address"
)]
#[command(after_help = CONSOLE_HELP)]
struct Cli {
    /// Log filter (e.g. info, debug, burrow_core=trace); RUST_LOG also works. `stdout`
    /// (ngrok's spelling, alone or in the list: `stdout,debug`) turns the live console
    /// off: plain lines instead.
    #[arg(long, global = true, default_value = "info", env = "BURROW_LOG")]
    log: String,
    /// Log lines as `text` (default) or `json` (one JSON object a line on stderr, for
    /// machines; no live console).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "BURROW_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The end of `--help`: when the live console is drawn, and how to turn it off.
const CONSOLE_HELP: &str = "\
Live console: when stdout is a terminal, `burrow tls|tcp|http|start` draw a status screen
(session, edge, latency, forwarding lines, connection counters, recent connections) instead
of printing lines. Ctrl-C or q stops burrow gracefully, as SIGINT does. Only warnings and
errors are logged then: in the console's bottom pane while it is up (printed to stderr when
it ends), never over the screen. `--log stdout` (every line the --log filter passes),
`--log-format json`, TERM=dumb, a stdout that is not a terminal or a background job (&) give
plain lines instead.";

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[value(alias = "term", alias = "logfmt")]
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Expose a local web app on an https:// endpoint (the edge's reverse proxy).
    #[command(after_help = CONSOLE_HELP)]
    Http(Box<HttpArgs>),
    /// Expose a local service on a tls:// endpoint, routed by SNI.
    #[command(after_help = CONSOLE_HELP)]
    Tls(TlsArgs),
    /// Expose a local service on a tcp:// endpoint with a port of its own.
    #[command(after_help = CONSOLE_HELP)]
    Tcp(TcpArgs),
    /// Run an edge that agents connect to.
    Edge(EdgeArgs),
    /// Start endpoints from an agent config file (ngrok's v3 format).
    #[command(after_help = CONSOLE_HELP)]
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
    /// The agent API and status page (ngrok's web_addr): host:port, or false for none
    /// [default: 127.0.0.1:4040, or the next free port up to 4050]
    #[arg(long, env = "BURROW_WEB_ADDR")]
    web_addr: Option<String>,
    /// Serve the session's Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "BURROW_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
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
    let (log, stdout_asked) = split_log_flag(&cli.log);
    let ui = match console_wanted(&cli.command, stdout_asked, cli.log_format) {
        true => Ui::Console(logs::LogSink::default()),
        false => Ui::Plain,
    };
    let mut filter = std::env::var("RUST_LOG").unwrap_or(log);
    // yamux warns about every tunnel whose peer closed first (`Broken pipe`): noise
    // at a normal shutdown. Its errors still show, and a filter naming yamux wins.
    if !filter.contains("yamux") {
        filter.push_str(",yamux=error");
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => return fail(anyhow::anyhow!("--log {filter:?}: {e}")),
    };
    let logger = tracing_subscriber::fmt().with_env_filter(filter);
    match (&ui, cli.log_format) {
        (_, LogFormat::Json) => logger.json().with_writer(std::io::stderr).init(),
        // No colour codes in lines the console's pane shows.
        (Ui::Console(sink), _) => logger.with_writer(sink.clone()).with_ansi(false).init(),
        (Ui::Plain, _) => logger
            .with_writer(std::io::stderr)
            .with_ansi(colour_wanted())
            .init(),
    }
    let signals = match Signals::listen() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match run(cli.command, signals, ui).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `--log` without the words that choose plain lines (`stdout`, `stderr`), and whether
/// one was there; `info` when nothing else is left.
fn split_log_flag(flag: &str) -> (String, bool) {
    let mut plain = false;
    let rest: Vec<&str> = flag
        .split(',')
        .filter(|part| {
            let word = matches!(part.trim(), "stdout" | "stderr");
            plain |= word;
            !word
        })
        .collect();
    let rest = rest.join(",");
    match rest.trim() {
        "" => ("info".to_owned(), plain),
        _ => (rest, plain),
    }
}

/// The live console is for a person at a terminal: an agent command, stdout a terminal
/// that can draw (not TERM=dumb), and neither `--log stdout` nor `--log-format json`.
fn console_wanted(command: &Command, stdout_asked: bool, format: LogFormat) -> bool {
    let agent = matches!(
        command,
        Command::Http(_) | Command::Tls(_) | Command::Tcp(_) | Command::Start(_)
    );
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    agent
        && !stdout_asked
        && format == LogFormat::Text
        && !dumb
        && std::io::stdout().is_terminal()
        && in_foreground()
}

/// Whether this process is in its terminal's foreground process group. A job started
/// with `&` is not: taking the terminal there (raw mode) would stop it (SIGTTOU), so it
/// prints plain lines instead.
#[cfg(unix)]
fn in_foreground() -> bool {
    rustix::termios::tcgetpgrp(std::io::stdout())
        .is_ok_and(|group| group == rustix::process::getpgrp())
}

/// Elsewhere a terminal has no process groups to ask about.
#[cfg(not(unix))]
fn in_foreground() -> bool {
    true
}

/// How an agent command shows what it runs: printed lines, or the live console (whose
/// log lines go to the sink's ring while it is up).
enum Ui {
    /// Lines on stdout, logs on stderr (not a terminal, `--log stdout`, JSON logs).
    Plain,
    /// The full-screen console.
    Console(logs::LogSink),
}

impl Ui {
    /// Whether the lines are printed (plain) or kept for the console.
    fn notices(&self) -> Notices {
        Notices {
            keep: matches!(self, Ui::Console(_)),
            kept: Vec::new(),
            view: console::view::View::default(),
        }
    }

    /// Starts the console (plain mode: nothing to start). A terminal that cannot be
    /// taken (no controlling terminal for raw mode, say) is not fatal: the kept lines
    /// are printed after a warning, and burrow runs without the console.
    fn start(
        &self,
        session: &Session,
        notices: Notices,
        signals: &Signals,
    ) -> Option<console::Console> {
        let Ui::Console(sink) = self else {
            return None;
        };
        let started =
            console::Console::start(session, notices.view, sink.clone(), signals.stopper());
        match started {
            Ok(console) => Some(console),
            Err(e) => {
                tracing::warn!("no live console: {e:#}");
                for line in notices.kept {
                    println!("{line}");
                }
                None
            }
        }
    }
}

/// What an agent command tells the user besides its endpoints (the web interface, the
/// metrics address, how to reach an embedded edge): printed at once in plain mode, kept
/// for the console's screen otherwise.
struct Notices {
    /// Keep for the console instead of printing.
    keep: bool,
    /// The lines kept, printed after all if the console cannot start.
    kept: Vec<String>,
    /// What is kept.
    view: console::view::View,
}

impl Notices {
    /// A line that plain mode prints and the console draws from the session's status.
    fn line(&mut self, text: String) {
        if self.keep {
            self.kept.push(text);
        } else {
            println!("{text}");
        }
    }

    /// The agent API's address.
    fn web_interface(&mut self, addr: SocketAddr) {
        self.line(format!(
            "Web Interface: http://{addr}  (agent API: /api/tunnels)"
        ));
        self.view.web_interface = Some(format!("http://{addr}"));
    }

    /// The metrics listener's address.
    fn metrics(&mut self, addr: SocketAddr) {
        self.line(format!("Metrics: http://{addr}/metrics"));
        self.view.metrics = Some(format!("http://{addr}/metrics"));
    }

    /// A command that reaches an endpoint through the embedded edge.
    fn hint(&mut self, command: String) {
        self.line(format!(
            "Embedded edge (this process only). Try:\n  {command}"
        ));
        self.view.hints.push(command);
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

async fn run(command: Command, signals: Signals, ui: Ui) -> Result<()> {
    match command {
        Command::Edge(args) => run_edge(args, signals).await,
        Command::Start(args) => run_start(args, signals, ui).await,
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
            run_agent(args.agent, options, signals, &ui).await
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
            run_agent(args.agent, options, signals, &ui).await
        }
        Command::Tcp(args) => {
            let mut options = vec![("proto", "tcp".into())];
            push(&mut options, "remote_addr", args.remote_addr);
            run_agent(args.agent, options, signals, &ui).await
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
struct Signals(tokio::sync::watch::Receiver<Option<&'static str>>, Stopper);

/// Stops the command as a signal does (the console's Ctrl-C and `q` keys); cheap to clone,
/// usable from any thread.
#[derive(Clone)]
pub(crate) struct Stopper(std::sync::Arc<tokio::sync::watch::Sender<Option<&'static str>>>);

impl Stopper {
    /// Starts the graceful shutdown; `name` is what the log calls the cause.
    pub(crate) fn stop(&self, name: &'static str) {
        self.0.send_replace(Some(name));
    }
}

impl Signals {
    fn listen() -> Result<Signals> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let tx = std::sync::Arc::new(tx);
        let stopper = Stopper(tx.clone());
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
        Ok(Signals(rx, stopper))
    }

    /// A handle that stops the command as SIGINT would.
    fn stopper(&self) -> Stopper {
        self.1.clone()
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

async fn run_agent(
    args: AgentArgs,
    mut options: Options,
    mut signals: Signals,
    ui: &Ui,
) -> Result<()> {
    let (session_args, t) = (args.session, args.termination);
    let web_addr = web_addr_flag(session_args.web_addr.as_deref())?;
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
    let mut endpoint = forward.endpoint;
    endpoint
        .name
        .get_or_insert_with(|| "command_line".to_owned());
    let bind = async { Ok(session.forward(endpoint, &upstream).await?) };
    let Some(forwarder) = signals.unless_stopped(bind).await? else {
        session.close().await;
        return Ok(());
    };
    let mut notices = ui.notices();
    notices.line(format!(
        "Forwarding {} -> {} ({})",
        forwarder.url(),
        upstream,
        mode_words(&forwarder)
    ));
    let mut run_dir = None;
    if let Some(edge) = session.embedded_edge() {
        print_hint(edge, &forwarder, &mut run_dir, &mut notices)?;
    }
    let _apis = start_apis(&session, web_addr, session_args.metrics_addr, &mut notices).await?;
    let grace = session_args.shutdown_timeout;
    let console = ui.start(&session, notices, &signals);
    serve_until_signal(vec![forwarder], &session, grace, signals, console).await
}

/// The `--web-addr` flag: `None` when not given, `Some(None)` for `false`.
fn web_addr_flag(flag: Option<&str>) -> Result<Option<Option<SocketAddr>>> {
    flag.map(burrow_core::agent::parse_web_addr)
        .transpose()
        .context("--web-addr")
}

/// Starts the agent API (at `web_addr`: `Some(None)` for none; when not given,
/// 127.0.0.1:4040 or the next free port up to 4050) and the metrics listener, and
/// prints where they are.
async fn start_apis(
    session: &Session,
    web_addr: Option<Option<SocketAddr>>,
    metrics_addr: Option<SocketAddr>,
    notices: &mut Notices,
) -> Result<Vec<AgentApi>> {
    let mut apis = Vec::new();
    let api = match web_addr {
        Some(None) => None,
        Some(Some(addr)) => Some(
            AgentApi::serve(session, addr, ApiKind::Full)
                .await
                .context("--web-addr")?,
        ),
        None => {
            let default: SocketAddr = burrow_core::agent::DEFAULT_WEB_ADDR.parse()?;
            let mut found = None;
            for port in default.port()..=default.port() + 10 {
                let addr = SocketAddr::new(default.ip(), port);
                if let Ok(api) = AgentApi::serve(session, addr, ApiKind::Full).await {
                    found = Some(api);
                    break;
                }
            }
            if found.is_none() {
                tracing::warn!("the agent API is off: ports 4040 to 4050 are all taken (choose one with --web-addr)");
            }
            found
        }
    };
    if let Some(api) = api {
        notices.web_interface(api.local_addr());
        apis.push(api);
    }
    if let Some(addr) = metrics_addr {
        let api = AgentApi::serve(session, addr, ApiKind::MetricsOnly)
            .await
            .context("--metrics-addr")?;
        notices.metrics(api.local_addr());
        apis.push(api);
    }
    Ok(apis)
}

/// Serves until SIGINT/SIGTERM (or the console's Ctrl-C/`q`; then shuts down gracefully)
/// or until the session ends by itself (then fails with the edge's reason, if it gave
/// one). The console, if any, shows the shutdown and gives the terminal back at the end.
async fn serve_until_signal(
    forwarders: Vec<Forwarder>,
    session: &Session,
    grace: Duration,
    signals: Signals,
    console: Option<console::Console>,
) -> Result<()> {
    let served = serve(forwarders, session, grace, signals, console.as_ref()).await;
    if let Some(console) = console {
        console.stop().await?;
    }
    served
}

/// [`serve_until_signal`] while the console (if any) is up.
async fn serve(
    mut forwarders: Vec<Forwarder>,
    session: &Session,
    grace: Duration,
    mut signals: Signals,
    console: Option<&console::Console>,
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
    if let Some(console) = console {
        console.show_stopping();
    }
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
    describe_mode(fwd.proto(), fwd.url(), fwd.terminate_at())
}

/// [`mode_words`] from an endpoint's proto, URL and termination (what the console reads
/// from the session's status).
pub(crate) fn describe_mode(proto: &str, url: &str, at: TerminateAt) -> String {
    match (proto, at) {
        ("tcp", TerminateAt::Upstream) => "TCP: bytes are forwarded as they are".to_owned(),
        // A Forwarder's proto is its URL's scheme: `https`, or `http` for plain HTTP only.
        ("http" | "https", _) if url.starts_with("http://") => {
            "plain HTTP, reverse proxy at the edge".to_owned()
        }
        ("http" | "https", _) => "HTTPS terminated at the edge, reverse proxy".to_owned(),
        (_, at) => format!("TLS terminated at {at}"),
    }
}

async fn run_start(args: StartArgs, mut signals: Signals, ui: Ui) -> Result<()> {
    if !args.all && args.names.is_empty() {
        bail!("name the endpoints to start, or pass --all");
    }
    let config = AgentConfig::from_file(&args.config)?;
    let selected = config.select(&args.names)?;
    let web_addr = web_addr_flag(args.session.web_addr.as_deref())?.or(config.agent.web_addr);
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
    let mut notices = ui.notices();
    for endpoint in selected {
        let Some(fwd) = signals
            .unless_stopped(async { Ok(endpoint.start(&session).await?) })
            .await?
        else {
            session.close().await;
            return Ok(());
        };
        notices.line(format!(
            "{}: forwarding {} -> {} ({})",
            endpoint.name,
            fwd.url(),
            fwd.forwards_to(),
            mode_words(&fwd)
        ));
        if let Some(edge) = session.embedded_edge() {
            print_hint(edge, &fwd, &mut run_dir, &mut notices)?;
        }
        forwarders.push(fwd);
    }
    let _apis = start_apis(&session, web_addr, args.session.metrics_addr, &mut notices).await?;
    let grace = args.session.shutdown_timeout;
    let console = ui.start(&session, notices, &signals);
    serve_until_signal(forwarders, &session, grace, signals, console).await
}

/// Prints (or keeps for the console) a command that reaches the endpoint through the
/// embedded edge. The edge's CA is written to a file (removed at exit) only when the
/// client needs it.
fn print_hint(
    edge: &Edge,
    fwd: &Forwarder,
    run_dir: &mut Option<RunDir>,
    notices: &mut Notices,
) -> Result<()> {
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
    notices.hint(line);
    Ok(())
}
