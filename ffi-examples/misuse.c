/*
 * pardec misuse test (C11): every handle and pointer argument NULL, invalid UTF-8, zero and
 * huge counts, wrong struct sizes, calls in the wrong state, re-entrant calls from a callback,
 * a callback that cancels mid-branch (after which the session must still work), and frees in
 * every order. Each call must return its documented status, leave its out-params untouched on
 * failure, and nothing may crash. Run it under valgrind too (scripts/test-ffi.sh does).
 *
 *   misuse [MODEL.gguf]        (default: $PARDEC_MODEL)
 *
 * PARDEC_THREADS sets the compute threads per session (default 1).
 *
 * Exit status: 0 when every check passed, 1 otherwise.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "pardec.h"

/* Invalid UTF-8: a lone continuation byte and an overlong encoding. */
static const char BAD_UTF8[] = "ok \x80 then \xc0\xaf";

/* A sentinel that out-params must still hold after a failed call. */
#define SENTINEL ((void *)(uintptr_t)0x5e5e5e5e)

static pardec_session *new_session(pardec_model *m, uint32_t n_ctx, uint32_t max_branches,
                                   uint32_t max_depth) {
    pardec_session_params p;
    EXPECT(pardec_session_params_default(&p, sizeof p), PARDEC_STATUS_OK);
    p.n_ctx = n_ctx;
    p.max_branches = max_branches;
    p.max_depth = max_depth;
    /* One compute thread unless PARDEC_THREADS says otherwise: several spin-wait at a
     * barrier for each other, which crawls under valgrind (it runs one thread at a time) and
     * on a machine busy with other work. */
    const char *threads = getenv("PARDEC_THREADS");
    p.n_threads = threads ? (uint32_t)atoi(threads) : 1;
    pardec_session *s = NULL;
    EXPECT(pardec_session_new(m, &p, &s), PARDEC_STATUS_OK);
    return s;
}

static pardec_run_limits limits_of(uint32_t max_tokens) {
    pardec_run_limits l;
    pardec_run_limits_default(&l, sizeof l);
    l.max_tokens = max_tokens;
    return l;
}

/* ----- callbacks ---------------------------------------------------------------------------- */

typedef struct cancel_state {
    pardec_session *session; /* for re-entrant calls */
    int branch_tokens;
    int cancel_after;        /* return false at this many branch tokens */
    int cancelled_ends;      /* END events with reason CANCELLED */
    int done_events;
    pardec_status done_status;
    pardec_status reentrant_status;
    int bad_events;
} cancel_state;

static bool cancelling_callback(void *user_data, const pardec_event *ev) {
    cancel_state *st = user_data;
    if (ev->struct_size < sizeof(pardec_event) || ev->label == NULL || ev->text == NULL ||
        strlen(ev->text) != ev->text_len)
        st->bad_events++;
    switch (ev->kind) {
    case PARDEC_EVENT_KIND_TOKEN:
        if (ev->label[0] != '\0') st->branch_tokens++;
        if (st->branch_tokens == 2) {
            /* Re-entrant calls: refused, not corrupting. */
            st->reentrant_status = pardec_session_prompt(st->session, "again");
            pardec_session_free(st->session); /* must do nothing while in use */
        }
        return st->branch_tokens < st->cancel_after;
    case PARDEC_EVENT_KIND_END:
        if (ev->stop_reason == PARDEC_STOP_REASON_CANCELLED) st->cancelled_ends++;
        return true;
    case PARDEC_EVENT_KIND_DONE:
        st->done_events++;
        st->done_status = ev->status;
        return true;
    case PARDEC_EVENT_KIND_FORK: /* auto mode only: never sent by the calls tested here */
    case PARDEC_EVENT_KIND_JOIN:
    case PARDEC_EVENT_KIND_WARNING:
        break;
    }
    st->bad_events++;
    return true;
}

/* ----- sections ----------------------------------------------------------------------------- */

static void globals(void) {
    for (int i = 0; i <= PARDEC_STATUS_PANIC; i++) ASSERT(pardec_status_str(i)[0] != '\0');
    ASSERT(strcmp(pardec_status_str(-1), "unknown status") == 0);
    ASSERT(strcmp(pardec_status_str(1 << 30), "unknown status") == 0);
    ASSERT(strcmp(pardec_version(), PARDEC_VERSION) == 0);
    pardec_string_free(NULL);
    pardec_result_free(NULL);
    pardec_session_free(NULL);
    pardec_model_free(NULL);

    pardec_model_params mp;
    pardec_session_params sp;
    pardec_run_limits rl;
    EXPECT(pardec_model_params_default(NULL, sizeof mp), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_params_default(&mp, 0), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_model_params_default(&mp, 3), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_session_params_default(&sp, sizeof sp + 8), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_session_params_default(NULL, sizeof sp), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_run_limits_default(&rl, SIZE_MAX), PARDEC_STATUS_STRUCT_SIZE);
    ASSERT(pardec_last_error()[0] != '\0');
    EXPECT(pardec_run_limits_default(&rl, sizeof rl), PARDEC_STATUS_OK);
    ASSERT(pardec_last_error()[0] == '\0'); /* a success clears it */
    ASSERT(rl.struct_size == sizeof rl && rl.max_tokens > 0 && rl.n_stop == 0);

    /* JSON Schema -> grammar: bad arguments and bad schemas are statuses, outputs untouched. */
    char *gbnf = NULL;
    EXPECT(pardec_grammar_from_json_schema(NULL, &gbnf), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_grammar_from_json_schema("{}", NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_grammar_from_json_schema("{\"type\": ", &gbnf), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_grammar_from_json_schema("{\"type\": \"no-such-type\"}", &gbnf), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_grammar_from_json_schema("\xff", &gbnf), PARDEC_STATUS_INVALID_UTF8);
    ASSERT(gbnf == NULL);
    EXPECT(pardec_grammar_from_json_schema("{\"type\": \"integer\"}", &gbnf), PARDEC_STATUS_OK);
    ASSERT(gbnf != NULL && strstr(gbnf, "root") != NULL);
    pardec_string_free(gbnf);
}

static void loading(const char *path) {
    pardec_model *m = SENTINEL;
    EXPECT(pardec_model_load(NULL, NULL, &m), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_load(path, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_load("/nonexistent/model.gguf", NULL, &m), PARDEC_STATUS_MODEL_NOT_FOUND);
    EXPECT(pardec_model_load("/", NULL, &m), PARDEC_STATUS_MODEL_NOT_FOUND);
    /* Paths are bytes on Unix: invalid UTF-8 is just a file that does not exist. */
    EXPECT(pardec_model_load("/nonexistent/\xff\xfe.gguf", NULL, &m), PARDEC_STATUS_MODEL_NOT_FOUND);

    char tmp[] = "/tmp/pardec-misuse-XXXXXX";
    int fd = mkstemp(tmp);
    ASSERT(fd >= 0);
    if (fd >= 0) {
        ASSERT(write(fd, "not a model", 11) == 11);
        close(fd);
        EXPECT(pardec_model_load(tmp, NULL, &m), PARDEC_STATUS_NOT_GGUF);
        /* The GGUF magic followed by garbage: llama.cpp refuses it, without aborting. */
        FILE *f = fopen(tmp, "wb");
        if (f) {
            static const unsigned char junk[] = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0xff, 0xff, 0xff,
                                                 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0};
            fwrite(junk, 1, sizeof junk, f);
            fclose(f);
            EXPECT(pardec_model_load(tmp, NULL, &m), PARDEC_STATUS_MODEL_LOAD);
        }
        unlink(tmp);
    }

    pardec_model_params mp;
    EXPECT(pardec_model_params_default(&mp, sizeof mp), PARDEC_STATUS_OK);
    mp.struct_size = 1;
    EXPECT(pardec_model_load(path, &mp, &m), PARDEC_STATUS_STRUCT_SIZE);
    mp.struct_size = sizeof mp;
    mp.n_gpu_layers = -7;
    EXPECT(pardec_model_load(path, &mp, &m), PARDEC_STATUS_INVALID_ARGUMENT);
    mp.n_gpu_layers = -1;
    mp.rpc_servers = "127.0.0.1"; /* no port */
    EXPECT(pardec_model_load(path, &mp, &m), PARDEC_STATUS_INVALID_ARGUMENT);
    mp.rpc_servers = "127.0.0.1:1,\xff:2";
    EXPECT(pardec_model_load(path, &mp, &m), PARDEC_STATUS_INVALID_UTF8);
    /* A well-formed list: this library has no RPC backend (tests build it without), or, with
     * one, nothing listens on port 1. Either way a specific status, not an abort. */
    mp.rpc_servers = "127.0.0.1:1";
    EXPECT(pardec_model_load(path, &mp, &m), PARDEC_STATUS_RPC);
    mp.rpc_servers = NULL;
    /* The struct of 0.1 to 0.5, without rpc_servers, is still taken. */
    mp.struct_size = offsetof(pardec_model_params, rpc_servers);
    mp.n_gpu_layers = -7;
    EXPECT(pardec_model_load(path, &mp, &m), PARDEC_STATUS_INVALID_ARGUMENT);
    ASSERT(m == SENTINEL); /* never written by a failed call */
}

static void model_queries(pardec_model *m) {
    size_t n = 12345;
    EXPECT(pardec_model_n_vocab(NULL, &n), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_n_vocab(m, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    ASSERT(n == 12345);
    EXPECT(pardec_model_n_vocab(m, &n), PARDEC_STATUS_OK);
    ASSERT(n > 1000);

    char *s = SENTINEL;
    EXPECT(pardec_model_architecture(NULL, &s), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_architecture(m, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    ASSERT(s == SENTINEL);
    EXPECT(pardec_model_architecture(m, &s), PARDEC_STATUS_OK);
    ASSERT(s != SENTINEL && strcmp(s, "llama") == 0);
    pardec_string_free(s);

    pardec_chat_message ok[] = {{"user", "hi"}};
    pardec_chat_message null_role[] = {{NULL, "hi"}};
    pardec_chat_message bad_text[] = {{"user", BAD_UTF8}};
    s = SENTINEL;
    EXPECT(pardec_model_apply_chat_template(NULL, ok, 1, &s), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_apply_chat_template(m, NULL, 1, &s), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_apply_chat_template(m, ok, 0, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_model_apply_chat_template(m, ok, SIZE_MAX, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_model_apply_chat_template(m, ok, 1, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_apply_chat_template(m, null_role, 1, &s), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_model_apply_chat_template(m, bad_text, 1, &s), PARDEC_STATUS_INVALID_UTF8);
    ASSERT(s == SENTINEL);
    EXPECT(pardec_model_apply_chat_template(m, ok, 1, &s), PARDEC_STATUS_OK);
    ASSERT(s != SENTINEL && strstr(s, "hi") != NULL);
    pardec_string_free(s);
}

static void session_creation(pardec_model *m) {
    pardec_session *s = SENTINEL;
    pardec_session_params p;
    EXPECT(pardec_session_params_default(&p, sizeof p), PARDEC_STATUS_OK);
    EXPECT(pardec_session_new(NULL, &p, &s), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_new(m, &p, NULL), PARDEC_STATUS_NULL_ARGUMENT);

    pardec_session_params bad = p;
    bad.struct_size = 0;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_STRUCT_SIZE);
    bad = p;
    bad.kv_type = 7;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.flash_attn = 5;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.n_ctx = 0;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.n_batch = 0;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.max_branches = 0;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.max_branches = 100000;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.max_depth = 0;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.sampling.top_p = 2.0f;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = p;
    bad.device_candidates = 0xFFFFFFFFu; /* more candidates than the vocabulary has */
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_INVALID_ARGUMENT);
    ASSERT(s == SENTINEL);

    /* A caller built against the 0.1 header (its struct ends before device_candidates) still
     * creates sessions: the appended field takes its default, host selection. */
    bad = p;
    bad.struct_size = offsetof(pardec_session_params, device_candidates);
    bad.n_ctx = 256;
    bad.device_candidates = 0xFFFFFFFFu; /* beyond its struct: never read */
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_OK);
    ASSERT(s != SENTINEL && s != NULL);
    pardec_session_free(s);
    s = SENTINEL;
    bad.device_candidates = 16;
    bad.struct_size = sizeof bad;
    EXPECT(pardec_session_new(m, &bad, &s), PARDEC_STATUS_OK); /* device selection */
    pardec_session_free(s);
}

static void null_session(void) {
    pardec_stats st;
    pardec_result *r = SENTINEL;
    bool running = true;
    const char *pre[] = {"a"};
    EXPECT(pardec_session_prompt(NULL, "x"), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_append(NULL, PARDEC_NODE_TRUNK, "x"), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_generate(NULL, NULL, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_fork(NULL, PARDEC_NODE_TRUNK, pre, 1, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_run(NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_resume(NULL, PARDEC_NODE_TRUNK, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_step(NULL, NULL, NULL, &running), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_join(NULL, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_join_rule(NULL, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0, PARDEC_JOIN_RULE_SAME_MAX, NULL),
           PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_result(NULL, &r), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_stats(NULL, &st, sizeof st), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_clear(NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_reset_stats(NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_generate_auto(NULL, "multiverse", 8, 8, NULL, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_generate_sot(NULL, "Why?", 8, 8, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    float lp[4];
    size_t n_lp = 9;
    EXPECT(pardec_session_score(NULL, PARDEC_NODE_TRUNK, "x", lp, 4, &n_lp), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_set_adapters(NULL, NULL, NULL, 0), PARDEC_STATUS_NULL_ARGUMENT);
    pardec_adapter *a = SENTINEL;
    EXPECT(pardec_adapter_load(NULL, "/nonexistent.gguf", &a), PARDEC_STATUS_NULL_ARGUMENT);
    pardec_adapter_free(NULL);
    ASSERT(r == SENTINEL && running && n_lp == 9 && a == SENTINEL);

    const char *text = SENTINEL;
    size_t n = 7;
    pardec_block_info bi;
    pardec_branch_info br;
    EXPECT(pardec_result_text(NULL, &text), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_n_blocks(NULL, &n), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_block(NULL, 0, &bi, sizeof bi), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_branch(NULL, 0, 0, &br, sizeof br), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_stats(NULL, &st, sizeof st), PARDEC_STATUS_NULL_ARGUMENT);
    ASSERT(text == SENTINEL && n == 7);
}

/* Prompt, generate and fork argument checks on a live session. */
static void arguments(pardec_model *m) {
    pardec_session *s = new_session(m, 512, 4, 2);
    if (!s) return;
    /* Nothing to generate from yet. */
    pardec_run_limits l = limits_of(4);
    EXPECT(pardec_session_generate(s, &l, NULL, NULL, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_prompt(s, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_prompt(s, BAD_UTF8), PARDEC_STATUS_INVALID_UTF8);
    EXPECT(pardec_session_prompt(s, ""), PARDEC_STATUS_EMPTY_PROMPT);
    EXPECT(pardec_session_append(s, PARDEC_NODE_TRUNK, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_append(s, 999, "x"), PARDEC_STATUS_INVALID_ARGUMENT);
    /* Auto modes: bad protocol and question arguments, before anything is decoded. */
    char *json = SENTINEL;
    EXPECT(pardec_session_generate_auto(s, NULL, 8, 8, NULL, NULL, NULL, &json), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_generate_auto(s, BAD_UTF8, 8, 8, NULL, NULL, NULL, &json), PARDEC_STATUS_INVALID_UTF8);
    EXPECT(pardec_session_generate_sot(s, NULL, 8, 8, NULL, NULL, &json), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_generate_sot(s, BAD_UTF8, 8, 8, NULL, NULL, &json), PARDEC_STATUS_INVALID_UTF8);
    EXPECT(pardec_session_generate_sot(s, "  ", 8, 8, NULL, NULL, &json), PARDEC_STATUS_EMPTY_PROMPT);
    ASSERT(json == SENTINEL);
    EXPECT(pardec_session_prompt(s, "Colors are"), PARDEC_STATUS_OK);
    /* Skeleton-of-thought writes its own prompt: a session holding one is refused. */
    EXPECT(pardec_session_generate_sot(s, "Why is the sky blue?", 8, 8, NULL, NULL, &json), PARDEC_STATUS_INVALID_STATE);
    ASSERT(json == SENTINEL);

    /* Run limits. */
    const char *stops[] = {"\n", NULL};
    const char *bad_stops[] = {BAD_UTF8};
    int32_t banned[] = {1, 2};
    pardec_run_limits bad = l;
    bad.struct_size = sizeof l - 1;
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_STRUCT_SIZE);
    bad = l;
    bad.n_stop = 1; /* stop == NULL */
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    bad.stop = stops;
    bad.n_stop = 2; /* stops[1] == NULL */
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    bad.n_stop = SIZE_MAX;
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    bad.stop = bad_stops;
    bad.n_stop = 1;
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_INVALID_UTF8);
    bad = l;
    bad.n_banned_tokens = SIZE_MAX;
    bad.banned_tokens = banned;
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    bad.n_banned_tokens = 2;
    bad.banned_tokens = NULL;
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);

    /* A valid generation: out_text is new and UTF-8. */
    char *out = SENTINEL;
    bad.banned_tokens = banned;
    EXPECT(pardec_session_generate(s, &bad, NULL, NULL, &out), PARDEC_STATUS_OK);
    ASSERT(out != SENTINEL && out != NULL);
    if (out != SENTINEL) pardec_string_free(out);

    /* Fork arguments. */
    const char *pre[] = {" red", " green", " blue", " cyan", " magenta"};
    const char *null_pre[] = {" red", NULL};
    const char *bad_pre[] = {" red", BAD_UTF8};
    pardec_node nodes[5] = {77, 77, 77, 77, 77};
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, 0, NULL, nodes), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, NULL, 2, NULL, nodes), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, SIZE_MAX, NULL, nodes), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, PARDEC_MAX_FORK_BRANCHES + 1, NULL, nodes),
           PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, null_pre, 2, NULL, nodes), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, bad_pre, 2, NULL, nodes), PARDEC_STATUS_INVALID_UTF8);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, 5, NULL, nodes), PARDEC_STATUS_TOO_MANY_BRANCHES);
    EXPECT(pardec_session_fork(s, 999, pre, 2, NULL, nodes), PARDEC_STATUS_INVALID_ARGUMENT);
    bad = l;
    bad.struct_size = 0;
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, 2, &bad, nodes), PARDEC_STATUS_STRUCT_SIZE);
    ASSERT(nodes[0] == 77 && nodes[4] == 77);

    /* Join arguments, with no open block. */
    size_t keep[] = {0};
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, 9, NULL, 0, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, keep, 1, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0, BAD_UTF8), PARDEC_STATUS_INVALID_UTF8);

    /* Step and resume. */
    bool running = true;
    EXPECT(pardec_session_step(s, NULL, NULL, &running), PARDEC_STATUS_OK);
    ASSERT(!running);
    EXPECT(pardec_session_resume(s, 999, NULL), PARDEC_STATUS_INVALID_ARGUMENT);

    /* Stats sizes. */
    pardec_stats st;
    EXPECT(pardec_session_stats(s, NULL, sizeof st), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_stats(s, &st, 1), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_session_stats(s, &st, sizeof st), PARDEC_STATUS_OK);
    ASSERT(st.tokens_total > 0 && st.blocks == 0 && st.host_us_per_step > 0.0);
    ASSERT(st.selection_us_per_step > 0.0 && st.selection_us_per_step <= st.host_us_per_step);
    /* A 0.1 caller's smaller struct (before host_us_per_step) is filled up to its end only. */
    st.host_us_per_step = -1.0;
    EXPECT(pardec_session_stats(s, &st, offsetof(pardec_stats, host_us_per_step)), PARDEC_STATUS_OK);
    ASSERT(st.host_us_per_step == -1.0 && st.tokens_total > 0);
    EXPECT(pardec_session_reset_stats(s), PARDEC_STATUS_OK);
    EXPECT(pardec_session_stats(s, &st, sizeof st), PARDEC_STATUS_OK);
    ASSERT(st.tokens_total == 0);

    /* Clear: back to an empty session, which needs a prompt again. */
    EXPECT(pardec_session_clear(s), PARDEC_STATUS_OK);
    EXPECT(pardec_session_generate(s, &l, NULL, NULL, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_prompt(s, "Hello"), PARDEC_STATUS_OK);
    pardec_session_free(s);
}

/* Fork, cancel mid-branch, re-entrancy, join subsets, results. */
static void cancel_and_join(pardec_model *m) {
    pardec_session *s = new_session(m, 512, 4, 1);
    if (!s) return;
    EXPECT(pardec_session_prompt(s, "Animals:"), PARDEC_STATUS_OK);
    const char *pre[] = {" Cat", " Dog", " Cow"};
    pardec_run_limits l = limits_of(16);
    l.ban_eog = true; /* every branch surely runs past the cancel point */
    pardec_node nodes[3] = {0, 0, 0};
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, 3, &l, nodes), PARDEC_STATUS_OK);
    ASSERT(nodes[0] != PARDEC_NODE_TRUNK && nodes[0] != nodes[1] && nodes[1] != nodes[2]);

    /* While forked: the trunk can neither generate nor fork, the block cannot be joined yet. */
    pardec_run_limits t = limits_of(2);
    EXPECT(pardec_session_generate(s, &t, NULL, NULL, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, 1, NULL, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_append(s, nodes[0], "x"), PARDEC_STATUS_INVALID_STATE);

    cancel_state cs = {.session = s, .cancel_after = 4, .reentrant_status = PARDEC_STATUS_OK};
    EXPECT(pardec_session_run(s, cancelling_callback, &cs), PARDEC_STATUS_CANCELLED);
    ASSERT(cs.bad_events == 0);
    ASSERT(cs.reentrant_status == PARDEC_STATUS_BUSY);
    ASSERT(cs.done_events == 1 && cs.done_status == PARDEC_STATUS_CANCELLED);
    ASSERT(cs.cancelled_ends == 3);
    ASSERT(cs.branch_tokens >= 4 && cs.branch_tokens < 16 * 3);

    /* The session still works: nested fork is over the depth limit, join a subset. */
    EXPECT(pardec_session_fork(s, nodes[0], pre, 1, NULL, NULL), PARDEC_STATUS_DEPTH_LIMIT);
    size_t dup[] = {0, 0};
    size_t out_of_range[] = {5};
    size_t keep[] = {0, 2};
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, dup, 2, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, out_of_range, 1, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, NULL, 1, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, keep, SIZE_MAX, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    /* Join rules: an unknown one, and same-seq without the join text it moves. */
    EXPECT(pardec_session_join_rule(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, keep, 2, 7, NULL), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_join_rule(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, keep, 2, PARDEC_JOIN_RULE_SAME_SEQ, NULL),
           PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_KEEP, keep, 2, NULL), PARDEC_STATUS_OK);
    /* After a join that kept branches, the trunk needs text before it can generate. */
    EXPECT(pardec_session_generate(s, &t, NULL, NULL, NULL), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_append(s, PARDEC_NODE_TRUNK, "\nSo"), PARDEC_STATUS_OK);
    char *tail = NULL;
    EXPECT(pardec_session_generate(s, &t, NULL, NULL, &tail), PARDEC_STATUS_OK);
    ASSERT(tail != NULL);

    /* The result describes the cancelled, partially kept block. */
    pardec_result *r = SENTINEL;
    EXPECT(pardec_session_result(s, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_result(s, &r), PARDEC_STATUS_OK);
    ASSERT(r != SENTINEL && r != NULL);
    size_t n_blocks = 0;
    EXPECT(pardec_result_n_blocks(r, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_n_blocks(r, &n_blocks), PARDEC_STATUS_OK);
    ASSERT(n_blocks == 1);
    pardec_block_info bi;
    EXPECT(pardec_result_block(r, 1, &bi, sizeof bi), PARDEC_STATUS_OUT_OF_RANGE);
    EXPECT(pardec_result_block(r, SIZE_MAX, &bi, sizeof bi), PARDEC_STATUS_OUT_OF_RANGE);
    EXPECT(pardec_result_block(r, 0, &bi, sizeof bi - 1), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_result_block(r, 0, NULL, sizeof bi), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_block(r, 0, &bi, sizeof bi), PARDEC_STATUS_OK);
    ASSERT(bi.n_branches == 3 && bi.join_state == PARDEC_JOIN_STATE_KEEP && bi.parent_label[0] == '\0');
    pardec_branch_info br[3];
    EXPECT(pardec_result_branch(r, 0, 3, &br[0], sizeof br[0]), PARDEC_STATUS_OUT_OF_RANGE);
    EXPECT(pardec_result_branch(r, 1, 0, &br[0], sizeof br[0]), PARDEC_STATUS_OUT_OF_RANGE);
    for (size_t i = 0; i < 3; i++) {
        EXPECT(pardec_result_branch(r, 0, i, &br[i], sizeof br[i]), PARDEC_STATUS_OK);
        ASSERT(br[i].stop_reason == PARDEC_STOP_REASON_CANCELLED && br[i].stop_string == NULL);
        ASSERT(strstr(br[i].text, pre[i] + 1) != NULL); /* the prefix is part of the text */
    }
    ASSERT(br[0].kept && !br[1].kept && br[2].kept);
    ASSERT(strcmp(br[0].label, "1") == 0 && strcmp(br[2].label, "3") == 0);
    const char *text = NULL;
    EXPECT(pardec_result_text(r, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_result_text(r, &text), PARDEC_STATUS_OK);
    /* Exactly the prompt, the kept branches in order (the discarded one left out), the
     * appended text and the continuation. */
    char want[4096];
    snprintf(want, sizeof want, "Animals:%s%s\nSo%s", br[0].text, br[2].text, tail ? tail : "");
    ASSERT(strcmp(text, want) == 0);
    pardec_string_free(tail);
    pardec_stats st;
    EXPECT(pardec_result_stats(r, &st, 0), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_result_stats(r, &st, sizeof st), PARDEC_STATUS_OK);
    ASSERT(st.blocks == 1 && st.branches == 3 && st.tokens_branch > 0 && st.abn == 3.0);

    /* Free order: the session first; the result stays readable. */
    pardec_session_free(s);
    ASSERT(strcmp(text, want) == 0);
    pardec_result_free(r);
}

/* Limits of the context. */
/* LoRA adapters and scoring: wrong files and arguments get their statuses, nothing is written. */
static void adapters_and_scores(pardec_model *m, const char *model_path) {
    pardec_adapter *a = SENTINEL;
    EXPECT(pardec_adapter_load(m, NULL, &a), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_adapter_load(m, "/nonexistent/lora.gguf", NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_adapter_load(m, "/nonexistent/lora.gguf", &a), PARDEC_STATUS_MODEL_NOT_FOUND);
    EXPECT(pardec_adapter_load(m, model_path, &a), PARDEC_STATUS_NOT_ADAPTER); /* a model, not an adapter */
    ASSERT(a == SENTINEL);

    pardec_session *s = NULL;
    EXPECT(pardec_session_new(m, NULL, &s), PARDEC_STATUS_OK);
    if (!s) return;
    const pardec_adapter *none[1] = {NULL};
    float scales[1] = {1.0f};
    EXPECT(pardec_session_set_adapters(s, none, scales, 1), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_set_adapters(s, none, scales, 100000), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_set_adapters(s, NULL, NULL, 0), PARDEC_STATUS_OK); /* the base model */

    float lp[64];
    size_t n = 99;
    /* Nothing to predict the first token from yet; then a buffer too small; then success. */
    EXPECT(pardec_session_score(s, PARDEC_NODE_TRUNK, "Paris", lp, 64, &n), PARDEC_STATUS_INVALID_STATE);
    EXPECT(pardec_session_prompt(s, "The capital of France is"), PARDEC_STATUS_OK);
    EXPECT(pardec_session_score(s, PARDEC_NODE_TRUNK, " Paris, a large city", lp, 1, &n), PARDEC_STATUS_INVALID_ARGUMENT);
    EXPECT(pardec_session_score(s, PARDEC_NODE_TRUNK, "\xff", lp, 64, &n), PARDEC_STATUS_INVALID_UTF8);
    EXPECT(pardec_session_score(s, PARDEC_NODE_TRUNK, " Paris", NULL, 64, &n), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_session_score(s, 77, " Paris", lp, 64, &n), PARDEC_STATUS_INVALID_ARGUMENT);
    ASSERT(n == 99);
    EXPECT(pardec_session_score(s, PARDEC_NODE_TRUNK, " Paris", lp, 64, &n), PARDEC_STATUS_OK);
    ASSERT(n >= 1 && n <= 6 && lp[0] <= 0.0f);
    pardec_session_free(s);
}

static void context_limits(pardec_model *m) {
    pardec_session *s = new_session(m, 64, 2, 1);
    if (!s) return;
    char long_prompt[4096] = "";
    for (int i = 0; i < 100; i++) strcat(long_prompt, "one two three ");
    EXPECT(pardec_session_prompt(s, long_prompt), PARDEC_STATUS_PROMPT_TOO_LONG);
    EXPECT(pardec_session_prompt(s, "Count:"), PARDEC_STATUS_OK);
    pardec_session_free(s);
}

/* The model freed before its session: the session keeps working. */
static void free_model_first(const char *path) {
    pardec_model *m = NULL;
    EXPECT(pardec_model_load(path, NULL, &m), PARDEC_STATUS_OK);
    if (!m) return;
    pardec_session *s = new_session(m, 256, 2, 1);
    pardec_model_free(m);
    if (!s) return;
    EXPECT(pardec_session_prompt(s, "Hello"), PARDEC_STATUS_OK);
    pardec_run_limits l = limits_of(2);
    EXPECT(pardec_session_generate(s, &l, NULL, NULL, NULL), PARDEC_STATUS_OK);
    pardec_session_free(s);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("PARDEC_MODEL");
    if (!path) {
        fprintf(stderr, "usage: %s MODEL.gguf (or set PARDEC_MODEL)\n", argv[0]);
        return 2;
    }
    globals();
    loading(path);
    null_session();

    pardec_model *m = NULL;
    EXPECT(pardec_model_load(path, NULL, &m), PARDEC_STATUS_OK);
    if (m) {
        model_queries(m);
        session_creation(m);
        arguments(m);
        cancel_and_join(m);
        adapters_and_scores(m, path);
        context_limits(m);
        pardec_model_free(m);
    }
    free_model_first(path);

    printf("misuse: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
