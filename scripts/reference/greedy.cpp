// Greedy-decoding reference generator for tandem's test fixtures.
//
// Our own code (not part of llama.cpp); compiled by scripts/reference/generate.sh
// against a llama.cpp build (include/llama.h + static libs).
//
// usage: greedy -m MODEL [-n N_PREDICT] [-t THREADS] [-c N_CTX] [-b N_BATCH] PROMPT_FILE...
//        greedy -m MODEL --info     (prints vocab facts as one JSON object: add_bos/eos/sep,
//                                    bos/eos/eot ids, all end-of-generation ids, n_vocab, token
//                                    attribute counts and all USER_DEFINED tokens [id, text])
//
// For every PROMPT_FILE (read verbatim, bytes preserved) it prints one JSON object on a
// line to stdout:
//   {"prompt_file": ..., "prompt_ids": [...], "generated_ids": [...],
//    "generated_piece_hex": [...], "stop_reason": "eog"|"max_tokens", "eog_token": id|null,
//    "steps": [{"id":..,"logit":..,"margin":..}, ...], "top5_first": [{"id":..,"logit":..}, ...]}
// prompt_ids = llama_tokenize(text, add_special=true, parse_special=true).
// The prompt is decoded in ONE batch (positions 0..n-1, logits only for the last token) in a
// fresh context (CPU only, KV cache cleared), then tokens are generated one at a time with
// llama_sampler_init_greedy (= argmax of the logits of the last position). Generation stops
// after N_PREDICT tokens or when llama_vocab_is_eog(token) (the eog token is recorded in
// generated_ids as the last element and is NOT fed back).
// steps[i].margin = logit(top1) - logit(top2) at step i: small margins mark near-ties where a
// different (but correct) implementation may legitimately diverge.
#include "llama.h"

#include <algorithm>
#include <cinttypes>
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static std::string json_escape(const std::string & s) {
    std::string out;
    for (unsigned char c : s) {
        switch (c) {
            case '"':  out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            case '\r': out += "\\r"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    snprintf(buf, sizeof(buf), "\\u%04x", c);
                    out += buf;
                } else {
                    out += (char) c;
                }
        }
    }
    return out;
}

static std::string to_hex(const std::string & s) {
    static const char * d = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        out += d[c >> 4];
        out += d[c & 15];
    }
    return out;
}

static std::string fmt_float(float v) {
    char buf[64];
    snprintf(buf, sizeof(buf), "%.9g", (double) v);
    return buf;
}

static std::string token_piece(const llama_vocab * vocab, llama_token id) {
    std::vector<char> buf(256);
    int n = llama_token_to_piece(vocab, id, buf.data(), (int32_t) buf.size(), 0, true);
    if (n < 0) {
        buf.resize(-n);
        n = llama_token_to_piece(vocab, id, buf.data(), (int32_t) buf.size(), 0, true);
    }
    return std::string(buf.data(), std::max(n, 0));
}

static bool read_file(const char * path, std::string & out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return false;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    out = ss.str();
    return true;
}

static int decode_tokens(llama_context * ctx, const llama_token * tokens, int n, llama_pos pos0) {
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i]     = tokens[i];
        batch.pos[i]       = pos0 + i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = (i == n - 1);
    }
    batch.n_tokens = n;
    const int ret  = llama_decode(ctx, batch);
    llama_batch_free(batch);
    return ret;
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");

    std::string model_path;
    int n_predict = 32;
    int n_threads = 2;
    int n_ctx     = 1024;
    int n_batch   = 512;
    bool info = false;
    std::vector<std::string> prompt_files;

    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto need = [&](const char * what) -> const char * {
            if (i + 1 >= argc) {
                fprintf(stderr, "missing value for %s\n", what);
                exit(2);
            }
            return argv[++i];
        };
        if (a == "-m") {
            model_path = need("-m");
        } else if (a == "-n") {
            n_predict = atoi(need("-n"));
        } else if (a == "-t") {
            n_threads = atoi(need("-t"));
        } else if (a == "-c") {
            n_ctx = atoi(need("-c"));
        } else if (a == "-b") {
            n_batch = atoi(need("-b"));
        } else if (a == "--info") {
            info = true;
        } else {
            prompt_files.push_back(a);
        }
    }
    if (model_path.empty() || (prompt_files.empty() && !info)) {
        fprintf(stderr, "usage: %s -m MODEL [-n N] [-t THREADS] [-c N_CTX] [-b N_BATCH] PROMPT_FILE...\n", argv[0]);
        return 2;
    }

    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;  // CPU only
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) {
        fprintf(stderr, "error: unable to load model %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    if (info) {
        char desc[256] = {0};
        llama_model_desc(model, desc, sizeof(desc));
        auto tok = [](llama_token t) { return t == LLAMA_TOKEN_NULL ? std::string("null") : std::to_string(t); };
        std::string eog;
        int n_control = 0, n_user = 0, n_unknown = 0, n_byte = 0, n_unused = 0, n_normal = 0;
        std::string user_sample;
        int n_user_sample = 0;
        for (llama_token t = 0; t < n_vocab; ++t) {
            if (llama_vocab_is_eog(vocab, t)) {
                eog += (eog.empty() ? "" : ", ") + std::to_string(t);
            }
            const int attr = (int) llama_vocab_get_attr(vocab, t);
            n_control += (attr & LLAMA_TOKEN_ATTR_CONTROL) != 0;
            n_unknown += (attr & LLAMA_TOKEN_ATTR_UNKNOWN) != 0;
            n_byte    += (attr & LLAMA_TOKEN_ATTR_BYTE) != 0;
            n_unused  += (attr & LLAMA_TOKEN_ATTR_UNUSED) != 0;
            n_normal  += (attr & LLAMA_TOKEN_ATTR_NORMAL) != 0;
            if (attr & LLAMA_TOKEN_ATTR_USER_DEFINED) {
                ++n_user;
                if (n_user_sample < 1000) {
                    user_sample += std::string(n_user_sample ? ", " : "") + "[" + std::to_string(t) + ", \"" +
                                   json_escape(llama_vocab_get_text(vocab, t)) + "\"]";
                    ++n_user_sample;
                }
            }
        }
        printf("{\"attr_counts\": {\"normal\": %d, \"control\": %d, \"user_defined\": %d, \"unknown\": %d, "
               "\"byte\": %d, \"unused\": %d}, \"user_defined_tokens\": [%s], ",
               n_normal, n_control, n_user, n_unknown, n_byte, n_unused, user_sample.c_str());
        printf("\"desc\": \"%s\", \"n_vocab\": %d, \"vocab_type\": %d, \"n_layer\": %d, \"n_ctx_train\": %d, "
               "\"add_bos\": %s, \"add_eos\": %s, \"add_sep\": %s, \"bos\": %s, \"eos\": %s, \"eot\": %s, "
               "\"sep\": %s, \"nl\": %s, \"pad\": %s, \"eog_ids\": [%s]}\n",
               json_escape(desc).c_str(), n_vocab, (int) llama_vocab_type(vocab), llama_model_n_layer(model),
               llama_model_n_ctx_train(model),
               llama_vocab_get_add_bos(vocab) ? "true" : "false", llama_vocab_get_add_eos(vocab) ? "true" : "false",
               llama_vocab_get_add_sep(vocab) ? "true" : "false", tok(llama_vocab_bos(vocab)).c_str(),
               tok(llama_vocab_eos(vocab)).c_str(), tok(llama_vocab_eot(vocab)).c_str(), tok(llama_vocab_sep(vocab)).c_str(),
               tok(llama_vocab_nl(vocab)).c_str(), tok(llama_vocab_pad(vocab)).c_str(), eog.c_str());
        llama_model_free(model);
        llama_backend_free();
        return 0;
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = n_ctx;
    cparams.n_batch         = n_batch;
    cparams.n_threads       = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf         = true;

    for (const std::string & pf : prompt_files) {
        std::string text;
        if (!read_file(pf.c_str(), text)) {
            fprintf(stderr, "error: cannot read %s\n", pf.c_str());
            return 1;
        }

        const int n_max = (int) text.size() + 8;
        std::vector<llama_token> prompt(n_max);
        const int n_prompt = llama_tokenize(vocab, text.data(), (int32_t) text.size(), prompt.data(), n_max,
                                            /*add_special*/ true, /*parse_special*/ true);
        if (n_prompt <= 0 || n_prompt > n_batch || n_prompt + n_predict > n_ctx) {
            fprintf(stderr, "error: bad prompt length %d for %s\n", n_prompt, pf.c_str());
            return 1;
        }
        prompt.resize(n_prompt);

        llama_context * ctx = llama_init_from_model(model, cparams);
        if (!ctx) {
            fprintf(stderr, "error: failed to create context\n");
            return 1;
        }
        llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

        if (decode_tokens(ctx, prompt.data(), n_prompt, 0) != 0) {
            fprintf(stderr, "error: prompt decode failed\n");
            return 1;
        }

        std::string top5_json;
        std::string steps_json;
        std::vector<llama_token> gen;
        std::vector<std::string> pieces;
        const char * stop_reason = "max_tokens";
        llama_token eog_token = LLAMA_TOKEN_NULL;
        llama_pos pos = n_prompt;

        for (int step = 0; step < n_predict; ++step) {
            const float * logits = llama_get_logits_ith(ctx, -1);

            // sort indices by logit (desc), ties by id (asc) to get top-k deterministically
            std::vector<int> idx(n_vocab);
            for (int i = 0; i < n_vocab; ++i) idx[i] = i;
            std::partial_sort(idx.begin(), idx.begin() + 5, idx.end(), [&](int a, int b) {
                return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
            });
            if (step == 0) {
                for (int k = 0; k < 5; ++k) {
                    top5_json += (k ? ", " : "");
                    top5_json += "{\"id\": " + std::to_string(idx[k]) + ", \"logit\": " + fmt_float(logits[idx[k]]) + "}";
                }
            }

            const llama_token id = llama_sampler_sample(smpl, ctx, -1);
            if (logits[id] != logits[idx[0]]) {
                fprintf(stderr, "error: greedy sampler picked %d (%g) but argmax is %d (%g)\n",
                        id, logits[id], idx[0], logits[idx[0]]);
                return 1;
            }
            steps_json += (step ? ", " : "");
            steps_json += "{\"id\": " + std::to_string(id) + ", \"logit\": " + fmt_float(logits[id]) +
                          ", \"margin\": " + fmt_float(logits[idx[0]] - logits[idx[1]]) + "}";

            gen.push_back(id);
            pieces.push_back(token_piece(vocab, id));

            if (llama_vocab_is_eog(vocab, id)) {
                stop_reason = "eog";
                eog_token = id;
                break;
            }
            if (step + 1 == n_predict) {
                break;
            }
            llama_token t = id;
            if (decode_tokens(ctx, &t, 1, pos) != 0) {
                fprintf(stderr, "error: decode failed at step %d\n", step);
                return 1;
            }
            pos += 1;
        }

        std::string out = "{\"prompt_file\": \"" + json_escape(pf) + "\", \"n_vocab\": " + std::to_string(n_vocab) +
                          ", \"prompt_ids\": [";
        for (int i = 0; i < n_prompt; ++i) out += (i ? ", " : "") + std::to_string(prompt[i]);
        out += "], \"generated_ids\": [";
        for (size_t i = 0; i < gen.size(); ++i) out += (i ? ", " : "") + std::to_string(gen[i]);
        out += "], \"generated_piece_hex\": [";
        for (size_t i = 0; i < pieces.size(); ++i) out += std::string(i ? ", " : "") + "\"" + to_hex(pieces[i]) + "\"";
        out += "], \"stop_reason\": \"" + std::string(stop_reason) + "\", \"eog_token\": " +
               (eog_token == LLAMA_TOKEN_NULL ? std::string("null") : std::to_string(eog_token));
        out += ", \"top5_first\": [" + top5_json + "], \"steps\": [" + steps_json + "]}";
        printf("%s\n", out.c_str());
        fflush(stdout);

        llama_sampler_free(smpl);
        llama_free(ctx);
    }

    llama_model_free(model);
    llama_backend_free();
    return 0;
}
