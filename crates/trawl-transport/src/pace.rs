//! Worker groups of one process move through the payload stream together
//! (JetStream: its sequence; RabbitMQ: the offsets of a blob stream).
//!
//! Each group has its own consumer and would otherwise run at its own speed:
//! a cheap group (file type) races through the stream while an expensive one
//! (YARA) is far behind, so the bytes the cheap group fetched have left this
//! node's blob cache by the time the others ask, and every payload crosses
//! the network once per group instead of once per node. Here a group that is
//! more than `lead` stream positions ahead of another group of this process
//! waits for it, as long as that group is still moving: one that received
//! nothing for [`STALL`] (idle, stuck on retries, or its payloads all going
//! to other nodes) is not waited for.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a group may go without a new payload before the others stop
/// waiting for it.
pub(crate) const STALL: Duration = Duration::from_secs(1);

/// Stream positions a group may run ahead of the others by default.
pub(crate) fn default_group_lead() -> u64 {
    16
}

pub(crate) struct Pace {
    lead: u64,
    groups: Mutex<Vec<Position>>,
    moved: Notify,
}

struct Position {
    group: String,
    /// Highest stream sequence delivered to the group.
    seq: u64,
    moved_at: Instant,
}

impl Pace {
    /// `lead` 0 lets every group run at its own speed.
    pub(crate) fn new(lead: u64) -> Self {
        Pace {
            lead,
            groups: Mutex::new(Vec::new()),
            moved: Notify::new(),
        }
    }

    /// A new group; the number to pass to [`Pace::admit`].
    pub(crate) fn join(&self, group: &str) -> usize {
        let mut groups = self.groups.lock().expect("pace lock");
        groups.push(Position {
            group: group.to_owned(),
            seq: 0,
            moved_at: Instant::now(),
        });
        groups.len() - 1
    }

    /// Record that group `me` got the message at stream sequence `seq`, and
    /// return once no moving group of this process is more than `lead` behind.
    pub(crate) async fn admit(&self, me: usize, seq: u64) {
        if self.lead == 0 {
            return;
        }
        let start = Instant::now();
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            // Registered before the check, so a move in between still wakes us.
            moved.as_mut().enable();
            let wait = {
                let mut groups = self.groups.lock().expect("pace lock");
                let now = Instant::now();
                if seq > groups[me].seq {
                    groups[me].seq = seq;
                    groups[me].moved_at = now;
                    self.moved.notify_waiters();
                }
                let slowest = groups
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| {
                        // A group with no payload yet has no place to wait for.
                        *i != me && p.seq > 0 && now.duration_since(p.moved_at) < STALL
                    })
                    .map(|(_, p)| p)
                    .min_by_key(|p| p.seq);
                match slowest {
                    Some(p) if seq > p.seq + self.lead => STALL - now.duration_since(p.moved_at),
                    _ => {
                        if now > start {
                            let waited_ms = now.duration_since(start).as_millis() as u64;
                            tracing::trace!(group = %groups[me].group, seq, waited_ms, "waited for slower worker groups");
                        }
                        return;
                    }
                }
            };
            tokio::select! {
                _ = &mut moved => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Deliveries a caller stopped waiting for while the pace held them back:
/// the next caller takes them first, so a subscription's `next` can be
/// raced without losing what it had in hand.
pub(crate) struct Held<T>(Mutex<Vec<T>>);

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held(Mutex::new(Vec::new()))
    }
}

impl<T> Held<T> {
    pub(crate) fn take(&self) -> Option<T> {
        self.0.lock().expect("held lock").pop()
    }

    /// `item` once `admitted` gives `true`; kept for the next caller when
    /// it gives `false` or this caller stops waiting.
    pub(crate) async fn through(&self, item: T, admitted: impl Future<Output = bool>) -> Option<T> {
        let mut hold = Hold {
            held: self,
            item: Some(item),
        };
        if admitted.await {
            hold.item.take()
        } else {
            None
        }
    }
}

/// Puts an item back among the held ones unless it is taken.
struct Hold<'a, T> {
    held: &'a Held<T>,
    item: Option<T>,
}

impl<T> Drop for Hold<'_, T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.held.0.lock().expect("held lock").push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_group_waits_for_a_moving_group_behind_it_but_not_for_a_stalled_one() {
        let pace = Arc::new(Pace::new(4));
        let (fast, slow) = (pace.join("fast"), pace.join("slow"));
        pace.admit(slow, 1).await;
        for seq in 1..=5 {
            pace.admit(fast, seq).await;
        }
        // Six is more than four ahead of one: it waits until the slow group moves.
        let ahead = tokio::spawn({
            let pace = pace.clone();
            async move { pace.admit(fast, 6).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ahead.is_finished(), "ran ahead of a moving group");
        pace.admit(slow, 2).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            ahead.is_finished(),
            "still waiting after the slow group caught up"
        );

        // The slow group stops: after STALL the fast one goes on without it.
        let start = tokio::time::Instant::now();
        pace.admit(fast, 20).await;
        let waited = start.elapsed();
        assert!(
            waited > Duration::from_millis(800) && waited <= STALL,
            "waited {waited:?}"
        );
        // A redelivery (an old sequence) never waits.
        let start = tokio::time::Instant::now();
        pace.admit(fast, 3).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_slowest_group_never_waits_and_lead_zero_turns_pacing_off() {
        let pace = Pace::new(2);
        let (a, b) = (pace.join("a"), pace.join("b"));
        let start = tokio::time::Instant::now();
        // b has no payload yet: nothing to wait for.
        pace.admit(a, 100).await;
        pace.admit(b, 1).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "a group waited");

        let off = Pace::new(0);
        let (a, _b) = (off.join("a"), off.join("b"));
        off.admit(a, 1_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
