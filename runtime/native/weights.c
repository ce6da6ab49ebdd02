/* The weights file reader (format: export/native.py). Every size, offset, dtype and shape is
 * checked against the header and the file size before any tensor is touched; all arithmetic
 * on file values is done in 64 bits with explicit overflow checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HEADER_BYTES 128u
#define ENTRY_BYTES 96u
#define NAME_BYTES 56u
#define FORMAT_VERSION 1u
#define CHECK_KEY 0x9E3779B97F4A7C15ull
#define MAX_TENSORS (1u << 20)

static const unsigned char MAGIC[8] = {'B', 'E', 'R', 'X', 'I', 'T', 'W', 0};

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

uint64_t bx_checksum(const unsigned char *p, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n / 8; i++) h += (rd64(p + 8 * i) ^ CHECK_KEY) * (2 * (uint64_t)i + 1);
    return h;
}

/* [off, off + len) lies inside a file of `size` bytes */
static int in_file(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

typedef struct {
    const unsigned char *table;
    uint32_t n;
} bx_table;

/* The tensor called `name` with exactly the given shape (ndim 1 or 2), or NULL + message. */
static const float *tensor(const berxit_model *m, const bx_table *t, const char *name, uint32_t d0, uint32_t d1,
                           char *err, int *rc) {
    for (uint32_t i = 0; i < t->n; i++) {
        const unsigned char *e = t->table + (size_t)i * ENTRY_BYTES;
        if (strncmp((const char *)e, name, NAME_BYTES) != 0) continue;
        uint32_t ndim = rd32(e + 60), s0 = rd32(e + 64), s1 = rd32(e + 68);
        int ok = d1 ? (ndim == 2 && s0 == d0 && s1 == d1) : (ndim == 1 && s0 == d0);
        if (!ok) {
            *rc = bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' has shape [%u%s%u] (ndim %u), the header "
                          "implies [%u%s%u]; re-export the artifact", name, s0, ndim > 1 ? ", " : "",
                          ndim > 1 ? s1 : 0u, ndim, d0, d1 ? ", " : "", d1);
            return NULL;
        }
        return (const float *)(m->file + rd64(e + 80)); /* offset checked in check_table */
    }
    *rc = bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' is missing; re-export the artifact", name);
    return NULL;
}

/* every table entry: a NUL-terminated name, float32, 1-4 positive dims, bytes == 4 * elements,
 * 64-byte aligned, inside the data section; no name twice */
static int check_table(const bx_table *t, uint64_t data_off, uint64_t size, char *err) {
    for (uint32_t i = 0; i < t->n; i++) {
        const unsigned char *e = t->table + (size_t)i * ENTRY_BYTES;
        if (memchr(e, 0, NAME_BYTES) == NULL || e[0] == 0)
            return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor entry %u has no valid name", i);
        uint32_t dtype = rd32(e + 56), ndim = rd32(e + 60);
        if (dtype != 1)
            return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' has dtype %u; this library reads "
                           "float32 (1) only (int8 artifacts: use the onnxruntime backend)", (const char *)e, dtype);
        if (ndim < 1 || ndim > 4)
            return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' has %u dims", (const char *)e, ndim);
        uint64_t elems = 1;
        for (uint32_t d = 0; d < 4; d++) {
            uint32_t s = rd32(e + 64 + 4 * d);
            if (d < ndim) {
                if (s == 0 || elems > (UINT64_MAX / 4) / s)
                    return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' has a bad shape", (const char *)e);
                elems *= s;
            } else if (s != 0) {
                return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' has sizes past its dims", (const char *)e);
            }
        }
        uint64_t off = rd64(e + 80), nbytes = rd64(e + 88);
        if (nbytes != elems * 4)
            return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' says %llu bytes for %llu floats",
                           (const char *)e, (unsigned long long)nbytes, (unsigned long long)elems);
        if (off % 64 || off < data_off || !in_file(off, nbytes, size))
            return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' lies outside the data section "
                           "(offset %llu, %llu bytes, file %llu bytes): truncated or corrupt; re-export",
                           (const char *)e, (unsigned long long)off, (unsigned long long)nbytes,
                           (unsigned long long)size);
        for (uint32_t j = 0; j < i; j++)
            if (strncmp((const char *)e, (const char *)(t->table + (size_t)j * ENTRY_BYTES), NAME_BYTES) == 0)
                return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor '%s' appears twice", (const char *)e);
    }
    return BERXIT_OK;
}

static int check_config(const bx_config *c, char *err) {
#define BAD(cond, ...) if (cond) return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: " __VA_ARGS__)
    BAD(c->layers < 1 || c->layers > 1024, "layers = %d out of range [1, 1024]", c->layers);
    BAD(c->hidden < 1 || c->hidden > 65536, "hidden size %d out of range", c->hidden);
    BAD(c->heads < 1 || c->heads > c->hidden || c->hidden % c->heads, "%d heads do not divide hidden size %d",
        c->heads, c->hidden);
    BAD(c->intermediate < 1 || c->intermediate > (1 << 20), "intermediate size %d out of range", c->intermediate);
    BAD(c->vocab < 1 || c->vocab > (1 << 24), "vocab size %d out of range", c->vocab);
    BAD(c->max_positions < 1 || c->max_positions > 65536, "max positions %d out of range", c->max_positions);
    BAD(c->type_vocab < 1 || c->type_vocab > 65536, "type vocab %d out of range", c->type_vocab);
    BAD(c->task_kind != BERXIT_CLASSIFICATION && c->task_kind != BERXIT_REGRESSION, "task kind %d unknown", c->task_kind);
    BAD(c->task_kind == BERXIT_CLASSIFICATION && (c->num_outputs < 2 || c->num_outputs > 65536),
        "%d labels for a classification model", c->num_outputs);
    BAD(c->task_kind == BERXIT_REGRESSION && c->num_outputs != 1, "%d outputs for a regression model", c->num_outputs);
    BAD(c->pooling != BERXIT_POOL_CLS && c->pooling != BERXIT_POOL_MEAN, "pooling %d unknown", c->pooling);
    BAD(c->activation != 0, "activation %d unknown (0: erf GELU)", c->activation);
    BAD(c->has_lte != 0 && c->has_lte != 1, "has_lte must be 0 or 1, got %d", c->has_lte);
    BAD(c->max_seq_len < 1 || c->max_seq_len > c->max_positions, "max_seq_len %d not in [1, max positions %d]",
        c->max_seq_len, c->max_positions);
    BAD(c->num_exits < 1 || c->num_exits > c->layers, "%d exits for %d layers", c->num_exits, c->layers);
    BAD(!(c->eps > 0.0f) || !isfinite(c->eps), "layer-norm eps %g is not a positive number", (double)c->eps);
#undef BAD
    return BERXIT_OK;
}

int bx_load_weights(berxit_model *m, char *err) {
    const unsigned char *p = m->file;
    uint64_t size = m->file_size;
    if (size < HEADER_BYTES)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: %llu bytes, shorter than its header: not a berxit "
                       "weights file or truncated; re-export the artifact", (unsigned long long)size);
    if (memcmp(p, MAGIC, 8) != 0)
        return bx_fail(err, BERXIT_ERR_FORMAT, "not a berxit weights file (wrong magic); pass ARTIFACT or "
                       "ARTIFACT/native_weights.bin written by `python -m export.build`");
    uint32_t version = rd32(p + 8);
    if (version != FORMAT_VERSION)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file version %u; this library reads version %u: re-export "
                       "the artifact with this toolkit's `python -m export.build`", version, FORMAT_VERSION);
    if (rd32(p + 12) != HEADER_BYTES)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: header size %u, expected %u", rd32(p + 12), HEADER_BYTES);
    bx_config *c = &m->cfg;
    int32_t *f = &c->layers;
    for (int i = 0; i < 14; i++) {
        uint32_t v = rd32(p + 16 + 4 * i);
        if (v > INT32_MAX) return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: config field %d is %u", i, v);
        f[i] = (int32_t)v;
    }
    uint32_t eps_bits = rd32(p + 72);
    memcpy(&c->eps, &eps_bits, 4);
    int rc = check_config(c, err);
    if (rc) return rc;
    uint32_t n_tensors = rd32(p + 76);
    uint64_t exits_off = rd64(p + 80), table_off = rd64(p + 88), data_off = rd64(p + 96);
    uint64_t declared = rd64(p + 104), check = rd64(p + 112);
    if (declared != size)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file is %llu bytes, its header says %llu: truncated or "
                       "padded; re-export the artifact", (unsigned long long)size, (unsigned long long)declared);
    if (rd32(p + 120) != 0) return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: unknown flags %u", rd32(p + 120));
    if (n_tensors > MAX_TENSORS || !in_file(table_off, (uint64_t)n_tensors * ENTRY_BYTES, size) || table_off < HEADER_BYTES)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: tensor table (%u entries at %llu) outside the file",
                       n_tensors, (unsigned long long)table_off);
    if (!in_file(exits_off, (uint64_t)c->num_exits * 4, size) || exits_off < HEADER_BYTES)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: exit list outside the file");
    if (data_off > size || (size - data_off) % 8 || data_off % 64)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: data section at %llu does not fit the file",
                       (unsigned long long)data_off);
    if (bx_checksum(p + data_off, (size_t)(size - data_off)) != check)
        return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: the data checksum does not match: the file is "
                       "corrupt; re-export the artifact");
    bx_table t = {p + table_off, n_tensors};
    if ((rc = check_table(&t, data_off, size, err))) return rc;

    m->exits = calloc((size_t)c->num_exits, sizeof *m->exits);
    m->layer = calloc((size_t)c->layers, sizeof *m->layer);
    m->head = calloc((size_t)c->num_exits, sizeof *m->head);
    if (!m->exits || !m->layer || !m->head) return bx_fail(err, BERXIT_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < c->num_exits; i++) {
        uint32_t x = rd32(p + exits_off + 4 * (uint64_t)i);
        if (x < 1 || x > (uint32_t)c->layers || (i > 0 && x <= (uint32_t)m->exits[i - 1]) ||
            (i == c->num_exits - 1 && x != (uint32_t)c->layers))
            return bx_fail(err, BERXIT_ERR_FORMAT, "weights file: exit layers must increase and end at layer %d",
                           c->layers);
        m->exits[i] = (int32_t)x;
    }
    uint32_t H = (uint32_t)c->hidden, I = (uint32_t)c->intermediate, W = (uint32_t)(c->num_outputs + c->has_lte);
    char name[NAME_BYTES];
    rc = BERXIT_OK;
#define T1(dst, nm, a) if (!((dst) = tensor(m, &t, nm, a, 0, err, &rc))) return rc
#define T2(dst, nm, a, b) if (!((dst) = tensor(m, &t, nm, a, b, err, &rc))) return rc
    T2(m->word, "embeddings.word", (uint32_t)c->vocab, H);
    T2(m->pos, "embeddings.position", (uint32_t)c->max_positions, H);
    T2(m->type, "embeddings.token_type", (uint32_t)c->type_vocab, H);
    T1(m->emb_ln_w, "embeddings.ln.weight", H);
    T1(m->emb_ln_b, "embeddings.ln.bias", H);
    struct { const char *nm; size_t off; uint32_t in, out; } lin[4] = {
        {"qkv", offsetof(bx_layer, qkv), H, 3 * H}, {"attn_out", offsetof(bx_layer, attn_out), H, H},
        {"ffn_in", offsetof(bx_layer, ffn_in), H, I}, {"ffn_out", offsetof(bx_layer, ffn_out), I, H}};
    for (int32_t i = 0; i < c->layers; i++) {
        bx_layer *L = &m->layer[i];
        for (int j = 0; j < 4; j++) {
            bx_linear *l = (bx_linear *)((char *)L + lin[j].off);
            snprintf(name, sizeof name, "layer.%d.%s.weight", i, lin[j].nm);
            T2(l->w, name, lin[j].in, lin[j].out);
            snprintf(name, sizeof name, "layer.%d.%s.bias", i, lin[j].nm);
            T1(l->b, name, lin[j].out);
            l->in = (int32_t)lin[j].in;
            l->out = (int32_t)lin[j].out;
        }
        snprintf(name, sizeof name, "layer.%d.ln1.weight", i); T1(L->ln1_w, name, H);
        snprintf(name, sizeof name, "layer.%d.ln1.bias", i); T1(L->ln1_b, name, H);
        snprintf(name, sizeof name, "layer.%d.ln2.weight", i); T1(L->ln2_w, name, H);
        snprintf(name, sizeof name, "layer.%d.ln2.bias", i); T1(L->ln2_b, name, H);
    }
    for (int32_t k = 0; k < c->num_exits; k++) {
        snprintf(name, sizeof name, "head.%d.weight", m->exits[k]); T2(m->head[k].w, name, H, W);
        snprintf(name, sizeof name, "head.%d.bias", m->exits[k]); T1(m->head[k].b, name, W);
        m->head[k].in = (int32_t)H;
        m->head[k].out = (int32_t)W;
    }
#undef T1
#undef T2
    return BERXIT_OK;
}
