/* scan(root, ignored_suffixes, threads) -> list of (relative, path, size, mtime_ns, inode)
 *
 * Every dataset file under `root`, as dataset.fingerprint._walk finds them: entries whose
 * name starts with "." are skipped, real folders are entered (a link to a folder is not),
 * files and links to files are listed unless their name ends with one of
 * `ignored_suffixes`, folders in name order. `path` is root joined with the relative path;
 * size, mtime and inode are what stat(2), following links, says. A folder or file removed
 * while we look is left out; any other error raises OSError naming its path. The folders
 * are read on the calling thread, the files stat'ed on up to `threads` threads.
 */
#include "_native.h" /* first: it includes Python.h */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char *path; /* root/relative, malloc'ed */
    size_t relative; /* where the relative path starts in `path` */
    struct stat st;
    int error; /* errno of stat, or -1: not a file (a link to a folder, a FIFO...) */
    int link;  /* list_files: the entry is a link */
    int dir;   /* its folder's descriptor while the stats run, or AT_FDCWD (then by path) */
    const char *name; /* its name in that folder, or its path */
} Found;

#define FOLDERS 64 /* folders held open until their files are stat'ed; the others' by path */

typedef struct {
    Found *items;
    Py_ssize_t n, capacity;
    char **ignored;
    Py_ssize_t n_ignored;
    size_t relative; /* the length of root and its slash */
    int listing; /* list_files: every entry but folders, links to folders, hidden ones */
    DIR *kept[FOLDERS]; /* folders kept open for the stats (fstatat: one path component) */
    int n_kept;
    int released; /* out of descriptors once: every folder closed, every file by path */
    int error; /* errno of a folder that could not be read */
    char *error_path;
} Scan;

/* The code point at s[*i] as Python decodes a file name (UTF-8, each byte of an invalid
 * sequence escaped to U+DC80..U+DCFF), moving *i past it. */
static uint32_t next_point(const unsigned char *s, size_t *i) {
    unsigned char lead = s[*i];
    uint32_t point;
    int more;
    if (lead < 0x80) {
        (*i)++;
        return lead;
    }
    if (lead >= 0xC2 && lead <= 0xDF)
        more = 1, point = lead & 0x1F;
    else if (lead >= 0xE0 && lead <= 0xEF)
        more = 2, point = lead & 0x0F;
    else if (lead >= 0xF0 && lead <= 0xF4)
        more = 3, point = lead & 0x07;
    else
        more = 0, point = 0;
    for (int k = 1; k <= more; k++) { /* stops at the name's end: 0 is no continuation */
        if ((s[*i + k] & 0xC0) != 0x80) {
            more = 0;
            break;
        }
        point = point << 6 | (s[*i + k] & 0x3F);
    }
    if (more == 0 || (more == 2 && (point < 0x800 || (point >= 0xD800 && point <= 0xDFFF))) ||
        (more == 3 && (point < 0x10000 || point > 0x10FFFF))) {
        (*i)++; /* not a well-formed sequence: this byte alone, escaped */
        return 0xDC00u + lead;
    }
    *i += (size_t)more + 1;
    return point;
}

/* Names in the order Python sorts them (code points, as decoded above): the bytes' order
 * wherever the first difference is between two ASCII bytes. */
static int by_name(const void *a, const void *b) {
    const unsigned char *x = *(const unsigned char *const *)a, *y = *(const unsigned char *const *)b;
    size_t k = 0, i = 0, j = 0;
    while (x[k] && x[k] == y[k])
        k++;
    if (x[k] < 0x80 && y[k] < 0x80)
        return (int)x[k] - (int)y[k];
    while (x[i] && y[j]) {
        uint32_t p = next_point(x, &i), q = next_point(y, &j);
        if (p != q)
            return p < q ? -1 : 1;
    }
    return (x[i] != 0) - (y[j] != 0);
}

static int ignored(const Scan *scan, const char *name) {
    size_t length = strlen(name);
    for (Py_ssize_t k = 0; k < scan->n_ignored; k++) {
        size_t tail = strlen(scan->ignored[k]);
        if (tail <= length && memcmp(name + length - tail, scan->ignored[k], tail) == 0)
            return 1;
    }
    return 0;
}

static char *joined(const char *folder, const char *name) {
    size_t a = strlen(folder), b = strlen(name);
    int slash = a > 0 && folder[a - 1] != '/';
    char *path = malloc(a + slash + b + 1);
    if (path) {
        memcpy(path, folder, a);
        path[a] = '/';
        memcpy(path + a + slash, name, b + 1);
    }
    return path;
}

static int add(Scan *scan, char *path, int link, int dir, size_t name_length) {
    if (scan->n == scan->capacity) {
        Py_ssize_t capacity = scan->capacity ? scan->capacity * 2 : 256;
        Found *items = realloc(scan->items, (size_t)capacity * sizeof *items);
        if (!items)
            return -1;
        scan->items = items;
        scan->capacity = capacity;
    }
    if (scan->released)
        dir = AT_FDCWD;
    const char *name = dir == AT_FDCWD ? path : path + strlen(path) - name_length;
    scan->items[scan->n++] = (Found){.path = path, .relative = scan->relative, .link = link,
                                     .dir = dir, .name = name};
    return 0;
}

/* Closes the folders kept open (the process is out of descriptors): their files are
 * stat'ed by path, and no folder is kept from now on. */
static void release(Scan *scan) {
    for (Py_ssize_t i = 0; i < scan->n; i++) {
        scan->items[i].dir = AT_FDCWD;
        scan->items[i].name = scan->items[i].path;
    }
    for (int k = 0; k < scan->n_kept; k++)
        closedir(scan->kept[k]);
    scan->n_kept = 0;
    scan->released = 1;
}

/* Lists `folder` (and the folders in it) into `scan`: 0, or -1 (ENOMEM, or scan->error). */
static int walk(Scan *scan, const char *folder) {
    DIR *dir = opendir(folder);
    if (!dir && (errno == EMFILE || errno == ENFILE) && scan->n_kept > 0) {
        release(scan);
        dir = opendir(folder);
    }
    if (!dir) /* a listing skips what it cannot read, as os.walk does */
        return scan->listing || errno == ENOENT || errno == ENOTDIR ? 0 : (scan->error = errno, -1);
    char **names = NULL;
    size_t n = 0, capacity = 0;
    int status = 0, kept = !scan->listing && !scan->released && scan->n_kept < FOLDERS;
    int here = kept ? dirfd(dir) : AT_FDCWD;
    if (kept)
        scan->kept[scan->n_kept++] = dir;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue; /* hidden, and . and .. */
        if (n == capacity) {
            capacity = capacity ? capacity * 2 : 64;
            char **more = realloc(names, capacity * sizeof *names);
            if (!more)
                goto fail;
            names = more;
        }
        /* the name, then its type byte after its terminating zero */
        size_t length = strlen(entry->d_name);
        if (!(names[n] = malloc(length + 2)))
            goto fail;
        memcpy(names[n], entry->d_name, length + 1);
        names[n][length + 1] = (char)entry->d_type;
        n++;
    }
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n && status == 0; i++) {
        unsigned char type = (unsigned char)names[i][strlen(names[i]) + 1];
        char *path = joined(folder, names[i]);
        if (!path)
            goto fail;
        struct stat link;
        if (type == DT_UNKNOWN && lstat(path, &link) == 0) /* not said: ask, links not followed */
            type = S_ISDIR(link.st_mode) ? DT_DIR : S_ISLNK(link.st_mode) ? DT_LNK : DT_REG;
        if (scan->listing && type != DT_DIR) {
            /* a link to a folder is neither entered nor listed; anything else is listed */
            if (type == DT_LNK && stat(path, &link) == 0 && S_ISDIR(link.st_mode))
                free(path);
            else if (add(scan, path, type == DT_LNK, AT_FDCWD, 0) != 0) {
                free(path);
                goto fail;
            }
        } else if (type == DT_DIR) {
            status = walk(scan, path);
            if (status != 0 && scan->error && !scan->error_path)
                scan->error_path = path, path = NULL;
            free(path);
        } else if ((type == DT_REG || type == DT_LNK) && !ignored(scan, names[i])) {
            if (add(scan, path, 0, here, strlen(names[i])) != 0) {
                free(path);
                goto fail;
            }
        } else {
            free(path);
        }
    }
    goto done;
fail:
    status = -1;
done:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (!kept)
        closedir(dir); /* else once its files are stat'ed */
    return status;
}

static void stat_item(Job *job, Py_ssize_t i, void *scratch) {
    (void)scratch;
    Found *found = (Found *)job->data + i;
    if (fstatat(found->dir, found->name, &found->st, 0) != 0) /* links followed */
        found->error = errno;
    else if (!S_ISREG(found->st.st_mode))
        found->error = -1;
}

static PyObject *found_list(Scan *scan) {
    PyObject *list = PyList_New(0);
    for (Py_ssize_t i = 0; list && i < scan->n; i++) {
        Found *f = &scan->items[i];
        if (f->error == ENOENT || f->error == -1)
            continue; /* removed meanwhile, or not a file */
        if (f->error) {
            errno = f->error;
            Py_CLEAR(list);
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, f->path);
            break;
        }
        long long mtime_ns = (long long)f->st.st_mtim.tv_sec * 1000000000LL + f->st.st_mtim.tv_nsec;
        PyObject *row = Py_BuildValue("(O&O&LLK)", PyUnicode_DecodeFSDefault, f->path + f->relative,
                                      PyUnicode_DecodeFSDefault, f->path, (long long)f->st.st_size,
                                      mtime_ns, (unsigned long long)f->st.st_ino);
        if (!row || PyList_Append(list, row) != 0)
            Py_CLEAR(list);
        Py_XDECREF(row);
    }
    return list;
}

PyObject *native_scan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *root_arg, *ignored_arg, *fs_root = NULL, *result = NULL;
    int threads;
    if (!PyArg_ParseTuple(args, "OO!i:scan", &root_arg, &PyTuple_Type, &ignored_arg, &threads))
        return NULL;
    if (!PyUnicode_FSConverter(root_arg, &fs_root))
        return NULL;
    Scan scan = {.n_ignored = PyTuple_GET_SIZE(ignored_arg)};
    scan.ignored = PyMem_Calloc((size_t)scan.n_ignored + 1, sizeof *scan.ignored);
    if (!scan.ignored) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < scan.n_ignored; k++) {
        scan.ignored[k] = (char *)PyUnicode_AsUTF8(PyTuple_GET_ITEM(ignored_arg, k));
        if (!scan.ignored[k])
            goto done;
    }
    const char *root = PyBytes_AS_STRING(fs_root);
    size_t length = strlen(root);
    scan.relative = length + (length > 0 && root[length - 1] != '/');
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = walk(&scan, root);
    if (status == 0) {
        Job job = {.n = scan.n, .item = stat_item, .data = scan.items};
        native_run(&job, threads);
    }
    Py_END_ALLOW_THREADS
    if (status != 0 && scan.error) {
        errno = scan.error;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, scan.error_path ? scan.error_path : root);
    } else if (status != 0) {
        PyErr_NoMemory();
    } else {
        result = found_list(&scan);
    }
done:
    for (int k = 0; k < scan.n_kept; k++)
        closedir(scan.kept[k]);
    for (Py_ssize_t i = 0; i < scan.n; i++)
        free(scan.items[i].path);
    free(scan.items);
    free(scan.error_path);
    PyMem_Free(scan.ignored);
    Py_DECREF(fs_root);
    return result;
}

static int by_relative(const void *a, const void *b) {
    const Found *x = a, *y = b;
    const char *p = x->path + x->relative, *q = y->path + y->relative;
    return by_name(&p, &q);
}

/* list_files(folder, prefix) -> sorted list of (prefix/relative path, is a link): what
 * dataset.layout._files_under lists, in one call (see there). */
PyObject *native_list_files(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *folder_arg, *prefix_arg, *fs_folder = NULL, *fs_prefix = NULL, *result = NULL;
    if (!PyArg_ParseTuple(args, "OO:list_files", &folder_arg, &prefix_arg))
        return NULL;
    if (!PyUnicode_FSConverter(folder_arg, &fs_folder) ||
        !PyUnicode_FSConverter(prefix_arg, &fs_prefix)) {
        Py_XDECREF(fs_folder);
        return NULL;
    }
    const char *folder = PyBytes_AS_STRING(fs_folder), *prefix = PyBytes_AS_STRING(fs_prefix);
    size_t length = strlen(folder), head = strlen(prefix);
    Scan scan = {.listing = 1, .relative = length + (length > 0 && folder[length - 1] != '/')};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = walk(&scan, folder);
    if (status == 0)
        qsort(scan.items, (size_t)scan.n, sizeof *scan.items, by_relative);
    Py_END_ALLOW_THREADS
    result = status == 0 ? PyList_New(scan.n) : PyErr_NoMemory();
    for (Py_ssize_t i = 0; result && i < scan.n; i++) {
        const char *below = scan.items[i].path + scan.items[i].relative;
        char *relative = malloc(head + 1 + strlen(below) + 1);
        PyObject *row = NULL;
        if (relative) {
            memcpy(relative, prefix, head);
            relative[head] = '/';
            strcpy(relative + head + 1, below);
            row = Py_BuildValue("(O&O)", PyUnicode_DecodeFSDefault, relative,
                                scan.items[i].link ? Py_True : Py_False);
            free(relative);
        } else {
            PyErr_NoMemory();
        }
        if (!row)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, row);
    }
    for (Py_ssize_t i = 0; i < scan.n; i++)
        free(scan.items[i].path);
    free(scan.items);
    Py_DECREF(fs_folder);
    Py_DECREF(fs_prefix);
    return result;
}
