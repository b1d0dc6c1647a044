/*
 * The checks of the C test programs (misuse.c, conversations.c): each counts, and a failed one
 * prints where and why and is counted as a failure; the program then exits non-zero.
 */
#ifndef PARDEC_EXAMPLES_CHECK_H
#define PARDEC_EXAMPLES_CHECK_H

#include <stdio.h>

#include "pardec.h"

static int failures = 0;
static int checks = 0;

/* Checks a call's status; on mismatch prints both and the last error. */
#define EXPECT(call, want)                                                                     \
    do {                                                                                       \
        pardec_status got_ = (call);                                                           \
        checks++;                                                                              \
        if (got_ != (want)) {                                                                  \
            failures++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s\n  want %s (%d), got %s (%d): %s\n", __FILE__,      \
                    __LINE__, #call, #want, (int)(want), pardec_status_str(got_), (int)got_,    \
                    pardec_last_error());                                                      \
        }                                                                                      \
    } while (0)

#define ASSERT(cond)                                                                           \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                    \
        }                                                                                      \
    } while (0)

#endif /* PARDEC_EXAMPLES_CHECK_H */
