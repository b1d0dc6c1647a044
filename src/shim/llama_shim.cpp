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

int32_t pardec_shim_model_quantize(const char *input, const char *output, const llama_model_quantize_params *params,
                                   uint32_t *out) {
    GUARD(*out = llama_model_quantize(input, output, params))
}

}  // extern "C"

// The grammar sampler (src/llama_grammar.rs). What llama.cpp does with a grammar, by path
// (src/llama-grammar.cpp and src/llama-sampler.cpp of the vendored sources):
//  - a parse error is thrown and caught inside llama_grammar_parser::parse, which prints it
//    with the whole grammar to stderr (not through the log callback) and returns false; init
//    then logs "failed to parse grammar" and returns NULL, as it does for an unknown root or a
//    left-recursive rule. The Rust side checks all of these first (its port of the parser), so
//    llama.cpp only ever sees grammars it accepts and never writes to stderr.
//  - accepting a token the grammar rejects throws after emptying the grammar's stacks: the
//    state is then unusable (the next apply would GGML_ASSERT on the empty stacks), so the
//    Rust side checks every token with a one-candidate apply before accepting it.
//  - accepting an end-of-generation token while the grammar is not in an accepting state is
//    GGML_ABORT: refused on the Rust side the same way.
//  - a token id outside the vocabulary throws std::out_of_range from the piece cache.
// Each wrapper returns 0, or PARDEC_SHIM_THREW with the message kept (last_message).
extern "C" {

int32_t pardec_shim_grammar_init(const llama_vocab *vocab, const char *grammar, const char *root,
                                 llama_sampler **out) {
    GUARD(*out = llama_sampler_init_grammar(vocab, grammar, root))
}

int32_t pardec_shim_sampler_apply(llama_sampler *smpl, llama_token_data_array *cur_p) {
    GUARD(llama_sampler_apply(smpl, cur_p))
}

int32_t pardec_shim_sampler_accept(llama_sampler *smpl, llama_token token) {
    GUARD(llama_sampler_accept(smpl, token))
}

int32_t pardec_shim_sampler_clone(const llama_sampler *smpl, llama_sampler **out) {
    GUARD(*out = llama_sampler_clone(smpl))
}

int32_t pardec_shim_sampler_free(llama_sampler *smpl) {
    GUARD(llama_sampler_free(smpl))
}

}  // extern "C"
