//! llama.cpp's chat templates (models/llama-cpp/templates, fetched by
//! `scripts/fetch-models.sh llama-cpp`) rendered by tandem:
//!
//! * every template renders a plain conversation (one known exception, named with its reason);
//! * every rendering matches Python jinja2's (chat_templates/reference.py wrote
//!   chat_templates/expected/) byte for byte, for the cases of chat_templates/cases.json:
//!   a plain conversation, llama.cpp's whitespace conversation, thinking off, tool
//!   definitions + calls + results, a reasoning-effort kwarg;
//! * the families people run (Qwen 2.5/3/3.5, gpt-oss, Gemma 4, Mistral/Ministral/Devstral,
//!   Phi-3.5, Llama 3.x, SmolLM3) show their turn markers where we expect them, and the
//!   generation prompts llama.cpp's tests/test-chat.cpp asserts;
//! * a template embedded in a GGUF (a real llama.cpp vocabulary) is the one `tandem chat`
//!   and the server pick, and tokenizes with its markers as single special tokens.

use serde_json::{json, Value};
use server::template::{ChatInput, ChatTemplate};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("TANDEM_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models"))
}

/// models/llama-cpp/<sub>: fails (never skips) when it is absent.
fn llama_cpp_dir(sub: &str) -> PathBuf {
    let dir = models_dir().join("llama-cpp").join(sub);
    assert!(dir.is_dir(), "{} is missing: run scripts/fetch-models.sh llama-cpp (or all)", dir.display());
    dir
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/chat_templates")
}

/// cases.json: the special-token texts, the fixed time and the conversations.
struct Spec {
    bos: String,
    eos: String,
    now: i64,
    cases: Vec<Value>,
}

fn spec() -> Spec {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    Spec {
        bos: v["bos_token"].as_str().unwrap().to_string(),
        eos: v["eos_token"].as_str().unwrap().to_string(),
        now: v["now"].as_i64().unwrap(),
        cases: v["cases"].as_array().unwrap().clone(),
    }
}

impl Spec {
    fn case(&self, name: &str) -> &Value {
        self.cases.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name} in cases.json"))
    }

    fn compile(&self, source: &str) -> Result<ChatTemplate, String> {
        ChatTemplate::new("test".into(), source.into(), self.bos.clone(), self.eos.clone(), false).map_err(|e| e.to_string())
    }

    /// A case as llama.cpp passes it, at the fixed time.
    fn input<'a>(&self, case: &'a Value) -> ChatInput<'a> {
        ChatInput {
            messages: case["messages"].as_array().unwrap(),
            tools: case.get("tools").and_then(Value::as_array).map_or(&[], Vec::as_slice),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            enable_thinking: case["enable_thinking"].as_bool().unwrap(),
            kwargs: case.get("kwargs").and_then(Value::as_object),
            now: Some(self.now),
        }
    }

    fn render(&self, tmpl: &ChatTemplate, case: &Value) -> Result<String, String> {
        tmpl.render_input(&self.input(case)).map_err(|e| e.to_string())
    }
}

/// Every template file, sorted by name: (stem, source).
fn templates() -> Vec<(String, String)> {
    let dir = llama_cpp_dir("templates");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let stem = path.file_name()?.to_str()?.strip_suffix(".jinja")?.to_string();
            Some((stem, std::fs::read_to_string(&path).unwrap()))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no templates in {}", dir.display());
    out
}

fn template(stem: &str) -> String {
    let path = llama_cpp_dir("templates").join(format!("{stem}.jinja"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Python jinja2's rendering of a template and case: Ok(text) or Err(its error).
fn reference(stem: &str, case: &str) -> Result<String, String> {
    let base = fixtures().join("expected").join(format!("{stem}.{case}"));
    match std::fs::read_to_string(base.with_extension(format!("{case}.txt"))) {
        Ok(text) => Ok(text),
        Err(_) => match std::fs::read_to_string(base.with_extension(format!("{case}.err"))) {
            Ok(err) => Err(err.trim().to_string()),
            Err(_) => panic!("no reference rendering for {stem}.{case}: run python3 crates/server/tests/chat_templates/reference.py"),
        },
    }
}

/// Templates that fail a plain conversation, with the reason.
const PLAIN_FAILURES: &[(&str, &str)] = &[(
    "fireworks-ai-llama-3-firefunction-v2",
    "adds an undefined `functions` variable (its tools as text, which llama.cpp no longer passes) to a string; jinja2 fails alike",
)];

/// Renderings where tandem and jinja2 differ on purpose, with the reason.
const JINJA2_DIFFERENCES: &[(&str, &str, &str)] = &[(
    "meetkai-functionary-medium-v3.1",
    "tools",
    "jinja2 HTML-escapes `\"...\"|safe + (x | tojson)` (Markup concatenation); llama.cpp and tandem write the JSON",
)];

#[test]
fn every_template_renders_a_plain_conversation() {
    let spec = spec();
    let mut failures = Vec::new();
    for (stem, source) in templates() {
        let known = PLAIN_FAILURES.iter().find(|(s, _)| *s == stem);
        let result = spec.compile(&source).and_then(|t| spec.render(&t, spec.case("plain")));
        match (result, known) {
            (Ok(text), None) => assert!(text.contains("What is 2+2?"), "{stem}: the last user message is missing:\n{text}"),
            (Err(e), None) => failures.push(format!("{stem}: {e}")),
            (Ok(_), Some(_)) => failures.push(format!("{stem} renders now: take it off PLAIN_FAILURES")),
            (Err(e), Some((_, why))) => {
                assert!(!e.is_empty(), "{stem}: an empty error");
                eprintln!("{stem}: fails as known ({why}): {e}");
            }
        }
    }
    assert!(failures.is_empty(), "templates that do not render a plain conversation:\n{}", failures.join("\n"));
}

#[test]
fn renderings_match_python_jinja2() {
    let spec = spec();
    let mut problems = Vec::new();
    let mut compared = 0;
    for (stem, source) in templates() {
        let Ok(tmpl) = spec.compile(&source) else {
            problems.push(format!("{stem}: does not compile"));
            continue;
        };
        for case in &spec.cases {
            let name = case["name"].as_str().unwrap();
            let differs = JINJA2_DIFFERENCES.iter().any(|(s, c, _)| *s == stem && *c == name);
            match (spec.render(&tmpl, case), reference(&stem, name)) {
                (Ok(ours), Ok(theirs)) if differs => {
                    if ours == theirs {
                        problems.push(format!("{stem}.{name}: matches jinja2 now: take it off JINJA2_DIFFERENCES"));
                    }
                }
                (Ok(ours), Ok(theirs)) => {
                    compared += 1;
                    if ours != theirs {
                        problems.push(format!("{stem}.{name}: differs {}", first_difference(&ours, &theirs)));
                    }
                }
                (Err(e), Ok(_)) => problems.push(format!("{stem}.{name}: jinja2 renders it, tandem fails: {e}")),
                // jinja2 fails too (tools the template cannot take, list.append in a sandbox):
                // tandem may render or fail, with a message.
                (Err(e), Err(_)) => assert!(!e.is_empty(), "{stem}.{name}: an empty error"),
                (Ok(_), Err(_)) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{} of the renderings differ from jinja2:\n{}", problems.len(), problems.join("\n"));
    assert!(compared >= 300, "only {compared} renderings compared");
}

fn first_difference(a: &str, b: &str) -> String {
    let at = a.bytes().zip(b.bytes()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let from = at.saturating_sub(80);
    let window = |s: &str| String::from_utf8_lossy(&s.as_bytes()[from.min(s.len())..(at + 80).min(s.len())]).into_owned();
    format!("at byte {at}:\n  tandem: {:?}\n  jinja2: {:?}", window(a), window(b))
}

/// What a family's rendering of a case must hold: its start, pieces in order, its end.
struct Expect {
    stems: &'static [&'static str],
    case: &'static str,
    starts: &'static str,
    holds: &'static [&'static str],
    ends: &'static str,
}

const QWEN3: &[&str] = &["Qwen-Qwen3-0.6B"];
const QWEN: &[&str] = &["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "Qwen3.5-4B"];
const GEMMA4: &[&str] = &["google-gemma-4-31B-it", "google-gemma-4-31B-it-interleaved"];
const MISTRAL: &[&str] =
    &["mistralai-Ministral-3-14B-Reasoning-2512", "Mistral-Small-3.2-24B-Instruct-2506", "unsloth-mistral-Devstral-Small-2507"];
const LLAMA3: &[&str] = &["meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"];
const GPT_OSS: &[&str] = &["openai-gpt-oss-120b"];
const PHI35: &[&str] = &["microsoft-Phi-3.5-mini-instruct"];
const SMOLLM3: &[&str] = &["HuggingFaceTB-SmolLM3-3B"];

const CHATML_TURNS: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
const MISTRAL_TURNS: &str =
    "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there! How can I help?</s>[INST]What is 2+2?[/INST]";
const PHI_TURNS: &str = "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there! How can I help?<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n";
const TOOL_JSON: &str = r#"{"function": {"description": "Get the current weather in a location", "name": "get_weather", "parameters": {"properties": {"location": {"description": "City name, e.g. Paris", "type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"], "type": "string"}}, "required": ["location"], "type": "object"}}, "type": "function"}"#;
const ARGS_JSON: &str = r#"{"location": "Paris", "unit": "celsius"}"#;

const EXPECTATIONS: &[Expect] = &[
    // Qwen: ChatML turns; Qwen3.5 opens its thinking, Qwen3 closes an empty one when it is off.
    Expect { stems: &["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B"], case: "plain", starts: CHATML_TURNS, holds: &[], ends: CHATML_TURNS },
    Expect { stems: &["Qwen3.5-4B"], case: "plain", starts: CHATML_TURNS, holds: &[], ends: "<|im_start|>assistant\n<think>\n" },
    Expect { stems: QWEN3, case: "no_thinking", starts: CHATML_TURNS, holds: &[], ends: "<|im_start|>assistant\n<think>\n\n</think>\n\n" },
    Expect { stems: &["Qwen3.5-4B"], case: "no_thinking", starts: CHATML_TURNS, holds: &[], ends: "<|im_start|>assistant\n<think>\n\n</think>\n\n" },
    Expect {
        stems: &["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B"],
        case: "tools",
        starts: "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n",
        holds: &[
            "<tools>\n",
            TOOL_JSON,
            "\n</tools>",
            "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\nIt is 21 °C in Paris — mild.<|im_end|>\n",
        ],
        ends: "<|im_start|>user\nThanks! And <b>tomorrow</b>?<|im_end|>\n<|im_start|>assistant\n",
    },
    Expect {
        stems: &["Qwen3.5-4B"],
        case: "tools",
        starts: "<|im_start|>system\n# Tools\n",
        holds: &[
            TOOL_JSON,
            "You are a helpful assistant.<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n<function=get_weather>\n<parameter=location>\nParis\n</parameter>\n<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call><|im_end|>\n",
            "<tool_response>\n{\"temperature\": 21}\n</tool_response>",
        ],
        ends: "<|im_start|>assistant\n<think>\n",
    },
    // gpt-oss: harmony channels, the date, the reasoning effort (medium unless asked).
    Expect {
        stems: GPT_OSS,
        case: "plain",
        starts: "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n",
        holds: &["Current date: 2025-07-26\n", "Reasoning: medium\n", "<|start|>developer<|message|># Instructions\n\nYou are a helpful assistant.\n\n<|end|>", "<|start|>user<|message|>Hello<|end|><|start|>assistant<|channel|>final<|message|>Hi there! How can I help?<|end|>"],
        ends: "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
    },
    Expect { stems: GPT_OSS, case: "reasoning_effort", starts: "<|start|>system<|message|>", holds: &["Reasoning: high\n"], ends: "<|start|>user<|message|>Hello<|end|><|start|>assistant" },
    Expect {
        stems: GPT_OSS,
        case: "tools",
        starts: "<|start|>system<|message|>",
        holds: &[
            "Calls to these tools must go to the commentary channel: 'functions'.",
            "namespace functions {\n\n// Get the current weather in a location\ntype get_weather = (_: {\n// City name, e.g. Paris\nlocation: string,\nunit?: \"celsius\" | \"fahrenheit\",\n}) => any;\n\n} // namespace functions",
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"location\": \"Paris\", \"unit\": \"celsius\"}<|call|>",
            "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>",
        ],
        ends: "<|start|>user<|message|>Thanks! And <b>tomorrow</b>?<|end|><|start|>assistant",
    },
    // Gemma 4: <|turn>role ... <turn|>, thinking switched on in the system turn.
    Expect {
        stems: GEMMA4,
        case: "plain",
        starts: "<s><|turn>system\n<|think|>\nYou are a helpful assistant.<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\nHi there! How can I help?<turn|>\n",
        holds: &[],
        ends: "<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n",
    },
    Expect {
        stems: GEMMA4,
        case: "no_thinking",
        starts: "<s><|turn>system\nYou are a helpful assistant.<turn|>\n",
        holds: &[],
        ends: "<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
    },
    Expect {
        stems: GEMMA4,
        case: "tools",
        starts: "<s><|turn>system\n<|think|>\nYou are a helpful assistant.<|tool>declaration:get_weather{description:<|\"|>Get the current weather in a location<|\"|>",
        holds: &["<|tool_call>call:get_weather{location:<|\"|>Paris<|\"|>,unit:<|\"|>celsius<|\"|>}<tool_call|>", "{\"temperature\": 21}"],
        ends: "<|turn>user\nThanks! And <b>tomorrow</b>?<turn|>\n<|turn>model\n",
    },
    // Mistral family: [SYSTEM_PROMPT], [INST], tool calls with [TOOL_CALLS]name[ARGS].
    Expect { stems: MISTRAL, case: "plain", starts: MISTRAL_TURNS, holds: &[], ends: MISTRAL_TURNS },
    Expect {
        stems: &["mistralai-Ministral-3-14B-Reasoning-2512", "unsloth-mistral-Devstral-Small-2507"],
        case: "tools",
        starts: "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT]",
        holds: &["[AVAILABLE_TOOLS][", TOOL_JSON, "][/AVAILABLE_TOOLS]", "[INST]What's the weather in Paris?[/INST][TOOL_CALLS]get_weather[ARGS]", ARGS_JSON, "</s>[TOOL_RESULTS]{\"temperature\": 21}[/TOOL_RESULTS]It is 21 °C in Paris — mild.</s>"],
        ends: "[INST]Thanks! And <b>tomorrow</b>?[/INST]",
    },
    // Mistral Small 3.2: call ids, and the tools just before the last user turn.
    Expect {
        stems: &["Mistral-Small-3.2-24B-Instruct-2506"],
        case: "tools",
        starts: "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT]",
        holds: &["[INST]What's the weather in Paris?[/INST][TOOL_CALLS]get_weather[CALL_ID]call00001[ARGS]", ARGS_JSON, "</s>[TOOL_RESULTS]call00001[TOOL_CONTENT]{\"temperature\": 21}[/TOOL_RESULTS]It is 21 °C in Paris — mild.</s>", "[AVAILABLE_TOOLS][", TOOL_JSON, "][/AVAILABLE_TOOLS]"],
        ends: "[INST]Thanks! And <b>tomorrow</b>?[/INST]",
    },
    // Phi-3.5: <|role|>\n ... <|end|>\n.
    Expect { stems: PHI35, case: "plain", starts: PHI_TURNS, holds: &[], ends: PHI_TURNS },
    // Llama 3.x: header ids, the date line, tools as JSON with 4-space indents.
    Expect {
        stems: LLAMA3,
        case: "plain",
        starts: "<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2025\n\nYou are a helpful assistant.<|eot_id|>",
        holds: &["<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>"],
        ends: "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    },
    Expect {
        stems: LLAMA3,
        case: "tools",
        starts: "<s><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n",
        holds: &["{\n    \"function\": {\n        \"description\": \"Get the current weather in a location\",", "{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}<|eot_id|>", "<|start_header_id|>ipython<|end_header_id|>\n\n"],
        ends: "<|start_header_id|>assistant<|end_header_id|>\n\n",
    },
    // SmolLM3: its metadata block names the reasoning mode.
    Expect {
        stems: SMOLLM3,
        case: "plain",
        starts: "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n",
        holds: &["## Custom Instructions\n\nYou are a helpful assistant.\n\n<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"],
        ends: "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    },
    Expect { stems: SMOLLM3, case: "no_thinking", starts: "<|im_start|>system\n", holds: &["Reasoning Mode: /no_think\n"], ends: "<|im_start|>assistant\n<think>\n\n</think>\n" },
    // llama.cpp's whitespace conversation: Qwen 2.5/3 keep the assistant's padding, 3.5 trims it.
    Expect {
        stems: &["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B"],
        case: "whitespace",
        starts: "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n",
        holds: &["<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n"],
        ends: "<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n",
    },
    Expect {
        stems: &["Qwen3.5-4B"],
        case: "whitespace",
        starts: "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n",
        holds: &["<|im_start|>assistant\nI am an assistant<|im_end|>\n"],
        ends: "<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n<think>\n",
    },
];

#[test]
fn families_show_their_turn_markers() {
    let spec = spec();
    let mut problems = Vec::new();
    for e in EXPECTATIONS {
        for stem in e.stems {
            let tmpl = spec.compile(&template(stem)).unwrap();
            let text = spec.render(&tmpl, spec.case(e.case)).unwrap_or_else(|err| panic!("{stem}.{}: {err}", e.case));
            if !text.starts_with(e.starts) {
                problems.push(format!("{stem}.{}: does not start with {:?}", e.case, e.starts));
            }
            let mut at = 0;
            for piece in e.holds {
                match text[at..].find(piece) {
                    Some(i) => at += i + piece.len(),
                    None => problems.push(format!("{stem}.{}: lacks (in order) {piece:?}", e.case)),
                }
            }
            if !text.ends_with(e.ends) {
                problems.push(format!("{stem}.{}: does not end with {:?}:\n{text}", e.case, e.ends));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What add_generation_prompt adds (llama.cpp's `generation_prompt`: the rendering with it
/// past the longest common prefix of the rendering without it).
fn generation_prompt(tmpl: &ChatTemplate, messages: &[Value]) -> String {
    let with = tmpl.render_input(&ChatInput { now: Some(0), ..ChatInput::new(messages) }).unwrap();
    let without = tmpl.render_input(&ChatInput { add_generation_prompt: false, now: Some(0), ..ChatInput::new(messages) }).unwrap();
    let common = with.bytes().zip(without.bytes()).take_while(|(a, b)| a == b).count();
    with[common..].to_string()
}

#[test]
fn generation_prompts_match_llama_cpp_test_chat() {
    // tests/test-chat.cpp, "basic": a system and a user message, thinking on.
    let messages = [json!({"role": "system", "content": "You are a helpful assistant"}), json!({"role": "user", "content": "Hello, world!"})];
    let spec = spec();
    for (stem, want) in [
        ("Qwen3.5-4B", "<|im_start|>assistant\n<think>\n"),
        ("openai-gpt-oss-120b", "<|start|>assistant"),
        ("mistralai-Ministral-3-14B-Reasoning-2512", ""),
        ("google-gemma-4-31B-it", "<|turn>model\n"),
    ] {
        let tmpl = spec.compile(&template(stem)).unwrap();
        assert_eq!(generation_prompt(&tmpl, &messages), want, "{stem}");
    }
}

#[test]
fn families_take_system_messages_and_object_arguments() {
    let spec = spec();
    for stems in [QWEN, GEMMA4, MISTRAL, LLAMA3, GPT_OSS, PHI35, SMOLLM3] {
        for stem in stems {
            let caps = spec.compile(&template(stem)).unwrap().caps();
            assert!(caps.system_role && !caps.typed_content, "{stem}: {caps:?}");
        }
    }
    // The templates that print tool calls read the arguments as an object (llama.cpp parses
    // the OpenAI string for them); one given as a string renders the same.
    for stem in ["Qwen-Qwen3-0.6B", "Qwen3.5-4B", "openai-gpt-oss-120b", "google-gemma-4-31B-it", "Mistral-Small-3.2-24B-Instruct-2506"] {
        let tmpl = spec.compile(&template(stem)).unwrap();
        assert!(tmpl.caps().object_arguments, "{stem}");
        let case = spec.case("tools");
        let mut stringly = case.clone();
        stringly["messages"][2]["tool_calls"][0]["function"]["arguments"] = Value::String(ARGS_JSON.into());
        assert_eq!(spec.render(&tmpl, &stringly), spec.render(&tmpl, case), "{stem}");
    }
}

#[test]
fn kwargs_reach_the_template_and_win_over_defaults() {
    let spec = spec();
    let plain = spec.case("plain");
    let tmpl = spec.compile(&template("Qwen-Qwen3-0.6B")).unwrap();
    // chat_template_kwargs {"enable_thinking": false}, as llama-server clients turn thinking off.
    let kwargs = json!({"enable_thinking": false});
    let input = ChatInput { kwargs: kwargs.as_object(), ..spec.input(plain) };
    assert!(tmpl.render_input(&input).unwrap().ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    let tmpl = spec.compile("{{ reasoning_effort }}/{{ reasoning_strength }}/{{ date_string }}/{{ datetime }}/{{ strftime_now('%Y') }}").unwrap();
    let kwargs = json!({"reasoning_effort": "low"});
    let input = ChatInput { kwargs: kwargs.as_object(), ..spec.input(plain) };
    assert_eq!(tmpl.render_input(&input).unwrap(), "low/low/26 Jul 2025/Jul 26 2025/2025");
}

#[test]
fn bad_templates_give_one_clear_error() {
    let spec = spec();
    let msgs = [json!({"role": "user", "content": "Hi"})];
    for (source, says) in [
        ("{% for m in messages %}{{ m.content }", "invalid chat template"),
        ("{% if %}", "invalid chat template"),
        ("{% generation %}x", "invalid chat template"),
        ("{%}", "invalid chat template"),
        ("{%- endgeneration -%}", "invalid chat template"),
        ("{{ raise_exception('Only user and assistant roles are supported!') }}", "Only user and assistant roles are supported!"),
        ("{{ messages[0].content.no_such_method() }}", "the chat template failed"),
        ("{{ messages[0].content + 1 }}", "the chat template failed"),
        ("{{ messages | tojson(indent=[]) }}", "indent"),
        ("{{ undefined_thing.field }}", "the chat template failed"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "the chat template failed"),
    ] {
        let err = match spec.compile(source) {
            Err(e) => e,
            Ok(t) => t.render(&msgs, true).expect_err(source).to_string(),
        };
        assert!(err.contains(says), "{source}: {err}");
        assert_eq!(err.lines().filter(|l| l.contains(says)).count(), 1, "{source}: one error, not a cascade: {err}");
    }
    // Messages the template cannot take are named before rendering.
    let tmpl = spec.compile(&template("Qwen-Qwen3-0.6B")).unwrap();
    let bad = [json!({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{not json"}}]})];
    let err = tmpl.render(&bad, true).unwrap_err().to_string();
    assert!(err.starts_with("messages[0].tool_calls[0].function.arguments is not valid JSON"), "{err}");
}

/// A GGUF holding a real llama.cpp vocabulary and `tokenizer.chat_template`.
fn gguf_with_template(vocab: &str, template_source: &str) -> gguf::GgufFile {
    let path = llama_cpp_dir("vocab").join(format!("ggml-vocab-{vocab}.gguf"));
    let file = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut w = gguf::GgufWriter::new();
    for (key, value) in file.metadata() {
        w.set(key, value.clone());
    }
    w.set("tokenizer.chat_template", gguf::Value::String(template_source.into()));
    gguf::GgufFile::from_bytes(w.to_bytes()).unwrap()
}

#[test]
fn embedded_template_is_picked_and_tokenizes_with_special_tokens() {
    let spec = spec();
    let plain = spec.case("plain");
    for (vocab, stem, markers) in [
        ("qwen2", "Qwen-Qwen3-0.6B", &["<|im_start|>", "<|im_end|>"][..]),
        ("llama-bpe", "meta-llama-Llama-3.1-8B-Instruct", &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"][..]),
    ] {
        let file = gguf_with_template(vocab, &template(stem));
        let tok = tokenizer::Tokenizer::from_gguf(&file).unwrap();
        let tmpl = ChatTemplate::for_model(&file, &tok, None).unwrap();
        assert_eq!(tmpl.origin, "gguf", "{stem}");
        let input = spec.input(plain);
        let text = tmpl.render_input(&input).unwrap();
        let ids = tmpl.tokenize_input(&tok, &input).unwrap();
        // The reference rendering, with this vocabulary's BOS for the fixtures' "<s>".
        let bos = tok.bos().and_then(|b| tok.token_text(b)).unwrap_or_default().to_string();
        let want = reference(stem, "plain").unwrap().replacen(&spec.bos, &bos, 1);
        assert_eq!(text, want, "{stem}");
        // One BOS where the vocabulary adds one (the template's own is dropped), then the text
        // back exactly, each marker one special token.
        let body = match tok.add_bos() {
            true => {
                assert_eq!(ids[0], tok.bos().unwrap(), "{stem}");
                assert_ne!(ids.get(1), tok.bos().as_ref(), "{stem}: a second BOS");
                &ids[1..]
            }
            false => &ids[..],
        };
        assert_eq!(tok.decode(body, true), text.strip_prefix(bos.as_str()).unwrap_or(&text), "{stem}");
        for m in markers {
            let id = tok.token_id(m).unwrap_or_else(|| panic!("{vocab} lacks {m}"));
            assert_eq!(ids.iter().filter(|&&t| t == id).count(), text.matches(m).count(), "{stem}: {m}");
        }
    }
}
