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
 * window_u8(src, a, b, out, simd=True): src a C-contiguous int16 or uint16 buffer, out a writable
 * uint8 buffer of as many items. Returns False (and writes nothing) for any other type, so the
 * caller keeps numpy's route. 16 items a step with AVX2 where the CPU has it; simd=False runs
 * the one-at-a-time loop a CPU without AVX2 runs (the tests hold both to numpy).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* From item i to n, one at a time: the tails of the vector loops, and CPUs without AVX2. */
#define BODY                                                 \
    for (; i < n; i++) {                                     \
        float v = (float)x[i] * a;                           \
        v = v + b;                                           \
        v = v < 0.0f ? 0.0f : v;                             \
        v = v > 255.0f ? 255.0f : v;                         \
        out[i] = (uint8_t)(int32_t)v;                        \
    }

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* 16 items a step in AVX2: the same multiply and add, the clip as max and min (a NaN, from an
 * infinite slope times zero, becomes 0, as the scalar truncation of a NaN gives on x86), the
 * truncation, and saturating packs of values already in [0, 255]. The compiler's own
 * vectorization of BODY emulates the scalar selects with integer masks: 3x slower. */
#define AVX2_LOOP(WIDEN)                                                                             \
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), lo = _mm256_setzero_ps(),          \
                 hi = _mm256_set1_ps(255.0f);                                                       \
    Py_ssize_t i = 0;                                                                               \
    for (; i + 16 <= n; i += 16) {                                                                  \
        __m256i w = _mm256_loadu_si256((const __m256i *)(x + i));                                   \
        __m256 f0 = _mm256_cvtepi32_ps(WIDEN(_mm256_castsi256_si128(w)));                          \
        __m256 f1 = _mm256_cvtepi32_ps(WIDEN(_mm256_extracti128_si256(w, 1)));                      \
        f0 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(_mm256_mul_ps(f0, va), vb), lo), hi);        \
        f1 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(_mm256_mul_ps(f1, va), vb), lo), hi);        \
        __m256i s = _mm256_packus_epi32(_mm256_cvttps_epi32(f0), _mm256_cvttps_epi32(f1));          \
        s = _mm256_permute4x64_epi64(s, 0xD8); /* the packs work per 128-bit lane */                \
        _mm_storeu_si128((__m128i *)(out + i),                                                      \
                         _mm_packus_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1))); \
    }                                                                                               \
    BODY

__attribute__((target("avx2"))) static void avx2_i16(const int16_t *restrict x, uint8_t *restrict out,
                                                     Py_ssize_t n, float a, float b) {
    AVX2_LOOP(_mm256_cvtepi16_epi32)
}

__attribute__((target("avx2"))) static void avx2_u16(const uint16_t *restrict x, uint8_t *restrict out,
                                                     Py_ssize_t n, float a, float b) {
    AVX2_LOOP(_mm256_cvtepu16_epi32)
}

#endif

static void from_i16(const int16_t *restrict x, uint8_t *restrict out, Py_ssize_t n, float a, float b) {
    Py_ssize_t i = 0;
    BODY
}

static void from_u16(const uint16_t *restrict x, uint8_t *restrict out, Py_ssize_t n, float a, float b) {
    Py_ssize_t i = 0;
    BODY
}

/* The loops window_u8 runs: AVX2 where the CPU has it (chosen at import), else one at a time. */
static void (*fast_i16)(const int16_t *restrict, uint8_t *restrict, Py_ssize_t, float, float) = from_i16;
static void (*fast_u16)(const uint16_t *restrict, uint8_t *restrict, Py_ssize_t, float, float) = from_u16;

static PyObject *window_u8(PyObject *self, PyObject *args) {
    PyObject *src_obj, *out_obj;
    float a, b;
    int simd = 1;
    if (!PyArg_ParseTuple(args, "OffO|p:window_u8", &src_obj, &a, &b, &out_obj, &simd)) return NULL;
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
        if (i16) (simd ? fast_i16 : from_i16)(src.buf, out.buf, n, a, b);
        else (simd ? fast_u16 : from_u16)(src.buf, out.buf, n, a, b);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return PyBool_FromLong(done);
}

static PyMethodDef methods[] = {
    {"window_u8", window_u8, METH_VARARGS,
     "window_u8(src, a, b, out, simd=True) -> bool: out = trunc(clip(float32(src)*a + b, 0, 255)) for "
     "int16/uint16 src"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "shared.pixels._affine",
                                    .m_doc = "The float32 window in one pass (see shared/pixels/render.py)",
                                    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__affine(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        fast_i16 = avx2_i16;
        fast_u16 = avx2_u16;
    }
#endif
    return PyModule_Create(&module);
}
