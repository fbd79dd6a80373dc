/* A small thread pool for dataset._native: a batch's items taken GRAIN at a time, with atomic
 * adds, by the calling thread and up to threads - 1 more (declared in _native.h). */
#include "_native.h" /* first: it includes Python.h */

#include <pthread.h>
#include <string.h>

#define MAX_THREADS 8
#define GRAIN 16 /* items a thread takes at a time */
#define ALONE 64 /* fewer items than this are done on the calling thread only */

static void *worker(void *arg) {
    Job *job = arg;
    unsigned char scratch[256] __attribute__((aligned(16)));
    memset(scratch, 0, sizeof scratch);
    if (job->scratch_init && job->scratch_init(scratch) != 0) {
        if (job->scratch_end)
            job->scratch_end(scratch); /* what was set up */
        return (void *)1;
    }
    for (;;) {
        Py_ssize_t start = __atomic_fetch_add(&job->next, GRAIN, __ATOMIC_RELAXED);
        if (start >= job->n)
            break;
        Py_ssize_t stop = start + GRAIN < job->n ? start + GRAIN : job->n;
        for (Py_ssize_t i = start; i < stop; i++)
            job->item(job, i, scratch);
    }
    if (job->scratch_end)
        job->scratch_end(scratch);
    return NULL;
}

/* Runs every item on the calling thread and up to threads - 1 more; 0, or -1 when a
 * thread's scratch could not be set up (the items it would have taken may be undone). */
int native_run(Job *job, int threads) {
    pthread_t extra[MAX_THREADS];
    int started = 0, failed = 0;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (job->n < ALONE)
        threads = 1;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&extra[started], NULL, worker, job) != 0)
            break; /* fewer threads: the others take the rest */
        started++;
    }
    failed |= worker(job) != NULL;
    for (int t = 0; t < started; t++) {
        void *result = NULL;
        pthread_join(extra[t], &result);
        failed |= result != NULL;
    }
    return failed ? -1 : 0;
}
