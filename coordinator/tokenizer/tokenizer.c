/* loom_tokenizer: loads tokenizer.json into its parts (normalizer, added
 * tokens, pre-tokenizer, BPE model, post-processor, decoder) and runs encode
 * in HF's order: split out added tokens, normalize each stretch, split out
 * normalized added tokens, pre-tokenize, BPE each word, apply the template. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_int.h"
#include "utf8.h"

/* ---- load --------------------------------------------------------------- */

/* Reads and parses path; missing file -> LOOM_EIO, bad JSON -> LOOM_EINVAL. */
static loom_status load_json(const char *path, size_t flags, json_t **out, loom_err *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return loom_err_set(err, LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    json_error_t jerr;
    json_t *j = json_loadf(f, JSON_ALLOW_NUL | flags, &jerr);
    fclose(f);
    if (!j)
        return loom_err_set(err, LOOM_EINVAL, "malformed JSON in %s (line %d, column %d): %s", path, jerr.line,
                            jerr.column, jerr.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return loom_err_set(err, LOOM_EINVAL, "%s: top level must be a JSON object", path);
    }
    *out = j;
    return LOOM_OK;
}

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* id -> token text table and the per-id special flags. */
static loom_status build_id_table(loom_tokenizer *tok, loom_err *err)
{
    int64_t max_id = tok->bpe.max_id;
    for (size_t i = 0; i < tok->added.n; i++)
        if (tok->added.v[i].id > max_id) max_id = tok->added.v[i].id;
    tok->vocab_size = max_id + 1;
    size_t n = (size_t)(tok->vocab_size > 0 ? tok->vocab_size : 1);
    tok->id_str = calloc(n, sizeof *tok->id_str);
    tok->id_len = calloc(n, sizeof *tok->id_len);
    tok->special = calloc(n, 1);
    if (!tok->id_str || !tok->id_len || !tok->special) return loom_err_set(err, LOOM_ENOMEM, "out of memory loading tokenizer");
    const tk_strmap *v = &tok->bpe.vocab;
    for (size_t i = 0; i < v->n; i++) {
        int32_t id = v->ents[i].val;
        /* a later duplicate id wins, as when HF inverts its vocab map */
        tok->id_str[id] = tk_strmap_key(v, i);
        tok->id_len[id] = v->ents[i].len;
    }
    tk_strmap specials = {0};
    if (!tk_strmap_init(&tok->added_map, tok->added.n) || !tk_strmap_init(&specials, tok->added.n)) {
        tk_strmap_free(&specials);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory loading tokenizer");
    }
    for (size_t i = 0; i < tok->added.n; i++) {
        const struct tk_added_token *t = &tok->added.v[i];
        tok->id_str[t->id] = t->text;
        tok->id_len[t->id] = (uint32_t)t->text_len;
        if (!tk_strmap_put(&tok->added_map, t->content, t->len, t->id) ||
            (t->special && !tk_strmap_put(&specials, t->content, t->len, 1))) {
            tk_strmap_free(&specials);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory loading tokenizer");
        }
    }
    /* HF decides "special" by the token's text, so check every id's text
     * (a normalized special token whose text changed is therefore not skipped) */
    if (specials.n > 0)
        for (size_t id = 0; id < n; id++)
            if (tok->id_str[id] && tk_strmap_get(&specials, tok->id_str[id], tok->id_len[id]) >= 0) tok->special[id] = 1;
    tk_strmap_free(&specials);
    return LOOM_OK;
}

loom_tokenizer *loom_tokenizer_load(const char *dir, loom_err *err)
{
    if (!dir) {
        loom_err_set(err, LOOM_EINVAL, "loom_tokenizer_load: NULL directory");
        return NULL;
    }
    loom_tokenizer *tok = calloc(1, sizeof *tok);
    char *path = join_path(dir, "tokenizer.json");
    char *cfg_path = join_path(dir, "tokenizer_config.json");
    json_t *root = NULL, *cfg = NULL;
    loom_status st = LOOM_OK;
    if (!tok || !path || !cfg_path) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory loading tokenizer");
        goto fail;
    }
    tok->bpe.max_id = -1;
    LOOM_CHECK_GOTO(st, load_json(path, 0, &root, err), fail);
    /* tokenizer_config.json is optional; when present it must at least parse
     * (model_max_length is often 1e30, too big for a JSON integer here) */
    FILE *cf = fopen(cfg_path, "rb");
    if (cf) {
        fclose(cf);
        LOOM_CHECK_GOTO(st, load_json(cfg_path, JSON_DECODE_INT_AS_REAL, &cfg, err), fail);
    }
    json_t *version = json_object_get(root, "version");
    if (version && (!json_is_string(version) || strcmp(json_string_value(version), "1.0") != 0)) {
        loom_err_set(err, LOOM_EUNSUPPORTED, "%s: unknown tokenizer.json version (want \"1.0\")", path);
        goto fail;
    }
    json_t *model = json_object_get(root, "model");
    if (!model) {
        loom_err_set(err, LOOM_EINVAL, "%s: missing \"model\"", path);
        goto fail;
    }
    LOOM_CHECK_GOTO(st, tk_bpe_load(model, &tok->bpe, err), fail_ctx);
    LOOM_CHECK_GOTO(st, tk_normalizer_parse(json_object_get(root, "normalizer"), &tok->norm, err), fail_ctx);
    LOOM_CHECK_GOTO(st, tk_added_parse(json_object_get(root, "added_tokens"), tok->norm, &tok->added, err), fail_ctx);
    LOOM_CHECK_GOTO(st, tk_pretok_parse(json_object_get(root, "pre_tokenizer"), &tok->pretok, err), fail_ctx);
    LOOM_CHECK_GOTO(st, tk_post_parse(json_object_get(root, "post_processor"), &tok->post, err), fail_ctx);
    LOOM_CHECK_GOTO(st, tk_decoder_parse(json_object_get(root, "decoder"), &tok->dec, err), fail_ctx);
    LOOM_CHECK_GOTO(st, build_id_table(tok, err), fail_ctx);
    for (size_t i = 0; i < tok->post.prefix.len + tok->post.suffix.len; i++) {
        int32_t id = i < tok->post.prefix.len ? tok->post.prefix.p[i] : tok->post.suffix.p[i - tok->post.prefix.len];
        if (id >= tok->vocab_size) {
            loom_err_set(err, LOOM_EINVAL, "post_processor special token id %d is outside the vocabulary", (int)id);
            goto fail_ctx;
        }
    }
    json_decref(root);
    json_decref(cfg);
    free(path);
    free(cfg_path);
    return tok;
fail_ctx:
    loom_err_wrap(err, st == LOOM_OK ? LOOM_EINVAL : st, "%s", path);
fail:
    json_decref(root);
    json_decref(cfg);
    free(path);
    free(cfg_path);
    loom_tokenizer_destroy(tok);
    return NULL;
}

void loom_tokenizer_destroy(loom_tokenizer *tok)
{
    if (!tok) return;
    tk_bpe_free(&tok->bpe);
    tk_added_free(&tok->added);
    tk_strmap_free(&tok->added_map);
    tk_normalizer_free(tok->norm);
    tk_pretok_free(tok->pretok);
    tk_post_free(&tok->post);
    tk_decoder_free(tok->dec);
    free(tok->id_str);
    free(tok->id_len);
    free(tok->special);
    free(tok);
}

int64_t loom_tokenizer_vocab_size(const loom_tokenizer *tok)
{
    return tok ? tok->vocab_size : 0;
}

int32_t loom_tokenizer_token_id(const loom_tokenizer *tok, const char *token)
{
    if (!tok || !token) return -1;
    size_t n = strlen(token);
    int32_t id = tk_strmap_get(&tok->added_map, token, n);
    return id >= 0 ? id : tk_strmap_get(&tok->bpe.vocab, token, n);
}

bool loom_tokenizer_is_special(const loom_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && id < tok->vocab_size && tok->special[id];
}

/* ---- encode ------------------------------------------------------------- */

struct enc_scratch {
    tk_match m;
    tk_splits raw, norm;   /* added-token splits of the input / of one normalized stretch */
    tk_buf ntext, ntmp;    /* normalized stretch and normalizer scratch */
    tk_buf arena;          /* pre-tokenizer text */
    tk_pieces pieces;
    tk_pretok_scratch ps;
    tk_bpe_scratch bs;
};

static void enc_scratch_free(struct enc_scratch *sc)
{
    tk_match_free(&sc->m);
    free(sc->raw.v);
    free(sc->norm.v);
    tk_buf_free(&sc->ntext);
    tk_buf_free(&sc->ntmp);
    tk_buf_free(&sc->arena);
    free(sc->pieces.v);
    tk_pretok_scratch_free(&sc->ps);
    tk_bpe_scratch_free(&sc->bs);
}

static loom_status push_ids(tk_ivec *out, const tk_ivec *ids, loom_err *err)
{
    if (!tk_ivec_reserve(out, ids->len)) return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
    if (ids->len) memcpy(out->p + out->len, ids->p, ids->len * sizeof(int32_t));
    out->len += ids->len;
    return LOOM_OK;
}

/* One stretch of input between non-normalized added tokens. */
static loom_status encode_stretch(const loom_tokenizer *tok, const char *s, size_t n, bool at_start,
                                  struct enc_scratch *sc, tk_ivec *out, loom_err *err)
{
    LOOM_CHECK(tk_normalize(tok->norm, &sc->m, s, n, &sc->ntext, &sc->ntmp, err));
    LOOM_CHECK(tk_added_split(&tok->added, true, sc->ntext.p, sc->ntext.len, &sc->norm, err));
    for (size_t i = 0; i < sc->norm.n; i++) {
        const struct tk_split *sp = &sc->norm.v[i];
        if (sp->id >= 0) {
            if (!tk_ivec_push(out, sp->id)) return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
            continue;
        }
        sc->arena.len = 0;
        sc->pieces.n = 0;
        if (!tk_buf_append(&sc->arena, sc->ntext.p + sp->off, sp->len) ||
            !tk_pieces_push(&sc->pieces, 0, sp->len, at_start && sp->off == 0))
            return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
        LOOM_CHECK(tk_pretok_run(tok->pretok, &sc->m, &sc->arena, &sc->pieces, &sc->ps, err));
        for (size_t k = 0; k < sc->pieces.n; k++)
            LOOM_CHECK(tk_bpe_encode(&tok->bpe, sc->arena.p + sc->pieces.v[k].off, sc->pieces.v[k].len, &sc->bs,
                                     out, err));
    }
    return LOOM_OK;
}

loom_status loom_tokenizer_encode(const loom_tokenizer *tok, const char *text, size_t len, bool add_special,
                                  int32_t **ids, size_t *n_ids, loom_err *err)
{
    if (!tok || (!text && len) || !ids || !n_ids)
        return loom_err_set(err, LOOM_EINVAL, "loom_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    size_t bad;
    if (len && !tk_utf8_valid(text, len, &bad))
        return loom_err_set(err, LOOM_EINVAL, "input text is not valid UTF-8 (bad byte 0x%02x at offset %zu)",
                            (unsigned char)text[bad], bad);
    struct enc_scratch sc = {0};
    tk_ivec out = {0};
    loom_status st;
    LOOM_CHECK_GOTO(st, tk_match_init(&sc.m, err), done);
    if (add_special) LOOM_CHECK_GOTO(st, push_ids(&out, &tok->post.prefix, err), done);
    LOOM_CHECK_GOTO(st, tk_added_split(&tok->added, false, text, len, &sc.raw, err), done);
    for (size_t i = 0; i < sc.raw.n; i++) {
        const struct tk_split *sp = &sc.raw.v[i];
        if (sp->id >= 0) {
            if (!tk_ivec_push(&out, sp->id)) {
                st = loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
                goto done;
            }
            continue;
        }
        LOOM_CHECK_GOTO(st, encode_stretch(tok, text + sp->off, sp->len, sp->off == 0, &sc, &out, err), done);
    }
    if (add_special) LOOM_CHECK_GOTO(st, push_ids(&out, &tok->post.suffix, err), done);
    *ids = out.p;
    *n_ids = out.len;
    out.p = NULL;
done:
    tk_ivec_free(&out);
    enc_scratch_free(&sc);
    return st;
}
