//! The console's screen, drawn from a [`SessionStatus`] and nothing else: pure, so a
//! test draws it on ratatui's `TestBackend` and reads the lines back.

use burrow_core::agent::{ConnMetrics, ConnectionRecord, SessionStatus};
use burrow_core::TerminateAt;
use ratatui::layout::{Alignment, Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use std::time::{Duration, SystemTime};

/// Width of the label column, as ngrok's console has it.
const LABEL: usize = 30;
/// Width of each counter column under `Connections`.
const COLUMN: usize = 8;
/// How many log lines the bottom pane shows at most.
pub(crate) const LOG_LINES: usize = 4;

/// What the console shows besides the session's status: the addresses the command
/// printed in plain mode, the log pane's lines, and whether it is shutting down.
#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    /// The agent API and status page, `http://ADDR`.
    pub(crate) web_interface: Option<String>,
    /// The metrics listener, `http://ADDR/metrics`.
    pub(crate) metrics: Option<String>,
    /// Commands that reach the endpoints through an embedded edge.
    pub(crate) hints: Vec<String>,
    /// The last warnings and errors, oldest first.
    pub(crate) logs: Vec<String>,
    /// Set once a signal, Ctrl-C or `q` started the graceful shutdown.
    pub(crate) stopping: bool,
}

/// Draws the whole screen: the session, the forwarding lines, the counters, the last
/// connections and (when there are any) the last warnings.
pub(crate) fn render(frame: &mut Frame<'_>, status: &SessionStatus, view: &View) {
    let area = frame.area();
    let top = top_lines(status, view, usize::from(area.width));
    let logs: Vec<&String> = view
        .logs
        .iter()
        .skip(view.logs.len().saturating_sub(LOG_LINES))
        .collect();
    let log_height = if logs.is_empty() { 0 } else { logs.len() + 1 };
    let [top_area, recent_area, log_area] = Layout::vertical([
        Constraint::Length(len_u16(top.len())),
        Constraint::Min(0),
        Constraint::Length(len_u16(log_height)),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(top), top_area);
    let quit = Paragraph::new("(Ctrl+C or q to quit)").alignment(Alignment::Right);
    frame.render_widget(
        quit,
        Layout::vertical([Constraint::Length(1)]).areas::<1>(area)[0],
    );
    let rows = usize::from(recent_area.height);
    frame.render_widget(
        Paragraph::new(recent_lines(&status.recent, rows)),
        recent_area,
    );
    if !logs.is_empty() {
        let mut lines = vec![Line::styled(
            "Log (warnings and errors; --log stdout for every line)",
            Style::new().add_modifier(Modifier::BOLD),
        )];
        lines.extend(
            logs.into_iter()
                .map(|l| Line::styled(l.clone(), warn_style(l))),
        );
        frame.render_widget(Paragraph::new(lines), log_area);
    }
}

/// The header, the session's fields, the forwarding lines, the counters and the hints,
/// for a screen `width` columns wide.
fn top_lines(status: &SessionStatus, view: &View, width: usize) -> Vec<Line<'static>> {
    let title = Line::styled(
        "burrow",
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
    );
    let mut lines = vec![title, Line::raw("")];
    let (word, colour) = if view.stopping {
        (
            "stopping: endpoints unbound, open connections finishing",
            Color::Yellow,
        )
    } else {
        match status.status.as_str() {
            "online" => ("online", Color::Green),
            "reconnecting" => ("reconnecting", Color::Yellow),
            other => (other, Color::Red),
        }
    };
    lines.push(Line::from(vec![
        label("Session Status"),
        Span::styled(word.to_owned(), Style::new().fg(colour)),
    ]));
    lines.push(field("Session ID", status.id.clone()));
    lines.push(field("Version", status.version.clone()));
    let embedded = if view.hints.is_empty() {
        ""
    } else {
        " (embedded edge)"
    };
    for edge in &status.edges {
        let state = if edge.connected { "up" } else { "down" };
        lines.push(field("Edge", format!("{} {state}{embedded}", edge.addr)));
    }
    let latency = status.heartbeat_ms.map_or_else(
        || "-".to_owned(),
        |ms| short_duration(Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
    );
    lines.push(field("Latency", latency));
    lines.push(field("Uptime", uptime(status.uptime_secs)));
    if status.reconnects > 0 {
        lines.push(field("Reconnects", status.reconnects.to_string()));
    }
    if let Some(web) = &view.web_interface {
        lines.push(field("Web Interface", web.clone()));
    }
    if let Some(metrics) = &view.metrics {
        lines.push(field("Metrics", metrics.clone()));
    }
    for e in &status.endpoints {
        let mode = match e.terminate_at.parse::<TerminateAt>() {
            Ok(at) => crate::describe_mode(&e.proto, &e.url, at),
            Err(_) => format!("TLS terminated at {}", e.terminate_at),
        };
        let forwarding = format!("{} -> {} ({mode})", e.url, e.forwards_to);
        lines.extend(wrapped_field("Forwarding", &forwarding, width));
    }
    lines.push(Line::raw(""));
    let header: String = ["ttl", "opn", "rt1", "rt5", "p50", "p90"]
        .iter()
        .map(|h| format!("{h:<COLUMN$}"))
        .collect();
    lines.push(Line::from(vec![label("Connections"), Span::raw(header)]));
    let named = status.endpoints.len() > 1;
    for e in &status.endpoints {
        let name = if named { e.name.as_str() } else { "" };
        lines.push(Line::from(vec![
            Span::raw(format!("{name:<LABEL$}")),
            Span::raw(counters(&e.conns)),
        ]));
    }
    for hint in &view.hints {
        lines.push(Line::raw(""));
        lines.extend(wrapped_field("Try", hint, width));
    }
    lines.push(Line::raw(""));
    lines
}

/// `Recent Connections` and as many of them, newest first, as fit in `rows`.
fn recent_lines(recent: &[ConnectionRecord], rows: usize) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::styled("Recent Connections", bold)];
    if recent.is_empty() {
        lines.push(Line::raw("(none yet)"));
        return lines;
    }
    lines.push(Line::styled(
        format!(
            "{:<10}{:<24}{:<28}{:<10}{:<10}{}",
            "Time UTC", "Client", "SNI", "Outcome", "Duration", "Bytes in/out"
        ),
        Style::new().add_modifier(Modifier::DIM),
    ));
    for c in recent.iter().take(rows.saturating_sub(2)) {
        let duration = c.duration.map_or_else(|| "-".to_owned(), short_duration);
        lines.push(Line::raw(format!(
            "{:<10}{:<24}{:<28}{:<10}{:<10}{} / {}",
            clock(c.time),
            c.client_addr.to_string(),
            c.sni.as_deref().unwrap_or("-"),
            c.outcome,
            duration,
            bytes(c.bytes_in),
            bytes(c.bytes_out)
        )));
    }
    lines
}

/// A label and a value too long for one row, perhaps (a URL and its upstream, a
/// command): cut into rows under the value column rather than truncated, so that all
/// of it stays readable; at a space in the second half of a row, else anywhere. A
/// screen too narrow for that truncates.
fn wrapped_field(name: &str, value: &str, width: usize) -> Vec<Line<'static>> {
    let room = width.saturating_sub(LABEL);
    if value.chars().count() <= room || room < 20 {
        return vec![field(name, value.to_owned())];
    }
    let mut rows = Vec::new();
    let mut rest: Vec<char> = value.chars().collect();
    while rest.len() > room {
        let space = rest[room / 2..=room].iter().rposition(|c| *c == ' ');
        let (cut, skip) = match space {
            Some(at) => (room / 2 + at, 1),
            None => (room, 0),
        };
        rows.push(rest[..cut].iter().collect::<String>());
        rest.drain(..cut + skip);
    }
    rows.push(rest.into_iter().collect());
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| field(if i == 0 { name } else { "" }, row))
        .collect()
}

/// A label padded to the label column.
fn label(text: &str) -> Span<'static> {
    Span::raw(format!("{text:<LABEL$}"))
}

/// A label and its value.
fn field(name: &str, value: String) -> Line<'static> {
    Line::from(vec![label(name), Span::raw(value)])
}

/// Red for errors, yellow for the rest (the pane only holds warnings and errors).
fn warn_style(line: &str) -> Style {
    if line.contains("ERROR") {
        Style::new().fg(Color::Red)
    } else {
        Style::new().fg(Color::Yellow)
    }
}

/// ngrok's counter row: total, open, rates per second over 1 and 5 minutes, p50, p90.
fn counters(m: &ConnMetrics) -> String {
    let cells = [
        m.count.to_string(),
        m.gauge.to_string(),
        format!("{:.2}", m.rate1),
        format!("{:.2}", m.rate5),
        nanos(m.p50),
        nanos(m.p90),
    ];
    cells.iter().map(|c| format!("{c:<COLUMN$}")).collect()
}

/// A duration given in nanoseconds, in ms below a second and in s above.
fn nanos(ns: f64) -> String {
    if ns.is_finite() && ns > 0.0 {
        short_duration(Duration::from_secs_f64(ns / 1e9))
    } else {
        "0ms".to_owned()
    }
}

/// `0.4ms`, `12ms`, `1.50s`, `2m05s`.
fn short_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if d.as_secs() < 60 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// `1h 02m 03s`, `4m 05s`, `6s`.
fn uptime(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m {sec:02}s"),
        (h, min, sec) => format!("{h}h {min:02}m {sec:02}s"),
    }
}

/// The time of day in UTC, `HH:MM:SS` (the local zone is not read: that is not
/// thread-safe on every platform).
fn clock(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A line count as a layout length (the screen is never 65,535 lines tall).
fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_core::agent::{EdgeStatus, EndpointStatus};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn endpoint(count: u64, gauge: i64) -> EndpointStatus {
        EndpointStatus {
            id: "ep_1".into(),
            name: "command_line".into(),
            url: "tls://app.console.test:4443".into(),
            proto: "tls".into(),
            terminate_at: "agent".into(),
            forwards_to: "localhost:8443".into(),
            metadata: String::new(),
            conns: ConnMetrics {
                count,
                gauge,
                rate1: 0.02,
                rate5: 0.0,
                rate15: 0.0,
                p50: 12_000_000.0,
                p90: 1_500_000_000.0,
                p95: 0.0,
                p99: 0.0,
            },
            bytes_in: 10,
            bytes_out: 20,
            refused: 0,
            dial_failures: 0,
        }
    }

    fn status() -> SessionStatus {
        SessionStatus {
            id: "sess_abc".into(),
            status: "online".into(),
            version: "0.1.0".into(),
            edges: vec![EdgeStatus {
                addr: "127.0.0.1:4443".into(),
                connected: true,
            }],
            heartbeat_ms: Some(3.2),
            uptime_secs: 65.0,
            reconnects: 0,
            endpoints: vec![endpoint(1, 0)],
            recent: vec![ConnectionRecord {
                time: SystemTime::UNIX_EPOCH + Duration::from_secs(3600 + 2 * 60 + 3),
                endpoint: "tls://app.console.test:4443".into(),
                client_addr: "127.0.0.1:50000".parse().expect("a literal address"),
                sni: Some("app.console.test".into()),
                outcome: "closed".into(),
                duration: Some(Duration::from_millis(12)),
                bytes_in: 2048,
                bytes_out: 5,
            }],
        }
    }

    /// The screen's rows as text, trailing blanks trimmed.
    fn draw(status: &SessionStatus, view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
        terminal
            .draw(|f| render(f, status, view))
            .expect("drawing on a test backend");
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                let row: String = (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect();
                row.trim_end().to_owned()
            })
            .collect()
    }

    fn row<'a>(rows: &'a [String], start: &str) -> &'a str {
        rows.iter()
            .find(|r| r.starts_with(start))
            .unwrap_or_else(|| panic!("no row starting {start:?} in {rows:#?}"))
    }

    #[test]
    fn the_screen_has_the_session_forwarding_counters_and_recent_connections() {
        let view = View {
            web_interface: Some("http://127.0.0.1:4040".into()),
            hints: vec!["openssl s_client -connect 127.0.0.1:4443 -servername app".into()],
            logs: vec!["2026-12-02T15:00:00Z  WARN burrow: something odd".into()],
            ..View::default()
        };
        let rows = draw(&status(), &view, 120, 40);
        assert!(rows[0].starts_with("burrow") && rows[0].ends_with("(Ctrl+C or q to quit)"));
        assert_eq!(
            row(&rows, "Session Status"),
            format!("{:<30}online", "Session Status")
        );
        assert!(row(&rows, "Edge").ends_with("127.0.0.1:4443 up (embedded edge)"));
        assert!(row(&rows, "Latency").ends_with(" 3.2ms"));
        assert!(row(&rows, "Uptime").ends_with(" 1m 05s"));
        assert!(row(&rows, "Web Interface").ends_with(" http://127.0.0.1:4040"));
        assert_eq!(
            row(&rows, "Forwarding"),
            format!(
                "{:<30}tls://app.console.test:4443 -> localhost:8443 (TLS terminated at agent)",
                "Forwarding"
            )
        );
        let header = row(&rows, "Connections");
        assert_eq!(
            header,
            format!(
                "{:<30}ttl     opn     rt1     rt5     p50     p90",
                "Connections"
            )
        );
        let at = rows
            .iter()
            .position(|r| r.starts_with("Connections"))
            .expect("the header row");
        assert_eq!(
            rows[at + 1],
            format!("{:<30}1       0       0.02    0.00    12ms    1.50s", "")
        );
        assert!(row(&rows, "Try").ends_with("-servername app"));
        let long = View {
            hints: vec![format!(
                "curl --cacert /tmp/{}/ca.pem https://x/",
                "d".repeat(80)
            )],
            ..View::default()
        };
        let narrow = draw(&status(), &long, 80, 40);
        let at = narrow
            .iter()
            .position(|r| r.starts_with("Try"))
            .expect("the hint's first row");
        let cut: Vec<&str> = narrow[at..at + 3].iter().map(|r| &r[30..]).collect();
        let bare = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(
            bare(&cut.concat()),
            bare(&long.hints[0]),
            "cut, not truncated"
        );
        let forwarding: Vec<&String> = narrow
            .iter()
            .skip_while(|r| !r.starts_with("Forwarding"))
            .take(2)
            .collect();
        assert_eq!(
            [&forwarding[0][30..], &forwarding[1][30..]],
            [
                "tls://app.console.test:4443 -> localhost:8443 (TLS",
                "terminated at agent)"
            ],
            "cut at a space"
        );
        let conn = row(&rows, "01:02:03");
        for part in [
            "127.0.0.1:50000",
            "app.console.test",
            "closed",
            "12ms",
            "2.0 KiB / 5 B",
        ] {
            assert!(conn.contains(part), "{part:?} in {conn:?}");
        }
        assert!(row(&rows, "Log (warnings").contains("--log stdout"));
        assert!(rows[39].ends_with("WARN burrow: something odd"));
    }

    #[test]
    fn several_endpoints_get_a_row_each_and_a_small_screen_still_draws() {
        let mut status = status();
        let mut second = endpoint(7, 2);
        second.name = "web".into();
        second.url = "https://web.console.test:4443".into();
        second.proto = "https".into();
        second.terminate_at = "edge".into();
        status.endpoints.push(second);
        status.status = "reconnecting".into();
        let rows = draw(&status, &View::default(), 80, 24);
        assert!(row(&rows, "Session Status").ends_with("reconnecting"));
        assert_eq!(
            rows.iter().filter(|r| r.starts_with("Forwarding")).count(),
            2
        );
        let wide = draw(&status, &View::default(), 160, 24);
        assert!(wide.iter().any(|r| r.ends_with(
            "https://web.console.test:4443 -> localhost:8443 (HTTPS terminated at the edge, reverse proxy)"
        )));
        assert!(row(&rows, "command_line").contains("1       0"));
        assert!(row(&rows, "web ").contains("7       2"));
        let stopping = View {
            stopping: true,
            ..View::default()
        };
        let rows = draw(&status, &stopping, 80, 24);
        assert!(row(&rows, "Session Status").contains("stopping"));
    }

    #[test]
    fn durations_and_sizes_read_like_ngrok() {
        assert_eq!(nanos(0.0), "0ms");
        assert_eq!(nanos(400_000.0), "0.4ms");
        assert_eq!(nanos(2.5e9), "2.50s");
        assert_eq!(short_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(uptime(3723.0), "1h 02m 03s");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
