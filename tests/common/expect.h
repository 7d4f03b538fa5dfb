/* The check macro the C tests share. EXPECT(cond, fmt, ...) counts a check
 * and, when cond is false, a failure, printing file:line and the message to
 * stderr; the test's main reports `failures` (and may print `checks`) and
 * exits non-zero when there were any. Include once per test program: the
 * counters are the program's own statics. */
#ifndef LOOM_TESTS_COMMON_EXPECT_H
#define LOOM_TESTS_COMMON_EXPECT_H

#include <stdio.h>

static int failures, checks;

#define EXPECT(cond, ...)                                                       \
    do {                                                                        \
        checks++;                                                               \
        if (!(cond)) {                                                          \
            failures++;                                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
        }                                                                       \
    } while (0)

#endif
