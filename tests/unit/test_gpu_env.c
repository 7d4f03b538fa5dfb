/* Unit test of util/gpu_env.c: every GPU switch accepts the integers of its
 * range and the empty string (the default), and rejects anything else with
 * an error naming the variable; the reader returns the value or the default. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/gpu_env.h"
#include "../common/expect.h"

static void clear_all(void)
{
    size_t n;
    const loom_gpu_switch *sw = loom_gpu_switches(&n);
    for (size_t i = 0; i < n; i++) unsetenv(sw[i].name);
}

int main(void)
{
    size_t n;
    const loom_gpu_switch *sw = loom_gpu_switches(&n);
    EXPECT(n >= 13, "the table has the documented switches (%zu)", n);
    loom_err err = {{0}};
    clear_all();
    EXPECT(loom_gpu_env_check(&err) == LOOM_OK, "nothing set: ok (%s)", err.msg);
    for (size_t i = 0; i < n; i++) {
        const loom_gpu_switch *w = &sw[i];
        EXPECT(w->lo <= w->dflt && w->dflt <= w->hi, "%s: default %d within %d..%d", w->name, w->dflt, w->lo, w->hi);
        EXPECT(loom_gpu_env_int(w->name) == w->dflt, "%s unset reads its default", w->name);
        char buf[32];
        for (int v = w->lo; v <= w->hi; v++) {
            snprintf(buf, sizeof buf, "%d", v);
            setenv(w->name, buf, 1);
            err.msg[0] = 0;
            EXPECT(loom_gpu_env_check(&err) == LOOM_OK, "%s=%s accepted (%s)", w->name, buf, err.msg);
            EXPECT(loom_gpu_env_int(w->name) == v, "%s=%s reads %d", w->name, buf, loom_gpu_env_int(w->name));
        }
        setenv(w->name, "", 1);
        EXPECT(loom_gpu_env_check(&err) == LOOM_OK && loom_gpu_env_int(w->name) == w->dflt, "%s empty: the default", w->name);
        const char *bad[4];
        char below[16], above[16];
        snprintf(below, sizeof below, "%d", w->lo - 1);
        snprintf(above, sizeof above, "%d", w->hi + 1);
        bad[0] = below, bad[1] = above, bad[2] = "on", bad[3] = "1x";
        for (int b = 0; b < 4; b++) {
            setenv(w->name, bad[b], 1);
            err.msg[0] = 0;
            const loom_status st = loom_gpu_env_check(&err);
            EXPECT(st == LOOM_EINVAL && strstr(err.msg, w->name) && strstr(err.msg, bad[b]), "%s=%s rejected, named: \"%s\"", w->name, bad[b],
                   err.msg);
            EXPECT(loom_gpu_env_int(w->name) == w->dflt, "%s=%s (invalid) reads the default", w->name, bad[b]);
        }
        unsetenv(w->name);
    }
    EXPECT(loom_gpu_env_int("LOOM_NO_SUCH_SWITCH") == -1, "an unknown name reads -1");
    printf("%d checks, %s\n", checks, failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}
