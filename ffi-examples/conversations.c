/*
 * pardec conversations test (C11): several requests decoding together in one context, as a
 * server drives them from its decoding thread: submit, step with a callback, cancel from the
 * callback, take the outcomes, reuse a finished answer's cells for the next chat turn; and
 * the misuse of every function (NULL handles and pointers, wrong struct sizes, invalid UTF-8,
 * unknown protocols, re-entrant calls from the callback). Nothing may crash; every call must
 * return its documented status.
 *
 *   conversations [MODEL.gguf]        (default: $PARDEC_MODEL)
 *
 * PARDEC_THREADS sets the compute threads (default 1); PARDEC_TEST_VALGRIND=1 decodes less.
 *
 * Exit status: 0 when every check passed, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pardec.h"

#define MAX_REQUESTS 8
/* Tokens per answer: 12, or 5 under valgrind (PARDEC_TEST_VALGRIND=1), which decodes ~50x slower. */
static int answer_tokens = 12;

/* What the callback sees, per request id (ids are small here: 1, 2, 3...). */
typedef struct watcher {
    pardec_conversations *conv; /* for re-entrant calls */
    uint64_t cancel_id;         /* the callback returns false for it at its 3rd token */
    int tokens[MAX_REQUESTS + 1];
    char text[MAX_REQUESTS + 1][1024];
    int bad_events;
    pardec_status reentrant_status;
} watcher;

static bool on_event(void *user_data, uint64_t request, const pardec_event *ev) {
    watcher *w = user_data;
    if (request == 0 || request > MAX_REQUESTS || ev->struct_size < sizeof(pardec_event) ||
        ev->label == NULL || ev->text == NULL) {
        w->bad_events++;
        return true;
    }
    if (ev->kind == PARDEC_EVENT_KIND_TOKEN && ev->label[0] == '\0') {
        w->tokens[request]++;
        size_t have = strlen(w->text[request]);
        if (have + ev->text_len < sizeof w->text[request]) memcpy(w->text[request] + have, ev->text, ev->text_len + 1);
        if (w->tokens[request] == 2 && w->reentrant_status == PARDEC_STATUS_OK) {
            uint64_t id = 0;
            w->reentrant_status = pardec_conversations_submit(w->conv, "again", NULL, &id);
            pardec_conversations_free(w->conv); /* must do nothing while in use */
        }
        if (request == w->cancel_id && w->tokens[request] == 3) return false;
    }
    return true;
}

typedef struct taken {
    int n;
    pardec_outcome_info info[MAX_REQUESTS];
    char *text[MAX_REQUESTS];
} taken;

static void take_all(pardec_conversations *conv, taken *t) {
    for (;;) {
        bool found = false;
        pardec_outcome_info info;
        char *text = NULL, *report = NULL;
        EXPECT(pardec_conversations_next_outcome(conv, &found, &info, sizeof info, &text, &report),
               PARDEC_STATUS_OK);
        if (!found) return;
        ASSERT(report != NULL && strstr(report, "\"error\":null") != NULL);
        pardec_string_free(report);
        if (t->n == MAX_REQUESTS) {
            pardec_string_free(text);
            continue;
        }
        t->info[t->n] = info;
        t->text[t->n] = text;
        t->n++;
    }
}

static const pardec_outcome_info *outcome_of(const taken *t, uint64_t id, const char **text) {
    for (int i = 0; i < t->n; i++)
        if (t->info[i].request == id) {
            *text = t->text[i];
            return &t->info[i];
        }
    return NULL;
}

static void misuse(pardec_model *model) {
    pardec_conversations_params cp;
    pardec_request_params rp;
    EXPECT(pardec_conversations_params_default(NULL, sizeof cp), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_params_default(&cp, 3), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_request_params_default(&rp, sizeof rp + 8), PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_conversations_params_default(&cp, sizeof cp), PARDEC_STATUS_OK);
    EXPECT(pardec_request_params_default(&rp, sizeof rp), PARDEC_STATUS_OK);
    ASSERT(cp.max_active >= 1 && rp.max_tokens > 0 && rp.protocol == NULL && rp.strip_stop);

    pardec_conversations *conv = (pardec_conversations *)0x1; /* must stay untouched */
    EXPECT(pardec_conversations_new(NULL, NULL, NULL, &conv), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_new(model, NULL, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    cp.max_active = 0;
    EXPECT(pardec_conversations_new(model, NULL, &cp, &conv), PARDEC_STATUS_INVALID_ARGUMENT);
    cp.max_active = 200; /* 200 * (1 + 4) sequence ids: more than llama.cpp has */
    EXPECT(pardec_conversations_new(model, NULL, &cp, &conv), PARDEC_STATUS_INVALID_ARGUMENT);
    pardec_session_params sp;
    EXPECT(pardec_session_params_default(&sp, sizeof sp), PARDEC_STATUS_OK);
    sp.max_branches = 2; /* too few for 4 requests with their branches */
    EXPECT(pardec_conversations_new(model, &sp, NULL, &conv), PARDEC_STATUS_INVALID_ARGUMENT);
    cp.struct_size = 5;
    EXPECT(pardec_conversations_new(model, NULL, &cp, &conv), PARDEC_STATUS_STRUCT_SIZE);
    ASSERT(conv == (pardec_conversations *)0x1);

    uint64_t id = 77;
    bool flag = true;
    EXPECT(pardec_conversations_submit(NULL, "hi", NULL, &id), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_step(NULL, NULL, NULL, &flag), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_cancel(NULL, 1, &flag), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_next_outcome(NULL, &flag, NULL, 0, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    pardec_conversations_free(NULL);

    conv = NULL;
    EXPECT(pardec_conversations_new(model, NULL, NULL, &conv), PARDEC_STATUS_OK);
    EXPECT(pardec_conversations_submit(conv, NULL, NULL, &id), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_submit(conv, "hi", NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_submit(conv, "ok \x80 no", NULL, &id), PARDEC_STATUS_INVALID_UTF8);
    EXPECT(pardec_conversations_submit(conv, "", NULL, &id), PARDEC_STATUS_EMPTY_PROMPT);
    rp.protocol = "no-such-protocol";
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_INVALID_ARGUMENT);
    rp.protocol = "apr"; /* APR's sub-searches are not served by conversations */
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_INVALID_ARGUMENT);
    rp.protocol = "{not json";
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_INVALID_ARGUMENT);
    rp.protocol = NULL;
    rp.max_tokens = 1u << 30; /* could never fit the context */
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_PROMPT_TOO_LONG);
    rp.max_tokens = 4;
    rp.sampling.top_p = 2.0f;
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_INVALID_ARGUMENT);
    rp.sampling.top_p = 1.0f;
    const char *stops[] = {NULL};
    rp.stop = stops;
    rp.n_stop = 1;
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_NULL_ARGUMENT);
    rp.n_stop = PARDEC_MAX_STOP_STRINGS + 1;
    EXPECT(pardec_conversations_submit(conv, "hi", &rp, &id), PARDEC_STATUS_INVALID_ARGUMENT);
    ASSERT(id == 77);
    rp.stop = NULL;
    rp.n_stop = 0;

    /* Nothing queued: a step does nothing and says so; no outcome to take. */
    flag = true;
    EXPECT(pardec_conversations_step(conv, NULL, NULL, &flag), PARDEC_STATUS_OK);
    ASSERT(!flag);
    EXPECT(pardec_conversations_next_outcome(conv, &flag, NULL, 0, NULL, NULL), PARDEC_STATUS_OK);
    ASSERT(!flag);
    EXPECT(pardec_conversations_next_outcome(conv, NULL, NULL, 0, NULL, NULL), PARDEC_STATUS_NULL_ARGUMENT);
    EXPECT(pardec_conversations_cancel(conv, 12345, &flag), PARDEC_STATUS_OK);
    ASSERT(!flag);

    /* A finished request with a wrong info size: refused, and the outcome stays queued. */
    rp.ban_eog = true;
    EXPECT(pardec_conversations_submit(conv, "Hello", &rp, &id), PARDEC_STATUS_OK);
    for (flag = true; flag;) EXPECT(pardec_conversations_step(conv, NULL, NULL, &flag), PARDEC_STATUS_OK);
    pardec_outcome_info info;
    EXPECT(pardec_conversations_next_outcome(conv, &flag, &info, sizeof info - 1, NULL, NULL),
           PARDEC_STATUS_STRUCT_SIZE);
    EXPECT(pardec_conversations_next_outcome(conv, &flag, &info, sizeof info, NULL, NULL), PARDEC_STATUS_OK);
    ASSERT(flag && info.request == id && info.status == PARDEC_STATUS_OK && info.generated_tokens == 4);
    pardec_conversations_free(conv);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("PARDEC_MODEL");
    if (!path) {
        fprintf(stderr, "usage: %s MODEL.gguf (or set PARDEC_MODEL)\n", argv[0]);
        return 2;
    }
    const char *valgrind = getenv("PARDEC_TEST_VALGRIND");
    if (valgrind && strcmp(valgrind, "1") == 0) answer_tokens = 5;
    pardec_model *model = NULL;
    EXPECT(pardec_model_load(path, NULL, &model), PARDEC_STATUS_OK);
    if (!model) return 1;
    misuse(model);

    pardec_session_params sp;
    EXPECT(pardec_session_params_default(&sp, sizeof sp), PARDEC_STATUS_OK);
    pardec_conversations_params cp;
    EXPECT(pardec_conversations_params_default(&cp, sizeof cp), PARDEC_STATUS_OK);
    cp.max_active = 3;
    cp.branches_per_request = 2;
    cp.cached_prompts = 2;
    sp.n_ctx = 2048;
    sp.max_branches = cp.max_active * (1 + cp.branches_per_request) + cp.cached_prompts;
    const char *threads = getenv("PARDEC_THREADS");
    sp.n_threads = threads ? (uint32_t)atoi(threads) : 1;
    pardec_conversations *conv = NULL;
    EXPECT(pardec_conversations_new(model, &sp, &cp, &conv), PARDEC_STATUS_OK);
    if (!conv) return 1;

    /* Round 1: four requests for three places (the fourth waits its turn); two ask the same
     * thing, one is cancelled by the callback, one runs under a protocol. */
    const char *questions[] = {"Name a color.", "Name a fruit.", "Name a color.", "Name a city."};
    char *prompts[4] = {0};
    uint64_t ids[4] = {0};
    pardec_request_params rp;
    EXPECT(pardec_request_params_default(&rp, sizeof rp), PARDEC_STATUS_OK);
    rp.max_tokens = (uint32_t)answer_tokens;
    rp.ban_eog = true; /* exactly answer_tokens each */
    for (int i = 0; i < 4; i++) {
        pardec_chat_message chat[] = {{"user", questions[i]}};
        EXPECT(pardec_model_apply_chat_template(model, chat, 1, &prompts[i]), PARDEC_STATUS_OK);
        pardec_request_params r = rp;
        if (i == 3) {
            r.protocol = "multiverse";
            r.max_branch_tokens = 8;
        }
        EXPECT(pardec_conversations_submit(conv, prompts[i], &r, &ids[i]), PARDEC_STATUS_OK);
    }
    ASSERT(ids[0] == 1 && ids[1] == 2 && ids[2] == 3 && ids[3] == 4);

    watcher w = {.conv = conv, .cancel_id = ids[1]};
    bool busy = true;
    int steps = 0;
    while (busy && steps < 1000) {
        EXPECT(pardec_conversations_step(conv, on_event, &w, &busy), PARDEC_STATUS_OK);
        steps++;
    }
    ASSERT(!busy);
    ASSERT(w.bad_events == 0);
    ASSERT(w.reentrant_status == PARDEC_STATUS_BUSY);
    /* Three running at once: far fewer steps than answers one after another. */
    ASSERT(steps < 2 * answer_tokens + 8);

    taken t = {0};
    take_all(conv, &t);
    ASSERT(t.n == 3); /* the cancelled request has no outcome */
    const char *a = NULL, *b = NULL, *c = NULL;
    const pardec_outcome_info *oa = outcome_of(&t, ids[0], &a);
    const pardec_outcome_info *ob = outcome_of(&t, ids[2], &b);
    const pardec_outcome_info *oc = outcome_of(&t, ids[3], &c);
    const char *none = NULL;
    ASSERT(outcome_of(&t, ids[1], &none) == NULL);
    ASSERT(oa && ob && oc);
    if (oa && ob && oc) {
        ASSERT(oa->status == PARDEC_STATUS_OK && oa->stop_reason == PARDEC_STOP_REASON_MAX_TOKENS);
        ASSERT(oa->generated_tokens == (uint64_t)answer_tokens && oa->steps > 0 && oa->steps <= (uint64_t)answer_tokens);
        ASSERT(oa->prompt_tokens > 0 && oa->reused_tokens == 0);
        /* The same question side by side, greedy: the same answer, and what streamed is it. */
        ASSERT(strcmp(a, b) == 0 && strlen(a) > 0);
        ASSERT(strcmp(w.text[ids[0]], a) == 0);
        /* The fourth waited for a place (the cancel freed one). */
        ASSERT(oc->status == PARDEC_STATUS_OK && oc->queued_seconds > 0.0);
        printf("color: %s\ncity (multiverse): %s\n", a, c);
    }
    ASSERT(w.tokens[ids[1]] == 3);

    /* Round 2: the next chat turn starts with the first answer's cells, which stay cached. */
    if (oa) {
        pardec_chat_message chat[] = {{"user", questions[0]}, {"assistant", a}, {"user", "Another one?"}};
        char *turn = NULL;
        EXPECT(pardec_model_apply_chat_template(model, chat, 3, &turn), PARDEC_STATUS_OK);
        ASSERT(turn && strncmp(turn, prompts[0], strlen(prompts[0])) == 0);
        uint64_t id = 0;
        EXPECT(pardec_conversations_submit(conv, turn, &rp, &id), PARDEC_STATUS_OK);
        busy = true;
        while (busy) EXPECT(pardec_conversations_step(conv, NULL, NULL, &busy), PARDEC_STATUS_OK);
        taken t2 = {0};
        take_all(conv, &t2);
        ASSERT(t2.n == 1 && t2.info[0].request == id);
        /* Reused: the first prompt at least (and the answer's tokens, as far as the template
         * renders them as they were sampled). */
        ASSERT(t2.n == 1 && t2.info[0].reused_tokens > oa->prompt_tokens);
        printf("turn 2 reused %llu of %llu prompt tokens\n",
               t2.n ? (unsigned long long)t2.info[0].reused_tokens : 0ull,
               t2.n ? (unsigned long long)t2.info[0].prompt_tokens : 0ull);
        for (int i = 0; i < t2.n; i++) pardec_string_free(t2.text[i]);
        pardec_string_free(turn);
    }

    for (int i = 0; i < t.n; i++) pardec_string_free(t.text[i]);
    for (int i = 0; i < 4; i++) pardec_string_free(prompts[i]);
    pardec_conversations_free(conv);
    pardec_model_free(model);
    printf("conversations: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
