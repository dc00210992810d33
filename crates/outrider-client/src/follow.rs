//! Following a plan: its events as they happen, and the plan itself whenever events say it
//! changed (and at least every [`FollowOptions::refresh`]). The event stream is reopened where
//! it stopped if it breaks. Used by `outrider plan watch` and `outrider demo`.

use std::{collections::VecDeque, time::Duration};

use futures::StreamExt;
use outrider_model::{Event, Plan};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::{Client, ClientError, EventQuery, EventStream};

/// How often a [`PlanFollower`] looks.
#[derive(Debug, Clone, Copy)]
pub struct FollowOptions {
    /// How often to look whether the plan must be fetched again (or the stream reopened).
    pub poll: Duration,
    /// Fetch the plan at least this often, even without events.
    pub refresh: Duration,
}

/// What following a plan brings.
#[derive(Debug)]
pub enum PlanUpdate {
    /// One of the plan's events.
    Event(Event),
    /// The plan, fetched again.
    Plan(Box<Plan>),
    /// A problem that may go away by itself (the manager is away for a moment); following
    /// goes on.
    Trouble {
        /// What could not be done: `event stream`, `cannot fetch plan p-1`, …
        what: String,
        /// Why.
        error: ClientError,
    },
}

/// Follows one plan; see the module documentation.
pub struct PlanFollower {
    client: Client,
    tenant: String,
    id: String,
    options: FollowOptions,
    /// The open event stream, if any.
    events: Option<EventStream>,
    /// The last event seen (where a reopened stream starts).
    last_seq: Option<u64>,
    tick: Interval,
    /// Events came since the plan was last fetched.
    changed: bool,
    fetched: Instant,
    /// Updates to hand out before looking again.
    queue: VecDeque<Result<PlanUpdate, ClientError>>,
    /// The plan had ended when the follow began: its events are read page by page, then the
    /// plan is handed out once more.
    ended: Option<Box<Plan>>,
    /// Nothing more will come.
    done: bool,
}

impl std::fmt::Debug for PlanFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanFollower").field("tenant", &self.tenant).field("id", &self.id).finish_non_exhaustive()
    }
}

impl PlanFollower {
    /// Fetches plan `id` of `tenant` and, unless it has ended, opens its event stream after
    /// event `since`. Returns the follower and the plan. For a plan that has ended, the
    /// follower hands out its events (after `since`), then the plan, then nothing.
    pub async fn open(
        client: Client,
        tenant: &str,
        id: &str,
        since: Option<u64>,
        options: FollowOptions,
    ) -> Result<(Self, Plan), ClientError> {
        let plan = client.get_plan(tenant, id).await?;
        let ended = plan.state.is_terminal();
        let query = EventQuery { since, plan: Some(plan.id.clone()) };
        let events = if ended { None } else { Some(client.follow_events(tenant, &query).await?) };
        let mut tick = tokio::time::interval(options.poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let follower = Self {
            client,
            tenant: tenant.to_owned(),
            id: plan.id.clone(),
            options,
            events,
            last_seq: since,
            tick,
            changed: false,
            fetched: Instant::now(),
            queue: VecDeque::new(),
            ended: ended.then(|| Box::new(plan.clone())),
            done: false,
        };
        Ok((follower, plan))
    }

    /// The next update; `None` once the plan has ended and was handed out. A fetched plan
    /// that has ended is the last update.
    pub async fn next(&mut self) -> Option<Result<PlanUpdate, ClientError>> {
        loop {
            if let Some(update) = self.queue.pop_front() {
                return Some(update);
            }
            if self.done {
                return None;
            }
            if self.ended.is_some() {
                self.next_page().await;
                continue;
            }
            tokio::select! {
                Some(item) = next_event(&mut self.events) => return Some(Ok(match item {
                    Ok(e) => {
                        self.last_seq = Some(e.seq);
                        self.changed = true;
                        PlanUpdate::Event(e)
                    }
                    Err(error) => PlanUpdate::Trouble { what: "event stream".into(), error },
                })),
                _ = self.tick.tick() => self.look().await,
            }
        }
    }

    /// Fetches the plan now (and counts as the periodic fetch).
    pub async fn fetch(&mut self) -> Result<Plan, ClientError> {
        let plan = self.client.get_plan(&self.tenant, &self.id).await?;
        self.changed = false;
        self.fetched = Instant::now();
        Ok(plan)
    }

    fn query(&self) -> EventQuery {
        EventQuery { since: self.last_seq, plan: Some(self.id.clone()) }
    }

    /// One tick: reopens the stream if it ended, fetches the plan if it is due.
    async fn look(&mut self) {
        if self.events.is_none() {
            match self.client.follow_events(&self.tenant, &self.query()).await {
                Ok(stream) => self.events = Some(stream),
                Err(error) => self
                    .queue
                    .push_back(Ok(PlanUpdate::Trouble { what: "cannot reopen the event stream".into(), error })),
            }
        }
        if !self.changed && self.fetched.elapsed() < self.options.refresh {
            return;
        }
        match self.fetch().await {
            Ok(plan) => {
                self.done = plan.state.is_terminal();
                self.queue.push_back(Ok(PlanUpdate::Plan(Box::new(plan))));
            }
            Err(error) if error.is_transient() => {
                let what = format!("cannot fetch plan {}", self.id);
                self.queue.push_back(Ok(PlanUpdate::Trouble { what, error }));
            }
            Err(error) => self.queue.push_back(Err(error)),
        }
    }

    /// For a plan that had ended: the next page of its events, or the plan once they are all
    /// handed out.
    async fn next_page(&mut self) {
        let events = match self.client.list_events(&self.tenant, &self.query()).await {
            Ok(events) => events,
            Err(error) => {
                self.done = true;
                self.queue.push_back(Err(error));
                return;
            }
        };
        let after = self.last_seq;
        match events.last().map(|e| e.seq).filter(|&seq| after.is_none_or(|a| seq > a)) {
            Some(last) => {
                self.last_seq = Some(last);
                self.queue.extend(events.into_iter().map(|e| Ok(PlanUpdate::Event(e))));
            }
            None => {
                self.done = true;
                if let Some(plan) = self.ended.take() {
                    self.queue.push_back(Ok(PlanUpdate::Plan(plan)));
                }
            }
        }
    }
}

/// The next event of `events`; pending while there is no stream. A stream that ends is
/// dropped (set to `None`), so that the next tick reopens it.
async fn next_event(events: &mut Option<EventStream>) -> Option<Result<Event, ClientError>> {
    let Some(stream) = events else { return std::future::pending().await };
    let next = stream.next().await;
    if next.is_none() {
        *events = None;
    }
    next
}
