/* The float32 window of shared/pixels/render.py in one pass: out = trunc(clip(float(x)*a + b, 0, 255)).
 *
 * Why: numpy spends five passes over a 512x512 slice on it (convert, multiply, add, clip,
 * convert), 0.3 ms of a CT slice's ~3 on a Xeon without fast float clipping; one fused pass
 * takes a third of that. The arithmetic is numpy's exactly: the same IEEE single-precision
 * multiply then add (compiled with -ffp-contract=off, so never fused into an FMA), the same
 * clip and truncation; render.py still accepts a window's affine form only where it equals the
 * float64 table over the whole stored domain, and tests/test_render.py holds this to numpy's
 * route over every int16 and uint16 value.
 *
 * window_u8(src, a, b, out): src a C-contiguous int16 or uint16 buffer, out a writable uint8
 * buffer of as many items. Returns False (and writes nothing) for any other type, so the caller
 * keeps numpy's route.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define BODY                                                   \
    for (Py_ssize_t i = 0; i < n; i++) {                     \
        float v = (float)x[i] * a;                           \
        v = v + b;                                           \
        v = v < 0.0f ? 0.0f : v;                             \
        v = v > 255.0f ? 255.0f : v;                         \
        out[i] = (uint8_t)(int32_t)v;                        \
    }

CLONES static void from_i16(const int16_t *restrict x, uint8_t *restrict out, Py_ssize_t n, float a, float b) {
    BODY
}

CLONES static void from_u16(const uint16_t *restrict x, uint8_t *restrict out, Py_ssize_t n, float a, float b) {
    BODY
}

static PyObject *window_u8(PyObject *self, PyObject *args) {
    PyObject *src_obj, *out_obj;
    float a, b;
    if (!PyArg_ParseTuple(args, "OffO:window_u8", &src_obj, &a, &b, &out_obj)) return NULL;
    Py_buffer src, out;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    const char *f = src.format ? src.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int i16 = !strcmp(f, "h"), u16 = !strcmp(f, "H");
    Py_ssize_t n = src.itemsize ? src.len / src.itemsize : 0;
    int done = (i16 || u16) && src.itemsize == 2 && out.len == n;
    if (done) {
        Py_BEGIN_ALLOW_THREADS
        if (i16) from_i16(src.buf, out.buf, n, a, b);
        else from_u16(src.buf, out.buf, n, a, b);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return PyBool_FromLong(done);
}

static PyMethodDef methods[] = {
    {"window_u8", window_u8, METH_VARARGS,
     "window_u8(src, a, b, out) -> bool: out = trunc(clip(float32(src)*a + b, 0, 255)) for int16/uint16 src"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "shared.pixels._affine",
                                    .m_doc = "The float32 window in one pass (see shared/pixels/render.py)",
                                    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__affine(void) { return PyModule_Create(&module); }
