//! `outrider plan watch`: a plan's progress and events, live, until the plan ends.
//!
//! On a terminal, one progress bar per phase (instances done of the phase's total) and a line
//! with the plan's state are drawn on standard error, and the plan's events are printed above
//! them on standard output. Without a terminal, a plain progress line is printed whenever the
//! progress changes. Following is [`PlanFollower`]'s: the plan is fetched again whenever events
//! say it changed (and every few seconds in any case); the event stream is reopened where it
//! stopped if it breaks.

use std::{
    io::{self, ErrorKind, Write},
    time::Duration,
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use outrider_client::{Client, ClientError, FollowOptions, PlanFollower, PlanUpdate};
use outrider_model::{DEFAULT_TENANT, Event, Plan, PlanState};

use super::{OutputFormat, render};

/// How `plan watch` behaves.
#[derive(Debug, Clone, Copy)]
pub(super) struct WatchOptions {
    /// How often to look whether the plan must be fetched again (or the stream reopened).
    pub poll: Duration,
    /// Fetch the plan at least this often, even without events.
    pub refresh: Duration,
    /// Draw progress bars on standard error when it is a terminal.
    pub bars: bool,
    /// Events as text lines, or as JSON lines (then no progress is printed).
    pub format: OutputFormat,
}

impl WatchOptions {
    /// Polls every 500 ms, fetches at least every 5 s, bars on a terminal.
    pub(super) fn new(format: OutputFormat) -> Self {
        Self { poll: Duration::from_millis(500), refresh: Duration::from_secs(5), bars: true, format }
    }
}

/// One progress bar per phase and a line for the plan's state.
struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    phases: Vec<ProgressBar>,
}

impl Bars {
    /// Bars for `plan` on standard error, or `None` when standard error is no terminal.
    fn new(plan: &Plan) -> Option<Self> {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        if multi.is_hidden() {
            return None;
        }
        let width = plan.phases.iter().map(|p| p.name.chars().count()).max().unwrap_or(0);
        let template = format!("{{prefix:>{width}}} [{{bar:40.cyan/blue}}] {{pos}}/{{len}} instances  {{msg}}");
        let bar_style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let line_style = ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let header = multi.add(ProgressBar::new(0).with_style(line_style));
        let phases = plan
            .phases
            .iter()
            .map(|p| multi.add(ProgressBar::new(0).with_style(bar_style.clone()).with_prefix(p.name.clone())))
            .collect();
        Some(Self { multi, header, phases })
    }

    fn update(&self, plan: &Plan) {
        let reason = if plan.reason.is_empty() { String::new() } else { format!(" ({})", plan.reason) };
        self.header.set_message(format!(
            "plan {} {} → {}: {}{reason}, blast radius {}",
            plan.id, plan.sidecar, plan.target_version, plan.state, plan.blast_radius
        ));
        for (bar, phase) in self.phases.iter().zip(&plan.phases) {
            let (done, total, status) = render::phase_progress(phase);
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(status);
        }
    }

    /// Leaves the bars drawn as they are.
    fn finish(&self) {
        self.header.abandon();
        for bar in &self.phases {
            bar.abandon();
        }
    }
}

/// Where the output of a watch goes.
struct Screen<'a> {
    out: &'a mut (dyn Write + Send),
    format: OutputFormat,
    bars: Option<Bars>,
    /// The last plain progress line printed.
    last_progress: String,
    /// The last warning printed (the same one is not repeated).
    last_warning: String,
}

impl Screen<'_> {
    /// Writes a line to the output (above the bars, if any).
    fn line(&mut self, text: &str) -> io::Result<()> {
        let out = &mut *self.out;
        let mut write = move || writeln!(out, "{text}").and_then(|()| out.flush());
        match &self.bars {
            Some(bars) => bars.multi.suspend(write),
            None => write(),
        }
    }

    /// A message for people: on the output with text, on standard error with JSON (which
    /// keeps the output one event per line).
    fn note(&mut self, text: &str) -> io::Result<()> {
        match self.format {
            OutputFormat::Table => self.line(text),
            OutputFormat::Json => writeln!(io::stderr(), "{text}"),
        }
    }

    /// A problem that does not end the watch, printed once until another one comes.
    fn warn(&mut self, text: String) -> io::Result<()> {
        if text == self.last_warning {
            return Ok(());
        }
        let line = format!("warning: {text}");
        self.last_warning = text;
        match &self.bars {
            Some(bars) => bars.multi.suspend(|| writeln!(io::stderr(), "{line}")),
            None => writeln!(io::stderr(), "{line}"),
        }
    }

    fn event(&mut self, e: &Event) -> anyhow::Result<()> {
        let line = match self.format {
            OutputFormat::Json => serde_json::to_string(e)?,
            OutputFormat::Table => render::watch_event_line(e),
        };
        Ok(self.line(&line)?)
    }

    fn progress(&mut self, plan: &Plan) -> io::Result<()> {
        if let Some(bars) = &self.bars {
            bars.update(plan);
            return Ok(());
        }
        if self.format == OutputFormat::Json {
            return Ok(());
        }
        let line = render::progress_line(plan);
        if line != self.last_progress {
            self.line(&line)?;
            self.last_progress = line;
        }
        Ok(())
    }
}

/// What a watch has told already.
#[derive(Debug, Default)]
struct Told {
    /// Incidents printed.
    incidents: usize,
    /// The current blocking was announced.
    blocked: bool,
}

/// The `outrider plan … ID` command line for `verb`, with `--tenant` when not the default.
fn command(verb: &str, tenant: &str, id: &str) -> String {
    let tenant = if tenant == DEFAULT_TENANT { String::new() } else { format!(" --tenant {tenant}") };
    format!("outrider plan {verb} {id}{tenant}")
}

/// Tells about `plan` what was not told yet (new incidents, a blocking and what to do about
/// it). `Ok(true)` when the plan completed, an error naming the state it ended in when it
/// ended otherwise, `Ok(false)` while it goes on.
fn tell(plan: &Plan, tenant: &str, told: &mut Told, screen: &mut Screen<'_>) -> anyhow::Result<bool> {
    if plan.incidents.len() > told.incidents {
        let new = &plan.incidents[told.incidents..];
        let table = render::incidents(new).trim_fmt();
        screen.note(&format!("incident{}:\n{table}", if new.len() == 1 { "" } else { "s" }))?;
        told.incidents = plan.incidents.len();
    }
    if plan.state == PlanState::Blocked {
        if !told.blocked {
            told.blocked = true;
            let reason = if plan.reason.is_empty() { String::new() } else { format!(": {}", plan.reason) };
            screen.note(&format!(
                "plan {} is blocked{reason}\n  a false alarm? let it go on:  {}\n  a real problem? roll it back: {}\n  \
                 (still watching)",
                plan.id,
                command("approve", tenant, &plan.id),
                command("rollback", tenant, &plan.id),
            ))?;
        }
    } else {
        told.blocked = false;
    }
    let summary = || {
        let reason = if plan.reason.is_empty() { String::new() } else { format!(" ({})", plan.reason) };
        let awaiting = match plan.counts.awaiting_deploy {
            0 => String::new(),
            n => format!(", {n} awaiting a deploy"),
        };
        format!(
            "{}{reason}: {} of {} instances done{awaiting}, blast radius {}",
            plan.state, plan.counts.done, plan.counts.total, plan.blast_radius
        )
    };
    match plan.state {
        PlanState::Completed => {
            screen.note(&format!("plan {} {}", plan.id, summary()))?;
            Ok(true)
        }
        PlanState::Aborted | PlanState::RolledBack | PlanState::Failed => {
            anyhow::bail!("plan {} did not complete: {}", plan.id, summary())
        }
        _ => Ok(false),
    }
}

/// `err` with its causes, for a warning.
fn chain(err: ClientError) -> String {
    format!("{:#}", anyhow::Error::from(err))
}

/// Whether `err` is a write to a reader that went away (`| head`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
}

/// Watches plan `id` of `tenant` until it ends, writing events and progress to `out` (a plan
/// that has ended already gets its events and how it ended). Succeeds when the plan completes
/// (or the reader of `out` goes away); fails when it ends otherwise, or cannot be followed (an
/// unknown plan, a refused token).
pub(super) async fn watch(
    client: &Client,
    tenant: &str,
    id: &str,
    since: Option<u64>,
    options: WatchOptions,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let follow = FollowOptions { poll: options.poll, refresh: options.refresh };
    let (follower, plan) = PlanFollower::open(client.clone(), tenant, id, since, follow).await?;
    let bars = (options.bars && options.format == OutputFormat::Table).then(|| Bars::new(&plan)).flatten();
    let mut screen =
        Screen { out, format: options.format, bars, last_progress: String::new(), last_warning: String::new() };
    let result = follow_plan(follower, tenant, &plan, &mut screen).await;
    if let Some(bars) = &screen.bars {
        bars.finish();
    }
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Shows what `follower` brings until `plan` ends. A plan that has ended already is shown
/// after its events; a live one at once.
async fn follow_plan(
    mut follower: PlanFollower,
    tenant: &str,
    plan: &Plan,
    screen: &mut Screen<'_>,
) -> anyhow::Result<()> {
    let mut told = Told::default();
    if !plan.state.is_terminal() {
        screen.progress(plan)?;
        if tell(plan, tenant, &mut told, screen)? {
            return Ok(());
        }
    }
    while let Some(update) = follower.next().await {
        match update? {
            PlanUpdate::Event(e) => screen.event(&e)?,
            PlanUpdate::Trouble { what, error } => screen.warn(format!("{what}: {}", chain(error)))?,
            PlanUpdate::Plan(plan) => {
                screen.progress(&plan)?;
                if tell(&plan, tenant, &mut told, screen)? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
