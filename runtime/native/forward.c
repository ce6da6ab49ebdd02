/* The forward pass on packed tokens: the live rows' real tokens only, one after another
 * (row r's tokens are x[start[r] .. start[r] + len[r]), no padding anywhere). Padded positions
 * never reach a real token's output in the exported graphs either (masked keys, pooling weights
 * 0), so computing only real tokens gives the same values and drops the padding's cost.
 *
 *   embeddings   x = LN(word[id] + type[tt] + pos[p])                          [T, H]
 *   layer        qkv = x Wqkv + b                                              [T, 3H]
 *                ctx = softmax(q k^T / sqrt(d)) v, per row and head, over its tokens
 *                x = LN(ctx Wo + b + x);  x = LN(gelu(x W1 + b1) W2 + b2 + x)   (erf GELU)
 *   head         pooled = x[start] (cls) or sum x * (1 / len) (mean)           [rows, H]
 *                head = pooled Wh + bh  -> logits [rows, C] (+ the LTE logit)   */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "simd.h"

static void *grow(void *p, size_t n, size_t elem, int *ok) {
    if (!*ok) return p;
    free(p);
    if (n == 0) n = 1;
    if (n > SIZE_MAX / elem) { *ok = 0; return NULL; }
    size_t bytes = (n * elem + 63) / 64 * 64;
    void *q = aligned_alloc(64, bytes);
    if (!q) *ok = 0;
    return q;
}

int bx_ws_reserve(berxit_workspace *ws, size_t rows, size_t seq) {
    const bx_config *c = &ws->m->cfg;
    size_t tokens = rows * seq; /* rows <= BERXIT_MAX_BATCH, seq <= max_seq_len: no overflow */
    int ok = 1;
    if (tokens > ws->cap_tokens) {
        size_t H = (size_t)c->hidden, I = (size_t)c->intermediate;
        if (tokens > SIZE_MAX / (4 * (I > 3 * H ? I : 3 * H))) return BERXIT_ERR_NOMEM;
        ws->x = grow(ws->x, tokens * H, sizeof(float), &ok);
        ws->qkv = grow(ws->qkv, tokens * 3 * H, sizeof(float), &ok);
        ws->ctx = grow(ws->ctx, tokens * H, sizeof(float), &ok);
        ws->tmp = grow(ws->tmp, tokens * H, sizeof(float), &ok);
        ws->ffn = grow(ws->ffn, tokens * I, sizeof(float), &ok);
        if (!ok) { ws->cap_tokens = 0; return BERXIT_ERR_NOMEM; }
        ws->cap_tokens = tokens;
    }
    if (seq > ws->cap_seq) {
        ws->scores = grow(ws->scores, 4 * (seq + 8), sizeof(float), &ok); /* per thread: 2 x [seq + 8] */
        ws->kt = grow(ws->kt, 2 * (seq + 8) * (size_t)(c->hidden / c->heads), sizeof(float), &ok);
        if (!ok) { ws->cap_seq = 0; return BERXIT_ERR_NOMEM; }
        ws->cap_seq = seq;
    }
    if (rows > ws->cap_rows) {
        size_t W = (size_t)(c->num_outputs + c->has_lte);
        ws->len = grow(ws->len, rows, sizeof(int32_t), &ok);
        ws->start = grow(ws->start, rows, sizeof(int32_t), &ok);
        ws->pooled = grow(ws->pooled, rows * (size_t)c->hidden, sizeof(float), &ok);
        ws->head = grow(ws->head, rows * W, sizeof(float), &ok);
        ws->orig = grow(ws->orig, rows, sizeof(int32_t), &ok);
        ws->kidx = grow(ws->kidx, rows, sizeof(int32_t), &ok);
        ws->prev_label = grow(ws->prev_label, rows, sizeof(int32_t), &ok);
        ws->count = grow(ws->count, rows, sizeof(int32_t), &ok);
        ws->prev_value = grow(ws->prev_value, rows, sizeof(float), &ok);
        ws->done = grow(ws->done, rows, 1, &ok);
        if (!ok) { ws->cap_rows = 0; return BERXIT_ERR_NOMEM; }
        ws->cap_rows = rows;
    }
    return BERXIT_OK;
}

/* y = LN(x) * w + b over H values (two passes: the mean, then the centred squares) */
static void layer_norm(float *y, const float *x, const float *w, const float *b, int32_t H, float eps) {
#ifdef BX_AVX2
    if (H % 16 == 0) { /* float lanes, 16 partial sums: 384 values lose nothing measurable against double */
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        for (int32_t j = 0; j < H; j += 16) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + j));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + j + 8));
        }
        float mean = bx_hsum8(_mm256_add_ps(s0, s1)) / (float)H;
        __m256 mv = _mm256_set1_ps(mean), v0 = _mm256_setzero_ps(), v1 = _mm256_setzero_ps();
        for (int32_t j = 0; j < H; j += 16) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), mv), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mv);
            v0 = _mm256_fmadd_ps(d0, d0, v0);
            v1 = _mm256_fmadd_ps(d1, d1, v1);
        }
        float var = bx_hsum8(_mm256_add_ps(v0, v1)) / (float)H;
        __m256 inv = _mm256_set1_ps((float)(1.0 / sqrt((double)var + (double)eps)));
        for (int32_t j = 0; j < H; j += 8) {
            __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv), inv);
            _mm256_storeu_ps(y + j, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + j), _mm256_loadu_ps(b + j)));
        }
        return;
    }
#endif
    double s = 0.0, v = 0.0;
    for (int32_t j = 0; j < H; j++) s += x[j];
    float mean = (float)(s / H);
    for (int32_t j = 0; j < H; j++) { double d = (double)x[j] - mean; v += d * d; }
    float inv = (float)(1.0 / sqrt(v / H + (double)eps));
    for (int32_t j = 0; j < H; j++) y[j] = (x[j] - mean) * inv * w[j] + b[j];
}

void bx_embed(berxit_workspace *ws, const int64_t *ids, const int64_t *tt, const int64_t *mask, int32_t seq) {
    const berxit_model *m = ws->m;
    int32_t H = m->cfg.hidden, t = 0;
    float *e = ws->tmp;
    for (int32_t r = 0; r < ws->rows; r++) {
        int32_t n = 0;
        while (n < seq && mask[(size_t)r * seq + n]) n++;
        ws->len[r] = n;
        ws->start[r] = t;
        for (int32_t p = 0; p < n; p++, t++) {
            size_t q = (size_t)r * seq + p;
            const float *wv = m->word + (size_t)ids[q] * H, *tv = m->type + (size_t)(tt ? tt[q] : 0) * H;
            const float *pv = m->pos + (size_t)p * H;
            for (int32_t j = 0; j < H; j++) e[j] = (wv[j] + tv[j]) + pv[j];
            layer_norm(ws->x + (size_t)t * H, e, m->emb_ln_w, m->emb_ln_b, H, m->cfg.eps);
        }
    }
    ws->tokens = t;
}

/* softmax(q k^T / sqrt(d)) v per row and head. K of the head is first copied transposed
 * ([d, n], into `kt`), so the scores of one query are n independent accumulators over
 * contiguous memory (vectorizable without reassociating float sums), as is the context.
 * Heads [h0, h1) with scratch sc [seq + 8], kt [d * (seq + 8)] (two threads split the heads). */
static void attention_scalar_query(const float *q, const float *kt, size_t ldk, const float *vbase, size_t ldv,
                                   int32_t n, int32_t d, float scale, float *sc, float *o) {
    for (int32_t j = 0; j < n; j++) sc[j] = 0.0f;
    for (int32_t u = 0; u < d; u++) {
        float qu = q[u];
        const float *ku = kt + (size_t)u * ldk;
        for (int32_t j = 0; j < n; j++) sc[j] += qu * ku[j];
    }
    float mx = -INFINITY;
    for (int32_t j = 0; j < n; j++) { sc[j] *= scale; mx = sc[j] > mx ? sc[j] : mx; }
    float sum = 0.0f;
    for (int32_t j = 0; j < n; j++) sc[j] = bx_exp_neg(sc[j] - mx);
    for (int32_t j = 0; j < n; j++) sum += sc[j];
    float inv = 1.0f / sum;
    for (int32_t u = 0; u < d; u++) o[u] = 0.0f;
    for (int32_t j = 0; j < n; j++) {
        const float *v = vbase + (size_t)j * ldv;
        float p = sc[j] * inv;
        for (int32_t u = 0; u < d; u++) o[u] += p * v[u];
    }
}

#ifdef BX_AVX2
/* lanes j .. j + 7 that hold a key (index < n) */
static inline __m256 live_lanes(int32_t j, int32_t n) {
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(j), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
}

/* softmax numerators in place over sc[0, np) (keys past n: 0); 1 / their sum */
static float softmax8(float *sc, int32_t n, int32_t np, float mx) {
    __m256 m = _mm256_set1_ps(mx), sum = _mm256_setzero_ps();
    for (int32_t j = 0; j < np; j += 8) {
        __m256 e = bx_exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), m));
        if (j + 8 > n) e = _mm256_and_ps(e, live_lanes(j, n));
        sum = _mm256_add_ps(sum, e);
        _mm256_storeu_ps(sc + j, e);
    }
    return 1.0f / bx_hsum8(sum);
}

/* one query, d % 8 == 0 and d <= 64: scores 32 keys at a time in registers, the softmax and the
 * context in vectors; a query whose scores hold NaN goes the scalar way (NaN in, NaN out) */
static void attention_query8(const float *q, const float *kt, size_t ldk, const float *vbase, size_t ldv, int32_t n,
                             int32_t d, float scale, float *sc, float *o) {
    int32_t np = (n + 7) & ~7;
    __m256 vs = _mm256_set1_ps(scale), nan = _mm256_setzero_ps(), mxv = _mm256_set1_ps(-INFINITY);
    for (int32_t j0 = 0; j0 < np; j0 += 32) {
        int32_t nb = (np - j0) / 8 < 4 ? (np - j0) / 8 : 4;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        const float *k = kt + j0;
        if (nb == 4)
            for (int32_t u = 0; u < d; u++, k += ldk) {
                __m256 qu = _mm256_broadcast_ss(q + u);
                c0 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k), c0);
                c1 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k + 8), c1);
                c2 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k + 16), c2);
                c3 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k + 24), c3);
            }
        else
            for (int32_t u = 0; u < d; u++, k += ldk) {
                __m256 qu = _mm256_broadcast_ss(q + u);
                c0 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k), c0);
                if (nb > 1) c1 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k + 8), c1);
                if (nb > 2) c2 = _mm256_fmadd_ps(qu, _mm256_loadu_ps(k + 16), c2);
            }
        __m256 c[4] = {c0, c1, c2, c3};
        for (int32_t b = 0; b < nb; b++) {
            __m256 v = _mm256_mul_ps(c[b], vs);
            int32_t j = j0 + 8 * b;
            if (j + 8 > n) v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, live_lanes(j, n)); /* keys past n: weight 0 */
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            mxv = _mm256_max_ps(mxv, v);
            _mm256_storeu_ps(sc + j, v);
        }
    }
    float mx = bx_hmax8(mxv);
    if (_mm256_movemask_ps(nan) || !(mx > -INFINITY && mx < INFINITY)) {
        attention_scalar_query(q, kt, ldk, vbase, ldv, n, d, scale, sc, o);
        return;
    }
    float inv = softmax8(sc, n, np, mx);
    __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
    int32_t dv = d / 8;
    for (int32_t j = 0; j < n; j++) {
        const float *v = vbase + (size_t)j * ldv;
        __m256 p = _mm256_broadcast_ss(sc + j);
        o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v), o0);
        if (dv > 1) o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8), o1);
        if (dv > 2) o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 16), o2);
        if (dv > 3) o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 24), o3);
        if (dv > 4) o4 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 32), o4);
        if (dv > 5) o5 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 40), o5);
        if (dv > 6) o6 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 48), o6);
        if (dv > 7) o7 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 56), o7);
    }
    __m256 iv = _mm256_set1_ps(inv), acc[8] = {o0, o1, o2, o3, o4, o5, o6, o7};
    for (int32_t b = 0; b < dv; b++) _mm256_storeu_ps(o + 8 * b, _mm256_mul_ps(acc[b], iv));
}

/* two queries of one head at once, d % 8 == 0 and d <= 32: every K and V load serves both, and
 * the two give twice the independent accumulator chains. Per query, the same operations in the
 * same order as attention_query8 (identical results); a query whose scores hold NaN or no finite
 * maximum goes attention_query8's way (which falls back to the scalar path). */
static void attention_query8x2(const float *qa, const float *qb, const float *kt, size_t ldk, const float *vbase,
                               size_t ldv, int32_t n, int32_t d, float scale, float *sa, float *sb, float *oa,
                               float *ob) {
    int32_t np = (n + 7) & ~7;
    __m256 vs = _mm256_set1_ps(scale), nan = _mm256_setzero_ps(), ma = _mm256_set1_ps(-INFINITY), mb = ma;
    for (int32_t j0 = 0; j0 < np; j0 += 32) {
        int32_t nb = (np - j0) / 8 < 4 ? (np - j0) / 8 : 4;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        const float *k = kt + j0;
        if (nb == 4)
            for (int32_t u = 0; u < d; u++, k += ldk) {
                __m256 x = _mm256_broadcast_ss(qa + u), y = _mm256_broadcast_ss(qb + u);
                __m256 k0 = _mm256_loadu_ps(k), k1 = _mm256_loadu_ps(k + 8);
                a0 = _mm256_fmadd_ps(x, k0, a0);
                b0 = _mm256_fmadd_ps(y, k0, b0);
                a1 = _mm256_fmadd_ps(x, k1, a1);
                b1 = _mm256_fmadd_ps(y, k1, b1);
                __m256 k2 = _mm256_loadu_ps(k + 16), k3 = _mm256_loadu_ps(k + 24);
                a2 = _mm256_fmadd_ps(x, k2, a2);
                b2 = _mm256_fmadd_ps(y, k2, b2);
                a3 = _mm256_fmadd_ps(x, k3, a3);
                b3 = _mm256_fmadd_ps(y, k3, b3);
            }
        else
            for (int32_t u = 0; u < d; u++, k += ldk) {
                __m256 x = _mm256_broadcast_ss(qa + u), y = _mm256_broadcast_ss(qb + u);
                __m256 k0 = _mm256_loadu_ps(k);
                a0 = _mm256_fmadd_ps(x, k0, a0);
                b0 = _mm256_fmadd_ps(y, k0, b0);
                if (nb > 1) {
                    __m256 k1 = _mm256_loadu_ps(k + 8);
                    a1 = _mm256_fmadd_ps(x, k1, a1);
                    b1 = _mm256_fmadd_ps(y, k1, b1);
                }
                if (nb > 2) {
                    __m256 k2 = _mm256_loadu_ps(k + 16);
                    a2 = _mm256_fmadd_ps(x, k2, a2);
                    b2 = _mm256_fmadd_ps(y, k2, b2);
                }
            }
        __m256 ca[4] = {a0, a1, a2, a3}, cb[4] = {b0, b1, b2, b3};
        for (int32_t b = 0; b < nb; b++) {
            __m256 va = _mm256_mul_ps(ca[b], vs), vb = _mm256_mul_ps(cb[b], vs);
            int32_t j = j0 + 8 * b;
            if (j + 8 > n) {
                __m256 live = live_lanes(j, n);
                va = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), va, live);
                vb = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), vb, live);
            }
            nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(va, va, _CMP_UNORD_Q), _mm256_cmp_ps(vb, vb, _CMP_UNORD_Q)));
            ma = _mm256_max_ps(ma, va);
            mb = _mm256_max_ps(mb, vb);
            _mm256_storeu_ps(sa + j, va);
            _mm256_storeu_ps(sb + j, vb);
        }
    }
    float xa = bx_hmax8(ma), xb = bx_hmax8(mb);
    if (_mm256_movemask_ps(nan) || !(xa > -INFINITY && xa < INFINITY) || !(xb > -INFINITY && xb < INFINITY)) {
        attention_query8(qa, kt, ldk, vbase, ldv, n, d, scale, sa, oa);
        attention_query8(qb, kt, ldk, vbase, ldv, n, d, scale, sb, ob);
        return;
    }
    float ia = softmax8(sa, n, np, xa), ib = softmax8(sb, n, np, xb);
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, r0 = p0, r1 = p0, r2 = p0, r3 = p0;
    int32_t dv = d / 8;
    for (int32_t j = 0; j < n; j++) {
        const float *v = vbase + (size_t)j * ldv;
        __m256 pa = _mm256_broadcast_ss(sa + j), pb = _mm256_broadcast_ss(sb + j), v0 = _mm256_loadu_ps(v);
        p0 = _mm256_fmadd_ps(pa, v0, p0);
        r0 = _mm256_fmadd_ps(pb, v0, r0);
        if (dv > 1) {
            __m256 v1 = _mm256_loadu_ps(v + 8);
            p1 = _mm256_fmadd_ps(pa, v1, p1);
            r1 = _mm256_fmadd_ps(pb, v1, r1);
        }
        if (dv > 2) {
            __m256 v2 = _mm256_loadu_ps(v + 16);
            p2 = _mm256_fmadd_ps(pa, v2, p2);
            r2 = _mm256_fmadd_ps(pb, v2, r2);
        }
        if (dv > 3) {
            __m256 v3 = _mm256_loadu_ps(v + 24);
            p3 = _mm256_fmadd_ps(pa, v3, p3);
            r3 = _mm256_fmadd_ps(pb, v3, r3);
        }
    }
    __m256 fa = _mm256_set1_ps(ia), fb = _mm256_set1_ps(ib), pa4[4] = {p0, p1, p2, p3}, pb4[4] = {r0, r1, r2, r3};
    for (int32_t b = 0; b < dv; b++) {
        _mm256_storeu_ps(oa + 8 * b, _mm256_mul_ps(pa4[b], fa));
        _mm256_storeu_ps(ob + 8 * b, _mm256_mul_ps(pb4[b], fb));
    }
}
#endif

void bx_attention_heads(berxit_workspace *ws, int32_t h0, int32_t h1, float *sc, float *kt) {
    const bx_config *c = &ws->m->cfg;
    int32_t H = c->hidden, nh = c->heads, d = H / nh;
    float scale = 1.0f / sqrtf((float)d);
    for (int32_t r = 0; r < ws->rows; r++) {
        int32_t n = ws->len[r];
        size_t ldk = (size_t)((n + 7) & ~7);
        const float *base = ws->qkv + (size_t)ws->start[r] * 3 * H;
        for (int32_t h = h0; h < h1; h++) {
            for (int32_t j = 0; j < n; j++) {
                const float *k = base + (size_t)j * 3 * H + H + h * d;
                for (int32_t u = 0; u < d; u++) kt[(size_t)u * ldk + j] = k[u];
            }
            for (int32_t u = 0; u < d; u++)
                for (size_t j = (size_t)n; j < ldk; j++) kt[(size_t)u * ldk + j] = 0.0f;
            for (int32_t i = 0; i < n; i++) {
                const float *q = base + (size_t)i * 3 * H + h * d;
                float *o = ws->ctx + (size_t)(ws->start[r] + i) * H + h * d;
#ifdef BX_AVX2
                if (d % 8 == 0 && d <= 32 && i + 1 < n) { /* two queries at once */
                    attention_query8x2(q, q + 3 * H, kt, ldk, base + 2 * H + h * d, (size_t)3 * H, n, d, scale, sc,
                                       sc + ws->cap_seq + 8, o, o + H);
                    i++;
                    continue;
                }
                if (d % 8 == 0 && d <= 64) {
                    attention_query8(q, kt, ldk, base + 2 * H + h * d, (size_t)3 * H, n, d, scale, sc, o);
                    continue;
                }
#endif
                attention_scalar_query(q, kt, ldk, base + 2 * H + h * d, (size_t)3 * H, n, d, scale, sc, o);
            }
        }
    }
}

void bx_layer_forward(berxit_workspace *ws, int32_t i) {
    const berxit_model *m = ws->m;
    const bx_layer *L = &m->layer[i];
    int32_t H = m->cfg.hidden, T = ws->tokens;
    float eps = m->cfg.eps;
    bx_linear_forward(ws, &L->qkv, ws->x, T, ws->qkv, NULL);
    bx_attention_forward(ws);
    bx_linear_forward(ws, &L->attn_out, ws->ctx, T, ws->tmp, ws->x); /* ctx Wo + b + x */
    for (size_t t = 0; t < (size_t)T; t++) layer_norm(ws->x + t * H, ws->tmp + t * H, L->ln1_w, L->ln1_b, H, eps);
    bx_linear_forward(ws, &L->ffn_in, ws->x, T, ws->ffn, NULL); /* gelu(x W1 + b1), fused */
    bx_linear_forward(ws, &L->ffn_out, ws->ffn, T, ws->tmp, ws->x);
    for (size_t t = 0; t < (size_t)T; t++) layer_norm(ws->x + t * H, ws->tmp + t * H, L->ln2_w, L->ln2_b, H, eps);
}

void bx_head_forward(berxit_workspace *ws, int32_t exit_index, float *out) {
    const berxit_model *m = ws->m;
    int32_t H = m->cfg.hidden;
    for (int32_t r = 0; r < ws->rows; r++) {
        float *p = ws->pooled + (size_t)r * H;
        const float *x = ws->x + (size_t)ws->start[r] * H;
        if (m->cfg.pooling == BERXIT_POOL_CLS) {
            memcpy(p, x, sizeof(float) * (size_t)H);
        } else {
            float w = 1.0f / (float)ws->len[r]; /* the host's pool_weights: mask / sum(mask) */
            for (int32_t j = 0; j < H; j++) p[j] = 0.0f;
            for (int32_t t = 0; t < ws->len[r]; t++)
                for (int32_t j = 0; j < H; j++) p[j] += w * x[(size_t)t * H + j];
        }
    }
    bx_linear_forward(ws, &m->head[exit_index], ws->pooled, ws->rows, out, NULL);
}

/* only live rows `rows` (increasing) go on: their token blocks move forward in place */
void bx_keep_rows(berxit_workspace *ws, const int32_t *rows, int32_t n) {
    int32_t H = ws->m->cfg.hidden, t = 0;
    for (int32_t k = 0; k < n; k++) {
        int32_t r = rows[k], len = ws->len[r], src = ws->start[r];
        if (src != t) memmove(ws->x + (size_t)t * H, ws->x + (size_t)src * H, sizeof(float) * (size_t)len * H);
        ws->len[k] = len;
        ws->start[k] = t;
        t += len;
    }
    ws->rows = n;
    ws->tokens = t;
}
