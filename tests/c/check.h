/* check.h: what the C ABI tests share: a CHECK that prints the failing line and plumb's last
 * error and exits non-zero, and EXPECT_STATUS for error paths (the message must not be empty). */
#ifndef PLUMB_TEST_CHECK_H
#define PLUMB_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "plumb.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  plumb_last_error: %s\n",      \
                    __FILE__, __LINE__, #cond, plumb_last_error());                   \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

#define OK(call) CHECK((call) == PLUMB_STATUS_OK)

/* The call must fail with `want` and leave a message that contains `needle`. */
#define EXPECT_STATUS(call, want, needle)                                             \
    do {                                                                              \
        PlumbStatus got_ = (call);                                                    \
        const char *msg_ = plumb_last_error();                                        \
        if (got_ != (want) || msg_ == NULL || strstr(msg_, (needle)) == NULL) {       \
            fprintf(stderr, "%s:%d: %s\n  gave status %d (want %d), message: %s\n"    \
                    "  (want it to contain \"%s\")\n",                                \
                    __FILE__, __LINE__, #call, (int)got_, (int)(want), msg_, needle); \
            exit(1);                                                                  \
        }                                                                             \
        printf("ok: %s -> %d: %s\n", #call, (int)got_, msg_);                         \
    } while (0)

#endif
