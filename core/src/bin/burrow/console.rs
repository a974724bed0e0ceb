//! The live console: a full-screen status screen that `burrow tls|tcp|http|start` draw
//! when stdout is a terminal, the way ngrok's console does.
//!
//! It runs on a thread of its own (terminal input and writes are blocking; the tokio
//! runtime never waits on them): every half second, or at once on a key or a resize, it
//! reads [`Session::status`] and draws [`view::render`]. Ctrl-C and `q` arrive as keys in
//! raw mode, not as SIGINT: they stop the command the way SIGINT does, through
//! [`Stopper`]. The terminal is restored (alternate screen left, raw mode off, cursor
//! shown) when the console stops, when it fails, and on a panic anywhere.

#[path = "console/view.rs"]
pub(crate) mod view;

use crate::logs::LogSink;
use crate::Stopper;
use anyhow::{anyhow, Context, Result};
use burrow_core::Session;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use view::View;

/// How often the screen is redrawn without a key or a resize.
const REDRAW: Duration = Duration::from_millis(500);
/// How long one wait for input lasts: the longest a stop request waits to be seen.
const INPUT_POLL: Duration = Duration::from_millis(100);

/// Whether the terminal is in the console's state (raw mode, alternate screen) now: the
/// panic hook and every exit path restore it once, whichever comes first.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// The running console; stopping it (or dropping it) restores the terminal.
pub(crate) struct Console {
    /// Asks the drawing thread to end.
    stop: Arc<AtomicBool>,
    /// Tells the screen that the graceful shutdown has begun.
    stopping: Arc<AtomicBool>,
    /// The drawing thread.
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    /// The log ring, emptied onto stderr once the terminal is back.
    logs: LogSink,
}

impl Console {
    /// Takes over the terminal and starts drawing `session`; `view` holds what plain
    /// mode would have printed. Ctrl-C and `q` call `stopper`.
    pub(crate) fn start(
        session: &Session,
        view: View,
        logs: LogSink,
        stopper: Stopper,
    ) -> Result<Console> {
        install_panic_hook();
        take_terminal().context("starting the console")?;
        logs.set_console_up(true);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let session = session.clone();
        let thread_logs = logs.clone();
        let (thread_stop, thread_stopping) = (stop.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("burrow-console".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                let screen = Screen {
                    session,
                    view,
                    logs: thread_logs,
                    stop: thread_stop,
                    stopping: thread_stopping,
                    stopper,
                };
                let result = screen.run();
                restore_terminal();
                result
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                logs.set_console_up(false);
                restore_terminal();
                return Err(anyhow!(e).context("starting the console thread"));
            }
        };
        Ok(Console {
            stop,
            stopping,
            thread: Some(thread),
            logs,
        })
    }

    /// Shows that the graceful shutdown has begun (endpoints unbound, connections finishing).
    pub(crate) fn show_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops drawing, restores the terminal and prints the warnings the log pane held.
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("waiting for the console thread")?;
        self.finish();
        match joined {
            Ok(result) => result,
            Err(_) => Err(anyhow!("the console thread panicked")),
        }
    }

    /// Sends logs to stderr again and prints what the ring held.
    fn finish(&self) {
        restore_terminal();
        self.logs.set_console_up(false);
        for line in self.logs.drain() {
            eprintln!("{line}");
        }
    }
}

impl Drop for Console {
    /// An early return (an error between start and stop) still gives the terminal back
    /// before the error is printed: the thread sees the flag within [`INPUT_POLL`].
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
            self.finish();
        }
    }
}

/// The drawing thread's state.
struct Screen {
    session: Session,
    view: View,
    logs: LogSink,
    stop: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    stopper: Stopper,
}

impl Screen {
    /// Draws until asked to stop (or until a panic elsewhere gave the terminal back).
    fn run(mut self) -> Result<()> {
        let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
            .context("opening the terminal")?;
        terminal.clear().context("clearing the screen")?;
        let mut next_draw = Instant::now();
        while !self.stop.load(Ordering::SeqCst) && TERMINAL_TAKEN.load(Ordering::SeqCst) {
            if Instant::now() >= next_draw {
                self.view.logs = self.logs.last(view::LOG_LINES);
                self.view.stopping = self.stopping.load(Ordering::SeqCst);
                let status = self.session.status();
                terminal
                    .draw(|frame| view::render(frame, &status, &self.view))
                    .context("drawing the console")?;
                next_draw = Instant::now() + REDRAW;
            }
            if !event::poll(INPUT_POLL).context("reading the terminal")? {
                continue;
            }
            match event::read().context("reading the terminal")? {
                Event::Key(key) => {
                    if let Some(name) = quit_key(key) {
                        self.stopper.stop(name);
                        self.stopping.store(true, Ordering::SeqCst);
                    }
                }
                Event::Resize(..) => {
                    terminal.autoresize().context("resizing")?;
                    terminal.clear().context("clearing the screen")?;
                }
                _ => continue,
            }
            next_draw = Instant::now();
        }
        Ok(())
    }
}

/// Ctrl-C and `q` stop burrow; the name is what the shutdown log line calls it.
fn quit_key(key: KeyEvent) -> Option<&'static str> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some("Ctrl-C"),
        KeyCode::Char('q') if key.modifiers.is_empty() => Some("q"),
        _ => None,
    }
}

/// Raw mode, the alternate screen, no cursor.
fn take_terminal() -> Result<()> {
    terminal::enable_raw_mode().context("raw mode")?;
    TERMINAL_TAKEN.store(true, Ordering::SeqCst);
    if let Err(e) = execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide) {
        restore_terminal();
        return Err(anyhow!(e).context("entering the alternate screen"));
    }
    Ok(())
}

/// Leaves the alternate screen, ends raw mode and shows the cursor, once (later calls,
/// and calls when the console never took the terminal, do nothing).
fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen, cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

/// A panic restores the terminal before the panic message is printed, so that the
/// message is readable and the shell is usable.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_and_q_quit_other_keys_do_not() {
        let press = |code, modifiers| KeyEvent::new(code, modifiers);
        assert_eq!(
            quit_key(press(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some("Ctrl-C")
        );
        assert_eq!(
            quit_key(press(KeyCode::Char('q'), KeyModifiers::NONE)),
            Some("q")
        );
        assert_eq!(
            quit_key(press(KeyCode::Char('c'), KeyModifiers::NONE)),
            None
        );
        assert_eq!(
            quit_key(press(KeyCode::Char('x'), KeyModifiers::NONE)),
            None
        );
        assert_eq!(
            quit_key(press(KeyCode::Char('q'), KeyModifiers::CONTROL)),
            None
        );
    }

    /// One test for everything that touches [`TERMINAL_TAKEN`]: tests run in parallel.
    #[test]
    fn the_terminal_is_given_back_once_and_on_a_panic() {
        restore_terminal();
        assert!(
            !TERMINAL_TAKEN.load(Ordering::SeqCst),
            "never taken: nothing to do"
        );
        install_panic_hook();
        install_panic_hook();
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        let panicked = std::thread::spawn(|| panic!("a panic while the console is up")).join();
        assert!(panicked.is_err());
        assert!(
            !TERMINAL_TAKEN.load(Ordering::SeqCst),
            "the panic hook restored the terminal"
        );
    }
}
