/* libFuzzer target over the weights-file reader: any bytes -> berxit_open_memory must either
 * refuse them with an error code and a message, or give a model that runs a 2-token row.
 * The data checksum is recomputed over the mutated bytes first (when the header's data offset
 * lies inside them), so mutations reach the header, table and shape checks behind it.
 *   clang -fsanitize=fuzzer,address,undefined -Iruntime/native runtime/native/fuzz/fuzz_weights.c \
 *         runtime/native/[a-z]*.c -lm -lpthread -o fuzz_weights
 * Without clang: cc ... fuzz_weights.c fuzz_driver.c (a mutation loop of its own, see there). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "berxit.h"

uint64_t bx_checksum(const unsigned char *p, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    unsigned char *c = malloc(size ? size : 1);
    if (!c) return 0;
    memcpy(c, data, size);
    if (size >= 128) {
        uint64_t off;
        memcpy(&off, c + 96, 8);
        if (off <= size && (size - off) % 8 == 0) {
            uint64_t h = bx_checksum(c + off, (size_t)(size - off));
            memcpy(c + 112, &h, 8);
        }
    }
    berxit_model *m = NULL;
    int rc = berxit_open_memory(c, size, &m);
    free(c);
    if (rc != BERXIT_OK) {
        if (m != NULL || berxit_open_errmsg()[0] == 0) abort(); /* a refusal always says why */
        return 0;
    }
    berxit_model_info info;
    berxit_info(m, &info);
    int64_t ids[2] = {0, info.vocab_size - 1}, types[2] = {0, 0}, mask[2] = {1, 1};
    int32_t layer, status, label;
    float logits[4096], value;
    berxit_result res = {&label, &value, &layer, &status, info.num_outputs <= 4096 ? logits : NULL, NULL, NULL, NULL};
    if (info.max_seq_len >= 2 && (int64_t)info.hidden_size * info.intermediate_size < (1 << 22))
        berxit_run(m, ids, types, mask, 1, 2, NULL, &res);
    berxit_close(m);
    return 0;
}
