/*
 * pardec C example (C11): prompt, fork three branches decoded in parallel, stream them with
 * their labels, join, continue serially, print every branch and the statistics.
 *
 *   example [MODEL.gguf]        (default: $PARDEC_MODEL)
 *
 * PARDEC_THREADS sets the compute threads of the session (default: all cores).
 *
 * Build: see Makefile / CMakeLists.txt next to this file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pardec.h"

/* Tokens per branch and for the continuation: small, this runs in CI on two cores. */
#define BRANCH_TOKENS 24
#define TAIL_TOKENS 24

static const char *stop_reason_name(pardec_stop_reason r) {
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

/* Streaming state: tokens of different branches arrive interleaved (one per branch per step),
 * so a "[label] " marker is printed whenever the event's node differs from the previous one. */
typedef struct printer {
    char label[64];
    int have_label;
    size_t events;
} printer;

static bool on_event(void *user_data, const pardec_event *ev) {
    printer *p = user_data;
    p->events++;
    switch (ev->kind) {
    case PARDEC_EVENT_KIND_TOKEN:
        if (!p->have_label || strcmp(p->label, ev->label) != 0) {
            printf("\n[%s] ", ev->label[0] ? ev->label : "trunk");
            snprintf(p->label, sizeof p->label, "%s", ev->label);
            p->have_label = 1;
        }
        fwrite(ev->text, 1, ev->text_len, stdout);
        break;
    case PARDEC_EVENT_KIND_END:
        printf("\n<end %s: %s>", ev->label[0] ? ev->label : "trunk", stop_reason_name(ev->stop_reason));
        p->have_label = 0;
        break;
    case PARDEC_EVENT_KIND_DONE:
        printf("\n<done: %s>\n", pardec_status_str(ev->status));
        p->have_label = 0;
        break;
    case PARDEC_EVENT_KIND_FORK: /* auto mode only (pardec_session_generate_auto) */
        printf("\n<fork %s into %s>", ev->label[0] ? ev->label : "trunk", ev->text);
        p->have_label = 0;
        break;
    case PARDEC_EVENT_KIND_JOIN:
        printf("\n<join into %s>", ev->label[0] ? ev->label : "trunk");
        p->have_label = 0;
        break;
    case PARDEC_EVENT_KIND_WARNING:
        fprintf(stderr, "\n<warning in %s: %s>", ev->label[0] ? ev->label : "trunk", ev->text);
        break;
    }
    fflush(stdout);
    return true; /* keep going */
}

/* Prints the failure and jumps to cleanup. */
#define CHECK(call)                                                                          \
    do {                                                                                     \
        pardec_status st_ = (call);                                                          \
        if (st_ != PARDEC_STATUS_OK) {                                                       \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, pardec_status_str(st_),           \
                    pardec_last_error());                                                    \
            goto cleanup;                                                                    \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("PARDEC_MODEL");
    if (!path) {
        fprintf(stderr, "usage: %s MODEL.gguf (or set PARDEC_MODEL)\n", argv[0]);
        return 2;
    }
    if (strcmp(pardec_version(), PARDEC_VERSION) != 0) {
        fprintf(stderr, "header %s but library %s\n", PARDEC_VERSION, pardec_version());
        return 1;
    }

    int rc = 1;
    pardec_model *model = NULL;
    pardec_session *session = NULL;
    pardec_result *result = NULL;
    char *prompt = NULL;
    printer pr = {0};

    CHECK(pardec_model_load(path, NULL, &model));

    pardec_session_params sp;
    CHECK(pardec_session_params_default(&sp, sizeof sp));
    sp.n_ctx = 1024;
    sp.max_branches = 4;
    sp.sampling.temperature = 0.0f; /* greedy: the same output on every run */
    if (getenv("PARDEC_THREADS")) sp.n_threads = (uint32_t)atoi(getenv("PARDEC_THREADS"));
    CHECK(pardec_session_new(model, &sp, &session));

    pardec_chat_message chat[] = {
        {"user", "Name three fruits and give one short fact about each."},
    };
    CHECK(pardec_model_apply_chat_template(model, chat, 1, &prompt));
    CHECK(pardec_session_prompt(session, prompt));
    CHECK(pardec_session_prompt(session, "Here are three fruits, one fact each:\n"));

    /* Three branches share the prompt's KV cells; each stops at the end of its line. */
    const char *prefixes[] = {"1. Apple:", "2. Banana:", "3. Cherry:"};
    const char *stops[] = {"\n"};
    pardec_run_limits branch_limits;
    CHECK(pardec_run_limits_default(&branch_limits, sizeof branch_limits));
    branch_limits.max_tokens = BRANCH_TOKENS;
    branch_limits.stop = stops;
    branch_limits.n_stop = 1;
    pardec_node nodes[3];
    CHECK(pardec_session_fork(session, PARDEC_NODE_TRUNK, prefixes, 3, &branch_limits, nodes));
    printf("forked nodes %u %u %u", nodes[0], nodes[1], nodes[2]);

    CHECK(pardec_session_run(session, on_event, &pr));

    /* Keep all three; the trunk continues after them, attending to every branch. */
    CHECK(pardec_session_join(session, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0,
                              "\nIn short,"));
    pardec_run_limits tail;
    CHECK(pardec_run_limits_default(&tail, sizeof tail));
    tail.max_tokens = TAIL_TOKENS;
    CHECK(pardec_session_generate(session, &tail, on_event, &pr, NULL));

    CHECK(pardec_session_result(session, &result));
    const char *text;
    CHECK(pardec_result_text(result, &text));
    printf("\n== text:\n%s\n", text);

    size_t n_blocks;
    CHECK(pardec_result_n_blocks(result, &n_blocks));
    for (size_t b = 0; b < n_blocks; b++) {
        pardec_block_info block;
        CHECK(pardec_result_block(result, b, &block, sizeof block));
        for (size_t i = 0; i < block.n_branches; i++) {
            pardec_branch_info br;
            CHECK(pardec_result_branch(result, b, i, &br, sizeof br));
            printf("== branch %s (%s, %zu tokens): %s\n", br.label, stop_reason_name(br.stop_reason),
                   br.n_tokens, br.text);
        }
    }

    pardec_stats st;
    CHECK(pardec_result_stats(result, &st, sizeof st));
    printf("== stats: tokens_total=%llu tokens_branch=%llu tokens_prefill=%llu steps=%llu "
           "blocks=%llu branches=%llu tps=%.2f p_tps=%.2f dp=%.3f abn=%.2f parallel=%.3f "
           "kv_cells_used=%llu kv_cells_unshared=%llu events=%zu\n",
           (unsigned long long)st.tokens_total, (unsigned long long)st.tokens_branch,
           (unsigned long long)st.tokens_prefill, (unsigned long long)st.steps,
           (unsigned long long)st.blocks, (unsigned long long)st.branches, st.tps, st.p_tps,
           st.dp, st.abn, st.parallel, (unsigned long long)st.kv_cells_used,
           (unsigned long long)st.kv_cells_unshared, pr.events);
    rc = 0;

cleanup:
    /* Documented order: results and strings, then sessions, then the model (any order is
     * safe, and every free accepts NULL). */
    pardec_result_free(result);
    pardec_string_free(prompt);
    pardec_session_free(session);
    pardec_model_free(model);
    return rc;
}
