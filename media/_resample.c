/* media._resample: the separable resampler behind media._scale.resize_into.
 *
 * One 8-bit plane in, one (possibly strided) 8-bit plane out, in two fixed-point passes per
 * output row: a vertical pass (the output row as a weighted sum of `ytaps` contiguous source
 * rows, kept as int16 at 6 fractional bits in `mid`) and a horizontal pass over that row.
 * The vertical pass goes first so the horizontal one, which cannot simply stream, runs on
 * rows that are already short (the output height); doing both per output row keeps `mid` in
 * L1.
 *
 * The filters are not designed here: media._scale computes them (swscale's bicubic, already
 * quantised to 14 bits, each output's weights summing to exactly 1 << 14) and caches them.
 * This file checks that they stay inside the planes and applies them with the GIL released.
 * resize() does one plane; tile() does a canvas cell at once (black bars around the picture,
 * then Y, U and V), because at 16 tiles per composite the Python around three resize() calls
 * and four numpy bar fills cost ~15% of the composite.
 *
 * Arithmetic, identical in the AVX2 and the portable path (the tests compare them bytewise):
 *   vertical, ytaps <= SHORT_TAPS: mid = sum_t mulhrs(src << 7, wy[t])   (pixel * 64; each
 *                                  product rounded, as pmulhrsw does)
 *   vertical, longer filters:      mid = (sum_t wy[t] * src + (1 << 7)) >> 8
 *   horizontal: out = clamp((sum wx * mid + (1 << 19)) >> 20, 0, 255)    (exact int32 sums)
 * A flat plane comes out exactly (see SHORT_TAPS). The bicubic's negative lobes keep `mid`
 * within about [-1700, 18000], so int16 never saturates and the int32 sums stay far below
 * 2^31.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#else
#define HAVE_AVX2_PATH 0
#endif

#define MID_SHIFT 8
#define OUT_SHIFT 20

typedef struct {
    const uint8_t *src;
    Py_ssize_t src_stride;
    Py_ssize_t sw;
    uint8_t *dst;
    Py_ssize_t dst_stride;
    Py_ssize_t dh, dw;
    const int32_t *ypos;  /* first source row of each output row */
    const int16_t *yw;    /* ytaps weights per output row */
    Py_ssize_t ytaps;
    const int32_t *xstart; /* first `mid` sample of each block of 8 output pixels */
    const int16_t *xw;     /* per block: xpairs x 8 outputs x 2 weights (samples 2j, 2j+1) */
    Py_ssize_t xpairs;
    int16_t *mid;          /* two intermediate rows, sw + 2 * xpairs each (zeroed slack) */
    Py_ssize_t mid_stride;
    int16_t *ring;         /* SHORT_TAPS: ytaps source rows as int16 (pixel << 7) */
    Py_ssize_t ring_stride;
} Job;

/* Up to this many vertical taps the vertical pass rounds every product (pmulhrsw): each tap
 * is off by at most half a step of 1/64, and below 53 taps that can never move the final
 * rounding of a flat plane. Longer filters (shrinks beyond ~12x) sum exactly in int32. */
#define SHORT_TAPS 48

static inline int16_t mulhrs(int16_t a, int16_t b) {
    return (int16_t)(((((int32_t)a * b) >> 14) + 1) >> 1);
}

static inline uint8_t clamp_u8(int32_t v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* ------------------------------------------------------------------ portable path */

static void vpass_c(const Job *j, Py_ssize_t r, int16_t *mid, Py_ssize_t x0) {
    const uint8_t *rows = j->src + (Py_ssize_t)j->ypos[r] * j->src_stride;
    const int16_t *w = j->yw + r * j->ytaps;
    if (j->ytaps <= SHORT_TAPS) {
        for (Py_ssize_t x = x0; x < j->sw; x++) {
            int32_t acc = 0;
            for (Py_ssize_t t = 0; t < j->ytaps; t++)
                acc += mulhrs((int16_t)(rows[t * j->src_stride + x] << 7), w[t]);
            mid[x] = (int16_t)acc;
        }
        return;
    }
    for (Py_ssize_t x = x0; x < j->sw; x++) {
        int32_t acc = 1 << (MID_SHIFT - 1);
        for (Py_ssize_t t = 0; t < j->ytaps; t++)
            acc += (int32_t)w[t] * rows[t * j->src_stride + x];
        mid[x] = (int16_t)(acc >> MID_SHIFT);
    }
}

static void hpass_c(const Job *j, const int16_t *mid, uint8_t *out, Py_ssize_t g0) {
    for (Py_ssize_t g = g0; 8 * g < j->dw; g++) {
        const int16_t *s = mid + j->xstart[g];
        const int16_t *w = j->xw + g * j->xpairs * 16;
        for (Py_ssize_t k = 0; k < 8 && 8 * g + k < j->dw; k++) {
            int32_t acc = 1 << (OUT_SHIFT - 1);
            for (Py_ssize_t p = 0; p < j->xpairs; p++)
                acc += (int32_t)w[16 * p + 2 * k] * s[2 * p] +
                       (int32_t)w[16 * p + 2 * k + 1] * s[2 * p + 1];
            out[8 * g + k] = clamp_u8(acc >> OUT_SHIFT);
        }
    }
}

/* ------------------------------------------------------------------ AVX2 path */

#if HAVE_AVX2_PATH
/* Source row k as int16 (pixel << 7) into ring slot k % ytaps. */
__attribute__((target("avx2"))) static void widen_avx2(const Job *j, Py_ssize_t k) {
    const uint8_t *s = j->src + k * j->src_stride;
    int16_t *d = j->ring + (k % j->ytaps) * j->ring_stride;
    Py_ssize_t x = 0;
    for (; x + 16 <= j->sw; x += 16) {
        __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(s + x)));
        _mm256_storeu_si256((__m256i *)(d + x), _mm256_slli_epi16(v, 7));
    }
    for (; x < j->sw; x++)
        d[x] = (int16_t)(s[x] << 7);
}

/* Short filters: one pmulhrsw and one add per 16 pixels and tap, on rows widened once each
 * (a source row serves ytaps / shrink output rows), so no shuffles in the inner loop. */
__attribute__((target("avx2"))) static void vpass_short_avx2(const Job *j, Py_ssize_t r,
                                                             int16_t *mid) {
    const int16_t *w = j->yw + r * j->ytaps;
    const Py_ssize_t taps = j->ytaps, first = j->ypos[r];
    const int16_t *rows[SHORT_TAPS];
    __m256i wv[SHORT_TAPS];
    for (Py_ssize_t t = 0; t < taps; t++) {
        rows[t] = j->ring + ((first + t) % taps) * j->ring_stride;
        wv[t] = _mm256_set1_epi16(w[t]);
    }
    Py_ssize_t x = 0;
    /* 64 pixels per tap: the row pointer and weight loads are shared by four vectors. */
    for (; x + 64 <= j->sw; x += 64) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (Py_ssize_t t = 0; t < taps; t++) {
            const __m256i *p = (const __m256i *)(rows[t] + x);
            a0 = _mm256_add_epi16(a0, _mm256_mulhrs_epi16(_mm256_loadu_si256(p), wv[t]));
            a1 = _mm256_add_epi16(a1, _mm256_mulhrs_epi16(_mm256_loadu_si256(p + 1), wv[t]));
            a2 = _mm256_add_epi16(a2, _mm256_mulhrs_epi16(_mm256_loadu_si256(p + 2), wv[t]));
            a3 = _mm256_add_epi16(a3, _mm256_mulhrs_epi16(_mm256_loadu_si256(p + 3), wv[t]));
        }
        __m256i *m = (__m256i *)(mid + x);
        _mm256_storeu_si256(m, a0);
        _mm256_storeu_si256(m + 1, a1);
        _mm256_storeu_si256(m + 2, a2);
        _mm256_storeu_si256(m + 3, a3);
    }
    for (; x + 16 <= j->sw; x += 16) {
        __m256i a0 = _mm256_setzero_si256();
        for (Py_ssize_t t = 0; t < taps; t++)
            a0 = _mm256_add_epi16(
                a0, _mm256_mulhrs_epi16(_mm256_loadu_si256((const __m256i *)(rows[t] + x)), wv[t]));
        _mm256_storeu_si256((__m256i *)(mid + x), a0);
    }
    for (; x < j->sw; x++) {
        int32_t acc = 0;
        for (Py_ssize_t t = 0; t < taps; t++)
            acc += mulhrs(rows[t][x], w[t]);
        mid[x] = (int16_t)acc;
    }
}

/* Long filters: exact int32 sums. Tap pairs interleaved byte-wise, widened to int16 pairs and
 * multiplied by (w[t], w[t+1]) with one pmaddwd; the in-lane unpack order is undone by the
 * in-lane packs at the end plus one cross-lane permute. */
__attribute__((target("avx2"))) static void vpass_long_avx2(const Job *j, Py_ssize_t r,
                                                            int16_t *mid) {
    const uint8_t *rows = j->src + (Py_ssize_t)j->ypos[r] * j->src_stride;
    const int16_t *w = j->yw + r * j->ytaps;
    const Py_ssize_t stride = j->src_stride, taps = j->ytaps;
    const __m256i zero = _mm256_setzero_si256();
    const __m256i round = _mm256_set1_epi32(1 << (MID_SHIFT - 1));
    Py_ssize_t x = 0;
    for (; x + 32 <= j->sw; x += 32) {
        __m256i a0 = round, a1 = round, a2 = round, a3 = round;
        for (Py_ssize_t t = 0; t < taps; t += 2) {
            const uint8_t *p = rows + t * stride + x;
            int last = t + 1 >= taps;
            __m256i ra = _mm256_loadu_si256((const __m256i *)p);
            __m256i rb = last ? ra : _mm256_loadu_si256((const __m256i *)(p + stride));
            uint32_t pair = (uint16_t)w[t] | ((uint32_t)(uint16_t)(last ? 0 : w[t + 1]) << 16);
            __m256i wp = _mm256_set1_epi32((int32_t)pair);
            __m256i lo = _mm256_unpacklo_epi8(ra, rb);
            __m256i hi = _mm256_unpackhi_epi8(ra, rb);
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_unpacklo_epi8(lo, zero), wp));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_unpackhi_epi8(lo, zero), wp));
            a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_unpacklo_epi8(hi, zero), wp));
            a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_unpackhi_epi8(hi, zero), wp));
        }
        /* a0: px 0-3 | 16-19, a1: 4-7 | 20-23, a2: 8-11 | 24-27, a3: 12-15 | 28-31 */
        __m256i p01 = _mm256_packs_epi32(_mm256_srai_epi32(a0, MID_SHIFT),
                                         _mm256_srai_epi32(a1, MID_SHIFT)); /* 0-7 | 16-23 */
        __m256i p23 = _mm256_packs_epi32(_mm256_srai_epi32(a2, MID_SHIFT),
                                         _mm256_srai_epi32(a3, MID_SHIFT)); /* 8-15 | 24-31 */
        _mm256_storeu_si256((__m256i *)(mid + x), _mm256_permute2x128_si256(p01, p23, 0x20));
        _mm256_storeu_si256((__m256i *)(mid + x + 16),
                            _mm256_permute2x128_si256(p01, p23, 0x31));
    }
    if (x < j->sw)
        vpass_c(j, r, mid, x);
}

/* 8 output pixels per block as one dense product: for each sample pair (2p, 2p+1) of the
 * block's span, broadcast the pair (a plain load, no shuffle) and pmaddwd it with the 8
 * outputs' weights for those samples. Zero weights pad each block to the widest span, which
 * costs less than reducing per-output dot products across lanes. Two rows at a time, so each
 * weight load serves two products. */
__attribute__((target("avx2"))) static inline __m256i bcast_pair(const int16_t *s) {
    int32_t v;
    memcpy(&v, s, sizeof v);
    return _mm256_set1_epi32(v);
}

__attribute__((target("avx2"))) static inline void store8(uint8_t *out, __m256i acc) {
    __m256i v = _mm256_srai_epi32(acc, OUT_SHIFT);
    __m128i v16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64((__m128i *)out, _mm_packus_epi16(v16, v16));
}

__attribute__((target("avx2"))) static void hpass_avx2(const Job *j, const int16_t *mid0,
                                                       const int16_t *mid1, uint8_t *out0,
                                                       uint8_t *out1) {
    const Py_ssize_t pairs = j->xpairs, full = j->dw / 8;
    const __m256i round = _mm256_set1_epi32(1 << (OUT_SHIFT - 1));
    for (Py_ssize_t g = 0; g < full; g++) {
        const int16_t *s0 = mid0 + j->xstart[g], *s1 = mid1 + j->xstart[g];
        const __m256i *w = (const __m256i *)(j->xw + g * pairs * 16);
        __m256i a0 = round, a1 = round;
        for (Py_ssize_t p = 0; p < pairs; p++) {
            __m256i wp = _mm256_loadu_si256(w + p);
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(bcast_pair(s0 + 2 * p), wp));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(bcast_pair(s1 + 2 * p), wp));
        }
        store8(out0 + 8 * g, a0);
        store8(out1 + 8 * g, a1);
    }
    if (8 * full < j->dw) {
        hpass_c(j, mid0, out0, full);
        hpass_c(j, mid1, out1, full);
    }
}
#endif

/* ------------------------------------------------------------------ driver */

#if HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void vpass_avx2(const Job *j, Py_ssize_t r,
                                                       int16_t *mid, Py_ssize_t *widened,
                                                       Py_ssize_t *fetched) {
    if (j->ring == NULL) {
        vpass_long_avx2(j, r, mid);
        return;
    }
    Py_ssize_t first = j->ypos[r], end = first + j->ytaps;
    for (Py_ssize_t k = *widened > first ? *widened : first; k < end; k++)
        widen_avx2(j, k);
    /* The source rows the row after next will widen: fetched now, they arrive while this
     * row and the next are computed (the plane is usually not in L2). */
    Py_ssize_t ahead = j->ypos[r + 2 < j->dh ? r + 2 : j->dh - 1] + j->ytaps;
    for (Py_ssize_t k = *fetched > end ? *fetched : end; k < ahead; k++) {
        const char *row = (const char *)(j->src + k * j->src_stride);
        for (Py_ssize_t x = 0; x < j->sw; x += 64)
            _mm_prefetch(row + x, _MM_HINT_T0);
        _mm_prefetch(row + j->sw - 1, _MM_HINT_T0);
    }
    if (ahead > *fetched)
        *fetched = ahead;
    *widened = end;
    vpass_short_avx2(j, r, mid);
}
#endif

static void run(Job *j, int simd) {
    int16_t *mid0 = j->mid, *mid1 = j->mid + j->mid_stride;
#if HAVE_AVX2_PATH
    if (simd) {
        Py_ssize_t widened = 0; /* source rows [0, widened) have been through the ring */
        Py_ssize_t fetched = 0; /* and [0, fetched) have been prefetched */
        Py_ssize_t r = 0;
        for (; r + 2 <= j->dh; r += 2) {
            vpass_avx2(j, r, mid0, &widened, &fetched);
            vpass_avx2(j, r + 1, mid1, &widened, &fetched);
            hpass_avx2(j, mid0, mid1, j->dst + r * j->dst_stride,
                       j->dst + (r + 1) * j->dst_stride);
        }
        if (r < j->dh) { /* the odd last row: its twin is computed and dropped */
            vpass_avx2(j, r, mid0, &widened, &fetched);
            hpass_c(j, mid0, j->dst + r * j->dst_stride, 0);
        }
        return;
    }
#endif
    (void)simd;
    (void)mid1;
    for (Py_ssize_t r = 0; r < j->dh; r++) {
        vpass_c(j, r, mid0, 0);
        hpass_c(j, mid0, j->dst + r * j->dst_stride, 0);
    }
}

static int have_avx2 = 0;

static int plane(Py_buffer *view, const char *name, int writable) {
    if (view->ndim != 2 || view->itemsize != 1 ||
        (view->format != NULL && strcmp(view->format, "B") != 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a 2-D uint8 plane", name);
        return -1;
    }
    if (view->strides[1] != 1) {
        PyErr_Format(PyExc_ValueError, "%s must have contiguous rows", name);
        return -1;
    }
    if (writable && view->readonly) {
        PyErr_Format(PyExc_ValueError, "%s is read-only", name);
        return -1;
    }
    return 0;
}

static int check_y(Py_buffer *pos, Py_buffer *w, Py_ssize_t n_out, Py_ssize_t taps,
                   Py_ssize_t n_in) {
    if (taps < 1 || pos->len != n_out * (Py_ssize_t)sizeof(int32_t) ||
        w->len != n_out * taps * (Py_ssize_t)sizeof(int16_t)) {
        PyErr_SetString(PyExc_ValueError, "y filter does not match the planes");
        return -1;
    }
    const int32_t *p = (const int32_t *)pos->buf;
    for (Py_ssize_t i = 0; i < n_out; i++) {
        if (p[i] < 0 || p[i] > n_in - taps || (i > 0 && p[i] < p[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "y filter rows must be in the plane, in order");
            return -1;
        }
    }
    return 0;
}

static int check_x(Py_buffer *start, Py_buffer *w, Py_ssize_t n_out, Py_ssize_t pairs,
                   Py_ssize_t n_in) {
    Py_ssize_t blocks = (n_out + 7) / 8;
    if (pairs < 1 || start->len != blocks * (Py_ssize_t)sizeof(int32_t) ||
        w->len != blocks * pairs * 16 * (Py_ssize_t)sizeof(int16_t)) {
        PyErr_SetString(PyExc_ValueError, "x filter does not match the planes");
        return -1;
    }
    const int32_t *p = (const int32_t *)start->buf;
    for (Py_ssize_t i = 0; i < blocks; i++) {
        if (p[i] < 0 || p[i] > n_in) {
            PyErr_SetString(PyExc_ValueError, "x filter blocks must start in the plane");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(resize_doc,
             "resize(src, dst, ypos, yweights, ytaps, xstart, xweights, xpairs, simd=True)\n\n"
             "Resample the uint8 plane src into dst (rows contiguous, any row stride).\n"
             "Rows: output row r is the sum of ytaps source rows from ypos[r] (int32, in order)\n"
             "with int16 weights yweights[r * ytaps:]. Columns, per block b of 8 outputs: the\n"
             "sum over 2 * xpairs samples from xstart[b], with int16 weights laid out as\n"
             "[pair][output][2]; samples past the row end read as zero. Weights are 14-bit\n"
             "(1 << 14 is 1). The GIL is released while resampling; simd=False forces the\n"
             "portable code, which gives the same bytes.");

static PyObject *resize(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"src",    "dst",      "ypos",   "yweights", "ytaps",
                             "xstart", "xweights", "xpairs", "simd",     NULL};
    Py_buffer src = {0}, dst = {0}, ypos = {0}, yw = {0}, xstart = {0}, xw = {0};
    PyObject *src_obj, *dst_obj;
    Py_ssize_t ytaps, xpairs;
    int simd = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOy*y*ny*y*n|p", kwlist, &src_obj, &dst_obj,
                                     &ypos, &yw, &ytaps, &xstart, &xw, &xpairs, &simd))
        return NULL;
    PyObject *result = NULL;
    Job j;
    memset(&j, 0, sizeof j);
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_STRIDES | PyBUF_FORMAT) < 0)
        goto done;
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        goto done;
    if (plane(&src, "src", 0) < 0 || plane(&dst, "dst", 1) < 0)
        goto done;
    j.src = (const uint8_t *)src.buf;
    j.src_stride = src.strides[0];
    j.sw = src.shape[1];
    j.dst = (uint8_t *)dst.buf;
    j.dst_stride = dst.strides[0];
    j.dh = dst.shape[0];
    j.dw = dst.shape[1];
    j.ypos = (const int32_t *)ypos.buf;
    j.yw = (const int16_t *)yw.buf;
    j.ytaps = ytaps;
    j.xstart = (const int32_t *)xstart.buf;
    j.xw = (const int16_t *)xw.buf;
    j.xpairs = xpairs;
    if (j.dh == 0 || j.dw == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (src.shape[0] < 1 || j.sw < 1) {
        PyErr_SetString(PyExc_ValueError, "src is empty");
        goto done;
    }
    if (check_y(&ypos, &yw, j.dh, ytaps, src.shape[0]) < 0 ||
        check_x(&xstart, &xw, j.dw, xpairs, j.sw) < 0)
        goto done;
    simd = simd && have_avx2;
    /* Two intermediate rows, each with zeroed slack so a block may read 2 * xpairs samples
     * from any start within the row; and for short filters the ring of widened rows. */
    j.mid_stride = j.sw + 2 * xpairs;
    j.mid = (int16_t *)calloc((size_t)(2 * j.mid_stride), sizeof(int16_t));
    j.ring_stride = (j.sw + 15) & ~(Py_ssize_t)15;
    if (simd && ytaps <= SHORT_TAPS)
        j.ring = (int16_t *)malloc((size_t)(ytaps * j.ring_stride) * sizeof(int16_t));
    if (j.mid == NULL || (simd && ytaps <= SHORT_TAPS && j.ring == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    run(&j, simd);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(j.mid);
    free(j.ring);
    if (src.obj)
        PyBuffer_Release(&src);
    if (dst.obj)
        PyBuffer_Release(&dst);
    PyBuffer_Release(&ypos);
    PyBuffer_Release(&yw);
    PyBuffer_Release(&xstart);
    PyBuffer_Release(&xw);
    return result;
}


/* ------------------------------------------------------------------ a whole tile */

typedef struct {
    Py_buffer pos, w, xstart, xw;
    Py_ssize_t taps, pairs;
} Filter;

static void release_filter(Filter *f) {
    PyBuffer_Release(&f->pos);
    PyBuffer_Release(&f->w);
    PyBuffer_Release(&f->xstart);
    PyBuffer_Release(&f->xw);
}

static int get_filter(PyObject *obj, Filter *f) {
    if (!PyTuple_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "a filter is a tuple (ypos, yweights, ytaps, "
                                         "xstart, xweights, xpairs)");
        return -1;
    }
    return PyArg_ParseTuple(obj, "y*y*ny*y*n", &f->pos, &f->w, &f->taps, &f->xstart, &f->xw,
                            &f->pairs)
               ? 0
               : -1;
}

/* Fills the rows [y0, y1) x columns [x0, x1) of a plane with one byte value. */
static void fill(uint8_t *p, Py_ssize_t stride, Py_ssize_t x0, Py_ssize_t y0, Py_ssize_t x1,
                 Py_ssize_t y1, uint8_t value) {
    if (x1 <= x0)
        return;
    for (Py_ssize_t y = y0; y < y1; y++)
        memset(p + y * stride + x0, value, (size_t)(x1 - x0));
}

/* Everything of an h x w plane outside the hole [x, x + hw) x [y, y + hh). */
static void fill_around(uint8_t *p, Py_ssize_t stride, Py_ssize_t h, Py_ssize_t w, Py_ssize_t x,
                        Py_ssize_t y, Py_ssize_t hw, Py_ssize_t hh, uint8_t value) {
    fill(p, stride, 0, 0, w, y, value);
    fill(p, stride, 0, y + hh, w, h, value);
    fill(p, stride, 0, y, x, y + hh, value);
    fill(p, stride, x + hw, y, w, y + hh, value);
}

PyDoc_STRVAR(tile_doc,
             "tile(src_y, src_u, src_v, cell_y, cell_u, cell_v, x, y, w, h, cx, cy,\n"
             "     luma, chroma, simd=True)\n\n"
             "Paint one yuv420p picture into one canvas cell in a single call: the Y plane\n"
             "resized into the w x h box at (x, y) of cell_y, U and V into the w/2 x h/2 box\n"
             "at (cx, cy) of cell_u / cell_v, and the rest of each cell view filled black\n"
             "(16, 128, 128). luma and chroma are resize()'s filter arguments as tuples\n"
             "(ypos, yweights, ytaps, xstart, xweights, xpairs). One GIL release for all of it.");

static PyObject *tile(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"src_y", "src_u", "src_v", "cell_y", "cell_u", "cell_v",
                             "x",     "y",     "w",     "h",      "cx",     "cy",
                             "luma",  "chroma", "simd", NULL};
    PyObject *objs[6], *luma_obj, *chroma_obj;
    Py_ssize_t x, y, w, h, cx, cy;
    int simd = 1;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOnnnnnnOO|p", kwlist, &objs[0],
                                     &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &x, &y,
                                     &w, &h, &cx, &cy, &luma_obj, &chroma_obj, &simd))
        return NULL;
    Py_buffer views[6];
    Filter filters[2];
    memset(views, 0, sizeof views);
    memset(filters, 0, sizeof filters);
    Job jobs[3];
    memset(jobs, 0, sizeof jobs);
    int16_t *mid = NULL, *ring = NULL;
    PyObject *result = NULL;
    for (int i = 0; i < 6; i++) {
        int flags = PyBUF_STRIDES | PyBUF_FORMAT | (i >= 3 ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objs[i], &views[i], flags) < 0 ||
            plane(&views[i], i < 3 ? "a source plane" : "a cell plane", i >= 3) < 0)
            goto done;
    }
    if (get_filter(luma_obj, &filters[0]) < 0 || get_filter(chroma_obj, &filters[1]) < 0)
        goto done;
    Py_ssize_t boxes[3][4] = {{x, y, w, h}, {cx, cy, w / 2, h / 2}, {cx, cy, w / 2, h / 2}};
    Py_ssize_t mid_len = 0, ring_len = 0;
    for (int i = 0; i < 3; i++) {
        Py_buffer *src = &views[i], *cell = &views[3 + i];
        Filter *f = &filters[i > 0];
        Py_ssize_t *b = boxes[i];
        if (b[0] < 0 || b[1] < 0 || b[2] < 1 || b[3] < 1 || b[0] + b[2] > cell->shape[1] ||
            b[1] + b[3] > cell->shape[0]) {
            PyErr_SetString(PyExc_ValueError, "the picture's box must lie inside its cell");
            goto done;
        }
        if (src->shape[0] < 1 || src->shape[1] < 1) {
            PyErr_SetString(PyExc_ValueError, "src is empty");
            goto done;
        }
        Job *j = &jobs[i];
        j->src = (const uint8_t *)src->buf;
        j->src_stride = src->strides[0];
        j->sw = src->shape[1];
        j->dst_stride = cell->strides[0];
        j->dst = (uint8_t *)cell->buf + b[1] * j->dst_stride + b[0];
        j->dh = b[3];
        j->dw = b[2];
        j->ypos = (const int32_t *)f->pos.buf;
        j->yw = (const int16_t *)f->w.buf;
        j->ytaps = f->taps;
        j->xstart = (const int32_t *)f->xstart.buf;
        j->xw = (const int16_t *)f->xw.buf;
        j->xpairs = f->pairs;
        if (check_y(&f->pos, &f->w, j->dh, j->ytaps, src->shape[0]) < 0 ||
            check_x(&f->xstart, &f->xw, j->dw, j->xpairs, j->sw) < 0)
            goto done;
        j->mid_stride = j->sw + 2 * j->xpairs;
        j->ring_stride = (j->sw + 15) & ~(Py_ssize_t)15;
        if (2 * j->mid_stride > mid_len)
            mid_len = 2 * j->mid_stride;
        if (j->ytaps <= SHORT_TAPS && j->ytaps * j->ring_stride > ring_len)
            ring_len = j->ytaps * j->ring_stride;
    }
    simd = simd && have_avx2;
    mid = (int16_t *)malloc((size_t)mid_len * sizeof(int16_t));
    if (simd && ring_len > 0)
        ring = (int16_t *)malloc((size_t)ring_len * sizeof(int16_t));
    if (mid == NULL || (simd && ring_len > 0 && ring == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < 3; i++) {
        Job *j = &jobs[i];
        Py_buffer *cell = &views[3 + i];
        Py_ssize_t *b = boxes[i];
        fill_around((uint8_t *)cell->buf, cell->strides[0], cell->shape[0], cell->shape[1], b[0],
                    b[1], b[2], b[3], i == 0 ? 16 : 128);
        j->mid = mid;
        memset(mid, 0, (size_t)(2 * j->mid_stride) * sizeof(int16_t));
        j->ring = simd && j->ytaps <= SHORT_TAPS ? ring : NULL;
        run(j, simd);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(mid);
    free(ring);
    for (int i = 0; i < 6; i++)
        if (views[i].obj)
            PyBuffer_Release(&views[i]);
    release_filter(&filters[0]);
    release_filter(&filters[1]);
    return result;
}

static PyMethodDef methods[] = {
    {"resize", (PyCFunction)(void (*)(void))resize, METH_VARARGS | METH_KEYWORDS, resize_doc},
    {"tile", (PyCFunction)(void (*)(void))tile, METH_VARARGS | METH_KEYWORDS, tile_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
#if HAVE_AVX2_PATH
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_AddIntConstant(module, "HAVE_AVX2", have_avx2);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "media._resample",
    .m_doc = "Fixed-point separable resampling of uint8 planes (see media._scale).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__resample(void) { return PyModuleDef_Init(&moduledef); }
