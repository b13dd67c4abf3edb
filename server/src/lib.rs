//! An OpenAI-compatible HTTP server for diffusion LLMs on `dllm-cache`: `POST /v1/completions`
//! and `/v1/chat/completions` (streaming as server-sent events), `GET /v1/models`, `/health`
//! and `/metrics`, with ragged batching of compatible requests and per-request cache policies
//! and commit rules. See `docs/serving.md`.

pub mod api;
pub mod engine;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use dllm_cache::pipeline::Pipeline;

pub use api::{AppState, router};
pub use engine::{Engine, EngineConfig};
pub use metrics::Metrics;

/// A running server: its address and the engine behind it.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    engine: Engine,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves `pipeline` on `listener` (the caller binds it: loopback in tests, port 0 for an
    /// ephemeral port).
    ///
    /// # Errors
    /// If the listener has no local address or the worker thread cannot start.
    pub fn start(
        pipeline: Pipeline,
        model_name: String,
        config: EngineConfig,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::start(Arc::new(pipeline), config, Arc::clone(&metrics))?;
        let state = Arc::new(AppState::new(engine.clone(), metrics, model_name));
        let app = router(state);
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, engine, task })
    }

    /// Stops accepting requests and stops the worker after its current batch.
    pub fn shutdown(self) {
        self.engine.shutdown();
        self.task.abort();
    }

    /// Serves until the process is stopped (Ctrl-C).
    ///
    /// # Errors
    /// If serving fails.
    pub async fn run_until_ctrl_c(self) -> std::io::Result<()> {
        let Self { engine, task, .. } = self;
        tokio::select! {
            result = task => result.map_err(std::io::Error::other)?,
            _ = tokio::signal::ctrl_c() => {
                engine.shutdown();
                Ok(())
            }
        }
    }
}
