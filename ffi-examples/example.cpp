// pardec C++ example (C++17): the same flow as example.c, with RAII handles, exceptions and a
// lambda as the streaming callback.
//
//   example_cpp [MODEL.gguf]        (default: $PARDEC_MODEL)
//
// PARDEC_THREADS sets the compute threads of the session (default: all cores).
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "pardec.h"

namespace {

struct PardecError : std::runtime_error {
    pardec_status status;
    PardecError(const char *what, pardec_status st)
        : std::runtime_error(std::string(what) + ": " + pardec_status_str(st) + " (" +
                             pardec_last_error() + ")"),
          status(st) {}
};

void check(pardec_status st, const char *what) {
    if (st != PARDEC_STATUS_OK) throw PardecError(what, st);
}

// Each handle with its _free as deleter: released in reverse order of creation.
using Model = std::unique_ptr<pardec_model, decltype(&pardec_model_free)>;
using Session = std::unique_ptr<pardec_session, decltype(&pardec_session_free)>;
using Result = std::unique_ptr<pardec_result, decltype(&pardec_result_free)>;
using String = std::unique_ptr<char, decltype(&pardec_string_free)>;

using EventFn = std::function<bool(const pardec_event &)>;

// C callback -> std::function. Exceptions must not cross into pardec (C frames), so they are
// caught here and turned into a cancel; the caller rethrows after the call returns.
struct Callback {
    EventFn fn;
    std::exception_ptr error;

    static bool trampoline(void *user_data, const pardec_event *ev) noexcept {
        auto *self = static_cast<Callback *>(user_data);
        try {
            return self->fn(*ev);
        } catch (...) {
            self->error = std::current_exception();
            return false;
        }
    }

    void rethrow() const {
        if (error) std::rethrow_exception(error);
    }
};

const char *reason_name(pardec_stop_reason r) {
    switch (r) {
    case PARDEC_STOP_REASON_NONE: return "none";
    case PARDEC_STOP_REASON_EOG: return "eog";
    case PARDEC_STOP_REASON_MAX_TOKENS: return "max_tokens";
    case PARDEC_STOP_REASON_STOP_STRING: return "stop_string";
    case PARDEC_STOP_REASON_KV_CACHE_FULL: return "kv_cache_full";
    case PARDEC_STOP_REASON_CANCELLED: return "cancelled";
    case PARDEC_STOP_REASON_SERVER_LOST: return "server_lost";
    }
    return "?";
}

int run(const char *path) {
    pardec_model *raw_model = nullptr;
    check(pardec_model_load(path, nullptr, &raw_model), "load");
    Model model(raw_model, pardec_model_free);

    pardec_session_params sp;
    check(pardec_session_params_default(&sp, sizeof sp), "session params");
    sp.n_ctx = 1024;
    sp.max_branches = 4;
    if (const char *threads = std::getenv("PARDEC_THREADS")) sp.n_threads = uint32_t(std::atoi(threads));
    pardec_session *raw_session = nullptr;
    check(pardec_session_new(model.get(), &sp, &raw_session), "session");
    Session session(raw_session, pardec_session_free);

    pardec_chat_message chat[] = {{"user", "Name three fruits and give one short fact about each."}};
    char *raw_prompt = nullptr;
    check(pardec_model_apply_chat_template(model.get(), chat, 1, &raw_prompt), "chat template");
    String prompt(raw_prompt, pardec_string_free);
    check(pardec_session_prompt(session.get(), prompt.get()), "prompt");
    check(pardec_session_prompt(session.get(), "Here are three fruits, one fact each:\n"), "prompt");

    std::vector<const char *> prefixes{"1. Apple:", "2. Banana:", "3. Cherry:"};
    const char *stops[] = {"\n"};
    pardec_run_limits limits;
    check(pardec_run_limits_default(&limits, sizeof limits), "limits");
    limits.max_tokens = 24;
    limits.stop = stops;
    limits.n_stop = 1;
    std::vector<pardec_node> nodes(prefixes.size());
    check(pardec_session_fork(session.get(), PARDEC_NODE_TRUNK, prefixes.data(), prefixes.size(),
                              &limits, nodes.data()),
          "fork");

    // Stream: a "[label] " marker whenever the speaking node changes.
    std::string last;
    bool fresh = true;
    Callback printer{[&](const pardec_event &ev) {
        std::string_view label = ev.label;
        switch (ev.kind) {
        case PARDEC_EVENT_KIND_TOKEN:
            if (fresh || label != last) {
                std::printf("\n[%s] ", label.empty() ? "trunk" : ev.label);
                last = label;
                fresh = false;
            }
            std::fwrite(ev.text, 1, ev.text_len, stdout);
            break;
        case PARDEC_EVENT_KIND_END:
            std::printf("\n<end %s: %s>", label.empty() ? "trunk" : ev.label, reason_name(ev.stop_reason));
            fresh = true;
            break;
        case PARDEC_EVENT_KIND_DONE:
            std::printf("\n<done: %s>\n", pardec_status_str(ev.status));
            fresh = true;
            break;
        case PARDEC_EVENT_KIND_FORK: // auto mode only (pardec_session_generate_auto)
        case PARDEC_EVENT_KIND_JOIN:
            std::printf("\n<%s %s %s>", ev.kind == PARDEC_EVENT_KIND_FORK ? "fork" : "join",
                        label.empty() ? "trunk" : ev.label, ev.text);
            fresh = true;
            break;
        case PARDEC_EVENT_KIND_WARNING:
            std::fprintf(stderr, "\n<warning in %s: %s>", label.empty() ? "trunk" : ev.label, ev.text);
            break;
        }
        std::fflush(stdout);
        return true;
    }, nullptr};

    pardec_status st = pardec_session_run(session.get(), &Callback::trampoline, &printer);
    printer.rethrow();
    check(st, "run");
    check(pardec_session_join(session.get(), PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, nullptr, 0,
                              "\nIn short,"),
          "join");
    pardec_run_limits tail;
    check(pardec_run_limits_default(&tail, sizeof tail), "limits");
    tail.max_tokens = 24;
    char *raw_tail = nullptr;
    st = pardec_session_generate(session.get(), &tail, &Callback::trampoline, &printer, &raw_tail);
    printer.rethrow();
    check(st, "generate");
    String tail_text(raw_tail, pardec_string_free);

    pardec_result *raw_result = nullptr;
    check(pardec_session_result(session.get(), &raw_result), "result");
    Result result(raw_result, pardec_result_free);
    const char *text = nullptr;
    check(pardec_result_text(result.get(), &text), "text");
    std::printf("\n== text:\n%s\n== continuation: %s\n", text, tail_text.get());

    size_t n_blocks = 0;
    check(pardec_result_n_blocks(result.get(), &n_blocks), "blocks");
    for (size_t b = 0; b < n_blocks; b++) {
        pardec_block_info block;
        check(pardec_result_block(result.get(), b, &block, sizeof block), "block");
        for (size_t i = 0; i < block.n_branches; i++) {
            pardec_branch_info br;
            check(pardec_result_branch(result.get(), b, i, &br, sizeof br), "branch");
            std::printf("== branch %s (%s, %zu tokens): %s\n", br.label, reason_name(br.stop_reason),
                        br.n_tokens, br.text);
        }
    }
    pardec_stats s;
    check(pardec_result_stats(result.get(), &s, sizeof s), "stats");
    std::printf("== stats: tokens_total=%llu tokens_branch=%llu tokens_prefill=%llu steps=%llu "
                "blocks=%llu branches=%llu tps=%.2f p_tps=%.2f dp=%.3f abn=%.2f parallel=%.3f "
                "kv_cells_used=%llu kv_cells_unshared=%llu\n",
                (unsigned long long)s.tokens_total, (unsigned long long)s.tokens_branch,
                (unsigned long long)s.tokens_prefill, (unsigned long long)s.steps,
                (unsigned long long)s.blocks, (unsigned long long)s.branches, s.tps, s.p_tps, s.dp,
                s.abn, s.parallel, (unsigned long long)s.kv_cells_used,
                (unsigned long long)s.kv_cells_unshared);
    return 0;
}

} // namespace

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : std::getenv("PARDEC_MODEL");
    if (!path) {
        std::fprintf(stderr, "usage: %s MODEL.gguf (or set PARDEC_MODEL)\n", argv[0]);
        return 2;
    }
    if (std::string_view(pardec_version()) != PARDEC_VERSION) {
        std::fprintf(stderr, "header %s but library %s\n", PARDEC_VERSION, pardec_version());
        return 1;
    }
    try {
        return run(path);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
