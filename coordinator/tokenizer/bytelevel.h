/* GPT-2's byte <-> unicode map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes map to U+0100.. in byte order, so every
 * byte sequence becomes a printable string the BPE vocab can hold. */
#ifndef LOOM_TOKENIZER_BYTELEVEL_H
#define LOOM_TOKENIZER_BYTELEVEL_H

#include <stdint.h>

/* Code point standing for byte b. */
static inline uint32_t tk_bytelevel_char(uint8_t b)
{
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7F && b <= 0xA0) return 289u + (b - 0x7Fu);
    if (b == 0xAD) return 323u;
    return b;
}

/* Byte a code point stands for, or -1 when it is not in the map. */
static inline int tk_bytelevel_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)(cp - 256);
    if (cp >= 289 && cp <= 322) return (int)(cp - 289 + 0x7F);
    if (cp == 323) return 0xAD;
    return -1;
}

#endif
