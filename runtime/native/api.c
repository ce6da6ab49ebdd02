#define _POSIX_C_SOURCE 200809L
/* The public API (berxit.h): open / info / run / close, the stage-by-stage workspace, errors,
 * and the early-exit loop: embed -> stage -> decide -> record exited rows -> compact -> ... */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

static _Thread_local char open_err[BX_ERR_LEN];

int bx_fail(char *buf, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, BX_ERR_LEN, fmt, ap);
    va_end(ap);
    return code;
}

const char *berxit_open_errmsg(void) { return open_err; }
const char *berxit_errmsg(const berxit_model *m) { return m ? m->err : "no model (NULL handle)"; }
const char *berxit_ws_errmsg(const berxit_workspace *ws) { return ws ? ws->err : "no workspace (NULL)"; }

static void free_ws(berxit_workspace *ws) {
    if (!ws) return;
    bx_threads_stop(ws);
    void *bufs[] = {ws->len, ws->start, ws->x, ws->qkv, ws->ctx, ws->tmp, ws->ffn, ws->scores, ws->kt, ws->pooled,
                    ws->head, ws->orig, ws->kidx, ws->prev_label, ws->count, ws->prev_value, ws->done};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(ws);
}

static void free_model(berxit_model *m) {
    if (!m) return;
    free_ws(m->ws);
    if (m->layer)
        for (int32_t i = 0; i < m->cfg.layers; i++) {
            free(m->layer[i].qkv.packed); free(m->layer[i].attn_out.packed);
            free(m->layer[i].ffn_in.packed); free(m->layer[i].ffn_out.packed);
        }
    if (m->head)
        for (int32_t k = 0; k < m->cfg.num_exits; k++) free(m->head[k].packed);
    free(m->layer); free(m->head); free(m->exits); free(m->file);
    free(m);
}

static berxit_workspace *new_ws(const berxit_model *m) {
    berxit_workspace *ws = calloc(1, sizeof *ws);
    if (ws) { ws->m = m; ws->stage = -1; ws->threads = m->threads; }
    return ws;
}

/* takes ownership of `file` (64-byte aligned, `size` bytes) */
static int open_file_buffer(unsigned char *file, size_t size, berxit_model **out) {
    berxit_model *m = calloc(1, sizeof *m);
    if (!m) { free(file); return bx_fail(open_err, BERXIT_ERR_NOMEM, "out of memory"); }
    m->file = file;
    m->file_size = size;
    m->threads = 1;
    int rc = bx_load_weights(m, open_err);
    for (int32_t i = 0; rc == BERXIT_OK && i < m->cfg.layers; i++) {
        bx_layer *L = &m->layer[i];
        L->ffn_in.act = BX_ACT_GELU; /* gelu(x W1 + b1) in the product's epilogue (cfg.activation 0: erf GELU) */
        if (bx_pack(&L->qkv) || bx_pack(&L->attn_out) || bx_pack(&L->ffn_in) || bx_pack(&L->ffn_out))
            rc = bx_fail(open_err, BERXIT_ERR_NOMEM, "out of memory packing the weights");
    }
    for (int32_t k = 0; rc == BERXIT_OK && k < m->cfg.num_exits; k++)
        if (bx_pack(&m->head[k])) rc = bx_fail(open_err, BERXIT_ERR_NOMEM, "out of memory packing the weights");
    if (rc == BERXIT_OK && !(m->ws = new_ws(m))) rc = bx_fail(open_err, BERXIT_ERR_NOMEM, "out of memory");
    if (rc == BERXIT_OK && pthread_mutex_init(&m->mu, NULL) != 0)
        rc = bx_fail(open_err, BERXIT_ERR_NOMEM, "cannot create a mutex");
    if (rc != BERXIT_OK) { free_model(m); return rc; }
    open_err[0] = 0;
    *out = m;
    return BERXIT_OK;
}

static unsigned char *alloc_file(size_t size) { return aligned_alloc(64, size ? (size + 63) / 64 * 64 : 64); }

int berxit_open_memory(const void *data, size_t size, berxit_model **out) {
    if (out) *out = NULL;
    if (!out || !data) return bx_fail(open_err, BERXIT_ERR_ARG, "berxit_open_memory: NULL argument");
    unsigned char *file = alloc_file(size);
    if (!file) return bx_fail(open_err, BERXIT_ERR_NOMEM, "out of memory for a %zu-byte weights file", size);
    memcpy(file, data, size);
    return open_file_buffer(file, size, out);
}

int berxit_open(const char *path, berxit_model **out) {
    if (out) *out = NULL;
    if (!out || !path) return bx_fail(open_err, BERXIT_ERR_ARG, "berxit_open: NULL argument");
    char full[4096];
    struct stat st;
    if (stat(path, &st) != 0)
        return bx_fail(open_err, BERXIT_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        if (snprintf(full, sizeof full, "%s/native_weights.bin", path) >= (int)sizeof full)
            return bx_fail(open_err, BERXIT_ERR_ARG, "path too long");
    } else if (snprintf(full, sizeof full, "%s", path) >= (int)sizeof full) {
        return bx_fail(open_err, BERXIT_ERR_ARG, "path too long");
    }
    FILE *f = fopen(full, "rb");
    if (!f)
        return bx_fail(open_err, BERXIT_ERR_IO, "cannot open '%s': %s%s", full, strerror(errno),
                       S_ISDIR(st.st_mode) ? " (export the artifact with this toolkit's `python -m export.build`: it "
                       "writes native_weights.bin for fp32 BERT models)" : "");
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0) {
        fclose(f);
        return bx_fail(open_err, BERXIT_ERR_IO, "'%s' is not a regular file", full);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *file = alloc_file(size);
    if (!file) { fclose(f); return bx_fail(open_err, BERXIT_ERR_NOMEM, "out of memory for '%s' (%zu bytes)", full, size); }
    size_t got = fread(file, 1, size, f);
    int extra = fgetc(f);
    fclose(f);
    if (got != size || extra != EOF) {
        free(file);
        return bx_fail(open_err, BERXIT_ERR_IO, "'%s' changed while it was read", full);
    }
    return open_file_buffer(file, size, out);
}

void berxit_close(berxit_model *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free_model(m);
}

int berxit_info(const berxit_model *m, berxit_model_info *info) {
    if (!m || !info) return BERXIT_ERR_ARG;
    const bx_config *c = &m->cfg;
    memset(info, 0, sizeof *info);
    info->num_layers = c->layers;
    info->num_exits = c->num_exits;
    for (int32_t i = 0; i < c->num_exits && i < 64; i++) info->exits[i] = m->exits[i];
    info->num_outputs = c->num_outputs;
    info->task_kind = c->task_kind;
    info->pooling = c->pooling;
    info->has_lte = c->has_lte;
    info->max_seq_len = c->max_seq_len;
    info->hidden_size = c->hidden;
    info->num_heads = c->heads;
    info->intermediate_size = c->intermediate;
    info->vocab_size = c->vocab;
    info->type_vocab_size = c->type_vocab;
    info->blas = bx_blas_name();
    return BERXIT_OK;
}

int berxit_set_threads(berxit_model *m, int32_t threads) {
    if (!m) return BERXIT_ERR_ARG;
    if (threads < 1 || threads > 2) return bx_fail(m->err, BERXIT_ERR_ARG, "threads must be 1 or 2, got %d", threads);
    pthread_mutex_lock(&m->mu);
    m->threads = threads;
    if (m->ws->threads != threads) { bx_threads_stop(m->ws); m->ws->threads = threads; }
    pthread_mutex_unlock(&m->mu);
    return BERXIT_OK;
}

/* -- workspaces ------------------------------------------------------------------------------ */
int berxit_workspace_new(berxit_model *m, berxit_workspace **out) {
    if (!m || !out) return BERXIT_ERR_ARG;
    *out = new_ws(m);
    return *out ? BERXIT_OK : BERXIT_ERR_NOMEM;
}

void berxit_workspace_free(berxit_workspace *ws) { free_ws(ws); }

int32_t berxit_ws_rows(const berxit_workspace *ws) { return ws && ws->stage >= 0 ? ws->rows : 0; }

static int check_inputs(berxit_workspace *ws, const int64_t *ids, const int64_t *tt, const int64_t *mask,
                        int32_t batch, int32_t seq) {
    const bx_config *c = &ws->m->cfg;
    if (!ids || !mask) return bx_fail(ws->err, BERXIT_ERR_ARG, "ids and mask must not be NULL (type_ids may be)");
    if (batch < 1 || batch > BERXIT_MAX_BATCH)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "batch %d out of range [1, %d]", batch, BERXIT_MAX_BATCH);
    if (seq < 1 || seq > c->max_seq_len)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "sequence length %d out of range [1, max_seq_len %d]; truncate the "
                       "input", seq, c->max_seq_len);
    for (int32_t r = 0; r < batch; r++) {
        int ended = 0;
        for (int32_t p = 0; p < seq; p++) {
            size_t q = (size_t)r * seq + p;
            int64_t mk = mask[q];
            if (mk != 0 && mk != 1)
                return bx_fail(ws->err, BERXIT_ERR_INPUT, "mask[%d][%d] = %lld: the mask holds 0 and 1 only", r, p,
                               (long long)mk);
            if (mk == 1 && ended)
                return bx_fail(ws->err, BERXIT_ERR_INPUT, "row %d's mask has a 1 after a 0: inputs must be right "
                               "padded", r);
            if (mk == 0) { ended = 1; continue; }
            if (ids[q] < 0 || ids[q] >= c->vocab)
                return bx_fail(ws->err, BERXIT_ERR_INPUT, "token id %lld at row %d position %d is outside the "
                               "vocabulary [0, %d)", (long long)ids[q], r, p, c->vocab);
            if (tt && (tt[q] < 0 || tt[q] >= c->type_vocab))
                return bx_fail(ws->err, BERXIT_ERR_INPUT, "token type id %lld at row %d position %d is outside "
                               "[0, %d)", (long long)tt[q], r, p, c->type_vocab);
        }
        if (mask[(size_t)r * seq] != 1)
            return bx_fail(ws->err, BERXIT_ERR_INPUT, "row %d has no token (its mask starts with 0)", r);
    }
    return BERXIT_OK;
}

int berxit_ws_embed(berxit_workspace *ws, const int64_t *ids, const int64_t *tt, const int64_t *mask, int32_t batch,
                    int32_t seq) {
    if (!ws) return BERXIT_ERR_ARG;
#ifndef BERXIT_NO_WARM
    bx_threads_warm(ws); /* (its wake-up overlaps the input checks and the embeddings) */
#endif
    ws->stage = -1;
    int rc = check_inputs(ws, ids, tt, mask, batch, seq);
    if (rc) return rc;
    if (bx_ws_reserve(ws, (size_t)batch, (size_t)seq))
        return bx_fail(ws->err, BERXIT_ERR_NOMEM, "out of memory for a batch of %d x %d tokens", batch, seq);
    ws->rows = batch;
    bx_embed(ws, ids, tt, mask, seq);
    ws->stage = 0;
    return BERXIT_OK;
}

/* layers of stage k: after exit k - 1 up to exit k */
static void run_layers(berxit_workspace *ws, int32_t k) {
    int32_t first = k == 0 ? 0 : ws->m->exits[k - 1];
    for (int32_t i = first; i < ws->m->exits[k]; i++) bx_layer_forward(ws, i);
}

int berxit_ws_stage(berxit_workspace *ws, int32_t k, float *head_out) {
    if (!ws) return BERXIT_ERR_ARG;
    if (ws->stage < 0) return bx_fail(ws->err, BERXIT_ERR_STATE, "no batch: call berxit_ws_embed first");
    if (k != ws->stage || k >= ws->m->cfg.num_exits)
        return bx_fail(ws->err, BERXIT_ERR_STATE, "stage %d asked for; the next stage is %d (of %d)", k, ws->stage,
                       ws->m->cfg.num_exits);
    if (!head_out) return bx_fail(ws->err, BERXIT_ERR_ARG, "head_out must not be NULL");
    run_layers(ws, k);
    bx_head_forward(ws, k, head_out);
    ws->stage = k + 1;
    return BERXIT_OK;
}

int berxit_ws_keep(berxit_workspace *ws, const int64_t *rows, int32_t n) {
    if (!ws) return BERXIT_ERR_ARG;
    if (ws->stage < 0) return bx_fail(ws->err, BERXIT_ERR_STATE, "no batch: call berxit_ws_embed first");
    if (n < 1 || n > ws->rows || !rows)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "keep: %d rows of %d live ones", n, ws->rows);
    for (int32_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= ws->rows || (i > 0 && rows[i] <= rows[i - 1]))
            return bx_fail(ws->err, BERXIT_ERR_ARG, "keep: row indices must be increasing, in [0, %d)", ws->rows);
    for (int32_t i = 0; i < n; i++) ws->kidx[i] = (int32_t)rows[i];
    bx_keep_rows(ws, ws->kidx, n);
    return BERXIT_OK;
}

int32_t berxit_ws_max_len(const berxit_workspace *ws) {
    int32_t n = 0;
    if (ws && ws->stage >= 0)
        for (int32_t r = 0; r < ws->rows; r++) n = ws->len[r] > n ? ws->len[r] : n;
    return n;
}

int berxit_ws_save(berxit_workspace *ws, float *hidden, int64_t *mask, int32_t seq) {
    if (!ws) return BERXIT_ERR_ARG;
    if (ws->stage < 1) return bx_fail(ws->err, BERXIT_ERR_STATE, "save: no stage has run on this batch yet");
    if (!hidden || !mask) return bx_fail(ws->err, BERXIT_ERR_ARG, "save: hidden and mask must not be NULL");
    if (seq < berxit_ws_max_len(ws))
        return bx_fail(ws->err, BERXIT_ERR_ARG, "save: seq %d is shorter than the longest live row (%d)", seq,
                       berxit_ws_max_len(ws));
    size_t H = (size_t)ws->m->cfg.hidden;
    for (int32_t r = 0; r < ws->rows; r++) {
        float *dst = hidden + (size_t)r * seq * H;
        int32_t n = ws->len[r];
        memcpy(dst, ws->x + (size_t)ws->start[r] * H, sizeof(float) * (size_t)n * H);
        memset(dst + (size_t)n * H, 0, sizeof(float) * (size_t)(seq - n) * H);
        for (int32_t p = 0; p < seq; p++) mask[(size_t)r * seq + p] = p < n;
    }
    return BERXIT_OK;
}

int berxit_ws_load(berxit_workspace *ws, const float *hidden, const int64_t *mask, int32_t batch, int32_t seq,
                   int32_t stage) {
    if (!ws) return BERXIT_ERR_ARG;
    const bx_config *c = &ws->m->cfg;
    ws->stage = -1;
    if (!hidden || !mask) return bx_fail(ws->err, BERXIT_ERR_ARG, "load: hidden and mask must not be NULL");
    if (batch < 1 || batch > BERXIT_MAX_BATCH)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "load: batch %d outside [1, %d]", batch, BERXIT_MAX_BATCH);
    if (seq < 1 || seq > c->max_seq_len)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "load: seq %d outside [1, %d]", seq, c->max_seq_len);
    if (stage < 1 || stage >= c->num_exits)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "load: stage %d outside [1, %d) (stages already run)", stage,
                       c->num_exits);
    for (int32_t r = 0; r < batch; r++) {
        const int64_t *mr = mask + (size_t)r * seq;
        if (mr[0] != 1) return bx_fail(ws->err, BERXIT_ERR_INPUT, "load: row %d has no token (its mask starts with 0)", r);
        for (int32_t p = 1; p < seq; p++)
            if ((mr[p] != 0 && mr[p] != 1) || (mr[p] == 1 && mr[p - 1] == 0))
                return bx_fail(ws->err, BERXIT_ERR_INPUT, "load: row %d's mask is not 1s then 0s", r);
    }
    if (bx_ws_reserve(ws, (size_t)batch, (size_t)seq))
        return bx_fail(ws->err, BERXIT_ERR_NOMEM, "out of memory for a batch of %d x %d tokens", batch, seq);
    size_t H = (size_t)c->hidden;
    int32_t t = 0;
    for (int32_t r = 0; r < batch; r++) {
        int32_t n = 0;
        while (n < seq && mask[(size_t)r * seq + n]) n++;
        memcpy(ws->x + (size_t)t * H, hidden + (size_t)r * seq * H, sizeof(float) * (size_t)n * H);
        ws->len[r] = n;
        ws->start[r] = t;
        t += n;
    }
    ws->rows = batch;
    ws->tokens = t;
    ws->stage = stage;
    return BERXIT_OK;
}

/* -- the early-exit loop ---------------------------------------------------------------------- */
static int run_loop(berxit_workspace *ws, const int64_t *ids, const int64_t *tt, const int64_t *mask, int32_t batch,
                    int32_t seq, const berxit_policy *p, berxit_result *out) {
    const berxit_model *m = ws->m;
    const bx_config *c = &m->cfg;
    int32_t C = c->num_outputs, W = C + c->has_lte, E = c->num_exits;
    if (!out || !out->exit_layer || !out->status)
        return bx_fail(ws->err, BERXIT_ERR_ARG, "result.exit_layer and result.status must not be NULL");
    berxit_policy none = {BERXIT_POLICY_NONE, 0.0f, 0, 0, NULL, 0};
    if (!p) p = &none;
    int rc = bx_check_policy(m, p, ws->err);
    if (rc) return rc;
    if ((rc = berxit_ws_embed(ws, ids, tt, mask, batch, seq))) return rc;
    int32_t fixed_pos = 0;
    if (p->kind == BERXIT_POLICY_FIXED)
        for (int32_t i = 0; i < E; i++) if (m->exits[i] == p->exit_layer) fixed_pos = i + 1;
    for (int32_t r = 0; r < batch; r++) { ws->orig[r] = r; ws->count[r] = 0; }
    for (int32_t k = 0; k < E && ws->rows > 0; k++) {
        int32_t pos = k + 1, last = pos == E;
        if (p->kind == BERXIT_POLICY_NONE && !last) { run_layers(ws, k); continue; } /* no head, no check */
        run_layers(ws, k);
        bx_head_forward(ws, k, ws->head);
        float thr = p->per_layer ? p->per_layer[k] : p->threshold;
        int32_t keep = 0;
        for (int32_t r = 0; r < ws->rows; r++) {
            const float *h = ws->head + (size_t)r * W;
            int finite = 1, d = last;
            for (int32_t j = 0; j < W; j++) finite &= isfinite(h[j]) != 0;
            switch (p->kind) {
            case BERXIT_POLICY_CONFIDENCE: d |= bx_confidence(h, C) >= thr; break;
            case BERXIT_POLICY_ENTROPY: d |= bx_entropy(h, C) <= thr; break;
            case BERXIT_POLICY_LTE: d |= bx_sigmoid(h[C]) >= thr; break;
            case BERXIT_POLICY_FIXED: d |= pos >= fixed_pos; break;
            case BERXIT_POLICY_PATIENCE:
                if (c->task_kind == BERXIT_CLASSIFICATION) {
                    int32_t a = bx_argmax(h, C);
                    ws->count[r] = (k > 0 && a == ws->prev_label[r]) ? ws->count[r] + 1 : 0;
                    ws->prev_label[r] = a;
                } else {
                    ws->count[r] = (k > 0 && fabsf(h[0] - ws->prev_value[r]) < p->threshold) ? ws->count[r] + 1 : 0;
                    ws->prev_value[r] = h[0];
                }
                d |= ws->count[r] >= p->patience;
                break;
            default: break;
            }
            d |= !finite;
            ws->done[r] = (unsigned char)d;
            if (!d) continue;
            int32_t o = ws->orig[r];
            out->exit_layer[o] = m->exits[k];
            out->status[o] = finite ? BERXIT_OK : BERXIT_ERR_NONFINITE;
            int cls = c->task_kind == BERXIT_CLASSIFICATION;
            if (out->label) out->label[o] = cls && finite ? bx_argmax(h, C) : -1;
            if (out->value) out->value[o] = cls ? NAN : h[0];
            if (out->logits) for (int32_t j = 0; j < C; j++) out->logits[(size_t)o * C + j] = h[j];
            if (out->confidence) out->confidence[o] = cls ? bx_confidence(h, C) : NAN;
            if (out->entropy) out->entropy[o] = cls ? bx_entropy(h, C) : NAN;
            if (out->lte) out->lte[o] = c->has_lte ? bx_sigmoid(h[C]) : NAN;
        }
        for (int32_t r = 0; r < ws->rows; r++) { /* compaction: the rows that go on, in order */
            if (ws->done[r]) continue;
            ws->kidx[keep] = r;
            ws->orig[keep] = ws->orig[r];
            ws->count[keep] = ws->count[r];
            ws->prev_label[keep] = ws->prev_label[r];
            ws->prev_value[keep] = ws->prev_value[r];
            keep++;
        }
        if (keep == 0) { ws->rows = 0; break; }
        if (keep < ws->rows) bx_keep_rows(ws, ws->kidx, keep);
    }
    ws->stage = -1;
    return BERXIT_OK;
}

int berxit_run(berxit_model *m, const int64_t *ids, const int64_t *type_ids, const int64_t *mask, int32_t batch,
               int32_t seq, const berxit_policy *policy, berxit_result *out) {
    if (!m) return BERXIT_ERR_ARG;
    pthread_mutex_lock(&m->mu);
    int rc = run_loop(m->ws, ids, type_ids, mask, batch, seq, policy, out);
    if (rc) memcpy(m->err, m->ws->err, BX_ERR_LEN);
    else m->err[0] = 0;
    pthread_mutex_unlock(&m->mu);
    return rc;
}
