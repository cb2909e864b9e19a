/*
 * flowpipe._jsonpb: protobuf JSON lines (hubble observe -o jsonpb, Hubble exporter logs) into
 * GetFlowsResponse wire bytes, which the wire decoder (_wire.c) then turns into columns.
 *
 * Why C: google.protobuf.json_format is pure Python and reads ~4k flows/s here; this converts a
 * 2 KB line in a few microseconds, and without the GIL, so reading overlaps decoding and writing.
 *
 * A fast path, not a second parser: it accepts only the plain subset of protobuf JSON that
 * hubble and Go's protojson print (objects, strings, integers, true/false, enum value names,
 * RFC 3339 timestamps in UTC) and converts it exactly as json_format.Parse does.  Anything
 * else -- null, a float, an exponent, an unknown, repeated or escaped key, an enum number, a
 * timestamp with an offset, bad UTF-8, broken JSON -- makes the line "bail": the caller gives
 * it to json_format, which accepts it or says why not.  So the two agree on every line by
 * construction, as long as what this accepts it converts exactly (tests/test_jsonpb.py checks
 * that on mutated lines against json_format).
 *
 * The spec comes from flowpipe/codec/spec.py (json_spec): message types with their fields (both
 * JSON and proto names), enum value names, and the root fields of which a line needs one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum {
    K_BOOL = 1, K_INT32, K_SINT32, K_UINT32, K_INT64, K_SINT64, K_UINT64,
    K_FIXED32, K_SFIXED32, K_FIXED64, K_SFIXED64, K_FLOAT, K_DOUBLE,
    K_STRING, K_BYTES, K_ENUM,
    K_MESSAGE = 20, K_TIMESTAMP = 21, K_WRAPPER = 22, K_OPAQUE = 23
};

#define OK 0
#define BAIL 1    /* not in the fast subset (or not valid): json_format decides */
#define NOMEM (-1)
#define MAX_DEPTH 24
#define MAX_FIELDS 512
#define MAX_ONEOFS 64

typedef struct {
    uint8_t *p;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *np = (uint8_t *)realloc(b->p, cap);
    if (!np) return -1;
    b->p = np;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n)) return NOMEM;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return OK;
}

/* ---------------------------------------------------------------- spec */

typedef struct {
    char *key; /* NULL: empty slot */
    uint32_t len;
    int32_t val;
} Slot;

typedef struct {
    Slot *slots;
    uint32_t mask;
} Table;

static uint32_t hash_key(const uint8_t *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 16777619u;
    }
    return h;
}

static int table_init(Table *t, size_t n) {
    uint32_t size = 8;
    while (size < 2 * n + 1) size *= 2;
    t->slots = (Slot *)calloc(size, sizeof(Slot));
    t->mask = size - 1;
    return t->slots ? 0 : -1;
}

static void table_free(Table *t) {
    if (!t->slots) return;
    for (uint32_t i = 0; i <= t->mask; i++) free(t->slots[i].key);
    free(t->slots);
}

/* Add key -> val unless key is there already (the first name given wins, as in json_format,
 * which looks a key up among JSON names before proto names). */
static int table_put(Table *t, const char *key, size_t len, int32_t val) {
    uint32_t i = hash_key((const uint8_t *)key, len) & t->mask;
    while (t->slots[i].key) {
        if (t->slots[i].len == len && memcmp(t->slots[i].key, key, len) == 0) return 0;
        i = (i + 1) & t->mask;
    }
    char *k = (char *)malloc(len ? len : 1);
    if (!k) return -1;
    memcpy(k, key, len);
    t->slots[i].key = k;
    t->slots[i].len = (uint32_t)len;
    t->slots[i].val = val;
    return 0;
}

static inline int table_get(const Table *t, const uint8_t *key, size_t len, int32_t *val) {
    uint32_t i = hash_key(key, len) & t->mask;
    while (t->slots[i].key) {
        if (t->slots[i].len == len && memcmp(t->slots[i].key, key, len) == 0) {
            *val = t->slots[i].val;
            return 1;
        }
        i = (i + 1) & t->mask;
    }
    return 0;
}

typedef struct {
    uint32_t number;
    int kind, inner, repeated, sub, enum_ix, oneof;
} JField;

typedef struct {
    int nfields;
    JField *fields;
    Table names;
} JType;

typedef struct {
    int ntypes, nenums, root;
    JType *types;
    Table *enums;
    uint64_t required; /* root field indexes (< 64) of which a line needs at least one */
    /* the node name a row is routed by (its cluster is the part before '/'): the flow's
     * (flow_type's field node_flow at depth 1), else the response's (root field node_root) */
    int node_root, node_flow, flow_type;
} JSpec;

static void spec_free(JSpec *s) {
    if (!s) return;
    for (int i = 0; s->types && i < s->ntypes; i++) {
        free(s->types[i].fields);
        table_free(&s->types[i].names);
    }
    for (int i = 0; s->enums && i < s->nenums; i++) table_free(&s->enums[i]);
    free(s->types);
    free(s->enums);
    free(s);
}

static void spec_capsule_free(PyObject *cap) {
    spec_free((JSpec *)PyCapsule_GetPointer(cap, "flowpipe._jsonpb.Spec"));
}

static int add_name(Table *t, PyObject *name, int32_t val) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(name, &n);
    if (!s) return -1;
    if (table_put(t, s, (size_t)n, val)) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* compile(types, enums, root, required, (node_root, flow_root, node_flow)) -> capsule
 *   types: [[(number, kind, inner, repeated, sub, enum_ix, oneof, (names...)), ...], ...]
 *   enums: [[(name, number), ...], ...]; required: [root field index, ...]; the last three
 *   are field indexes: root's node name, root's flow, and the flow's node name. */
static PyObject *j_compile(PyObject *self, PyObject *args) {
    PyObject *types, *enums, *required;
    int root, node_root, flow_root, node_flow;
    if (!PyArg_ParseTuple(args, "O!O!iO!(iii)", &PyList_Type, &types, &PyList_Type, &enums, &root,
                          &PyList_Type, &required, &node_root, &flow_root, &node_flow))
        return NULL;
    JSpec *s = (JSpec *)calloc(1, sizeof(JSpec));
    if (!s) return PyErr_NoMemory();
    s->ntypes = (int)PyList_GET_SIZE(types);
    s->nenums = (int)PyList_GET_SIZE(enums);
    s->root = root;
    s->types = (JType *)calloc(s->ntypes ? s->ntypes : 1, sizeof(JType));
    s->enums = (Table *)calloc(s->nenums ? s->nenums : 1, sizeof(Table));
    if (!s->types || !s->enums) goto nomem;
    if (root < 0 || root >= s->ntypes) {
        PyErr_SetString(PyExc_ValueError, "root out of range");
        goto fail;
    }
    for (int e = 0; e < s->nenums; e++) {
        PyObject *vals = PyList_GET_ITEM(enums, e);
        if (!PyList_Check(vals)) goto bad;
        if (table_init(&s->enums[e], (size_t)PyList_GET_SIZE(vals))) goto nomem;
        for (Py_ssize_t v = 0; v < PyList_GET_SIZE(vals); v++) {
            PyObject *name;
            int number;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(vals, v), "Ui", &name, &number)) goto fail;
            if (add_name(&s->enums[e], name, number)) goto fail;
        }
    }
    for (int t = 0; t < s->ntypes; t++) {
        PyObject *fl = PyList_GET_ITEM(types, t);
        if (!PyList_Check(fl) || PyList_GET_SIZE(fl) > MAX_FIELDS) goto bad;
        JType *jt = &s->types[t];
        jt->nfields = (int)PyList_GET_SIZE(fl);
        jt->fields = (JField *)calloc(jt->nfields ? jt->nfields : 1, sizeof(JField));
        if (!jt->fields || table_init(&jt->names, (size_t)jt->nfields * 2)) goto nomem;
        for (int f = 0; f < jt->nfields; f++) {
            JField *fd = &jt->fields[f];
            PyObject *names;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(fl, f), "IiiiiiiO!", &fd->number, &fd->kind,
                                  &fd->inner, &fd->repeated, &fd->sub, &fd->enum_ix, &fd->oneof,
                                  &PyTuple_Type, &names))
                goto fail;
            if ((fd->kind == K_MESSAGE && (fd->sub < 0 || fd->sub >= s->ntypes)) ||
                (fd->kind == K_ENUM && (fd->enum_ix < 0 || fd->enum_ix >= s->nenums)) ||
                (fd->inner == K_ENUM) || fd->oneof >= MAX_ONEOFS)
                goto bad;
        }
        /* every field's first name (its JSON name) before any second one: json_format looks a
         * key up among JSON names first */
        for (Py_ssize_t k = 0; k < 2; k++) {
            for (int f = 0; f < jt->nfields; f++) {
                PyObject *names = PyTuple_GET_ITEM(PyList_GET_ITEM(fl, f), 7);
                if (k < PyTuple_GET_SIZE(names) && add_name(&jt->names, PyTuple_GET_ITEM(names, k), f))
                    goto fail;
            }
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(required); i++) {
        long ix = PyLong_AsLong(PyList_GET_ITEM(required, i));
        if (ix == -1 && PyErr_Occurred()) goto fail;
        if (ix < 0 || ix >= 64 || ix >= s->types[root].nfields) goto bad;
        s->required |= 1ULL << ix;
    }
    {
        const JType *rt = &s->types[root];
        if (node_root < 0 || node_root >= rt->nfields || rt->fields[node_root].kind != K_STRING ||
            flow_root < 0 || flow_root >= rt->nfields || rt->fields[flow_root].kind != K_MESSAGE)
            goto bad;
        s->flow_type = rt->fields[flow_root].sub;
        const JType *ft = &s->types[s->flow_type];
        if (node_flow < 0 || node_flow >= ft->nfields || ft->fields[node_flow].kind != K_STRING)
            goto bad;
        s->node_root = node_root;
        s->node_flow = node_flow;
    }
    return PyCapsule_New(s, "flowpipe._jsonpb.Spec", spec_capsule_free);
bad:
    PyErr_SetString(PyExc_ValueError, "malformed jsonpb spec");
    goto fail;
nomem:
    PyErr_NoMemory();
fail:
    spec_free(s);
    return NULL;
}

/* ---------------------------------------------------------------- wire output */

static inline int put_varint(Buf *b, uint64_t v) {
    if (buf_reserve(b, 10)) return NOMEM;
    uint8_t *p = b->p + b->len;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    b->len = (size_t)(p - b->p);
    return OK;
}

static inline int put_tag(Buf *b, uint32_t number, int wt) {
    return put_varint(b, ((uint64_t)number << 3) | (uint64_t)wt);
}

static int wire_type(int kind) {
    switch (kind) {
    case K_FIXED32: case K_SFIXED32: case K_FLOAT: return 5;
    case K_FIXED64: case K_SFIXED64: case K_DOUBLE: return 1;
    case K_STRING: case K_BYTES: case K_MESSAGE: case K_TIMESTAMP: case K_WRAPPER: return 2;
    default: return 0;
    }
}

/* a scalar's wire value: varint payload, or the little-endian bits of a fixed field */
static int put_raw(Buf *b, int kind, uint64_t raw) {
    int wt = wire_type(kind);
    if (wt == 0) return put_varint(b, raw);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(raw >> (8 * i));
    return buf_put(b, le, wt == 5 ? 4 : 8);
}

/* A length-delimited field whose payload is written after open_len: one byte is reserved for
 * the length, and the payload moved when the length needs more (so the output is canonical). */
static inline int open_len(Buf *b, size_t *mark) {
    if (buf_reserve(b, 1)) return NOMEM;
    *mark = b->len++;
    return OK;
}

static int close_len(Buf *b, size_t mark) {
    size_t len = b->len - mark - 1;
    if (len < 128) {
        b->p[mark] = (uint8_t)len;
        return OK;
    }
    int k = 0;
    for (size_t v = len; v; v >>= 7) k++;
    if (buf_reserve(b, (size_t)k - 1)) return NOMEM;
    memmove(b->p + mark + k, b->p + mark + 1, len);
    uint8_t *p = b->p + mark;
    size_t v = len;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p = (uint8_t)v;
    b->len += (size_t)k - 1;
    return OK;
}

/* ---------------------------------------------------------------- JSON input */

typedef struct {
    const uint8_t *p, *end;
    const JSpec *s;
    Buf *out;
    Buf str;  /* unescaped string */
    int capture;   /* the string being read is node name 0 (the flow's) or 1 (the response's) */
    Buf node[2];   /* this line's node names */
} Px;

static inline void ws(Px *x) {
    while (x->p < x->end && (*x->p == ' ' || *x->p == '\t' || *x->p == '\r' || *x->p == '\n')) x->p++;
}

/* 0: a byte that stands for itself in a JSON string (printable ASCII but '"' and '\\') */
static uint8_t CLS[256];

static void init_cls(void) {
    for (int c = 0; c < 256; c++) CLS[c] = (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') ? 0 : 1;
}

/* The first byte from p on that is not plain (see CLS), or end: 16 bytes a step where SSE2 is. */
static inline const uint8_t *skip_plain(const uint8_t *p, const uint8_t *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* signed: bytes >= 0x80 are negative, so "< 0x20" catches them with the controls */
        __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                     _mm_cmpeq_epi8(v, backslash)),
                                       _mm_cmplt_epi8(v, space));
        int mask = _mm_movemask_epi8(special);
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && !CLS[*p]) p++;
    return p;
}

/* Length of the strictly valid UTF-8 sequence at p (as Python's decoder takes it), 0 if none. */
static int utf8_seq(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    int n;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c == 0xe0) { n = 2; lo = 0xa0; }
    else if (c == 0xed) { n = 2; hi = 0x9f; }
    else if (c >= 0xe1 && c <= 0xef) n = 2;
    else if (c == 0xf0) { n = 3; lo = 0x90; }
    else if (c == 0xf4) { n = 3; hi = 0x8f; }
    else if (c >= 0xf1 && c <= 0xf3) n = 3;
    else return 0;
    if (end - p <= n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i <= n; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    return n + 1;
}

static int hex4(const uint8_t *p, const uint8_t *end, uint32_t *v) {
    if (end - p < 4) return BAIL;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        r <<= 4;
        if (c >= '0' && c <= '9') r |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') r |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') r |= (uint32_t)(c - 'A' + 10);
        else return BAIL;
    }
    *v = r;
    return OK;
}

static int put_utf8(Buf *b, uint32_t cp) {
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (uint8_t)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (uint8_t)(0xc0 | (cp >> 6)); u[1] = (uint8_t)(0x80 | (cp & 0x3f)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xe0 | (cp >> 12)); u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (uint8_t)(0x80 | (cp & 0x3f)); n = 3;
    } else {
        u[0] = (uint8_t)(0xf0 | (cp >> 18)); u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)); u[3] = (uint8_t)(0x80 | (cp & 0x3f)); n = 4;
    }
    return buf_put(b, u, n);
}

/* The JSON string at x->p (a '"'): its UTF-8 content in *s and *n (pointing into the line when it
 * has no escape, else into x->str) and whether it had escapes.  BAIL on what json.loads
 * rejects (control characters, bad escapes, bad UTF-8) and on unpaired surrogates (which
 * json_format rejects). */
static int read_string(Px *x, const uint8_t **s, size_t *n, int *escaped) {
    const uint8_t *p = x->p + 1, *end = x->end, *first = p, *run = p;
    *escaped = 0;
    for (;;) {
        p = skip_plain(p, end);
        if (p >= end) return BAIL;
        uint8_t c = *p;
        if (c == '"') break;
        if (c >= 0x80) {
            int k = utf8_seq(p, end);
            if (!k) return BAIL;
            p += k;
            continue;
        }
        if (c != '\\') return BAIL; /* a raw control character */
        if (!*escaped) {
            *escaped = 1;
            x->str.len = 0;
        }
        if (buf_put(&x->str, run, (size_t)(p - run))) return NOMEM;
        if (++p >= end) return BAIL;
        uint8_t e = *p++, ch;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (hex4(p, end, &cp)) return BAIL;
            p += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff) return BAIL;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &lo)) return BAIL;
                if (lo < 0xdc00 || lo > 0xdfff) return BAIL;
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (put_utf8(&x->str, cp)) return NOMEM;
            run = p;
            continue;
        }
        default:
            return BAIL;
        }
        if (buf_put(&x->str, &ch, 1)) return NOMEM;
        run = p;
    }
    if (*escaped) {
        if (buf_put(&x->str, run, (size_t)(p - run))) return NOMEM;
        *s = x->str.p;
        *n = x->str.len;
    } else {
        *s = first;
        *n = (size_t)(p - first);
    }
    x->p = p + 1;
    return OK;
}

/* A JSON integer, or a quoted one (json_format takes int("123") too), as sign and magnitude.
 * Fractions, exponents, '+', spaces and leading zeros of bare numbers bail. */
static int read_int(Px *x, int *neg, uint64_t *mag) {
    const uint8_t *p = x->p, *end = x->end;
    int quoted = 0;
    if (p < end && *p == '"') {
        quoted = 1;
        p++;
    }
    *neg = 0;
    if (p < end && *p == '-') {
        *neg = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9') return BAIL;
    if (!quoted && *p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return BAIL;
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return BAIL;
        v = v * 10 + d;
        p++;
    }
    if (quoted) {
        if (p >= end || *p != '"') return BAIL;
        p++;
    } else if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) {
        return BAIL;
    }
    x->p = p;
    *mag = v;
    return OK;
}

/* sign and magnitude -> the field's wire value, BAIL when out of the kind's range */
static int int_raw(int kind, int neg, uint64_t mag, uint64_t *raw) {
    const uint64_t I32 = 0x80000000ULL, I64 = 0x8000000000000000ULL;
    if (neg && mag == 0) neg = 0; /* -0 */
    switch (kind) {
    case K_INT32: case K_SINT32: case K_SFIXED32: case K_ENUM: {
        if (mag > (neg ? I32 : I32 - 1)) return BAIL;
        int64_t v = neg ? -(int64_t)mag : (int64_t)mag;
        if (kind == K_SINT32) *raw = (uint32_t)(((uint32_t)v << 1) ^ (uint32_t)((int32_t)v >> 31));
        else if (kind == K_SFIXED32) *raw = (uint32_t)(int32_t)v;
        else *raw = (uint64_t)v;
        return OK;
    }
    case K_UINT32: case K_FIXED32:
        if (neg || mag > 0xffffffffULL) return BAIL;
        *raw = mag;
        return OK;
    case K_INT64: case K_SINT64: case K_SFIXED64: {
        if (mag > (neg ? I64 : I64 - 1)) return BAIL;
        int64_t v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        *raw = kind == K_SINT64 ? (((uint64_t)v << 1) ^ (uint64_t)(v >> 63)) : (uint64_t)v;
        return OK;
    }
    case K_UINT64: case K_FIXED64:
        if (neg) return BAIL;
        *raw = mag;
        return OK;
    default:
        return BAIL;
    }
}

/* One scalar value of a numeric, bool or enum kind as its wire value (0 = the default). */
static int read_scalar(Px *x, int kind, int enum_ix, uint64_t *raw) {
    if (x->p >= x->end) return BAIL;
    if (kind == K_BOOL) {
        if (x->end - x->p >= 4 && memcmp(x->p, "true", 4) == 0) {
            x->p += 4;
            *raw = 1;
            return OK;
        }
        if (x->end - x->p >= 5 && memcmp(x->p, "false", 5) == 0) {
            x->p += 5;
            *raw = 0;
            return OK;
        }
        return BAIL;
    }
    if (kind == K_ENUM) {
        const uint8_t *s;
        size_t n;
        int esc, rc;
        int32_t number;
        if (*x->p != '"') return BAIL; /* enum numbers: json_format's own rules */
        if ((rc = read_string(x, &s, &n, &esc))) return rc;
        if (esc || !table_get(&x->s->enums[enum_ix], s, n, &number)) return BAIL;
        *raw = (uint64_t)(int64_t)number;
        return OK;
    }
    int neg, rc;
    uint64_t mag;
    if ((rc = read_int(x, &neg, &mag))) return rc;
    return int_raw(kind, neg, mag, raw);
}

static const int DAYS_IN[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const uint8_t *s, int n, int *v) {
    int r = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return BAIL;
        r = r * 10 + (s[i] - '0');
    }
    *v = r;
    return OK;
}

/* YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z, every part in range (what Timestamp.FromJsonString takes,
 * minus offsets, lone dots and one-digit parts, which bail) */
static int parse_ts(const uint8_t *s, size_t n, int64_t *sec, int32_t *nanos) {
    int y, mo, d, h, mi, se;
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return BAIL;
    if (digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) ||
        digits(s + 11, 2, &h) || digits(s + 14, 2, &mi) || digits(s + 17, 2, &se))
        return BAIL;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || se > 59) return BAIL;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > DAYS_IN[mo] + (mo == 2 && leap)) return BAIL;
    size_t p = 19;
    int32_t ns = 0;
    if (s[p] == '.') {
        p++;
        int k = 0;
        while (p < n && s[p] >= '0' && s[p] <= '9') {
            if (++k > 9) return BAIL;
            ns = ns * 10 + (s[p] - '0');
            p++;
        }
        if (k == 0) return BAIL;
        for (; k < 9; k++) ns *= 10;
    }
    if (p + 1 != n || s[p] != 'Z') return BAIL;
    *sec = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    *nanos = ns;
    return OK;
}

static int parse_message(Px *x, int type, int depth, uint64_t *root_seen);

/* one value of field f (an element of it, when f is repeated) */
static int parse_value(Px *x, const JField *f, int depth, int in_list) {
    Buf *o = x->out;
    const uint8_t *s;
    size_t n, mark;
    int esc, rc;
    uint64_t raw;
    if (x->p >= x->end) return BAIL;
    switch (f->kind) {
    case K_MESSAGE:
        if (put_tag(o, f->number, 2) || open_len(o, &mark)) return NOMEM;
        if ((rc = parse_message(x, f->sub, depth + 1, NULL))) return rc;
        return close_len(o, mark);
    case K_TIMESTAMP: {
        int64_t sec;
        int32_t ns;
        if (*x->p != '"') return BAIL;
        if ((rc = read_string(x, &s, &n, &esc))) return rc;
        if (esc || parse_ts(s, n, &sec, &ns)) return BAIL;
        if (put_tag(o, f->number, 2) || open_len(o, &mark)) return NOMEM;
        if (sec && (put_tag(o, 1, 0) || put_varint(o, (uint64_t)sec))) return NOMEM;
        if (ns && (put_tag(o, 2, 0) || put_varint(o, (uint64_t)ns))) return NOMEM;
        return close_len(o, mark);
    }
    case K_WRAPPER:
        if (f->inner == K_STRING) {
            if (*x->p != '"') return BAIL;
            if ((rc = read_string(x, &s, &n, &esc))) return rc;
            if (put_tag(o, f->number, 2) || open_len(o, &mark)) return NOMEM;
            if (n && (put_tag(o, 1, 2) || put_varint(o, n) || buf_put(o, s, n))) return NOMEM;
            return close_len(o, mark);
        }
        if (wire_type(f->inner) != 0) return BAIL; /* float, double, bytes: json_format */
        if ((rc = read_scalar(x, f->inner, -1, &raw))) return rc;
        if (put_tag(o, f->number, 2) || open_len(o, &mark)) return NOMEM;
        if (raw && (put_tag(o, 1, 0) || put_varint(o, raw))) return NOMEM;
        return close_len(o, mark);
    case K_STRING:
        if (*x->p != '"') return BAIL;
        if ((rc = read_string(x, &s, &n, &esc))) return rc;
        if (x->capture >= 0) {
            x->node[x->capture].len = 0;
            if (buf_put(&x->node[x->capture], s, n)) return NOMEM;
        }
        if (n || in_list) {
            if (put_tag(o, f->number, 2) || put_varint(o, n) || buf_put(o, s, n)) return NOMEM;
        }
        return OK;
    case K_BOOL: case K_INT32: case K_SINT32: case K_UINT32: case K_INT64: case K_SINT64:
    case K_UINT64: case K_FIXED32: case K_SFIXED32: case K_FIXED64: case K_SFIXED64: case K_ENUM:
        if ((rc = read_scalar(x, f->kind, f->enum_ix, &raw))) return rc;
        if (raw && (put_tag(o, f->number, wire_type(f->kind)) || put_raw(o, f->kind, raw)))
            return NOMEM;
        return OK;
    default: /* float, double, bytes, Any and other well-known types: json_format's job */
        return BAIL;
    }
}

static int parse_field(Px *x, const JField *f, int depth) {
    int rc;
    if (x->p >= x->end || *x->p == 'n') return BAIL; /* null: json_format clears the field */
    if (!f->repeated) return parse_value(x, f, depth, 0);
    /* repeated numbers would be packed; the Flow tree has none, so json_format does them */
    if (f->kind != K_STRING && f->kind != K_MESSAGE && f->kind != K_TIMESTAMP &&
        f->kind != K_WRAPPER)
        return BAIL;
    if (*x->p != '[') return BAIL;
    x->p++;
    ws(x);
    if (x->p < x->end && *x->p == ']') {
        x->p++;
        return OK;
    }
    for (;;) {
        if (x->p >= x->end || *x->p == 'n') return BAIL;
        if ((rc = parse_value(x, f, depth, 1))) return rc;
        ws(x);
        if (x->p >= x->end) return BAIL;
        if (*x->p == ',') {
            x->p++;
            ws(x);
            continue;
        }
        if (*x->p == ']') {
            x->p++;
            return OK;
        }
        return BAIL;
    }
}

static int parse_message(Px *x, int type, int depth, uint64_t *root_seen) {
    const JType *t = &x->s->types[type];
    uint64_t seen[MAX_FIELDS / 64] = {0}, oneofs = 0;
    const uint8_t *key;
    size_t klen;
    int esc, rc;
    if (depth > MAX_DEPTH || x->p >= x->end || *x->p != '{') return BAIL;
    x->p++;
    ws(x);
    if (x->p < x->end && *x->p == '}') {
        x->p++;
        if (root_seen) *root_seen = 0;
        return OK;
    }
    for (;;) {
        if (x->p >= x->end || *x->p != '"') return BAIL;
        if ((rc = read_string(x, &key, &klen, &esc))) return rc;
        int32_t fi;
        if (esc || !table_get(&t->names, key, klen, &fi)) return BAIL;
        /* the same field twice (same key, or JSON and proto name): json_format errs or merges */
        if ((seen[fi >> 6] >> (fi & 63)) & 1) return BAIL;
        seen[fi >> 6] |= 1ULL << (fi & 63);
        const JField *f = &t->fields[fi];
        if (f->oneof >= 0) {
            if ((oneofs >> f->oneof) & 1) return BAIL;
            oneofs |= 1ULL << f->oneof;
        }
        ws(x);
        if (x->p >= x->end || *x->p != ':') return BAIL;
        x->p++;
        ws(x);
        const JSpec *sp = x->s;
        x->capture = -1;
        if (depth == 0 && fi == sp->node_root) x->capture = 1;
        else if (depth == 1 && type == sp->flow_type && fi == sp->node_flow) x->capture = 0;
        rc = parse_field(x, f, depth);
        x->capture = -1;
        if (rc) return rc;
        ws(x);
        if (x->p >= x->end) return BAIL;
        if (*x->p == ',') {
            x->p++;
            ws(x);
            continue;
        }
        if (*x->p == '}') {
            x->p++;
            break;
        }
        return BAIL;
    }
    if (root_seen) *root_seen = seen[0];
    return OK;
}

static int parse_line(Px *x, const uint8_t *p, const uint8_t *end) {
    uint64_t seen = 0;
    int rc;
    x->p = p;
    x->end = end;
    x->capture = -1;
    x->node[0].len = x->node[1].len = 0;
    ws(x);
    if ((rc = parse_message(x, x->s->root, 0, &seen))) return rc;
    ws(x);
    if (x->p != x->end) return BAIL;
    return (seen & x->s->required) ? OK : BAIL;
}

static int blank(const uint8_t *p, const uint8_t *end) {
    for (; p < end; p++)
        if (!(*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '\v' || *p == '\f'))
            return 0;
    return 1;
}

typedef struct {
    Py_ssize_t row, line, start, end;
} Bail;

#define MAX_CLUSTERS 64 /* distinct clusters in one call; a line with yet another one bails */

typedef struct {
    Buf names;                          /* the names, back to back */
    size_t off[MAX_CLUSTERS + 1];
    int n;
} Clusters;

/* The index of this line's cluster: the node name's part before '/' ("default" without one). */
static int cluster_of(Px *x, Clusters *c) {
    const Buf *node = x->node[0].len ? &x->node[0] : &x->node[1];
    const uint8_t *name = (const uint8_t *)"default";
    size_t n = 7;
    const uint8_t *slash = node->len ? (const uint8_t *)memchr(node->p, '/', node->len) : NULL;
    if (slash) {
        name = node->p;
        n = (size_t)(slash - node->p);
    }
    for (int i = 0; i < c->n; i++)
        if (c->off[i + 1] - c->off[i] == n && memcmp(c->names.p + c->off[i], name, n) == 0) return i;
    if (c->n == MAX_CLUSTERS) return -1;
    if (buf_put(&c->names, name, n)) return -2;
    c->off[++c->n] = c->names.len;
    return c->n - 1;
}

/* convert(spec, data, first) -> (rows, row_lines, row_clusters, bails, lines)
 *   rows: wire bytes of each line converted here, in order; row_lines: the line number of each
 *   row (native int64 bytes; data's first line is number `first`); row_clusters: the cluster of
 *   each row (str, see cluster_of); bails: (rows before it, line number, start, end) of each line
 *   left to json_format; lines: how many lines data held (blank ones are neither rows nor bails). */
static PyObject *j_convert(PyObject *self, PyObject *args) {
    PyObject *cap;
    Py_buffer in;
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "Oy*n", &cap, &in, &first)) return NULL;
    JSpec *s = (JSpec *)PyCapsule_GetPointer(cap, "flowpipe._jsonpb.Spec");
    if (!s) {
        PyBuffer_Release(&in);
        return NULL;
    }
    Buf out = {0}, ends = {0}, lines = {0}, bails = {0}, which = {0};
    Clusters cl;
    memset(&cl, 0, sizeof(cl));
    Px x;
    memset(&x, 0, sizeof(x));
    x.s = s;
    x.out = &out;
    int err = 0;
    Py_ssize_t nlines = 0, nrows = 0;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *p = (const uint8_t *)in.buf, *end = p + in.len;
    while (p < end && !err) {
        const uint8_t *nl = (const uint8_t *)memchr(p, '\n', (size_t)(end - p));
        const uint8_t *le = nl ? nl : end;
        Py_ssize_t line = first + nlines++;
        if (!blank(p, le)) {
            size_t start = out.len;
            int rc = parse_line(&x, p, le);
            int ci = rc == OK ? cluster_of(&x, &cl) : 0;
            if (ci == -1) rc = BAIL;
            if (ci == -2) rc = NOMEM;
            if (rc == OK) {
                int64_t at = (int64_t)out.len, ln = (int64_t)line;
                uint8_t c8 = (uint8_t)ci;
                if (buf_put(&ends, &at, 8) || buf_put(&lines, &ln, 8) || buf_put(&which, &c8, 1))
                    err = 1;
                nrows++;
            } else if (rc == BAIL) {
                out.len = start;
                Bail b = {nrows, line, (Py_ssize_t)(p - (const uint8_t *)in.buf),
                          (Py_ssize_t)(le - (const uint8_t *)in.buf)};
                if (buf_put(&bails, &b, sizeof b)) err = 1;
            } else {
                err = 1;
            }
        }
        p = nl ? nl + 1 : end;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyObject *rows = NULL, *bl = NULL, *lb = NULL, *cs = NULL, *result = NULL;
    PyObject *names[MAX_CLUSTERS] = {0};
    if (err) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < cl.n; i++) {
        names[i] = PyUnicode_DecodeUTF8((const char *)cl.names.p + cl.off[i],
                                        (Py_ssize_t)(cl.off[i + 1] - cl.off[i]), "strict");
        if (!names[i]) goto done;
    }
    rows = PyList_New(nrows);
    cs = PyList_New(nrows);
    bl = PyList_New((Py_ssize_t)(bails.len / sizeof(Bail)));
    lb = PyBytes_FromStringAndSize((const char *)lines.p, (Py_ssize_t)lines.len);
    if (!rows || !cs || !bl || !lb) goto done;
    int64_t prev = 0;
    for (Py_ssize_t i = 0; i < nrows; i++) {
        int64_t at;
        memcpy(&at, ends.p + 8 * i, 8);
        PyObject *b = PyBytes_FromStringAndSize((const char *)out.p + prev, (Py_ssize_t)(at - prev));
        if (!b) goto done;
        PyList_SET_ITEM(rows, i, b);
        PyObject *name = names[which.p[i]];
        Py_INCREF(name);
        PyList_SET_ITEM(cs, i, name);
        prev = at;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(bl); i++) {
        Bail b;
        memcpy(&b, bails.p + i * sizeof(Bail), sizeof b);
        PyObject *t = Py_BuildValue("(nnnn)", b.row, b.line, b.start, b.end);
        if (!t) goto done;
        PyList_SET_ITEM(bl, i, t);
    }
    result = Py_BuildValue("(OOOOn)", rows, lb, cs, bl, nlines);
done:
    for (int i = 0; i < cl.n; i++) Py_XDECREF(names[i]);
    Py_XDECREF(rows);
    Py_XDECREF(cs);
    Py_XDECREF(bl);
    Py_XDECREF(lb);
    free(out.p);
    free(ends.p);
    free(lines.p);
    free(bails.p);
    free(which.p);
    free(cl.names.p);
    free(x.str.p);
    free(x.node[0].p);
    free(x.node[1].p);
    return result;
}

static PyMethodDef methods[] = {
    {"compile", j_compile, METH_VARARGS, "Compile a protobuf JSON spec."},
    {"convert", j_convert, METH_VARARGS, "Convert protobuf JSON lines to wire bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "flowpipe.codec._jsonpb", "Protobuf JSON lines to wire bytes.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonpb(void) {
    init_cls();
    return PyModule_Create(&moddef);
}
