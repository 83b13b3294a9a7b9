/*
 * uidprobe-runner: the engine in a small process of its own.
 *
 * Forking costs in proportion to the caller's address space (page tables):
 * about 11 ms for a 1 GB Python process against ~0.1 ms for a small one.  So
 * the caller posix_spawn()s this program (vfork-style: no copy of its
 * memory), sends the step lists on stdin, and this process forks the probe
 * children.  The children are the engine's usual ones: they run only
 * async-signal-safe calls.
 *
 * stdin:  struct up_batch_header, int counts[n], struct up_step steps[total]
 * stdout: for each scenario, struct up_outcome then `nrecords` records
 * exit:   0 all ran; 1 bad input; 2 a child could not be started (the
 *         outcome of that scenario carries the errno; the rest still ran);
 *         3 output failed
 */
#include "engine.h"

#include <stdlib.h>

// Scenarios run per chunk (up_run_batch runs a chunk concurrently), so memory
// stays small whatever the batch size.
#define CHUNK UP_WINDOW

int main(void)
{
    struct up_batch_header h;
    if (up_read_exact(0, &h, sizeof h, -1) != 0 || h.magic != UP_BATCH_MAGIC || h.nscenarios < 0 ||
        h.total_steps < 0 || h.timeout_ms <= 0)
        return 1;
    int *counts = calloc((size_t)h.nscenarios + 1, sizeof *counts);
    struct up_step *steps = calloc((size_t)h.total_steps + 1, sizeof *steps);
    struct up_record *records = calloc((size_t)CHUNK * UP_MAX_STEPS, sizeof *records);
    struct up_outcome *outcomes = calloc(CHUNK, sizeof *outcomes);
    if (!counts || !steps || !records || !outcomes)
        return 1;
    if (up_read_exact(0, counts, (size_t)h.nscenarios * sizeof *counts, -1) != 0 ||
        up_read_exact(0, steps, (size_t)h.total_steps * sizeof *steps, -1) != 0)
        return 1;
    long long sum = 0;
    for (int i = 0; i < h.nscenarios; i++) {
        if (counts[i] < 0 || counts[i] > UP_MAX_STEPS)
            return 1;
        sum += counts[i];
    }
    if (sum != h.total_steps)
        return 1;

    const struct up_step *s = steps;
    int status = 0;
    for (int done = 0; done < h.nscenarios; done += CHUNK) {
        int n = h.nscenarios - done < CHUNK ? h.nscenarios - done : CHUNK;
        if (up_run_batch(s, counts + done, n, records, outcomes, h.timeout_ms) != 0)
            status = 2;
        for (int i = 0; i < n; i++) {
            struct up_outcome o = outcomes[i];
            o.failed_call = NULL; // a pointer means nothing in the caller's process
            if (up_write_all(1, &o, sizeof o) != 0 ||
                up_write_all(1, records + (size_t)i * UP_MAX_STEPS,
                          (size_t)o.nrecords * sizeof *records) != 0)
                return 3;
            s += counts[done + i];
        }
    }
    return status;
}
