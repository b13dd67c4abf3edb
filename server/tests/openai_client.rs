//! The official `openai` Python client against the server: a virtual environment with the
//! client from the package registry (created once under cargo's target folder), then the
//! checks of `tests/python/openai_client.py` against a server on a loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;

use dllm_cache::SplitMix64;
use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::Pipeline;
use dllm_cache_server::{EngineConfig, Server};

#[path = "../../examples/shared/tiny_task.rs"]
mod tiny_task;

/// A virtual environment with `openai` installed; created on first use.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = dir.join("bin/python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "openai"])
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install openai failed");
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works() {
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-llada");
    let pipeline = Pipeline::from_dir(&dir, &Device::default()).unwrap();
    let problem = tiny_task::next_problem(&mut SplitMix64::new(4), true);
    // The expected answer is what the library gives alone (the model is right on it, too).
    let expected = pipeline
        .complete(&problem.prompt, pipeline.default_options())
        .unwrap()
        .text;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start(
        pipeline,
        "tiny-llada".into(),
        EngineConfig::default(),
        listener,
    )
    .unwrap();
    let url = format!("http://{}/v1", server.addr);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&url)
        .arg(&problem.prompt)
        .arg(&expected)
        .output()
        .await
        .expect("the client script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("error ok: 400"), "{stdout}");
    server.shutdown();
}
