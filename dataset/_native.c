/* dataset._native: an increment's per-file work in C (dataset/native.py wraps it, and does
 * the same in Python where this optional extension was not built). Each function takes its
 * inputs with the interpreter lock held and works without it, on up to `threads` threads.
 *
 * decode_png28(datas, out, threads) -> bytes: 1 for each PNG decoded into its 784 bytes of
 *     `out`, 0 for one left to the caller's other decoders (which also word any error).
 *     Taken: the 33 bytes of signature and IHDR of a 28x28 8-bit grayscale non-interlaced
 *     PNG, then IDAT chunks, then an empty IEND ending the data; every CRC right; the IDAT
 *     data one zlib stream (Adler-32 right, nothing after it) inflating to exactly 28
 *     filtered rows; every row filter one of PNG's five. Less than a PNG decoder takes, on
 *     purpose: what is taken here decodes to the same pixels in every decoder.
 * read_files: _native_read.c; scan, list_files: _native_scan.c; the threads: _native_pool.c.
 */
#include "_native.h" /* first: it includes Python.h */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define SIDE 28
#define PIXELS (SIDE * SIDE)
#define FILTERED (SIDE * (SIDE + 1)) /* each row: its filter byte, then its samples */

/* The signature, then IHDR: length 13, 28 x 28, depth 8, grayscale, deflate, adaptive
 * filtering, no interlace, and that chunk's CRC (set when the module loads). */
static unsigned char HEAD[33] = {
    0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
    0, 0, 0, 13, 'I', 'H', 'D', 'R', 0, 0, 0, SIDE, 0, 0, 0, SIDE, 8, 0, 0, 0, 0,
};

/* -------------------------------------------------------------------- decode_png28 */

typedef struct {
    const unsigned char **data;
    Py_ssize_t *length;
    unsigned char *out;
    unsigned char *decoded;
} Decode;

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A thread's own zlib stream, reset for each image. zlib (what libspng and Pillow use) and
 * not a faster inflater: libdeflate decodes invalid streams zlib refuses (symbols 286-287). */
static void scratch_end(void *scratch) {
    inflateEnd((z_stream *)scratch);
}

static int scratch_init(void *scratch) {
    return inflateInit((z_stream *)scratch) == Z_OK ? 0 : -1;
}

static int paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* The rows' filters undone: 1, or 0 for a filter type PNG does not define. */
static int unfilter(const unsigned char *rows, unsigned char *px) {
    static const unsigned char zero[SIDE];
    for (int y = 0; y < SIDE; y++) {
        const unsigned char *in = rows + y * (SIDE + 1) + 1;
        const unsigned char *up = y ? px + (y - 1) * SIDE : zero;
        unsigned char *row = px + y * SIDE;
        switch (rows[y * (SIDE + 1)]) {
        case 0:
            memcpy(row, in, SIDE);
            break;
        case 1:
            for (int x = 0; x < SIDE; x++)
                row[x] = (unsigned char)(in[x] + (x ? row[x - 1] : 0));
            break;
        case 2:
            for (int x = 0; x < SIDE; x++)
                row[x] = (unsigned char)(in[x] + up[x]);
            break;
        case 3:
            for (int x = 0; x < SIDE; x++)
                row[x] = (unsigned char)(in[x] + (((x ? row[x - 1] : 0) + up[x]) >> 1));
            break;
        case 4:
            for (int x = 0; x < SIDE; x++)
                row[x] = (unsigned char)(in[x] + paeth(x ? row[x - 1] : 0, up[x],
                                                       x ? up[x - 1] : 0));
            break;
        default:
            return 0;
        }
    }
    return 1;
}

/* One PNG of the shape taken here, inflated and unfiltered into px: 1, else 0. */
static int decode_one(const unsigned char *d, Py_ssize_t len, z_stream *z, unsigned char *px) {
    unsigned char rows[FILTERED];
    Py_ssize_t at = sizeof HEAD;
    int idat = 0, status = Z_OK;
    if (len < (Py_ssize_t)sizeof HEAD || memcmp(d, HEAD, sizeof HEAD) != 0)
        return 0;
    if (inflateReset(z) != Z_OK)
        return 0;
    z->next_out = rows;
    z->avail_out = sizeof rows;
    while (at + 12 <= len) {
        uint32_t length = be32(d + at);
        const unsigned char *type = d + at + 4;
        if (length > 0x7fffffff || length > (uint32_t)(len - at - 12))
            return 0; /* longer than PNG allows, or cut short */
        if (crc32(0, type, length + 4) != be32(d + at + 8 + length))
            return 0;
        if (memcmp(type, "IEND", 4) == 0) /* empty, last, after one whole zlib stream */
            return length == 0 && at + 12 == len && idat && status == Z_STREAM_END &&
                   z->avail_out == 0 && unfilter(rows, px);
        if (memcmp(type, "IDAT", 4) != 0 || status == Z_STREAM_END)
            return 0; /* another chunk, or data after the stream's end */
        idat = 1;
        z->next_in = (unsigned char *)d + at + 8;
        z->avail_in = length;
        status = inflate(z, Z_NO_FLUSH);
        if (status != Z_OK && status != Z_BUF_ERROR && status != Z_STREAM_END)
            return 0; /* a damaged stream, or one needing a preset dictionary */
        if (z->avail_in != 0)
            return 0; /* bytes after the stream's end, or more than 28 rows */
        at += 12 + (Py_ssize_t)length;
    }
    return 0; /* no IEND */
}

static void decode_item(Job *job, Py_ssize_t i, void *scratch) {
    Decode *dec = job->data;
    dec->decoded[i] = (unsigned char)decode_one(dec->data[i], dec->length[i], scratch,
                                                dec->out + i * PIXELS);
}

static PyObject *decode_png28(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *datas_arg, *decoded = NULL;
    Py_buffer out;
    int threads;
    if (!PyArg_ParseTuple(args, "Ow*i:decode_png28", &datas_arg, &out, &threads))
        return NULL;
    PyObject *datas = PySequence_Fast(datas_arg, "datas must be a sequence");
    if (!datas) {
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(datas);
    /* the items, held: nothing the list's owner does while we work can free them */
    PyObject **held = PyMem_Calloc((size_t)n + 1, sizeof *held);
    const unsigned char **data = PyMem_Calloc((size_t)n + 1, sizeof *data);
    Py_ssize_t *length = PyMem_Calloc((size_t)n + 1, sizeof *length);
    if (!held || !data || !length) {
        PyErr_NoMemory();
        goto done;
    }
    if (out.len != n * PIXELS) {
        PyErr_Format(PyExc_ValueError, "out holds %zd bytes, not %zd", out.len, n * PIXELS);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(datas, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "every item must be bytes");
            goto done;
        }
        Py_INCREF(item);
        held[i] = item;
        data[i] = (const unsigned char *)PyBytes_AS_STRING(item);
        length[i] = PyBytes_GET_SIZE(item);
    }
    decoded = PyBytes_FromStringAndSize(NULL, n);
    if (!decoded)
        goto done;
    Decode dec = {data, length, out.buf, (unsigned char *)PyBytes_AS_STRING(decoded)};
    Job job = {.n = n, .item = decode_item, .scratch_init = scratch_init,
               .scratch_end = scratch_end, .data = &dec};
    memset(dec.decoded, 0, (size_t)n); /* an item no thread could take: left to the others */
    Py_BEGIN_ALLOW_THREADS
    native_run(&job, threads);
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t i = 0; held && i < n; i++)
        Py_XDECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(data);
    PyMem_Free(length);
    Py_DECREF(datas);
    PyBuffer_Release(&out);
    return decoded;
}

/* ------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"read_files", native_read_files, METH_VARARGS,
     "read_files(paths, sizes, threads) -> list of bytes, or of errno for a failed file"},
    {"list_files", native_list_files, METH_VARARGS,
     "list_files(folder, prefix) -> sorted list of (prefix/relative path, is a link)"},
    {"scan", native_scan, METH_VARARGS,
     "scan(root, ignored_suffixes, threads) -> list of (relative, path, size, mtime_ns, inode)"},
    {"decode_png28", decode_png28, METH_VARARGS,
     "decode_png28(datas, out, threads) -> bytes: 1 where an image was decoded into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dataset._native",
    .m_doc = "Reading many small files and decoding plain 28x28 grayscale PNGs, in C threads.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    _Static_assert(sizeof(z_stream) <= 256, "a worker's scratch holds a z_stream");
    uLong crc = crc32(0, HEAD + 12, 17); /* also sets up zlib's tables before any thread */
    for (int k = 0; k < 4; k++)
        HEAD[29 + k] = (unsigned char)(crc >> (24 - 8 * k));
    PyObject *made = PyModule_Create(&module);
    if (made && PyModule_AddIntConstant(made, "ABI", NATIVE_ABI) != 0)
        Py_CLEAR(made);
    return made;
}
