use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use trawl_sources::{Source, SourceContext};

use crate::Stop;

/// Runs one source until it returns; an error fails the actor so its supervisor restarts it.
pub(crate) struct SourceActor;

#[derive(Clone)]
pub(crate) struct SourceArgs {
    pub source: Arc<dyn Source>,
    pub ctx: SourceContext,
}

pub(crate) struct Run;

impl Actor for SourceActor {
    type Msg = Run;
    type State = SourceArgs;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Run>,
        args: SourceArgs,
    ) -> Result<SourceArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Run>,
        _state: &mut SourceArgs,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(Run)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Run>,
        _message: Run,
        state: &mut SourceArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.source.run(state.ctx.clone()).await?;
        let stats = &state.ctx.stats;
        stats
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.finished_changed.notify_waiters();
        Stop::Done.stop(&myself);
        Ok(())
    }
}
