/* What the parts of dataset._native share: a batch of items run on a few threads. */
#ifndef RETRAIN_NATIVE_H
#define RETRAIN_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* What dataset/native.py expects: a module built from older sources (a stale build left in
 * the tree) says another number and is not used. */
#define NATIVE_ABI 2

typedef struct Job Job;

struct Job {
    Py_ssize_t n;
    Py_ssize_t next; /* the next item not taken, taken with atomic adds */
    void (*item)(Job *job, Py_ssize_t i, void *scratch);
    int (*scratch_init)(void *scratch); /* a thread's own state, set up once (or NULL) */
    void (*scratch_end)(void *scratch);
    void *data; /* what the items read and write */
};

/* Runs every item of `job` on the calling thread and up to threads - 1 more, without using
 * the Python API (call it with the interpreter lock released): 0, or -1 when a thread's
 * scratch could not be set up (the items it would have taken may then be left undone). */
int native_run(Job *job, int threads);

/* read_files(paths, sizes, threads): _native_read.c */
PyObject *native_read_files(PyObject *self, PyObject *args);

/* scan(root, ignored_suffixes, threads) and list_files(folder, prefix): _native_scan.c */
PyObject *native_scan(PyObject *self, PyObject *args);
PyObject *native_list_files(PyObject *self, PyObject *args);

#endif
