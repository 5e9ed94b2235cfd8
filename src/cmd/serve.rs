//! `trendflow serve`: serves the views of a job over Flight SQL without running it.

use anyhow::{bail, Result};

use super::args::{FlightArgs, MongoArgs, PipelineArgs};
use super::common::{ctrl_c, start_server, stored_views_context};

/// The flags of `trendflow serve` (its help text is the doc comment of `Command::Serve`).
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    flight: FlightArgs,
    /// With --mongodb-uri, views are served from MongoDB instead of the state directory.
    #[command(flatten)]
    mongo: MongoArgs,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let ctx = stored_views_context(&args.pipeline, &args.mongo).await?;
    let Some(server) = start_server(&args.flight, ctx).await? else { bail!("serve needs a --flight-addr") };
    tokio::select! {
        result = server.wait() => Ok(result?),
        () = ctrl_c() => Ok(()),
    }
}
