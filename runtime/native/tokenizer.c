/* BERT WordPiece tokenization in C, as the `tokenizers` library does it for the artifacts'
 * tokenizer.json (BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP] (B [SEP])):
 *   special tokens ([CLS], [SEP], [PAD], [UNK], [MASK] ...) matched in the raw text first;
 *   clean text (drop NUL, U+FFFD and control / format / unassigned characters, whitespace -> ' ');
 *   spaces around CJK ideographs; accents stripped (NFD, then no nonspacing marks) and lowercase
 *   for uncased models; split on whitespace and punctuation; greedy longest-match WordPiece with
 *   the "##" prefix, [UNK] for a word with no split (or over max_chars_per_word); longest-first
 *   truncation of pairs. Reads ARTIFACT/native_vocab.txt (one token per line, id = line) and
 *   ARTIFACT/native_tokenizer.txt (key value lines), both written by export.build.
 * Unicode classes, lowercase and decompositions: unicode_tables.h (scripts/gen_unicode_tables.py). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "unicode_tables.h"

#define MAX_TEXT_BYTES 4000000
#define MAX_SPECIALS 64

struct berxit_tokenizer {
    char *blob;              /* vocab.txt, each token NUL-terminated */
    uint32_t *off;           /* [n] token offsets into blob */
    int32_t n, *table;       /* hash table of ids (-1: empty), size mask + 1 */
    uint32_t mask;
    int lowercase, strip_accents, chinese, clean;
    int32_t unk, cls, sep, max_chars;
    int32_t nspec, spec_id[MAX_SPECIALS];
    uint32_t *spec_cp[MAX_SPECIALS];
    int32_t spec_len[MAX_SPECIALS];
    char err[BX_ERR_LEN];
};

typedef struct { uint32_t *v; size_t n, cap; int oom; } vec;

static void push(vec *a, uint32_t x) {
    if (a->oom) return;
    if (a->n == a->cap) {
        size_t c = a->cap ? 2 * a->cap : 64;
        uint32_t *p = realloc(a->v, c * sizeof *p);
        if (!p) { a->oom = 1; return; }
        a->v = p; a->cap = c;
    }
    a->v[a->n++] = x;
}

static uint32_t hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int32_t lookup(const berxit_tokenizer *t, const char *s, size_t n) {
    for (uint32_t i = hash(s, n) & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->table[i];
        if (id < 0) return -1;
        const char *w = t->blob + t->off[id];
        if (strlen(w) == n && memcmp(w, s, n) == 0) return id;
    }
}

static uint32_t uc_class(uint32_t c) {
    size_t lo = 0, hi = sizeof bx_uc_ranges / sizeof bx_uc_ranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < bx_uc_ranges[mid][0]) hi = mid;
        else if (c > bx_uc_ranges[mid][1]) lo = mid + 1;
        else return bx_uc_ranges[mid][2];
    }
    return 0;
}

static int is_ws(uint32_t c) { /* Unicode White_Space (Rust's char::is_whitespace) */
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int is_punct(uint32_t c) {
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126) ||
           (uc_class(c) & BX_UC_PUNCT);
}

static int is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static uint32_t lower1(uint32_t c) {
    size_t lo = 0, hi = sizeof bx_uc_lower / sizeof bx_uc_lower[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (bx_uc_lower[mid][0] == c) return bx_uc_lower[mid][1];
        if (bx_uc_lower[mid][0] < c) lo = mid + 1; else hi = mid;
    }
    return c;
}

static void nfd(vec *out, uint32_t c) {
    if (c >= 0xAC00 && c <= 0xD7A3) { /* Hangul syllables: L V (T) */
        uint32_t s = c - 0xAC00;
        push(out, 0x1100 + s / 588); push(out, 0x1161 + (s % 588) / 28);
        if (s % 28) push(out, 0x11A7 + s % 28);
        return;
    }
    size_t lo = 0, hi = sizeof bx_uc_decomp / sizeof bx_uc_decomp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (bx_uc_decomp[mid][0] == c) {
            for (uint32_t k = 0; k < bx_uc_decomp[mid][2]; k++) push(out, bx_uc_decomp_data[bx_uc_decomp[mid][1] + k]);
            return;
        }
        if (bx_uc_decomp[mid][0] < c) lo = mid + 1; else hi = mid;
    }
    push(out, c);
}

/* strict UTF-8 -> code points (no overlongs, surrogates or values past U+10FFFF) */
static int decode(const char *s, vec *out) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t c = *p, need = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 9;
        if (need == 9) return -1;
        c = need == 0 ? c : need == 1 ? c & 0x1F : need == 2 ? c & 0x0F : c & 0x07;
        for (uint32_t k = 1; k <= need; k++) {
            if ((p[k] & 0xC0) != 0x80) return -1;
            c = c << 6 | (p[k] & 0x3F);
        }
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        if (c < min[need] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return -1;
        push(out, c);
        p += need + 1;
    }
    return 0;
}

static size_t utf8(uint32_t c, char *o) {
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) { o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | (c >> 6 & 0x3F)); o[2] = (char)(0x80 | (c & 0x3F)); return 3; }
    o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | (c >> 12 & 0x3F)); o[2] = (char)(0x80 | (c >> 6 & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* one word (code points) -> WordPiece ids; buf: 8 n + 8 bytes, bo: n + 1 offsets */
static void wordpiece(const berxit_tokenizer *t, const uint32_t *w, size_t n, vec *ids, char *buf, size_t *bo) {
    if ((int32_t)n > t->max_chars) { push(ids, (uint32_t)t->unk); return; }
    size_t b = 0;
    for (size_t i = 0; i < n; i++) { bo[i] = b; b += utf8(w[i], buf + b); }
    bo[n] = b;
    char *key = buf + b; /* "##" + a piece's bytes */
    size_t mark = ids->n, start = 0;
    while (start < n) {
        int32_t id = -1;
        size_t end = n;
        for (; end > start; end--) {
            size_t p = 0, len = bo[end] - bo[start];
            if (start) { key[0] = key[1] = '#'; p = 2; }
            memcpy(key + p, buf + bo[start], len);
            if ((id = lookup(t, key, p + len)) >= 0) break;
        }
        if (id < 0) { ids->n = mark; push(ids, (uint32_t)t->unk); return; }
        push(ids, (uint32_t)id);
        start = end;
    }
}

/* normalized text -> words -> ids */
static void pieces(const berxit_tokenizer *t, const uint32_t *c, size_t n, vec *ids, int *oom) {
    vec a = {0}, b = {0};
    for (size_t i = 0; i < n; i++) { /* clean text, CJK spacing */
        uint32_t x = c[i];
        if (t->clean) {
            if (x == 0 || x == 0xFFFD || (x != 9 && x != 10 && x != 13 && (uc_class(x) & BX_UC_OTHER))) continue;
            if (is_ws(x)) x = ' ';
        }
        if (t->chinese && is_cjk(x)) { push(&a, ' '); push(&a, x); push(&a, ' '); } else push(&a, x);
    }
    for (size_t i = 0; i < a.n; i++) { /* accents, lowercase */
        if (t->strip_accents) {
            size_t m = b.n;
            nfd(&b, a.v[i]);
            size_t k = m;
            for (size_t j = m; j < b.n; j++) if (!(uc_class(b.v[j]) & BX_UC_MN)) b.v[k++] = b.v[j];
            b.n = k;
        } else {
            push(&b, a.v[i]);
        }
    }
    if (t->lowercase) {
        vec l = {0};
        for (size_t i = 0; i < b.n; i++) {
            if (b.v[i] == 0x130) { push(&l, 'i'); push(&l, 0x307); } else push(&l, lower1(b.v[i]));
        }
        free(b.v);
        b = l;
    }
    char *buf = malloc(8 * b.n + 8);
    size_t *bo = malloc((b.n + 2) * sizeof *bo);
    if (!buf || !bo || a.oom || b.oom) { *oom = 1; goto out; }
    for (size_t i = 0; i < b.n;) { /* split on whitespace, punctuation on its own */
        if (is_ws(b.v[i])) { i++; continue; }
        if (is_punct(b.v[i])) { wordpiece(t, b.v + i, 1, ids, buf, bo); i++; continue; }
        size_t j = i;
        while (j < b.n && !is_ws(b.v[j]) && !is_punct(b.v[j])) j++;
        wordpiece(t, b.v + i, j - i, ids, buf, bo);
        i = j;
    }
out:
    free(buf); free(bo); free(a.v); free(b.v);
}

/* one text: special tokens matched first (longest at each position), the rest tokenized */
static int encode(berxit_tokenizer *t, const char *text, vec *ids) {
    vec c = {0};
    if (strlen(text) > MAX_TEXT_BYTES) return bx_fail(t->err, BERXIT_ERR_INPUT, "text longer than %d bytes", MAX_TEXT_BYTES);
    if (decode(text, &c) != 0) { free(c.v); return bx_fail(t->err, BERXIT_ERR_INPUT, "text is not valid UTF-8; pass UTF-8 text"); }
    int oom = c.oom;
    size_t seg = 0;
    for (size_t i = 0; i <= c.n && !oom;) {
        int32_t best = -1, blen = 0;
        for (int32_t s = 0; i < c.n && s < t->nspec; s++)
            if (t->spec_len[s] > blen && (size_t)t->spec_len[s] <= c.n - i &&
                memcmp(c.v + i, t->spec_cp[s], sizeof(uint32_t) * (size_t)t->spec_len[s]) == 0) { best = s; blen = t->spec_len[s]; }
        if (best < 0 && i < c.n) { i++; continue; }
        if (i > seg) pieces(t, c.v + seg, i - seg, ids, &oom); /* (c.v is NULL for an empty text) */
        if (best >= 0) { push(ids, (uint32_t)t->spec_id[best]); i += (size_t)blen; seg = i; } else break;
    }
    oom |= ids->oom;
    free(c.v);
    return oom ? bx_fail(t->err, BERXIT_ERR_NOMEM, "out of memory") : BERXIT_OK;
}

int berxit_tokenize(berxit_tokenizer *t, const char *a, const char *b, int32_t max_len, int64_t *ids, int64_t *type_ids,
                    int32_t *n_out, int32_t *truncated) {
    if (!t) return BERXIT_ERR_ARG;
    if (!a || !ids || !n_out) return bx_fail(t->err, BERXIT_ERR_ARG, "text, ids and n_out must not be NULL");
    int32_t added = b ? 3 : 2;
    if (max_len < added) return bx_fail(t->err, BERXIT_ERR_ARG, "max_len %d leaves no room for the text", max_len);
    vec va = {0}, vb = {0};
    int rc = encode(t, a, &va);
    if (!rc && b) rc = encode(t, b, &vb);
    if (rc) { free(va.v); free(vb.v); return rc; }
    size_t room = (size_t)(max_len - added), n1 = va.n, n2 = vb.n;
    int cut = n1 + n2 > room;
    if (cut && !b) n1 = room;
    else if (cut) { /* longest first: the shorter keeps its length if it can, else half each */
        int swap = n1 > n2;
        size_t s = swap ? n2 : n1, l;
        l = s > room ? s : (room - s > s ? room - s : s);
        if (s + l > room) { s = room / 2; l = s + room % 2; }
        n1 = swap ? l : s;
        n2 = swap ? s : l;
    }
    int32_t k = 0;
    ids[k] = t->cls; if (type_ids) type_ids[k] = 0; k++;
    for (size_t i = 0; i < n1; i++, k++) { ids[k] = va.v[i]; if (type_ids) type_ids[k] = 0; }
    ids[k] = t->sep; if (type_ids) type_ids[k] = 0; k++;
    if (b) {
        for (size_t i = 0; i < n2; i++, k++) { ids[k] = vb.v[i]; if (type_ids) type_ids[k] = 1; }
        ids[k] = t->sep; if (type_ids) type_ids[k] = 1; k++;
    }
    *n_out = k;
    if (truncated) *truncated = cut;
    free(va.v); free(vb.v);
    return BERXIT_OK;
}

/* -- open / close ---------------------------------------------------------------------------- */
static char *slurp(const char *path, size_t *size, char *err, int *rc) {
    FILE *f = fopen(path, "rb");
    if (!f) { *rc = bx_fail(err, BERXIT_ERR_IO, "cannot open '%s' (unsupported tokenizer, or an artifact exported before "
                            "the native tokenizer: pass token ids, or re-export)", path); return NULL; }
    char *d = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = 2 * cap + 65536 + 1;
            char *p = cap <= 64u << 20 ? realloc(d, cap) : NULL;
            if (!p) { free(d); fclose(f); *rc = bx_fail(err, BERXIT_ERR_NOMEM, "'%s' too large", path); return NULL; }
            d = p;
        }
        size_t got = fread(d + n, 1, 65536, f);
        n += got;
        if (got < 65536) break;
    }
    fclose(f);
    d[n] = 0;
    *size = n;
    return d;
}

static int unescape(char *s) { /* a special token's text: backslash-s = space, two backslashes = one */
    char *o = s;
    for (; *s; s++) {
        if (*s == '\\' && s[1] == 's') { *o++ = ' '; s++; }
        else if (*s == '\\' && s[1] == '\\') { *o++ = '\\'; s++; }
        else *o++ = *s;
    }
    *o = 0;
    return 0;
}

int berxit_tokenizer_open(const char *dir, berxit_tokenizer **out) {
    char *err = (char *)berxit_open_errmsg(), path[4096];
    if (out) *out = NULL;
    if (!dir || !out) return bx_fail(err, BERXIT_ERR_ARG, "berxit_tokenizer_open: NULL argument");
    berxit_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return bx_fail(err, BERXIT_ERR_NOMEM, "out of memory");
    int rc = BERXIT_OK;
    size_t n = 0;
    snprintf(path, sizeof path, "%s/native_tokenizer.txt", dir);
    char *cfg = slurp(path, &n, err, &rc);
    if (!cfg) goto fail;
    int version = 0;
    char type[64] = "";
    t->max_chars = 100; t->unk = t->cls = t->sep = -1;
    char *save = NULL;
    for (char *line = strtok_r(cfg, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char key[64], val[512];
        if (sscanf(line, "%63s %511s", key, val) != 2) continue;
        if (!strcmp(key, "berxit-tokenizer")) version = atoi(val);
        else if (!strcmp(key, "type")) snprintf(type, sizeof type, "%.63s", val);
        else if (!strcmp(key, "lowercase")) t->lowercase = atoi(val);
        else if (!strcmp(key, "strip_accents")) t->strip_accents = atoi(val);
        else if (!strcmp(key, "chinese_chars")) t->chinese = atoi(val);
        else if (!strcmp(key, "clean_text")) t->clean = atoi(val);
        else if (!strcmp(key, "max_chars_per_word")) t->max_chars = atoi(val);
        else if (!strcmp(key, "unk_id")) t->unk = atoi(val);
        else if (!strcmp(key, "cls_id")) t->cls = atoi(val);
        else if (!strcmp(key, "sep_id")) t->sep = atoi(val);
        else if (!strcmp(key, "special") && t->nspec < MAX_SPECIALS) {
            int id;
            char tok[512];
            if (sscanf(val, "%d:%511s", &id, tok) != 2) continue;
            unescape(tok);
            vec c = {0};
            if (decode(tok, &c) != 0 || c.n == 0 || c.oom) { free(c.v); continue; }
            t->spec_id[t->nspec] = id; t->spec_cp[t->nspec] = c.v; t->spec_len[t->nspec++] = (int32_t)c.n;
        }
    }
    free(cfg);
    if (version != 1 || strcmp(type, "wordpiece") != 0) {
        rc = bx_fail(err, BERXIT_ERR_FORMAT, "unsupported tokenizer (%s, version %d); pass token ids", type[0] ? type : "?", version);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/native_vocab.txt", dir);
    if (!(t->blob = slurp(path, &n, err, &rc))) goto fail;
    size_t lines = 0;
    for (size_t i = 0; i < n; i++) lines += t->blob[i] == '\n';
    if (n && t->blob[n - 1] != '\n') lines++;
    t->off = malloc((lines + 1) * sizeof *t->off);
    uint32_t size = 1;
    while (size < 2 * lines + 2) size <<= 1;
    t->table = malloc(size * sizeof *t->table);
    if (!t->off || !t->table) { rc = bx_fail(err, BERXIT_ERR_NOMEM, "out of memory"); goto fail; }
    t->mask = size - 1;
    memset(t->table, 0xff, size * sizeof *t->table);
    for (size_t i = 0, start = 0; i <= n && t->n < (int32_t)lines; i++) {
        if (i < n && t->blob[i] != '\n') continue;
        if (i < n) t->blob[i] = 0;
        t->off[t->n] = (uint32_t)start;
        size_t len = i - start;
        uint32_t h = hash(t->blob + start, len) & t->mask;
        if (lookup(t, t->blob + start, len) < 0) { /* the first id of a repeated token wins */
            while (t->table[h] >= 0) h = (h + 1) & t->mask;
            t->table[h] = t->n;
        }
        t->n++;
        start = i + 1;
    }
    if (t->unk < 0 || t->unk >= t->n || t->cls < 0 || t->cls >= t->n || t->sep < 0 || t->sep >= t->n) {
        rc = bx_fail(err, BERXIT_ERR_FORMAT, "tokenizer.txt: unk/cls/sep ids outside the %d-token vocabulary", t->n);
        goto fail;
    }
    *out = t;
    return BERXIT_OK;
fail:
    berxit_tokenizer_close(t);
    return rc;
}

void berxit_tokenizer_close(berxit_tokenizer *t) {
    if (!t) return;
    for (int32_t s = 0; s < t->nspec; s++) free(t->spec_cp[s]);
    free(t->blob); free(t->off); free(t->table); free(t);
}

const char *berxit_tokenizer_errmsg(const berxit_tokenizer *t) { return t ? t->err : "no tokenizer (NULL)"; }
