/* libFuzzer target over the C WordPiece tokenizer: any bytes as one text and, split at the
 * first byte 0x01, as a pair; must give ids within max_len or refuse (invalid UTF-8) with a
 * message. The artifact folder comes from $BERXIT_FUZZ_ARTIFACT (its native_vocab.txt). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "berxit.h"

static berxit_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) {
        const char *dir = getenv("BERXIT_FUZZ_ARTIFACT");
        if (!dir || berxit_tokenizer_open(dir, &tok) != BERXIT_OK) abort();
    }
    char *a = malloc(size + 1);
    if (!a) return 0;
    memcpy(a, data, size);
    a[size] = 0;
    char *b = memchr(a, 1, size);
    if (b) *b++ = 0;
    int64_t ids[64], tt[64];
    int32_t n = -1, cut = -1;
    int rc = berxit_tokenize(tok, a, NULL, 64, ids, tt, &n, &cut);
    if (rc == BERXIT_OK && (n < 2 || n > 64)) abort();
    if (rc != BERXIT_OK && berxit_tokenizer_errmsg(tok)[0] == 0) abort();
    if (b) {
        rc = berxit_tokenize(tok, a, b, 64, ids, tt, &n, &cut);
        if (rc == BERXIT_OK && (n < 3 || n > 64)) abort();
    }
    free(a);
    return 0;
}
