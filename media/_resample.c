/* media._resample: the separable resampler behind media._scale.resize_into.
 *
 * One 8-bit plane in, one (possibly strided) 8-bit plane out, in two fixed-point passes: a
 * vertical pass (each output row as a weighted sum of `ytaps` contiguous source rows, rounded
 * back to bytes in `mid`) and a horizontal pass over those rows. The vertical pass goes first
 * so the horizontal one, which cannot simply stream, runs on rows that are already short (the
 * output height). The AVX2 path does 16 output rows at a time: vertical into a 16-row block,
 * a transpose, then the horizontal pass with each vector holding one sample pair of the 16
 * rows (see transpose16), all in L1. Source rows are prefetched two output rows ahead.
 *
 * The filters are not designed here: media._scale computes them (swscale's bicubic, already
 * quantised: to 6 bits, except vertical filters longer than SHORT_TAPS, which get 14; each
 * output's weights summing to exactly the fixed-point 1) and caches them.
 * This file checks that they stay inside the planes and applies them with the GIL released.
 * resize() does one plane; tile() does a canvas cell at once (black bars around the picture,
 * then Y, U and V), because at 16 tiles per composite the Python around three resize() calls
 * and four numpy bar fills cost ~15% of the composite.
 *
 * Arithmetic, identical in the AVX2 and the portable path (the tests compare them bytewise):
 *   vertical, ytaps <= SHORT_TAPS: mid = clamp((sum_t wy[t] * src + 32) >> 6, 0, 255)
 *   vertical, longer filters:      mid = clamp((sum_t wy[t] * src + (1 << 13)) >> 14, 0, 255)
 *   horizontal:                    out = clamp((sum wx * mid + 32) >> 6, 0, 255)
 * The 6-bit sums are exact in int16 (see SHORT_ABS_SUM). A flat plane comes out exactly:
 * every output's weights sum to exactly 1. Everything 6-bit runs on bytes with pmaddubsw,
 * two taps per instruction for 16 pixels (vertical) or 16 rows (horizontal): against 14-bit
 * weights with int16 intermediates (pmulhrsw per tap on rows widened to int16, pmaddwd for 8
 * rows) that halved the multiplies of both passes and dropped the widening pass, and cost
 * ~10 dB of luma PSNR against swscale (16 / 9 / 4 tiles: 68.7 / 69.2 / 71.8 -> 58-60 /
 * 63-64 / 63-64 dB, the bar being 45); clamping the intermediate rows to bytes costs nothing
 * measurable on natural pictures.
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

#define LONG_SHIFT 14 /* the long vertical filters' 1 */
#define MID_ROWS 16   /* rows per horizontal pass on the AVX2 path (see transpose16) */
#define OUT_SHIFT 6   /* the horizontal filters' 1 (SHORT_ONE) */

typedef struct {
    const uint8_t *src;
    Py_ssize_t src_stride;
    Py_ssize_t sh, sw;
    uint8_t *dst;
    Py_ssize_t dst_stride;
    Py_ssize_t dh, dw;
    const int32_t *ypos;  /* first source row of each output row */
    const int16_t *yw;    /* ytaps weights per output row */
    Py_ssize_t ytaps;
    const int32_t *xstart; /* first (even) `mid` sample of each output pixel, dw rounded up
                              to a multiple of 8 (the extra outputs have zero weights) */
    const int8_t *xw;      /* per block of 8 outputs: xpairs x 8 outputs x 2 weights (the
                              output's samples 2p, 2p + 1 from its start) */
    Py_ssize_t xpairs;
    uint8_t *mid;          /* portable: one intermediate row; AVX2: a block of 16 rows, then
                              the same block transposed (MID_ROWS * mid_stride each) */
    Py_ssize_t mid_stride; /* sw + 2 * xpairs rounded up to 16; zeroed past sw */
    uint8_t *ring;         /* SHORT_TAPS: ytaps source row pairs, bytes interleaved */
    Py_ssize_t ring_stride; /* bytes per pair: 2 * sw rounded up to 64 */
    Py_ssize_t bar_left, bar_right; /* tile(): bytes to fill left and right of each row */
    uint8_t bar_value;
} Job;

/* tile()'s side bars, written with the rows they flank: filled up front they were ~7% of a
 * 16-tile composite, short stores each missing the cache with nothing to overlap them. */
static void side_bars(const Job *j, uint8_t *out, Py_ssize_t rows) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        memset(out + r * j->dst_stride - j->bar_left, j->bar_value, (size_t)j->bar_left);
        memset(out + r * j->dst_stride + j->dw, j->bar_value, (size_t)j->bar_right);
    }
}

/* Up to this many vertical taps the weights are 6-bit (SHORT_ONE is 1) and the vertical pass
 * sums exact products in int16; longer filters (shrinks beyond ~12x) have 14-bit weights
 * summed in int32. media._scale reads both constants. */
#define SHORT_TAPS 48
#define SHORT_ONE 64
/* A short filter's absolute weights sum to at most this per row (checked), so no partial sum
 * leaves int16 (255 * 128 < 2^15) and no pmaddubsw pair saturates. */
#define SHORT_ABS_SUM 128
/* Long (14-bit) filters accumulate 255 * sum|w| plus rounding in int32. */
#define LONG_ABS_SUM ((INT32_MAX - (1 << 13)) / 255)

static inline uint8_t clamp_u8(int32_t v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* ------------------------------------------------------------------ portable path */

static void vpass_c(const Job *j, Py_ssize_t r, uint8_t *mid, Py_ssize_t x0) {
    const uint8_t *rows = j->src + (Py_ssize_t)j->ypos[r] * j->src_stride;
    const int16_t *w = j->yw + r * j->ytaps;
    if (j->ytaps <= SHORT_TAPS) {
        for (Py_ssize_t x = x0; x < j->sw; x++) {
            int32_t acc = 1 << (OUT_SHIFT - 1);
            for (Py_ssize_t t = 0; t < j->ytaps; t++)
                acc += (int32_t)w[t] * rows[t * j->src_stride + x];
            mid[x] = clamp_u8(acc >> OUT_SHIFT);
        }
        return;
    }
    for (Py_ssize_t x = x0; x < j->sw; x++) {
        int32_t acc = 1 << (LONG_SHIFT - 1);
        for (Py_ssize_t t = 0; t < j->ytaps; t++)
            acc += (int32_t)w[t] * rows[t * j->src_stride + x];
        mid[x] = clamp_u8(acc >> LONG_SHIFT);
    }
}

static void hpass_c(const Job *j, const uint8_t *mid, uint8_t *out) {
    for (Py_ssize_t x = 0; x < j->dw; x++) {
        const uint8_t *s = mid + j->xstart[x];
        const int8_t *w = j->xw + (x / 8) * j->xpairs * 16 + 2 * (x % 8);
        int32_t acc = 1 << (OUT_SHIFT - 1);
        for (Py_ssize_t p = 0; p < j->xpairs; p++)
            acc += (int32_t)w[16 * p] * s[2 * p] + (int32_t)w[16 * p + 1] * s[2 * p + 1];
        out[x] = clamp_u8(acc >> OUT_SHIFT);
    }
}

/* ------------------------------------------------------------------ AVX2 path */

#if HAVE_AVX2_PATH
/* Source rows k and k + 1, bytes interleaved (k0 k1 k0 k1 ...: what pmaddubsw multiplies by
 * a weight pair), into ring slot k % ytaps; zeros up to the slot's end, so the vertical pass
 * runs in whole 32-pixel vectors and the slack of `mid` reads as zeros. Past the plane's last
 * row the pair repeats row k: its weight there is zero. Each source row goes into two pairs,
 * and a pair serves about ytaps / (2 * shrink) output rows. */
__attribute__((target("avx2"))) static void pair_avx2(const Job *j, Py_ssize_t k) {
    const uint8_t *a = j->src + k * j->src_stride;
    const uint8_t *b = k + 1 < j->sh ? a + j->src_stride : a;
    uint8_t *d = j->ring + (k % j->ytaps) * j->ring_stride;
    Py_ssize_t x = 0;
    for (; x + 32 <= j->sw; x += 32) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + x));
        __m256i vb = _mm256_loadu_si256((const __m256i *)(b + x));
        /* lane order: pixels 0-7 | 16-23, then 8-15 | 24-31; vpass_short_avx2 undoes it */
        _mm256_storeu_si256((__m256i *)(d + 2 * x), _mm256_unpacklo_epi8(va, vb));
        _mm256_storeu_si256((__m256i *)(d + 2 * x + 32), _mm256_unpackhi_epi8(va, vb));
    }
    if (x < j->sw) { /* the last partial vector, in the same lane order */
        uint8_t ta[32] = {0}, tb[32] = {0};
        memcpy(ta, a + x, (size_t)(j->sw - x));
        memcpy(tb, b + x, (size_t)(j->sw - x));
        __m256i va = _mm256_loadu_si256((const __m256i *)ta);
        __m256i vb = _mm256_loadu_si256((const __m256i *)tb);
        _mm256_storeu_si256((__m256i *)(d + 2 * x), _mm256_unpacklo_epi8(va, vb));
        _mm256_storeu_si256((__m256i *)(d + 2 * x + 32), _mm256_unpackhi_epi8(va, vb));
        x += 32;
    }
    if (2 * x < j->ring_stride)
        memset(d + 2 * x, 0, (size_t)(j->ring_stride - 2 * x));
}

/* Short filters: one pmaddubsw (two taps x 16 pixels, exact in int16, see SHORT_ABS_SUM) and
 * one add per pair of taps and 16 pixels, straight from the bytes: half the multiplies of
 * one pmulhrsw per tap on widened rows, and no widening pass. An odd last tap pairs with a
 * zero weight. */
__attribute__((target("avx2"))) static void vpass_short_avx2(const Job *j, Py_ssize_t r,
                                                             uint8_t *mid) {
    const int16_t *w = j->yw + r * j->ytaps;
    const Py_ssize_t taps = j->ytaps, first = j->ypos[r], pairs = (taps + 1) / 2;
    const uint8_t *rows[SHORT_TAPS / 2];
    __m256i wv[SHORT_TAPS / 2];
    for (Py_ssize_t p = 0; p < pairs; p++) {
        Py_ssize_t t = 2 * p;
        rows[p] = j->ring + ((first + t) % taps) * j->ring_stride;
        int16_t w1 = t + 1 < taps ? w[t + 1] : 0;
        wv[p] = _mm256_set1_epi16((int16_t)((uint8_t)w[t] | ((uint16_t)(uint8_t)w1 << 8)));
    }
    const Py_ssize_t end = j->ring_stride;
    Py_ssize_t b = 0;
    /* 64 pixels per pair of taps: the row pointer and weight loads are shared by 4 vectors. */
    const __m256i round = _mm256_set1_epi16(1 << (OUT_SHIFT - 1));
    for (; b + 128 <= end; b += 128) {
        __m256i a0 = round, a1 = round, a2 = round, a3 = round;
        for (Py_ssize_t p = 0; p < pairs; p++) {
            const __m256i *q = (const __m256i *)(rows[p] + b);
            a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(_mm256_loadu_si256(q), wv[p]));
            a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(_mm256_loadu_si256(q + 1), wv[p]));
            a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(_mm256_loadu_si256(q + 2), wv[p]));
            a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(_mm256_loadu_si256(q + 3), wv[p]));
        }
        /* a0: px 0-7 | 16-23, a1: 8-15 | 24-31: the in-lane pack puts them in order */
        __m256i *m = (__m256i *)(mid + b / 2);
        _mm256_storeu_si256(m, _mm256_packus_epi16(_mm256_srai_epi16(a0, OUT_SHIFT),
                                                   _mm256_srai_epi16(a1, OUT_SHIFT)));
        _mm256_storeu_si256(m + 1, _mm256_packus_epi16(_mm256_srai_epi16(a2, OUT_SHIFT),
                                                       _mm256_srai_epi16(a3, OUT_SHIFT)));
    }
    for (; b < end; b += 64) {
        __m256i a0 = round, a1 = round;
        for (Py_ssize_t p = 0; p < pairs; p++) {
            const __m256i *q = (const __m256i *)(rows[p] + b);
            a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(_mm256_loadu_si256(q), wv[p]));
            a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(_mm256_loadu_si256(q + 1), wv[p]));
        }
        _mm256_storeu_si256((__m256i *)(mid + b / 2),
                            _mm256_packus_epi16(_mm256_srai_epi16(a0, OUT_SHIFT),
                                                _mm256_srai_epi16(a1, OUT_SHIFT)));
    }
}

/* Long filters: exact int32 sums. Tap pairs interleaved byte-wise, widened to int16 pairs and
 * multiplied by (w[t], w[t+1]) with one pmaddwd; the in-lane unpack order is undone by the
 * in-lane packs at the end plus one cross-lane permute. */
__attribute__((target("avx2"))) static void vpass_long_avx2(const Job *j, Py_ssize_t r,
                                                            uint8_t *mid) {
    const uint8_t *rows = j->src + (Py_ssize_t)j->ypos[r] * j->src_stride;
    const int16_t *w = j->yw + r * j->ytaps;
    const Py_ssize_t stride = j->src_stride, taps = j->ytaps;
    const __m256i zero = _mm256_setzero_si256();
    const __m256i round = _mm256_set1_epi32(1 << (LONG_SHIFT - 1));
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
        __m256i p01 = _mm256_packs_epi32(_mm256_srai_epi32(a0, LONG_SHIFT),
                                         _mm256_srai_epi32(a1, LONG_SHIFT)); /* 0-7 | 16-23 */
        __m256i p23 = _mm256_packs_epi32(_mm256_srai_epi32(a2, LONG_SHIFT),
                                         _mm256_srai_epi32(a3, LONG_SHIFT)); /* 8-15 | 24-31 */
        _mm256_storeu_si256((__m256i *)(mid + x), _mm256_packus_epi16(p01, p23));
    }
    if (x < j->sw)
        vpass_c(j, r, mid, x);
}

/* The horizontal pass runs on MID_ROWS = 16 rows at once, transposed: a vector holds one
 * sample pair (2k, 2k+1) of all 16 rows (bytes), so an output pixel costs one pmaddubsw per
 * pair of its own taps for 16 rows (its weights broadcast: they are the same for every row)
 * and no lane ever multiplies a weight that is not that output's. The row-wise alternative,
 * 8 neighbouring outputs per vector, must pad every output to the 8 outputs' common span:
 * at 2.67x that is 30 weights per output for 11 taps. Here it is ceil((taps + 1) / 2) pairs
 * (the start is even), plus 32 shuffles per 16 x 16 samples for the transpose (an in-lane
 * 8 x 8 transpose of 16-bit pairs, rows 0-7 in one lane and 8-15 in the other) and 20 per
 * 8 outputs x 16 rows to turn them back into rows. */
__attribute__((target("avx2"))) static void transpose16(const uint8_t *block, Py_ssize_t stride,
                                                        uint8_t *out) {
    __m256i *t = (__m256i *)out;
    for (Py_ssize_t k = 0; k < stride; k += 16, t += 8) { /* sample pairs k/2 .. k/2 + 7 */
        __m256i a[8];
        for (int i = 0; i < 8; i++) { /* rows i | i + 8: lane 0 | lane 1 */
            const uint8_t *p = block + i * stride + k;
            a[i] = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                _mm_loadu_si128((const __m128i *)(p + 8 * stride)), 1);
        }
        __m256i b[8], c[8];
        for (int i = 0; i < 4; i++) { /* rows 2i, 2i+1: pairs 0-3 | 4-7 */
            b[2 * i] = _mm256_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
            b[2 * i + 1] = _mm256_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
        }
        for (int h = 0; h < 2; h++) { /* rows 4h .. 4h + 3: pairs 0-1, 2-3, 4-5, 6-7 */
            c[4 * h] = _mm256_unpacklo_epi32(b[4 * h], b[4 * h + 2]);
            c[4 * h + 1] = _mm256_unpackhi_epi32(b[4 * h], b[4 * h + 2]);
            c[4 * h + 2] = _mm256_unpacklo_epi32(b[4 * h + 1], b[4 * h + 3]);
            c[4 * h + 3] = _mm256_unpackhi_epi32(b[4 * h + 1], b[4 * h + 3]);
        }
        for (int q = 0; q < 4; q++) { /* pairs 2q, 2q + 1 of all rows */
            _mm256_storeu_si256(t + 2 * q, _mm256_unpacklo_epi64(c[q], c[4 + q]));
            _mm256_storeu_si256(t + 2 * q + 1, _mm256_unpackhi_epi64(c[q], c[4 + q]));
        }
    }
}

/* Rows [0, rows) of the 16 x dw outputs from the transposed block `tr` into out (stride). */
__attribute__((target("avx2"))) static void hpass16_avx2(const Job *j, const uint8_t *tr,
                                                         uint8_t *out, Py_ssize_t stride,
                                                         Py_ssize_t rows) {
    const Py_ssize_t pairs = j->xpairs;
    const __m256i *t = (const __m256i *)tr;
    const __m256i round = _mm256_set1_epi16(1 << (OUT_SHIFT - 1));
    /* within each lane, bytes (output i of 2, row r of 8) at 8i + r go to 2r + i */
    const __m256i rows_first = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14,
                                                7, 15, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13,
                                                6, 14, 7, 15);
    static const int row_at[16] = {0,  8,  32, 40, 64, 72, 96, 104,
                                   16, 24, 48, 56, 80, 88, 112, 120};
    for (Py_ssize_t x0 = 0; x0 < j->dw; x0 += 8) {
        /* the 8 outputs side by side: 8 independent sums, one weight pointer */
        const int32_t *start = j->xstart + x0;
        const __m256i *s = t + start[0] / 2;
        Py_ssize_t d[8];
        for (int o = 0; o < 8; o++)
            d[o] = (start[o] - start[0]) / 2;
        const int8_t *w = j->xw + x0 * 2 * pairs;
        __m256i acc[8];
        for (int o = 0; o < 8; o++)
            acc[o] = round;
        for (Py_ssize_t p = 0; p < pairs; p++, s++, w += 16) {
            for (int o = 0; o < 8; o++) {
                int16_t wp;
                memcpy(&wp, w + 2 * o, sizeof wp);
                acc[o] = _mm256_add_epi16(
                    acc[o], _mm256_maddubs_epi16(_mm256_loadu_si256(s + d[o]),
                                                 _mm256_set1_epi16(wp)));
            }
        }
        __m256i q[4]; /* outputs 2i, 2i + 1 as 16-bit units, one per row: 0-7 | 8-15 */
        for (int i = 0; i < 4; i++)
            q[i] = _mm256_shuffle_epi8(
                _mm256_packus_epi16(_mm256_srai_epi16(acc[2 * i], OUT_SHIFT),
                                    _mm256_srai_epi16(acc[2 * i + 1], OUT_SHIFT)),
                rows_first);
        __m256i e0 = _mm256_unpacklo_epi16(q[0], q[1]), e1 = _mm256_unpackhi_epi16(q[0], q[1]);
        __m256i e2 = _mm256_unpacklo_epi16(q[2], q[3]), e3 = _mm256_unpackhi_epi16(q[2], q[3]);
        uint8_t tmp[128]; /* rows 0, 1 | 8, 9, then 2, 3 | 10, 11, ...: 8 bytes each */
        _mm256_storeu_si256((__m256i *)tmp, _mm256_unpacklo_epi32(e0, e2));
        _mm256_storeu_si256((__m256i *)(tmp + 32), _mm256_unpackhi_epi32(e0, e2));
        _mm256_storeu_si256((__m256i *)(tmp + 64), _mm256_unpacklo_epi32(e1, e3));
        _mm256_storeu_si256((__m256i *)(tmp + 96), _mm256_unpackhi_epi32(e1, e3));
        Py_ssize_t cols = j->dw - x0;
        if (cols >= 8) { /* a constant size: one 8-byte move per row */
            for (Py_ssize_t r = 0; r < rows; r++)
                memcpy(out + r * stride + x0, tmp + row_at[r], 8);
        } else {
            for (Py_ssize_t r = 0; r < rows; r++)
                memcpy(out + r * stride + x0, tmp + row_at[r], (size_t)cols);
        }
    }
}
#endif

/* ------------------------------------------------------------------ driver */

#if HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void vpass_avx2(const Job *j, Py_ssize_t r,
                                                       uint8_t *mid, Py_ssize_t *widened,
                                                       Py_ssize_t *fetched) {
    if (j->ring == NULL) {
        vpass_long_avx2(j, r, mid);
        return;
    }
    Py_ssize_t first = j->ypos[r], end = first + j->ytaps;
    for (Py_ssize_t k = *widened > first ? *widened : first; k < end; k++)
        pair_avx2(j, k);
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
    const Py_ssize_t stride = j->mid_stride;
#if HAVE_AVX2_PATH
    if (simd) {
        uint8_t *block = j->mid, *tr = j->mid + MID_ROWS * stride;
        Py_ssize_t widened = 0; /* the pairs from rows [0, widened) have been through the ring */
        Py_ssize_t fetched = 0; /* and [0, fetched) have been prefetched */
        for (Py_ssize_t i = 0; i < MID_ROWS; i++) /* the slack reads as zeros */
            memset(block + i * stride + j->sw, 0, (size_t)(stride - j->sw));
        for (Py_ssize_t r = 0; r < j->dh; r += MID_ROWS) {
            Py_ssize_t rows = j->dh - r < MID_ROWS ? j->dh - r : MID_ROWS;
            for (Py_ssize_t i = 0; i < rows; i++)
                vpass_avx2(j, r + i, block + i * stride, &widened, &fetched);
            for (Py_ssize_t i = rows; i < MID_ROWS; i++) /* computed and dropped */
                memset(block + i * stride, 0, (size_t)stride);
            transpose16(block, stride, tr);
            hpass16_avx2(j, tr, j->dst + r * j->dst_stride, j->dst_stride, rows);
            side_bars(j, j->dst + r * j->dst_stride, rows);
        }
        return;
    }
#endif
    (void)simd;
    memset(j->mid + j->sw, 0, (size_t)(stride - j->sw));
    for (Py_ssize_t r = 0; r < j->dh; r++) {
        vpass_c(j, r, j->mid, 0);
        hpass_c(j, j->mid, j->dst + r * j->dst_stride);
        side_bars(j, j->dst + r * j->dst_stride, 1);
    }
}

/* The intermediate rows' length: room for any output's 2 * pairs samples from an even start
 * at most sw, in whole 32-sample vectors (what the short vertical pass writes). */
static Py_ssize_t mid_stride(Py_ssize_t sw, Py_ssize_t pairs) {
    return (sw + 2 * pairs + 31) & ~(Py_ssize_t)31;
}

/* A row pair's bytes in the ring: whole 32-pixel vectors of two rows. */
static Py_ssize_t ring_stride(Py_ssize_t sw) { return 2 * ((sw + 31) & ~(Py_ssize_t)31); }

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
    if (taps <= SHORT_TAPS) { /* int16 sums: see SHORT_ABS_SUM */
        const int16_t *wy = (const int16_t *)w->buf;
        for (Py_ssize_t i = 0; i < n_out; i++) {
            int32_t sum = 0;
            for (Py_ssize_t t = 0; t < taps; t++)
                sum += wy[i * taps + t] < 0 ? -wy[i * taps + t] : wy[i * taps + t];
            if (sum > SHORT_ABS_SUM) {
                PyErr_Format(PyExc_ValueError,
                             "a y filter of up to %d taps must be 6-bit: absolute weights "
                             "summing to at most %d per row",
                             SHORT_TAPS, SHORT_ABS_SUM);
                return -1;
            }
        }
    } else { /* int32 sums of 14-bit weights: keep them from overflowing (UB in C) */
        const int16_t *wy = (const int16_t *)w->buf;
        for (Py_ssize_t i = 0; i < n_out; i++) {
            int64_t sum = 0;
            for (Py_ssize_t t = 0; t < taps; t++)
                sum += wy[i * taps + t] < 0 ? -(int64_t)wy[i * taps + t] : wy[i * taps + t];
            if (sum > LONG_ABS_SUM) {
                PyErr_Format(PyExc_ValueError,
                             "a y filter row's absolute weights must sum to at most %ld",
                             (long)LONG_ABS_SUM);
                return -1;
            }
        }
    }
    return 0;
}

static int check_x(Py_buffer *start, Py_buffer *w, Py_ssize_t n_out, Py_ssize_t pairs,
                   Py_ssize_t n_in) {
    Py_ssize_t padded = (n_out + 7) & ~(Py_ssize_t)7;
    if (pairs < 1 || start->len != padded * (Py_ssize_t)sizeof(int32_t) ||
        w->len != padded * pairs * 2) {
        PyErr_SetString(PyExc_ValueError, "x filter does not match the planes");
        return -1;
    }
    const int32_t *p = (const int32_t *)start->buf;
    for (Py_ssize_t i = 0; i < padded; i++) {
        if (p[i] < 0 || p[i] > n_in || p[i] % 2 != 0) {
            PyErr_SetString(PyExc_ValueError,
                            "x filter outputs must start in the plane, on an even sample");
            return -1;
        }
    }
    const int8_t *wx = (const int8_t *)w->buf; /* int16 sums: see SHORT_ABS_SUM */
    for (Py_ssize_t i = 0; i < padded; i++) {
        const int8_t *o = wx + (i / 8) * pairs * 16 + 2 * (i % 8);
        int32_t sum = 0;
        for (Py_ssize_t p = 0; p < pairs; p++)
            sum += abs(o[16 * p]) + abs(o[16 * p + 1]);
        if (sum > SHORT_ABS_SUM) {
            PyErr_Format(PyExc_ValueError,
                         "x filter weights must be 6-bit: absolute weights summing to at "
                         "most %d per output",
                         SHORT_ABS_SUM);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(resize_doc,
             "resize(src, dst, ypos, yweights, ytaps, xstart, xweights, xpairs, simd=True)\n\n"
             "Resample the uint8 plane src into dst (rows contiguous, any row stride).\n"
             "Rows: output row r is the sum of ytaps source rows from ypos[r] (int32, in order)\n"
             "with int16 weights yweights[r * ytaps:]: 6-bit (64 is 1, absolute values\n"
             "summing to at most 128) up to SHORT_TAPS taps, else 14-bit. Columns: output x\n"
             "is the sum of 2 * xpairs samples from xstart[x] (even); xstart covers dw\n"
             "rounded up to a multiple of 8, and the 6-bit int8 weights are laid out per\n"
             "block of 8 outputs as [pair][output][2]; samples past the row end read as\n"
             "zero. The GIL is released while resampling; simd=False forces the portable\n"
             "code, which gives the same bytes.");

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
    j.sh = src.shape[0];
    j.sw = src.shape[1];
    j.dst = (uint8_t *)dst.buf;
    j.dst_stride = dst.strides[0];
    j.dh = dst.shape[0];
    j.dw = dst.shape[1];
    j.ypos = (const int32_t *)ypos.buf;
    j.yw = (const int16_t *)yw.buf;
    j.ytaps = ytaps;
    j.xstart = (const int32_t *)xstart.buf;
    j.xw = (const int8_t *)xw.buf;
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
    /* The intermediate rows (see run) and for short filters the ring of widened rows. */
    j.mid_stride = mid_stride(j.sw, xpairs);
    j.mid = (uint8_t *)malloc((size_t)(2 * MID_ROWS * j.mid_stride));
    j.ring_stride = ring_stride(j.sw);
    if (simd && ytaps <= SHORT_TAPS)
        j.ring = (uint8_t *)malloc((size_t)(ytaps * j.ring_stride));
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

/* The rows of an h x w plane above and below the hole [x, x + hw) x [y, y + hh); run() fills
 * the bars left and right of it (see side_bars). */
static void fill_above_below(uint8_t *p, Py_ssize_t stride, Py_ssize_t h, Py_ssize_t w,
                             Py_ssize_t y, Py_ssize_t hh, uint8_t value) {
    fill(p, stride, 0, 0, w, y, value);
    fill(p, stride, 0, y + hh, w, h, value);
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
    uint8_t *mid = NULL, *ring = NULL;
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
        j->sh = src->shape[0];
        j->sw = src->shape[1];
        j->dst_stride = cell->strides[0];
        j->dst = (uint8_t *)cell->buf + b[1] * j->dst_stride + b[0];
        j->dh = b[3];
        j->dw = b[2];
        j->ypos = (const int32_t *)f->pos.buf;
        j->yw = (const int16_t *)f->w.buf;
        j->ytaps = f->taps;
        j->xstart = (const int32_t *)f->xstart.buf;
        j->xw = (const int8_t *)f->xw.buf;
        j->xpairs = f->pairs;
        if (check_y(&f->pos, &f->w, j->dh, j->ytaps, src->shape[0]) < 0 ||
            check_x(&f->xstart, &f->xw, j->dw, j->xpairs, j->sw) < 0)
            goto done;
        j->mid_stride = mid_stride(j->sw, j->xpairs);
        j->ring_stride = ring_stride(j->sw);
        if (2 * MID_ROWS * j->mid_stride > mid_len)
            mid_len = 2 * MID_ROWS * j->mid_stride;
        if (j->ytaps <= SHORT_TAPS && j->ytaps * j->ring_stride > ring_len)
            ring_len = j->ytaps * j->ring_stride;
    }
    simd = simd && have_avx2;
    mid = (uint8_t *)malloc((size_t)mid_len);
    if (simd && ring_len > 0)
        ring = (uint8_t *)malloc((size_t)ring_len);
    if (mid == NULL || (simd && ring_len > 0 && ring == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < 3; i++) {
        Job *j = &jobs[i];
        Py_buffer *cell = &views[3 + i];
        Py_ssize_t *b = boxes[i];
        j->bar_value = i == 0 ? 16 : 128;
        j->bar_left = b[0];
        j->bar_right = cell->shape[1] - b[0] - b[2];
        fill_above_below((uint8_t *)cell->buf, cell->strides[0], cell->shape[0], cell->shape[1],
                         b[1], b[3], j->bar_value);
        j->mid = mid;
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
    if (PyModule_AddIntConstant(module, "SHORT_TAPS", SHORT_TAPS) < 0 ||
        PyModule_AddIntConstant(module, "SHORT_ONE", SHORT_ONE) < 0)
        return -1;
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
