/* UTF-8 helpers for the tokenizer: strict validation, code point decode and
 * encode, and the Unicode character classes Hugging Face's Rust code uses
 * (char::is_whitespace, regex \w) for added-token boundary rules. */
#ifndef LOOM_TOKENIZER_UTF8_H
#define LOOM_TOKENIZER_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code
 * points above U+10FFFF). On false, *bad_off (if non-NULL) is the offset of
 * the first byte that cannot start or continue a valid sequence. */
bool tk_utf8_valid(const char *s, size_t n, size_t *bad_off);

/* Decodes one code point from valid UTF-8 at s; returns its byte length. */
size_t tk_utf8_decode(const char *s, uint32_t *cp);

/* Byte length of the valid UTF-8 sequence starting with lead byte c. */
static inline size_t tk_utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Writes cp as UTF-8 into out (4 bytes room); returns the length. */
size_t tk_utf8_encode(uint32_t cp, char *out);

/* Offset of the start of the last code point in valid s[0..n), n > 0. */
size_t tk_utf8_last(const char *s, size_t n);

/* Unicode White_Space (Rust char::is_whitespace, Oniguruma and Rust regex \s). */
bool tk_is_space(uint32_t cp);

/* Rust regex \w: alphabetic, marks, decimal digits, connector punctuation,
 * join controls (approximated with general categories). */
bool tk_is_word(uint32_t cp);

#endif
