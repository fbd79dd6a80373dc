/* read_files(paths, sizes, threads) -> list: each file's bytes, read with one read(2) of
 * size + 1 bytes (a file that grew is seen to have grown), or the errno its open or read
 * failed with; on up to `threads` threads, each file opened by name in its folder. */
#include "_native.h" /* first: it includes Python.h */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int dir;          /* the folder's descriptor, or AT_FDCWD */
    const char *name; /* the name in that folder, or the whole path */
    char *buffer;
    Py_ssize_t want; /* size + 1: a file that grew is seen to have grown */
    Py_ssize_t got;  /* bytes read, or -errno */
} Read;

#define FOLDERS 16 /* folders held open while a batch is read; the others' files by path */

/* Whether O_NOATIME was refused once (files we do not own: a volume another user wrote):
 * not asked for again, so that each file costs one open. */
static int noatime_refused;

static void read_one(Job *job, Py_ssize_t i, void *scratch) {
    (void)scratch;
    Read *r = (Read *)job->data + i;
    /* no access time written (a metadata write per new file), where we may ask for that;
     * no wait on a FIFO put there since it was stat'ed */
    int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK, fd;
    if (!__atomic_load_n(&noatime_refused, __ATOMIC_RELAXED))
        flags |= O_NOATIME;
    do {
        fd = openat(r->dir, r->name, flags);
        if (fd < 0 && errno == EPERM && (flags & O_NOATIME)) {
            __atomic_store_n(&noatime_refused, 1, __ATOMIC_RELAXED);
            flags &= ~O_NOATIME; /* not the file's owner */
            errno = EINTR;
        }
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        r->got = -errno;
        return;
    }
    ssize_t got;
    do
        got = read(fd, r->buffer, (size_t)r->want);
    while (got < 0 && errno == EINTR);
    r->got = got < 0 ? -errno : got;
    close(fd);
}

/* Where read_one opens `path`: in the folder of the previous path when it is the same (an
 * open of the name alone walks one path component, not all of them), else in a folder
 * opened now, while fewer than FOLDERS are, else by the whole path. */
static void place(Read *r, const char *path, int *folders, int *open_folders,
                  const char **last, size_t *last_length) {
    const char *slash = strrchr(path, '/');
    size_t length = slash ? (size_t)(slash - path) + 1 : 0;
    r->dir = AT_FDCWD;
    r->name = path;
    if (!slash || slash[1] == '\0')
        return;
    if (*last && length == *last_length && memcmp(path, *last, length) == 0) {
        if (folders[*open_folders - 1] >= 0) { /* else it could not be opened: by path */
            r->dir = folders[*open_folders - 1];
            r->name = slash + 1;
        }
        return;
    }
    if (*open_folders == FOLDERS || length >= PATH_MAX)
        return;
    char folder[PATH_MAX];
    memcpy(folder, path, length);
    folder[length] = '\0';
    folders[(*open_folders)++] = open(folder, O_PATH | O_DIRECTORY | O_CLOEXEC);
    *last = path;
    *last_length = length;
    if (folders[*open_folders - 1] >= 0) {
        r->dir = folders[*open_folders - 1];
        r->name = slash + 1;
    }
}

static int out_of_descriptors(const Read *r) {
    return r->got == -EMFILE || r->got == -ENFILE;
}

/* read_one again for a file that found no descriptor free (the folders held open took them):
 * by its whole path, those folders closed meanwhile. */
static void read_again(Job *job, Py_ssize_t i, void *scratch) {
    if (out_of_descriptors((Read *)job->data + i))
        read_one(job, i, scratch);
}

static void release_reads(Read *reads, PyObject **names, PyObject **buffers, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(names[i]);
        Py_XDECREF(buffers[i]);
    }
    PyMem_Free(reads);
    PyMem_Free(names);
    PyMem_Free(buffers);
}

PyObject *native_read_files(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *paths_arg, *sizes_arg;
    int threads;
    if (!PyArg_ParseTuple(args, "OOi:read_files", &paths_arg, &sizes_arg, &threads))
        return NULL;
    /* copies: converting a path can run Python code (__fspath__) that changes a list */
    PyObject *paths = PySequence_Tuple(paths_arg);
    if (!paths)
        return NULL;
    PyObject *sizes = PySequence_Tuple(sizes_arg);
    if (!sizes) {
        Py_DECREF(paths);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(paths);
    PyObject *result = NULL;
    int folders[FOLDERS], open_folders = 0; /* the folders open (a descriptor, or -1) */
    const char *last = NULL;
    size_t last_length = 0;
    Read *reads = PyMem_Calloc((size_t)n + 1, sizeof *reads);
    PyObject **names = PyMem_Calloc((size_t)n + 1, sizeof *names);
    PyObject **buffers = PyMem_Calloc((size_t)n + 1, sizeof *buffers);
    if (!reads || !names || !buffers) {
        PyErr_NoMemory();
        goto done;
    }
    if (PyTuple_GET_SIZE(sizes) != n) {
        PyErr_SetString(PyExc_ValueError, "paths and sizes differ in length");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t size = PyLong_AsSsize_t(PyTuple_GET_ITEM(sizes, i));
        if (size == -1 && PyErr_Occurred())
            goto done;
        if (size < 0 || size >= (1 << 24)) {
            PyErr_SetString(PyExc_ValueError, "a size is negative or over 16 MiB");
            goto done;
        }
        if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(paths, i), &names[i]))
            goto done;
        buffers[i] = PyBytes_FromStringAndSize(NULL, size + 1);
        if (!buffers[i])
            goto done;
        place(&reads[i], PyBytes_AS_STRING(names[i]), folders, &open_folders, &last,
              &last_length);
        reads[i].buffer = PyBytes_AS_STRING(buffers[i]);
        reads[i].want = size + 1;
    }
    Job job = {.n = n, .item = read_one, .data = reads};
    Py_BEGIN_ALLOW_THREADS
    native_run(&job, threads);
    Py_ssize_t again = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        again += out_of_descriptors(&reads[i]);
    if (again && open_folders) { /* near the descriptor limit: as Python reads, one at a time */
        for (int k = 0; k < open_folders; k++)
            if (folders[k] >= 0)
                close(folders[k]);
        open_folders = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            if (out_of_descriptors(&reads[i])) {
                reads[i].dir = AT_FDCWD;
                reads[i].name = PyBytes_AS_STRING(names[i]);
            }
        job = (Job){.n = n, .item = read_again, .data = reads};
        native_run(&job, 1);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (!result)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item;
        if (reads[i].got < 0) {
            item = PyLong_FromLong((long)-reads[i].got);
        } else {
            item = buffers[i];
            buffers[i] = NULL;
            if (_PyBytes_Resize(&item, reads[i].got) != 0)
                item = NULL;
        }
        if (!item) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    for (int k = 0; k < open_folders; k++)
        if (folders[k] >= 0)
            close(folders[k]);
    release_reads(reads, names, buffers, n);
    Py_DECREF(paths);
    Py_DECREF(sizes);
    return result;
}
