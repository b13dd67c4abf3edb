//! The server on an ephemeral loopback port: completions, chat, streaming, errors, a full
//! queue, cancellation, batching that equals solo runs, and a bounded load test.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use dllm_cache::SplitMix64;
use dllm_cache::burn::tensor::Device;
use dllm_cache::pipeline::{CacheChoice, GenerateOptions, Pipeline};
use dllm_cache::sampler::CommitRule;
use dllm_cache_server::{EngineConfig, Server};
use futures_util::StreamExt;
use serde_json::{Value, json};

#[path = "../../examples/shared/tiny_task.rs"]
mod tiny_task;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-llada")
}

fn pipeline() -> Pipeline {
    Pipeline::from_dir(model_dir(), &Device::default()).expect("the shipped model loads")
}

async fn start(config: EngineConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    Server::start(pipeline(), "tiny-llada".into(), config, listener).expect("server starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Held-out prompts of the tiny model's task.
fn prompts(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| tiny_task::next_problem(&mut rng, true).prompt)
        .collect()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// What the library alone gives for `prompt` with the folder's defaults and `cache`.
fn alone(pipeline: &Pipeline, prompt: &str, cache: CacheChoice, commit: CommitRule) -> String {
    let options: GenerateOptions = pipeline
        .default_options()
        .clone()
        .with_cache(cache)
        .with_commit(commit);
    pipeline.complete(prompt, &options).unwrap().text
}

/// Reads an SSE response to its end: the `data:` payloads in order.
async fn sse(response: reqwest::Response) -> Vec<String> {
    let mut body = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_chat_and_models_answer_like_the_library() {
    let server = start(EngineConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = client();
    let lib = pipeline();
    let prompt = &prompts(1, 3)[0];
    for (policy, cache) in [
        ("none", CacheChoice::None),
        (
            "dllm",
            CacheChoice::Dllm(dllm_cache::DllmCacheConfig::new()),
        ),
        ("prefix", CacheChoice::Prefix),
        ("dual", CacheChoice::Dual),
    ] {
        let (status, body) = post(
            &c,
            format!("{base}/v1/completions"),
            json!({"model": "tiny-llada", "prompt": prompt, "policy": policy}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "text_completion");
        let want = alone(&lib, prompt, cache, CommitRule::Schedule);
        assert_eq!(body["choices"][0]["text"], want.as_str(), "{policy}");
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(body["dllm"]["forwards"].as_u64().unwrap() > 0);
    }
    // A commit rule of Fast-dLLM through the extra field.
    let (status, body) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": prompt, "policy": "dual", "decode": "threshold:0.5"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let want = alone(&lib, prompt, CacheChoice::Dual, CommitRule::Threshold(0.5));
    assert_eq!(body["choices"][0]["text"], want.as_str());

    let (status, body) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "?a="}], "max_tokens": 8}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");

    let models: Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-llada");
    let health: Value = c
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dllm_requests_total 6"), "{metrics}");
    assert!(metrics.contains("# TYPE dllm_flops_saved_total counter"));
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_deltas_add_up_to_the_completion_and_end_with_done() {
    let server = start(EngineConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = client();
    let lib = pipeline();
    let prompt = &prompts(1, 5)[0];
    let response = c
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": prompt, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let events = sse(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    let want = alone(
        &lib,
        prompt,
        lib.default_options().cache.clone(),
        CommitRule::Schedule,
    );
    assert_eq!(text, want);
    assert!(
        chunks
            .last()
            .is_some_and(|c| !c["choices"][0]["finish_reason"].is_null())
    );
    // Chat streams chat.completion.chunk objects, the role first.
    let response = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "?a="}], "stream": true}))
        .send()
        .await
        .unwrap();
    let events = sse(response).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_openai_style_400s() {
    let server = start(EngineConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = client();
    let url = format!("{base}/v1/completions");
    let cases = [
        (json!({"prompt": "1>", "bogus": 1}), "unknown field"),
        (json!({"prompt": "1>", "decode": "greedy"}), "greedy"),
        (json!({"prompt": "1>", "policy": "magic"}), "unknown policy"),
        (
            json!({"prompt": "1>", "policy": "none", "kp": 4}),
            "apply to policy",
        ),
        (json!({"prompt": "1>", "n": 2}), "n = 1"),
        (json!({"prompt": "1>", "max_tokens": 0}), "gen_length"),
        (
            json!({"prompt": "1>", "max_tokens": 8, "block_length": 3}),
            "block_length",
        ),
        (json!({"prompt": "1>", "temperature": -1.0}), "temperature"),
        (json!({"prompt": ""}), "empty"),
        (json!({"prompt": 5}), "prompt"),
        (json!({"nothing": true}), "missing field `prompt`"),
        (
            json!({"prompt": "1>", "max_tokens": 8192, "steps": 8192, "block_length": 8192}),
            "exceeds",
        ),
    ];
    for (body, needle) in cases {
        let (status, reply) = post(&c, url.clone(), body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["type"], "invalid_request_error", "{body}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let response = c.post(url).body("{ not json").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": []}),
    )
    .await;
    assert_eq!(status, 400);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_and_the_rest_complete() {
    let config = EngineConfig {
        max_batch: 1,
        max_queue: 1,
        ..EngineConfig::default()
    };
    let server = start(config).await;
    let url = format!("http://{}/v1/completions", server.addr);
    let c = client();
    // Long generations keep the worker busy while the others arrive.
    let jobs: Vec<_> = prompts(8, 9)
        .into_iter()
        .map(|p| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                post(&c, url, json!({"prompt": p, "max_tokens": 64, "steps": 64})).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for j in jobs {
        let (status, body) = j.await.unwrap();
        if status == 429 {
            assert_eq!(body["error"]["type"], "rate_limit_error");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    server.shutdown();
}

/// The forwards the server has run, from `/metrics`.
async fn forwards(c: &reqwest::Client, base: &str) -> u64 {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("dllm_forwards_total "))
        .and_then(|v| v.parse().ok())
        .expect("the forwards counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_is_cancelled() {
    let server = start(EngineConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = client();
    // 512 steps per 32-token block (the model's 512 positions allow 416 tokens): the first
    // block alone takes a while.
    let request = json!({"prompt": prompts(1, 1)[0], "max_tokens": 416, "steps": 6656});
    let before = forwards(&c, &base).await;
    let (status, body) = post(&c, format!("{base}/v1/completions"), request.clone()).await;
    assert_eq!(status, 200, "{body}");
    let full = forwards(&c, &base).await - before;
    // The same request from a client that gives up after 100 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let before = forwards(&c, &base).await;
    let result = impatient
        .post(format!("{base}/v1/completions"))
        .json(&request)
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    // Its row is stopped at the next step: a following request is served, and the cancelled
    // generation ran fewer forwards than the whole one.
    let (status, _) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": prompts(1, 2)[0], "max_tokens": 8, "steps": 8}),
    )
    .await;
    assert_eq!(status, 200);
    let cancelled = forwards(&c, &base).await - before - 8;
    assert!(
        cancelled < full,
        "{cancelled} forwards after the client left, {full} for the whole generation"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_each_equals_its_solo_run() {
    let server = start(EngineConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = client();
    let lib = pipeline();
    let prompts = prompts(12, 21);
    let jobs: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let (c, url) = (c.clone(), format!("{base}/v1/completions"));
            tokio::spawn(async move {
                post(&c, url, json!({"prompt": p, "max_tokens": 32, "steps": 32})).await
            })
        })
        .collect();
    let mut texts = Vec::new();
    for j in jobs {
        let (status, body) = j.await.unwrap();
        assert_eq!(status, 200, "{body}");
        texts.push(body["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let options = lib
        .default_options()
        .clone()
        .with_max_new_tokens(32)
        .with_steps(Some(32));
    for (p, text) in prompts.iter().zip(&texts) {
        let want = lib
            .complete_stream(p, &options, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .text;
        assert_eq!(text, &want, "{p}");
    }
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let max = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dllm_batch_rows_max "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(max > 1, "12 concurrent requests never shared a batch");
    server.shutdown();
}

/// 64 requests from 16 concurrent clients, half streaming, every one answered and none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_test_64_requests_from_16_clients() {
    let server = start(EngineConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = client();
    let prompts = prompts(64, 64);
    let clients: Vec<_> = (0..16)
        .map(|k| {
            let (c, base) = (c.clone(), base.clone());
            let mine: Vec<String> = prompts.iter().skip(k).step_by(16).cloned().collect();
            tokio::spawn(async move {
                let mut done = 0;
                for (i, p) in mine.into_iter().enumerate() {
                    let stream = (k + i) % 2 == 0;
                    let response = c
                        .post(format!("{base}/v1/completions"))
                        .json(&json!({"prompt": p, "stream": stream}))
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(response.status().as_u16(), 200);
                    if stream {
                        let events = sse(response).await;
                        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                    } else {
                        let body: Value = response.json().await.unwrap();
                        assert!(body["choices"][0]["text"].is_string());
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        answered += tokio::time::timeout(Duration::from_secs(120), client)
            .await
            .expect("the load test finishes in time")
            .unwrap();
    }
    assert_eq!(answered, 64);
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dllm_requests_total 64"), "{metrics}");
    assert!(
        metrics.contains("dllm_requests_failed_total 0"),
        "{metrics}"
    );
    server.shutdown();
}
