// Driver for crosscheck.py: llama.cpp's token_to_piece / detokenize on a model.
// usage: detok MODEL pieces        -> for every id: hex(piece special=false) hex(piece special=true)
//        detok MODEL decode < lines -> each line "S id id ..." -> hex(llama_detokenize(.., false, S))
#include "llama.h"
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>
static void hex(const char* p, int n) { for (int i = 0; i < n; i++) printf("%02x", (unsigned char)p[i]); }
static void quiet(ggml_log_level, const char*, void*) {}
int main(int argc, char** argv) {
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    auto mp = llama_model_default_params(); mp.vocab_only = true;
    llama_model* m = llama_model_load_from_file(argv[1], mp);
    if (!m) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab* v = llama_model_get_vocab(m);
    std::vector<char> buf(1 << 20);
    if (!strcmp(argv[2], "pieces")) {
        int n = llama_vocab_n_tokens(v);
        for (int id = 0; id < n; id++) {
            for (int s = 0; s < 2; s++) {
                int k = llama_token_to_piece(v, id, buf.data(), buf.size(), 0, s);
                hex(buf.data(), k); printf(s ? "\n" : " ");
            }
        }
    } else {
        std::string line;
        while (std::getline(std::cin, line)) {
            std::istringstream is(line); int s; is >> s; std::vector<llama_token> ids; int x; while (is >> x) ids.push_back(x);
            int k = llama_detokenize(v, ids.data(), ids.size(), buf.data(), buf.size(), false, s);
            hex(buf.data(), k); printf("\n");
        }
    }
    return 0;
}
