// Every call into llama.cpp that can throw a C++ exception, behind a catch.
//
// llama.cpp is C++ behind a C header: a malformed vocabulary (a tokenizer type that does not
// match its tokens, say) makes `llama_tokenize` or `llama_token_to_piece` throw
// std::out_of_range from a map lookup, and an exception unwinding into Rust aborts the host
// process ("Rust cannot catch foreign exceptions"). Each wrapper here returns
// PARDEC_SHIM_THREW instead, and keeps the exception's message for the error value.
// Compiled by build.rs with the `cc` crate against the headers llama-cpp-sys-2 installs.

#include <cstdint>
#include <cstring>
#include <exception>

#include "llama.h"

namespace {
// The last caught exception's message, per thread (read right after the call that failed).
thread_local char last_message[256];

void remember(const char *what) {
    std::strncpy(last_message, what ? what : "unknown exception", sizeof last_message - 1);
    last_message[sizeof last_message - 1] = '\0';
}
}  // namespace

#define PARDEC_SHIM_THREW INT32_MIN

#define GUARD(expr)                          \
    try {                                    \
        expr;                                \
        return 0;                            \
    } catch (const std::exception &e) {      \
        remember(e.what());                  \
    } catch (...) {                          \
        remember("a non-standard exception"); \
    }                                        \
    return PARDEC_SHIM_THREW;

extern "C" {

const char *pardec_shim_last_message(void) { return last_message; }

int32_t pardec_shim_tokenize(const llama_vocab *vocab, const char *text, int32_t text_len, llama_token *tokens,
                             int32_t n_tokens_max, bool add_special, bool parse_special, int32_t *out) {
    GUARD(*out = llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special))
}

int32_t pardec_shim_token_to_piece(const llama_vocab *vocab, llama_token token, char *buf, int32_t length,
                                   int32_t lstrip, bool special, int32_t *out) {
    GUARD(*out = llama_token_to_piece(vocab, token, buf, length, lstrip, special))
}

int32_t pardec_shim_decode(llama_context *ctx, const llama_batch *batch, int32_t *out) {
    GUARD(*out = llama_decode(ctx, *batch))
}

int32_t pardec_shim_model_load(const char *path, const llama_model_params *params, llama_model **out) {
    GUARD(*out = llama_model_load_from_file(path, *params))
}

int32_t pardec_shim_init_context(llama_model *model, const llama_context_params *params, llama_context **out) {
    GUARD(*out = llama_init_from_model(model, *params))
}

int32_t pardec_shim_adapter_init(llama_model *model, const char *path, llama_adapter_lora **out) {
    GUARD(*out = llama_adapter_lora_init(model, path))
}

int32_t pardec_shim_chat_apply_template(const char *tmpl, const llama_chat_message *chat, size_t n_msg, bool add_ass,
                                        char *buf, int32_t length, int32_t *out) {
    GUARD(*out = llama_chat_apply_template(tmpl, chat, n_msg, add_ass, buf, length))
}

}  // extern "C"
