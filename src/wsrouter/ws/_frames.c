/*
 * wsrouter.ws._frames: the compiled hot path of the client-frame parser
 * (wsrouter/ws/codec.py holds the pure-Python twins and picks one).
 *
 * scan_binary(data, position, limit) -> (payloads, position)
 *     From byte `position` of `data` (bytes), take every consecutive frame
 *     that is a whole, masked, unfragmented binary frame (first byte 0x82:
 *     FIN, no RSV bits, opcode 2) lying entirely in `data`, with a payload
 *     of at most `limit` bytes (0: no limit).  Stop at the first frame that
 *     is anything else (incomplete, text, control, fragmented, unmasked,
 *     compressed, over the limit, a 64-bit length with its top bit set):
 *     the general parser deals with it.  Returns the unmasked payloads as a
 *     list of bytes, and the position after the last frame taken.
 *
 * unmask(data, mask, offset) -> bytes
 *     `data` (any bytes-like object) XOR the 4-byte `mask`, starting
 *     `offset` bytes into the frame's payload.
 *
 * Uses only the stable ABI of Python 3.11 (one build serves 3.11 and
 * later); no state, no GIL release (the work per call is microseconds).
 */

#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* XOR n bytes of src with the mask word (as laid out in memory) into dst. */
static void
xor_mask(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char mask[4])
{
    uint64_t wide;
    unsigned char doubled[8];
    Py_ssize_t i = 0;

    memcpy(doubled, mask, 4);
    memcpy(doubled + 4, mask, 4);
    memcpy(&wide, doubled, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, src + i, 8);
        word ^= wide;
        memcpy(dst + i, &word, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ mask[i & 3];
}

/* The header of a frame at p (avail bytes there) that scan_binary takes:
 * its size, with *length set; 0 if the frame is not one it takes. */
static Py_ssize_t
whole_binary_header(const unsigned char *p, Py_ssize_t avail, unsigned long long limit,
                    unsigned long long *length)
{
    unsigned long long n;
    Py_ssize_t size;

    if (avail < 6 || p[0] != 0x82 || !(p[1] & 0x80))
        return 0;
    n = p[1] & 0x7F;
    size = 6;
    if (n == 126) {
        size = 8;
        if (avail < size)
            return 0;
        n = ((unsigned long long)p[2] << 8) | p[3];
    } else if (n == 127) {
        int k;
        size = 14;
        if (avail < size || (p[2] & 0x80))
            return 0;
        n = 0;
        for (k = 2; k < 10; k++)
            n = (n << 8) | p[k];
    }
    if (limit && n > limit)
        return 0;
    if (n > (unsigned long long)(avail - size))
        return 0;
    *length = n;
    return size;
}

static PyObject *
scan_binary(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *data;
    Py_ssize_t end, position, start, count = 0, i;
    unsigned long long limit, length;
    PyObject *payloads, *result;

    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_binary(data, position, limit) takes 3 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_binary: data must be bytes");
        return NULL;
    }
    data = (const unsigned char *)PyBytes_AsString(args[0]);
    end = PyBytes_Size(args[0]);
    position = PyLong_AsSsize_t(args[1]);
    if (position == -1 && PyErr_Occurred())
        return NULL;
    limit = PyLong_AsUnsignedLongLong(args[2]);
    if (limit == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (position < 0 || position > end) {
        PyErr_SetString(PyExc_ValueError, "scan_binary: position outside data");
        return NULL;
    }

    /* First pass: how many frames, so the list is made once at its size. */
    start = position;
    for (;;) {
        Py_ssize_t size = whole_binary_header(data + position, end - position, limit, &length);
        if (!size)
            break;
        position += size + (Py_ssize_t)length;
        count++;
    }

    payloads = PyList_New(count);
    if (payloads == NULL)
        return NULL;
    position = start;
    for (i = 0; i < count; i++) {
        Py_ssize_t size = whole_binary_header(data + position, end - position, limit, &length);
        PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
        if (payload == NULL) {
            Py_DECREF(payloads);
            return NULL;
        }
        xor_mask((unsigned char *)PyBytes_AsString(payload), data + position + size, (Py_ssize_t)length,
                 data + position + size - 4);
        PyList_SetItem(payloads, i, payload); /* steals the reference */
        position += size + (Py_ssize_t)length;
    }
    result = Py_BuildValue("(Nn)", payloads, position);
    return result;
}

static PyObject *
unmask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    Py_ssize_t offset;
    unsigned char rotated[4];
    PyObject *result;
    int k;

    (void)module;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "unmask(data, mask, offset=0) takes 2 or 3 arguments");
        return NULL;
    }
    offset = 0;
    if (nargs == 3) {
        offset = PyLong_AsSsize_t(args[2]);
        if (offset == -1 && PyErr_Occurred())
            return NULL;
        if (offset < 0) {
            PyErr_SetString(PyExc_ValueError, "unmask: offset must not be negative");
            return NULL;
        }
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0)
        return NULL;
    if (mask.len != 4) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "unmask: the mask is 4 bytes");
        return NULL;
    }
    for (k = 0; k < 4; k++)
        rotated[k] = ((const unsigned char *)mask.buf)[(k + offset) & 3];
    PyBuffer_Release(&mask);
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL)
        xor_mask((unsigned char *)PyBytes_AsString(result), data.buf, data.len, rotated);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef frames_methods[] = {
    {"scan_binary", (PyCFunction)(void (*)(void))scan_binary, METH_FASTCALL,
     "scan_binary(data, position, limit) -> (payloads, position): the unmasked payloads of the\n"
     "whole binary frames from position on, up to the first frame that is anything else."},
    {"unmask", (PyCFunction)(void (*)(void))unmask, METH_FASTCALL,
     "unmask(data, mask, offset=0) -> bytes: data XOR the 4-byte mask, offset bytes into the frame."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef frames_module = {
    PyModuleDef_HEAD_INIT,
    "_frames",
    "The compiled hot path of wsrouter's client-frame parser (see wsrouter.ws.codec).",
    0,
    frames_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__frames(void)
{
    return PyModuleDef_Init(&frames_module);
}
