/*
 * pardec thread test (C11 + pthreads): four threads, each with its own session on one shared
 * model, run the same fork/run/join/generate scenario at the same time; each result must be
 * identical to the one a single thread produced alone. Even threads decode greedily, odd ones
 * sample with a fixed seed (branch streams are seeded from the seed and the branch's path, so
 * sampling is reproducible too).
 *
 *   threads [MODEL.gguf]        (default: $PARDEC_MODEL)
 *
 * PARDEC_TEST_TOKENS sets the tokens per branch and for the continuation (default 8).
 * PARDEC_TEST_VALGRIND=1 keeps the decoding minimal (empty branch prefixes, one token per
 * branch): under valgrind every token costs a second or more.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pardec.h"

#define N_THREADS 4

static uint32_t n_tokens = 8;
static int minimal = 0;

typedef struct job {
    const pardec_model *model; /* shared: pardec_model is thread-safe */
    int sampled;               /* 0: greedy, 1: temperature 0.9 with a fixed seed */
    char *text;                /* the flattened result (malloc'd), NULL on failure */
    size_t events;
} job;

static bool count_events(void *user_data, const pardec_event *ev) {
    (void)ev;
    ((job *)user_data)->events++;
    return true;
}

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

#define TRY(call)                                                                              \
    do {                                                                                       \
        pardec_status st_ = (call);                                                            \
        if (st_ != PARDEC_STATUS_OK) {                                                         \
            fprintf(stderr, "%s: %s (%s)\n", #call, pardec_status_str(st_), pardec_last_error()); \
            goto done;                                                                         \
        }                                                                                      \
    } while (0)

static void *scenario(void *arg) {
    job *j = arg;
    pardec_session *s = NULL;
    pardec_result *r = NULL;

    pardec_session_params p;
    TRY(pardec_session_params_default(&p, sizeof p));
    p.n_ctx = 512;
    p.max_branches = 3;
    /* One compute thread per session: same arithmetic whatever the machine is doing. */
    p.n_threads = 1;
    if (j->sampled) {
        p.sampling.temperature = 0.9f;
        p.sampling.top_k = 40;
        p.sampling.seed = 1234;
    }
    TRY(pardec_session_new(j->model, &p, &s));
    TRY(pardec_session_prompt(s, "Colors and meanings:"));
    const char *named[] = {"\nRed:", "\nGreen:", "\nBlue:"};
    /* Empty prefixes: each branch samples its first token from the fork point (no prefill). */
    const char *empty[] = {"", "", ""};
    const char *const *pre = minimal ? empty : named;
    pardec_run_limits l;
    TRY(pardec_run_limits_default(&l, sizeof l));
    l.max_tokens = n_tokens;
    TRY(pardec_session_fork(s, PARDEC_NODE_TRUNK, pre, 3, &l, NULL));
    TRY(pardec_session_run(s, count_events, j));
    TRY(pardec_session_join(s, PARDEC_NODE_TRUNK, PARDEC_JOIN_MODE_ALL, NULL, 0, "\nSo"));
    TRY(pardec_session_generate(s, &l, count_events, j, NULL));
    TRY(pardec_session_result(s, &r));
    const char *text;
    TRY(pardec_result_text(r, &text));
    j->text = dup_string(text);
done:
    pardec_result_free(r);
    pardec_session_free(s);
    return NULL;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : getenv("PARDEC_MODEL");
    if (!path) {
        fprintf(stderr, "usage: %s MODEL.gguf (or set PARDEC_MODEL)\n", argv[0]);
        return 2;
    }
    const char *tokens = getenv("PARDEC_TEST_TOKENS");
    if (tokens && atoi(tokens) > 0) n_tokens = (uint32_t)atoi(tokens);
    const char *vg = getenv("PARDEC_TEST_VALGRIND");
    if (vg && strcmp(vg, "1") == 0) {
        minimal = 1;
        n_tokens = 1;
    }
    pardec_model *model = NULL;
    pardec_status st = pardec_model_load(path, NULL, &model);
    if (st != PARDEC_STATUS_OK) {
        fprintf(stderr, "load: %s (%s)\n", pardec_status_str(st), pardec_last_error());
        return 1;
    }

    /* References, one thread at a time. */
    job ref[2] = {{model, 0, NULL, 0}, {model, 1, NULL, 0}};
    scenario(&ref[0]);
    scenario(&ref[1]);
    int failures = 0;
    if (!ref[0].text || !ref[1].text) {
        fprintf(stderr, "reference runs failed\n");
        failures++;
    }

    job jobs[N_THREADS];
    pthread_t threads[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (job){model, i % 2, NULL, 0};
        if (pthread_create(&threads[i], NULL, scenario, &jobs[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (int i = 0; i < N_THREADS; i++) pthread_join(threads[i], NULL);

    for (int i = 0; i < N_THREADS && !failures; i++) {
        const job *want = &ref[i % 2];
        if (!jobs[i].text || strcmp(jobs[i].text, want->text) != 0 || jobs[i].events != want->events) {
            fprintf(stderr, "thread %d (%s) differs from the single-threaded run:\n--- want (%zu events)\n%s\n--- got (%zu events)\n%s\n",
                    i, i % 2 ? "seeded" : "greedy", want->events, want->text, jobs[i].events,
                    jobs[i].text ? jobs[i].text : "(failed)");
            failures++;
        }
    }
    if (!failures && strcmp(ref[0].text, ref[1].text) == 0) {
        /* Negative control: greedy and sampled runs must differ, or the comparison is blind. */
        fprintf(stderr, "greedy and seeded runs gave the same text: the test cannot tell them apart\n");
        failures++;
    }
    if (!failures) printf("threads: %d sessions on one model matched the single-threaded runs\n%s\n", N_THREADS, ref[0].text);

    for (int i = 0; i < N_THREADS; i++) free(jobs[i].text);
    free(ref[0].text);
    free(ref[1].text);
    pardec_model_free(model);
    return failures ? 1 : 0;
}
