/* Post-processors. Only the single-sequence template matters for
 * encode(text, add_special_tokens=True); a Sequence composes templates
 * outside-in (each later processor wraps the result of the earlier ones). */
#include "postprocess.h"

#include <string.h>

void tk_post_free(tk_post *p)
{
    tk_ivec_free(&p->prefix);
    tk_ivec_free(&p->suffix);
}

/* Appends the ids of special token `name` from the template's table. */
static loom_status special_ids(json_t *table, const char *name, tk_ivec *dst, loom_err *err)
{
    json_t *e = json_object_get(table, name);
    json_t *ids = json_object_get(e, "ids");
    if (!json_is_array(ids))
        return loom_err_set(err, LOOM_EINVAL,
                            "post_processor TemplateProcessing: special token \"%.100s\" missing from special_tokens", name);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 24))
            return loom_err_set(err, LOOM_EINVAL, "post_processor: special token \"%.100s\" has a bad id", name);
        if (!tk_ivec_push(dst, (int32_t)json_integer_value(v)))
            return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing post_processor");
    }
    return LOOM_OK;
}

static loom_status parse_template(json_t *j, tk_ivec *pre, tk_ivec *suf, loom_err *err)
{
    json_t *single = json_object_get(j, "single"), *table = json_object_get(j, "special_tokens");
    if (!json_is_array(single))
        return loom_err_set(err, LOOM_EINVAL, "post_processor TemplateProcessing: \"single\" must be an array");
    bool seen_a = false;
    size_t i;
    json_t *item;
    json_array_foreach(single, i, item) {
        json_t *sp = json_object_get(item, "SpecialToken"), *seq = json_object_get(item, "Sequence");
        if (json_is_object(sp)) {
            const char *name = json_string_value(json_object_get(sp, "id"));
            if (!name) return loom_err_set(err, LOOM_EINVAL, "post_processor: SpecialToken without a string id");
            LOOM_CHECK(special_ids(table, name, seen_a ? suf : pre, err));
        } else if (json_is_object(seq)) {
            const char *id = json_string_value(json_object_get(seq, "id"));
            if (!id || strcmp(id, "A") != 0 || seen_a)
                return loom_err_set(err, LOOM_EINVAL,
                                    "post_processor TemplateProcessing: single template must hold sequence A once");
            seen_a = true;
        } else {
            return loom_err_set(err, LOOM_EINVAL, "post_processor TemplateProcessing: bad template item %zu", i);
        }
    }
    if (!seen_a)
        return loom_err_set(err, LOOM_EINVAL, "post_processor TemplateProcessing: single template lacks sequence A");
    return LOOM_OK;
}

/* "cls": ["<s>", 0] style pair -> id */
static loom_status pair_id(json_t *j, const char *key, tk_ivec *dst, loom_err *err)
{
    json_t *p = json_object_get(j, key);
    json_t *id = json_array_get(p, 1);
    if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24))
        return loom_err_set(err, LOOM_EINVAL, "post_processor: \"%s\" must be [token, id]", key);
    if (!tk_ivec_push(dst, (int32_t)json_integer_value(id)))
        return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing post_processor");
    return LOOM_OK;
}

static loom_status parse_one(json_t *j, tk_post *acc, int depth, loom_err *err)
{
    if (depth > 16) return loom_err_set(err, LOOM_EINVAL, "post_processor Sequence nested too deeply");
    if (!json_is_object(j)) return loom_err_set(err, LOOM_EINVAL, "post_processor must be an object or null");
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_err_set(err, LOOM_EINVAL, "post_processor without a string \"type\"");
    if (strcmp(type, "ByteLevel") == 0) return LOOM_OK;
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(j, "processors");
        if (!json_is_array(arr))
            return loom_err_set(err, LOOM_EINVAL, "post_processor Sequence: \"processors\" must be an array");
        size_t i;
        json_t *child;
        json_array_foreach(arr, i, child) LOOM_CHECK(parse_one(child, acc, depth + 1, err));
        return LOOM_OK;
    }
    tk_post mine = {0};
    loom_status st;
    if (strcmp(type, "TemplateProcessing") == 0) {
        st = parse_template(j, &mine.prefix, &mine.suffix, err);
    } else if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        st = pair_id(j, "cls", &mine.prefix, err);
        if (st == LOOM_OK) st = pair_id(j, "sep", &mine.suffix, err);
    } else {
        return loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported post_processor type %s in tokenizer.json", type);
    }
    /* wrap: mine.prefix + acc.prefix ... acc.suffix + mine.suffix */
    if (st == LOOM_OK) {
        if (!tk_ivec_reserve(&mine.prefix, acc->prefix.len) || !tk_ivec_reserve(&acc->suffix, mine.suffix.len)) {
            st = loom_err_set(err, LOOM_ENOMEM, "out of memory parsing post_processor");
        } else {
            if (acc->prefix.len) memcpy(mine.prefix.p + mine.prefix.len, acc->prefix.p, acc->prefix.len * sizeof(int32_t));
            mine.prefix.len += acc->prefix.len;
            if (mine.suffix.len) memcpy(acc->suffix.p + acc->suffix.len, mine.suffix.p, mine.suffix.len * sizeof(int32_t));
            acc->suffix.len += mine.suffix.len;
            tk_ivec_free(&acc->prefix);
            acc->prefix = mine.prefix;
            mine.prefix = (tk_ivec){0};
        }
    }
    tk_post_free(&mine);
    return st;
}

loom_status tk_post_parse(json_t *j, tk_post *out, loom_err *err)
{
    memset(out, 0, sizeof *out);
    if (!j || json_is_null(j)) return LOOM_OK;
    loom_status st = parse_one(j, out, 0, err);
    if (st != LOOM_OK) tk_post_free(out);
    return st;
}
