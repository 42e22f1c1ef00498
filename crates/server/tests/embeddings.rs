//! /v1/embeddings on a real server: the vectors of both test models under every pooling
//! against llama.cpp's llama-embedding (tests/fixtures/reference/embeddings.json, made by
//! scripts/reference/embeddings.py), every input form, base64, and clear errors.

mod common;
use common::*;
use engine::embed::Pooling;
use serde_json::{json, Value};

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_llama_embedding() {
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    for model in [SMOL, GEMMA] {
        for pooling in [Pooling::Mean, Pooling::Last, Pooling::Cls] {
            let mine: Vec<&Value> = cases.iter().filter(|c| c["model"] == model && c["pooling"] == pooling.name()).collect();
            assert_eq!(mine.len(), 3, "{model} {}", pooling.name());
            let server = start(model, server::Config { pooling: Some(pooling), ..config(1, 4, 512) });
            let prompts: Vec<&Value> = mine.iter().map(|c| &c["prompt"]).collect();
            // Any model name is accepted when one model is served.
            let r = post(server.addr, "/v1/embeddings", &json!({"input": prompts, "model": "text-embedding-3-small"}));
            assert_eq!(r.status, 200, "{}", r.text());
            let body = r.json();
            assert_eq!(body["object"], "list");
            for (i, case) in mine.iter().enumerate() {
                let item = &body["data"][i];
                assert_eq!((item["object"].as_str(), item["index"].as_u64()), (Some("embedding"), Some(i as u64)));
                let (got, want) = (floats(&item["embedding"]), floats(&case["embedding"]));
                assert_eq!(got.len(), want.len(), "{model}: the model's width");
                let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cos = cosine(&got, &want);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                println!("{model} {} {:?}: cosine {cos:.6}, worst difference {worst:.4}", pooling.name(), case["prompt"].as_str().unwrap());
                assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
                // Gemma 3's activations span a wider range: its quantized products differ more
                // (one BOS token alone: cosine 0.99984 with llama.cpp's).
                let least = if model == GEMMA { 0.995 } else { 0.999 };
                assert!(cos > least && worst < 0.03, "{model} {} {}: cosine {cos}, worst {worst}", pooling.name(), case["prompt"]);
                // Each vector is far nearer its own reference than another prompt's (not for
                // CLS: a causal model's first token sees nothing of the rest).
                for (j, other) in mine.iter().enumerate().filter(|(j, _)| *j != i && pooling != Pooling::Cls) {
                    let cross = cosine(&got, &floats(&other["embedding"]));
                    println!("  vs prompt {j}: cosine {cross:.4}");
                    assert!(cos - cross > 0.01, "{model} {}: prompt {i} is as near prompt {j}'s vector ({cross}) as its own ({cos})", pooling.name());
                }
            }
            let tokens: u64 = prompts.iter().map(|p| {
                let t = post(server.addr, "/tokenize", &json!({"content": p, "add_special": true}));
                t.json()["tokens"].as_array().unwrap().len() as u64
            }).sum();
            assert_eq!(body["usage"]["prompt_tokens"].as_u64(), Some(tokens));
            assert_eq!(body["usage"]["total_tokens"].as_u64(), Some(tokens));
            server.shutdown().unwrap();
        }
    }
}

#[test]
fn embedding_inputs_formats_and_errors() {
    let server = start(SMOL, server::Config { pooling: Some(Pooling::Mean), ..config(1, 4, 64) });
    let addr = server.addr;
    let embed = |body: Value| -> Value {
        let r = post(addr, "/v1/embeddings", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let text = "Tandem bicycles seat two riders.";
    let one = floats(&embed(json!({"input": text}))["data"][0]["embedding"]);
    // The same text as token ids (tokenized with the special tokens, as the server does).
    let ids = post(addr, "/tokenize", &json!({"content": text, "add_special": true})).json()["tokens"].clone();
    assert_eq!(floats(&embed(json!({"input": ids.clone()}))["data"][0]["embedding"]), one);
    let two = embed(json!({"input": [ids.clone(), ids]}));
    assert_eq!(two["data"].as_array().unwrap().len(), 2);
    assert_eq!(floats(&two["data"][1]["embedding"]), one);
    // base64: the little-endian f32 bytes (what the official Python client asks for).
    let b64 = embed(json!({"input": text, "encoding_format": "base64"}));
    let bytes = base64_decode(b64["data"][0]["embedding"].as_str().unwrap());
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, one);
    // Different texts are different vectors; a text is closest to itself.
    let other = floats(&embed(json!({"input": "Quarterly revenue rose by four percent."}))["data"][0]["embedding"]);
    assert!(cosine(&one, &other) < 0.9999);

    let err = |body: Value, status: u16, mention: &str| {
        let r = post(addr, "/v1/embeddings", &body);
        r.error(status);
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(mention), "{body}: {msg}");
    };
    err(json!({"input": []}), 400, "empty list");
    err(json!({"input": ""}), 400, "empty text");
    err(json!({"input": [1, "a"]}), 400, "must be a string");
    err(json!({"input": [999999999]}), 400, "token ids");
    err(json!({"input": text, "dimensions": 64}), 400, "dimensions");
    err(json!({"input": text, "encoding_format": "hex"}), 400, "encoding_format");
    err(json!({"input": text, "frobnicate": 1}), 400, "frobnicate");
    err(json!({"input": "word ".repeat(200)}), 400, "context");
    err(json!({}), 400, "input");
    server.shutdown().unwrap();

    // Off unless asked for, as in llama-server.
    let plain = start(SMOL, config(1, 4, 64));
    let r = post(plain.addr, "/v1/embeddings", &json!({"input": text}));
    assert_eq!(r.error(501), "embeddings_disabled");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("--embeddings"));
    plain.shutdown().unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    } as u32;
    let mut out = Vec::new();
    for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, &c| (acc << 6) | val(c)) << (6 * (4 - chunk.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
