/* kpi-sidecar: optional C accelerator for the NATS codec's hot loops (proxy/nats/protocol.py).
 *
 * scan_pubs() walks a run of PUB frames (and HPUBs not classified by a KPI-Priority header) the way
 * ClientParser._parse's fast path does, counting them per subject without a Python object per frame.
 * scan_msgs() does the same for the plain MSG frames the upstream sends, and route_msgs() writes each of
 * them into the output buffer of each application subscription it is for (one upstream subscription can
 * stand for several: merged interest), with that subscription's sid. The scanners only consume frames
 * they are sure about and stop at the first byte they are not: the Python parser then handles that op
 * exactly as it would have without this module (same ops, same errors), so the two implementations are
 * interchangeable and the tests run both (tests/protocol). select_frames(), settle_acks() and
 * stamp_critical() build a run's outgoing frames from decisions made in policies/; frame_items() and
 * ndjson_array() do the framing of HTTP ingest's plain batches (proxy/ports/ingest_batch.py). Each has a
 * Python reference the tests compare it with. KPI_SIDECAR_NO_EXTENSIONS=1 runs without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <stdint.h>
#include <structmember.h>

static int
add_count(PyObject *counts, const char *subject, Py_ssize_t len, Py_ssize_t count)
{
    PyObject *key = PyUnicode_DecodeUTF8(subject, len, NULL);
    if (key == NULL) {
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(counts, key); /* borrowed */
    Py_ssize_t total = count;
    if (old != NULL) {
        Py_ssize_t before = PyLong_AsSsize_t(old);
        if (before == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        total += before;
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *value = PyLong_FromSsize_t(total);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(counts, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

/* A subject the fast path takes as is: no blank, tab, CR, LF or other control byte, and valid UTF-8
 * (checked once per distinct run of equal subjects, by decoding it). */
static int
subject_ok(const unsigned char *s, Py_ssize_t len)
{
    int ascii = 1;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (s[i] <= 0x20 || s[i] == 0x7f) {
            return 0;
        }
        if (s[i] >= 0x80) {
            ascii = 0;
        }
    }
    if (!ascii) {
        PyObject *probe = PyUnicode_DecodeUTF8((const char *)s, len, NULL);
        if (probe == NULL) {
            PyErr_Clear();
            return 0;
        }
        Py_DECREF(probe);
    }
    return 1;
}

/* Where the value of the first header line named by `key` begins in the block h (its name in any case;
 * `key` in lowercase with the CRLF before it and the colon: "\r\nname:"), as header_value() finds it; -1
 * when there is none. The block is read in place, never lowercased into a copy. */
static Py_ssize_t
header_find(const unsigned char *h, Py_ssize_t len, const char *key, Py_ssize_t klen)
{
    for (Py_ssize_t i = 0;; i++) {
        if (i + klen > len) {
            return -1;
        }
        if (h[i] != '\r') {
            const void *cr = memchr(h + i, '\r', (size_t)(len - i));
            if (cr == NULL) {
                return -1;
            }
            i = (const unsigned char *)cr - h;
            if (i + klen > len) {
                return -1;
            }
        }
        Py_ssize_t j = 1;
        while (j < klen) {
            unsigned char c = h[i + j];
            if (c >= 'A' && c <= 'Z') {
                c = (unsigned char)(c + 32);
            }
            if (c != (unsigned char)key[j]) {
                break;
            }
            j++;
        }
        if (j == klen) {
            return i + klen;
        }
    }
}

/* The priority a header block gives its message, as ClientParser's Python loop reads it
 * (proxy/nats/parser.py _header_priority, after header_value() and Engine.classify()): the value of the first
 * header line named KPI-Priority (any case), trimmed of blanks and tabs: 1-4 for low, medium, high,
 * critical in any case, 0 for no such header or another word (the subject's rule decides), and -1 when
 * the value holds anything but ASCII letters: the Python code decides that message on its own. */
static int
header_priority(const unsigned char *h, Py_ssize_t len)
{
    static const char key[] = "\r\nkpi-priority:";
    Py_ssize_t start = header_find(h, len, key, (Py_ssize_t)sizeof(key) - 1);
    if (start < 0) {
        return 0;
    }
    Py_ssize_t stop = start;
    while (stop + 1 < len && !(h[stop] == '\r' && h[stop + 1] == '\n')) {
        stop++;
    }
    if (stop + 1 >= len) {
        stop = len; /* no CRLF after the value: header_value() reads to the end */
    }
    while (start < stop && (h[start] == ' ' || h[start] == '\t')) {
        start++;
    }
    while (stop > start && (h[stop - 1] == ' ' || h[stop - 1] == '\t')) {
        stop--;
    }
    char word[9];
    Py_ssize_t wlen = stop - start;
    for (Py_ssize_t k = start; k < stop; k++) {
        unsigned char c = h[k];
        if (c >= 'A' && c <= 'Z') {
            c = (unsigned char)(c + 32);
        }
        else if (c < 'a' || c > 'z') {
            return -1;
        }
        if (k - start < 8) {
            word[k - start] = (char)c;
        }
    }
    if (wlen == 3 && memcmp(word, "low", 3) == 0) {
        return 1;
    }
    if (wlen == 6 && memcmp(word, "medium", 6) == 0) {
        return 2;
    }
    if (wlen == 4 && memcmp(word, "high", 4) == 0) {
        return 3;
    }
    if (wlen == 8 && memcmp(word, "critical", 8) == 0) {
        return 4;
    }
    return 0;
}

/* Counts per (subject, priority, request) of the frames a header gives a priority, gathered in a small
 * table during one scan and added to the caller's dict at its end (or when the table is full). */
#define PRIO_SLOTS 16
typedef struct {
    const unsigned char *subj;
    Py_ssize_t len;
    int code;
    int request;
    Py_ssize_t count;
} prio_slot;

static int
flush_prio(PyObject *priorities, prio_slot *slots, int *used)
{
    for (int k = 0; k < *used; k++) {
        PyObject *subject = PyUnicode_DecodeUTF8((const char *)slots[k].subj, slots[k].len, NULL);
        if (subject == NULL) {
            return -1;
        }
        PyObject *key = Py_BuildValue("(Nii)", subject, slots[k].code, slots[k].request);
        if (key == NULL) {
            return -1;
        }
        PyObject *old = PyDict_GetItemWithError(priorities, key); /* borrowed */
        Py_ssize_t total = slots[k].count;
        if (old != NULL) {
            total += PyLong_AsSsize_t(old);
        }
        PyObject *value = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(total);
        int rc = value == NULL ? -1 : PyDict_SetItem(priorities, key, value);
        Py_DECREF(key);
        Py_XDECREF(value);
        if (rc < 0) {
            return -1;
        }
    }
    *used = 0;
    return 0;
}

static int
add_prio(PyObject *priorities, prio_slot *slots, int *used, const unsigned char *subj, Py_ssize_t len, int code,
         int request)
{
    for (int k = *used - 1; k >= 0; k--) {
        prio_slot *s = &slots[k];
        if (s->code == code && s->request == request && s->len == len && memcmp(s->subj, subj, (size_t)len) == 0) {
            s->count++;
            return 0;
        }
    }
    if (*used == PRIO_SLOTS && flush_prio(priorities, slots, used) < 0) {
        return -1;
    }
    slots[*used].subj = subj;
    slots[*used].len = len;
    slots[*used].code = code;
    slots[*used].request = request;
    slots[*used].count = 1;
    (*used)++;
    return 0;
}

/* A decimal of 1 to max_len ASCII digits (9: nats-server's sizes, 18: its sids) into *value. */
static int
parse_digits(const unsigned char *t, Py_ssize_t len, Py_ssize_t max_len, long long *value)
{
    if (len < 1 || len > max_len) {
        return 0;
    }
    long long v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (t[i] < '0' || t[i] > '9') {
            return 0;
        }
        v = v * 10 + (t[i] - '0');
    }
    *value = v;
    return 1;
}

/* The arguments of a control line from q to its CR (at most 4 tokens of bytes above 0x20 but DEL): their
 * number, with the CR at *cr, or 0 when the line is anything else or does not end in CRLF before end.
 * Between tokens, `runs` 1 takes runs of spaces and tabs as nats-server's parser does for a client (and
 * blanks before the first), otherwise exactly one space, as nats-server writes; `runs` 2 also takes two
 * spaces after the second token, once: how nats-server writes an empty reply subject in a MSG. */
static int
split_args(const unsigned char *q, const unsigned char *end, int runs, const unsigned char **toks,
           Py_ssize_t *lens, const unsigned char **cr)
{
    int ntok = 0;
    for (;;) {
        while (runs == 1 && q < end && (*q == ' ' || *q == '\t')) {
            q++;
        }
        const unsigned char *t = q;
        while (q < end && *q > 0x20 && *q != 0x7f) {
            q++;
        }
        if (q == t || q == end || ntok == 4) {
            return 0;
        }
        toks[ntok] = t;
        lens[ntok] = q - t;
        ntok++;
        if (*q == '\r') {
            break;
        }
        if (*q != ' ' && !(runs == 1 && *q == '\t')) {
            return 0;
        }
        q++;
        if (runs == 2 && ntok == 2 && q < end && *q == ' ') {
            q++; /* the empty reply subject */
            runs = 0;
        }
    }
    if (end - q < 2 || q[1] != '\n') {
        return 0;
    }
    *cr = q;
    return ntok;
}

/* The counts of one run of frames of equal subject: all of them, and those with a reply subject. */
static int
add_run(PyObject *counts, PyObject *requests, const unsigned char *subject, Py_ssize_t len, Py_ssize_t count,
        Py_ssize_t with_reply)
{
    if (add_count(counts, (const char *)subject, len, count) < 0) {
        return -1;
    }
    if (requests != NULL && with_reply > 0) {
        return add_count(requests, (const char *)subject, len, with_reply);
    }
    return 0;
}

PyDoc_STRVAR(scan_pubs_doc,
"scan_pubs(buf, pos, counts, limit, max_control_line, headers[, requests[, priorities]]) -> int\n\n"
"Consume the complete PUB frames of buf from pos on ('PUB <subject> [reply] <size>\\r\\n' with blanks\n"
"between the tokens, a 1-9 digit size <= limit, line <= max_control_line, body ending in CRLF), and, when\n"
"headers is true, the HPUB frames without a KPI-Priority header naming a priority; add one per frame\n"
"to counts[subject], and one per frame with a reply subject to requests[subject] when requests is a\n"
"dict; return the position after the last one (pos if none). When priorities is a dict, HPUBs with a\n"
"KPI-Priority header are taken too unless its value holds other bytes than letters: one per frame whose\n"
"header names a priority is added to priorities[(subject, code, request)] (code 1-4: low..critical,\n"
"request 0 or 1); they stay counted in counts and requests as well.");

static PyObject *
scan_pubs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 6 || nargs > 8) {
        PyErr_SetString(PyExc_TypeError, "scan_pubs() takes 6 to 8 arguments");
        return NULL;
    }
    PyObject *bufobj = args[0];
    PyObject *counts = args[2];
    PyObject *requests = nargs >= 7 && args[6] != Py_None ? args[6] : NULL;
    PyObject *priorities = nargs == 8 && args[7] != Py_None ? args[7] : NULL;
    if (!PyBytes_CheckExact(bufobj) || !PyDict_CheckExact(counts) ||
        (requests != NULL && !PyDict_CheckExact(requests)) ||
        (priorities != NULL && !PyDict_CheckExact(priorities))) {
        PyErr_SetString(PyExc_TypeError, "scan_pubs() needs bytes and dicts");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long long limit = PyLong_AsLongLong(args[3]);
    Py_ssize_t max_line = PyLong_AsSsize_t(args[4]);
    int headers_ok = PyObject_IsTrue(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(bufobj);
    Py_ssize_t n = PyBytes_GET_SIZE(bufobj);
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "scan_pubs(): pos out of range");
        return NULL;
    }

    const unsigned char *run_subject = NULL; /* subject of the pending count */
    Py_ssize_t run_len = 0;
    Py_ssize_t run_count = 0;
    Py_ssize_t run_requests = 0; /* of run_count, the frames with a reply subject */
    prio_slot slots[PRIO_SLOTS];
    int used = 0;

    while (n - pos >= 11) { /* the shortest frame: "PUB a 0\r\n\r\n" */
        const unsigned char *p = buf + pos;
        int hpub;
        const unsigned char *q;
        if (p[0] == 'P' && p[1] == 'U' && p[2] == 'B' && (p[3] == ' ' || p[3] == '\t')) {
            hpub = 0;
            q = p + 4;
        }
        else if (headers_ok && p[0] == 'H' && p[1] == 'P' && p[2] == 'U' && p[3] == 'B' &&
                 (p[4] == ' ' || p[4] == '\t')) {
            hpub = 1;
            q = p + 5;
        }
        else {
            break;
        }
        /* A control line longer than max_line is the Python parser's to reject: look no further. */
        const unsigned char *end = n - pos > max_line ? p + max_line : buf + n;
        const unsigned char *toks[4];
        Py_ssize_t lens[4];
        /* Blanks between the tokens, as nats-server splits them: nats-py writes "PUB subject  size". */
        int ntok = split_args(q, end, 1, toks, lens, &q);
        if (ntok < 2 + hpub || ntok > 3 + hpub) {
            break;
        }
        long long size, hdr = -1;
        if (!parse_digits(toks[ntok - 1], lens[ntok - 1], 9, &size) ||
            (hpub && (!parse_digits(toks[ntok - 2], lens[ntok - 2], 9, &hdr) || hdr > size))) {
            break;
        }
        Py_ssize_t line_len = (q + 2) - p;
        if (line_len > max_line || size > limit) {
            break;
        }
        Py_ssize_t frame_end = pos + line_len + (Py_ssize_t)size + 2;
        if (frame_end > n || buf[frame_end - 2] != '\r' || buf[frame_end - 1] != '\n') {
            break;
        }
        /* A priority the caller cannot count (no priorities dict) ends the run like an unreadable one. */
        int code = hpub ? header_priority(p + line_len, (Py_ssize_t)hdr) : 0;
        if (code < 0 || (code > 0 && priorities == NULL)) {
            break;
        }
        const unsigned char *subj = toks[0];
        Py_ssize_t subj_len = lens[0];
        int request = ntok == 3 + hpub;
        if (run_count > 0 && subj_len == run_len && memcmp(subj, run_subject, (size_t)subj_len) == 0) {
            run_count++;
            run_requests += request;
        }
        else {
            if (!subject_ok(subj, subj_len)) {
                break;
            }
            if (run_count > 0 && add_run(counts, requests, run_subject, run_len, run_count, run_requests) < 0) {
                return NULL;
            }
            run_subject = subj;
            run_len = subj_len;
            run_count = 1;
            run_requests = request;
        }
        /* subject_ok() has passed for this subject (this frame's or the equal one before it). */
        if (code > 0 && add_prio(priorities, slots, &used, subj, subj_len, code, request) < 0) {
            return NULL;
        }
        pos = frame_end;
    }
    if (run_count > 0 && add_run(counts, requests, run_subject, run_len, run_count, run_requests) < 0) {
        return NULL;
    }
    if (used > 0 && flush_prio(priorities, slots, &used) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(pos);
}

/* A PUB or HPUB frame of a run (accepted by the parser already) at p, with avail bytes to the buffer's end:
 * its tokens ("PUB <subject> [reply] <size>", "HPUB <subject> [reply] <hdr> <size>"), sizes and length. */
typedef struct {
    const unsigned char *toks[4];
    Py_ssize_t lens[4];
    int ntok;
    int hpub;
    long long size;
    long long hdr; /* -1 for a PUB */
    Py_ssize_t line_len;
    Py_ssize_t frame_len;
} pub_frame;

/* Fill f and return 1, or 0 when the bytes at p are not such a frame whole. */
static int
parse_pub(const unsigned char *p, Py_ssize_t avail, pub_frame *f)
{
    const unsigned char *q;
    if (avail >= 4 && p[0] == 'P' && p[1] == 'U' && p[2] == 'B' && (p[3] == ' ' || p[3] == '\t')) {
        f->hpub = 0;
        q = p + 4;
    }
    else if (avail >= 5 && p[0] == 'H' && p[1] == 'P' && p[2] == 'U' && p[3] == 'B' &&
             (p[4] == ' ' || p[4] == '\t')) {
        f->hpub = 1;
        q = p + 5;
    }
    else {
        return 0;
    }
    int ntok = split_args(q, p + avail, 1, f->toks, f->lens, &q);
    f->ntok = ntok;
    f->hdr = -1;
    if (ntok < 2 + f->hpub || ntok > 3 + f->hpub || !parse_digits(f->toks[ntok - 1], f->lens[ntok - 1], 9, &f->size) ||
        (f->hpub && (!parse_digits(f->toks[ntok - 2], f->lens[ntok - 2], 9, &f->hdr) || f->hdr > f->size))) {
        return 0;
    }
    f->line_len = (q + 2) - p;
    f->frame_len = f->line_len + (Py_ssize_t)f->size + 2;
    return f->frame_len <= avail;
}

/* ---- deciding a run in bulk: the kept frames of each group copied into one buffer ---- */

#define SELECT_GROUPS 64 /* on the stack; more are allocated, and found through a hash table */
#define SELECT_ONE ((unsigned long long)1 << 32) /* a keep share of 1.0 in 32-bit fixed point */

typedef struct {
    const char *subj;
    Py_ssize_t len;
    int code;
    int request;
    long long share; /* 0..SELECT_ONE: keep frame j iff ((j+1)*share + phase) >> 32 > (j*share + phase) >> 32;
                        -1: the frame goes to the second buffer (decided one by one);
                        -3: not kept, its reply subject listed (a refused request) */
    unsigned long long phase;
    unsigned long long seen;
} select_group;

/* FNV-1a over a group's key: subject bytes, KPI-Priority code, request flag. */
static inline size_t
select_hash(const unsigned char *subj, Py_ssize_t len, int code, int request)
{
    size_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < len; i++) {
        h = (h ^ subj[i]) * 1099511628211ULL;
    }
    h = (h ^ (size_t)(code & 0xff)) * 1099511628211ULL;
    return (h ^ (size_t)(request & 1)) * 1099511628211ULL;
}

PyDoc_STRVAR(select_frames_doc,
"select_frames(frames, plan) -> (kept, apart, refused) | None\n\n"
"frames: the frames of a PubRun; plan: a list of (subject: bytes, code, request, share, phase) per\n"
"group of the run, code and request as in PubRun.priorities (code 0: no KPI-Priority header). Frame j\n"
"of a group (0-based, in order) is kept when ((j+1)*share + phase) >> 32 > (j*share + phase) >> 32\n"
"(share 2**32 keeps all, 0 none); a group of share -1 goes to `apart`; of a group of share -3 (requests\n"
"refused) only the reply subject is kept, in `refused`. The entry (b'', -1, -1, share, phase) is the\n"
"group of every frame no other entry names. Returns the kept frames and the frames apart,\n"
"each in order, and the list of refused reply subjects, or None when a frame has no group or is not one\n"
"the scanner reads (the pure-Python selection, proxy.pipeline.runs.select_frames_py, is the reference).");

static PyObject *
select_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "select_frames(frames: bytes, plan: list)");
        return NULL;
    }
    PyObject *plan = args[1];
    Py_ssize_t ngroups = PyList_GET_SIZE(plan);
    if (ngroups > INT_MAX / 4) {
        Py_RETURN_NONE;
    }
    select_group stack_groups[SELECT_GROUPS];
    select_group *groups = stack_groups;
    int *table = NULL; /* open addressing: group index + 1 by key hash, for runs of many groups */
    size_t mask = 0;
    if (ngroups > SELECT_GROUPS) {
        size_t size = 1;
        while (size < (size_t)ngroups * 2) {
            size <<= 1;
        }
        groups = PyMem_Malloc(sizeof(select_group) * (size_t)ngroups);
        table = PyMem_Calloc(size, sizeof(int));
        if (groups == NULL || table == NULL) {
            PyMem_Free(groups);
            PyMem_Free(table);
            return PyErr_NoMemory();
        }
        mask = size - 1;
    }
    PyObject *result = NULL;
    int any_apart = 0;
    int any_frame = -1; /* the entry (b"", -1, -1) of the frames no other entry names */
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        PyObject *item = PyList_GET_ITEM(plan, g);
        PyObject *subj;
        int code, request;
        long long share;
        unsigned long long phase;
        if (!PyTuple_CheckExact(item) || !PyArg_ParseTuple(item, "SiiLK", &subj, &code, &request, &share, &phase)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "select_frames(): a plan entry is (bytes, int, int, int, int)");
            }
            goto done;
        }
        if ((share < -1 && share != -3) || share > (long long)SELECT_ONE || phase >= SELECT_ONE ||
            (share == -3 && !request)) {
            PyErr_SetString(PyExc_ValueError,
                            "select_frames(): share in -1..2**32 or -3 (requests), phase in 0..2**32-1");
            goto done;
        }
        groups[g].subj = PyBytes_AS_STRING(subj);
        groups[g].len = PyBytes_GET_SIZE(subj);
        groups[g].code = code;
        groups[g].request = request;
        groups[g].share = share;
        groups[g].phase = phase;
        groups[g].seen = 0;
        any_apart |= share == -1;
        if (groups[g].len == 0 && code == -1 && request == -1) {
            any_frame = (int)g;
        }
        else if (table != NULL) {
            size_t h = select_hash((const unsigned char *)groups[g].subj, groups[g].len, code, request) & mask;
            while (table[h] != 0) {
                h = (h + 1) & mask;
            }
            table[h] = (int)g + 1;
        }
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *kept = PyBytes_FromStringAndSize(NULL, n);
    PyObject *apart = any_apart ? PyBytes_FromStringAndSize(NULL, n) : PyBytes_FromStringAndSize("", 0);
    PyObject *refused = PyList_New(0);
    if (kept == NULL || apart == NULL || refused == NULL) {
        Py_XDECREF(kept);
        Py_XDECREF(apart);
        Py_XDECREF(refused);
        goto done;
    }
    char *kd = PyBytes_AS_STRING(kept);
    char *ad = any_apart ? PyBytes_AS_STRING(apart) : NULL;
    Py_ssize_t kn = 0, an = 0;
    Py_ssize_t pos = 0;
    int last = -1;
    while (pos < n) {
        const unsigned char *p = buf + pos;
        pub_frame f;
        if (!parse_pub(p, n - pos, &f)) {
            goto refuse;
        }
        const unsigned char *const *toks = f.toks;
        const Py_ssize_t *lens = f.lens;
        Py_ssize_t line_len = f.line_len, frame_len = f.frame_len;
        long long hdr = f.hdr;
        int hpub = f.hpub, ntok = f.ntok;
        int code = hpub ? header_priority(p + line_len, (Py_ssize_t)hdr) : 0;
        if (code < 0) {
            goto refuse;
        }
        int request = ntok == 3 + hpub;
        int g = -1;
        if (last >= 0 && groups[last].code == code && groups[last].request == request &&
            groups[last].len == lens[0] && memcmp(groups[last].subj, toks[0], (size_t)lens[0]) == 0) {
            g = last;
        }
        else if (table != NULL) {
            size_t h = select_hash(toks[0], lens[0], code, request) & mask;
            for (; table[h] != 0; h = (h + 1) & mask) {
                select_group *c = &groups[table[h] - 1];
                if (c->code == code && c->request == request && c->len == lens[0] &&
                    memcmp(c->subj, toks[0], (size_t)lens[0]) == 0) {
                    g = table[h] - 1;
                    break;
                }
            }
            if (g < 0) {
                if (any_frame < 0) {
                    goto refuse;
                }
                g = any_frame;
            }
            last = g;
        }
        else {
            for (Py_ssize_t k = 0; k < ngroups; k++) {
                if (groups[k].code == code && groups[k].request == request && groups[k].len == lens[0] &&
                    memcmp(groups[k].subj, toks[0], (size_t)lens[0]) == 0) {
                    g = (int)k;
                    break;
                }
            }
            if (g < 0) {
                if (any_frame < 0) {
                    goto refuse;
                }
                g = any_frame;
            }
            last = g;
        }
        select_group *grp = &groups[g];
        if (grp->share == -3) {
            PyObject *reply = PyBytes_FromStringAndSize((const char *)toks[1], lens[1]);
            if (reply == NULL || PyList_Append(refused, reply) < 0) {
                Py_XDECREF(reply);
                goto error;
            }
            Py_DECREF(reply);
        }
        else if (grp->share < 0) {
            memcpy(ad + an, p, (size_t)frame_len);
            an += frame_len;
        }
        else {
            unsigned long long share = (unsigned long long)grp->share;
            unsigned long long j = grp->seen;
            if (((j + 1) * share + grp->phase) >> 32 > (j * share + grp->phase) >> 32) {
                memcpy(kd + kn, p, (size_t)frame_len);
                kn += frame_len;
            }
        }
        grp->seen++;
        pos += frame_len;
    }
    if (_PyBytes_Resize(&kept, kn) < 0) {
        Py_DECREF(apart);
        Py_DECREF(refused);
        goto done;
    }
    if (any_apart && _PyBytes_Resize(&apart, an) < 0) {
        Py_DECREF(kept);
        Py_DECREF(refused);
        goto done;
    }
    result = Py_BuildValue("(NNN)", kept, apart, refused);
    goto done;
refuse:
    Py_DECREF(kept);
    Py_DECREF(apart);
    Py_DECREF(refused);
    result = Py_NewRef(Py_None);
    goto done;
error:
    Py_DECREF(kept);
    Py_DECREF(apart);
    Py_DECREF(refused);
done:
    if (groups != stack_groups) {
        PyMem_Free(groups);
    }
    PyMem_Free(table);
    return result;
}

PyDoc_STRVAR(scan_groups_doc,
"scan_groups(frames, keys, max_payload) -> (starts, sizes, which) | None\n\n"
"proxy/pipeline/queued_runs.scan_run_py in C: for each publish of a run of data (PUB or HPUB without a\n"
"reply subject), where its frame starts and its size (uint32 each) and its group (uint16), the group\n"
"named by keys: a list of (subject: bytes, code, group) with code the KPI-Priority code (0: none).\n"
"None when a frame has a reply subject, no group, a size over max_payload, or is not one it reads.");

static PyObject *
scan_groups(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan_groups(frames: bytes, keys: list, max_payload: int)");
        return NULL;
    }
    long long max_payload = PyLong_AsLongLong(args[2]);
    if (max_payload == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *keys = args[1];
    Py_ssize_t nkeys = PyList_GET_SIZE(keys);
    if (nkeys > INT_MAX / 4) {
        Py_RETURN_NONE;
    }
    select_group *groups = PyMem_Malloc(sizeof(select_group) * (size_t)(nkeys > 0 ? nkeys : 1));
    size_t size = 1;
    while (size < (size_t)nkeys * 2) {
        size <<= 1;
    }
    int *table = PyMem_Calloc(size, sizeof(int));
    uint32_t *starts = NULL, *sizes = NULL;
    uint16_t *which = NULL;
    PyObject *result = NULL;
    if (groups == NULL || table == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t mask = size - 1;
    for (Py_ssize_t k = 0; k < nkeys; k++) {
        PyObject *item = PyList_GET_ITEM(keys, k);
        PyObject *subj;
        int code;
        long long group;
        if (!PyTuple_CheckExact(item) || !PyArg_ParseTuple(item, "SiL", &subj, &code, &group)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "scan_groups(): a key is (bytes, int, int)");
            }
            goto done;
        }
        if (group < 0 || group > 0xffff) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        groups[k].subj = PyBytes_AS_STRING(subj);
        groups[k].len = PyBytes_GET_SIZE(subj);
        groups[k].code = code;
        groups[k].request = 0;
        groups[k].share = group; /* the group index, here */
        size_t h = select_hash((const unsigned char *)groups[k].subj, groups[k].len, code, 0) & mask;
        while (table[h] != 0) {
            h = (h + 1) & mask;
        }
        table[h] = (int)k + 1;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t cap = n / 11 + 1; /* no frame is shorter than "PUB a 0\r\n\r\n" */
    starts = PyMem_Malloc(sizeof(uint32_t) * (size_t)cap);
    sizes = PyMem_Malloc(sizeof(uint32_t) * (size_t)cap);
    which = PyMem_Malloc(sizeof(uint16_t) * (size_t)cap);
    if (starts == NULL || sizes == NULL || which == NULL || n > 0xffffffffLL) {
        if (n > 0xffffffffLL) {
            result = Py_NewRef(Py_None);
        }
        else {
            PyErr_NoMemory();
        }
        goto done;
    }
    Py_ssize_t count = 0, pos = 0;
    int last = -1;
    while (pos < n) {
        const unsigned char *p = buf + pos;
        pub_frame f;
        if (!parse_pub(p, n - pos, &f) || f.ntok != 2 + f.hpub || f.size > max_payload || count >= cap) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        int code = f.hpub ? header_priority(p + f.line_len, (Py_ssize_t)f.hdr) : 0;
        int g = -1;
        if (code >= 0) {
            if (last >= 0 && groups[last].code == code && groups[last].len == f.lens[0] &&
                memcmp(groups[last].subj, f.toks[0], (size_t)f.lens[0]) == 0) {
                g = last;
            }
            else {
                size_t h = select_hash(f.toks[0], f.lens[0], code, 0) & mask;
                for (; table[h] != 0; h = (h + 1) & mask) {
                    select_group *c = &groups[table[h] - 1];
                    if (c->code == code && c->len == f.lens[0] && memcmp(c->subj, f.toks[0], (size_t)f.lens[0]) == 0) {
                        g = table[h] - 1;
                        break;
                    }
                }
            }
        }
        if (g < 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        last = g;
        starts[count] = (uint32_t)pos;
        sizes[count] = (uint32_t)f.size;
        which[count] = (uint16_t)groups[g].share;
        count++;
        pos += f.frame_len;
    }
    result = Py_BuildValue("(y#y#y#)", (const char *)starts, (Py_ssize_t)(count * 4), (const char *)sizes,
                           (Py_ssize_t)(count * 4), (const char *)which, (Py_ssize_t)(count * 2));
done:
    PyMem_Free(groups);
    PyMem_Free(table);
    PyMem_Free(starts);
    PyMem_Free(sizes);
    PyMem_Free(which);
    return result;
}

/* ---- the upstream direction: runs of plain MSG frames, routed to application buffers ---- */

typedef struct {
    const unsigned char *subj;
    Py_ssize_t subj_len;
    long long sid;
    const unsigned char *reply; /* NULL when none */
    Py_ssize_t reply_len;
    const unsigned char *size_tok;
    Py_ssize_t size_len;
    Py_ssize_t line_len;
    Py_ssize_t size;
} msg_frame;

/* A complete plain MSG frame as nats-server writes it ("MSG <subject> <sid> [reply] <size>\r\n" with
 * single blanks, then the body and CRLF) at p: its length, or 0 when it is anything else. */
static Py_ssize_t
parse_msg(const unsigned char *p, Py_ssize_t avail, Py_ssize_t max_line, msg_frame *f)
{
    if (avail < 11 || p[0] != 'M' || p[1] != 'S' || p[2] != 'G' || p[3] != ' ') {
        return 0;
    }
    const unsigned char *end = p + (avail > max_line ? max_line : avail);
    const unsigned char *toks[4];
    Py_ssize_t lens[4];
    const unsigned char *q;
    int ntok = split_args(p + 4, end, 2, toks, lens, &q);
    long long sid, size;
    if (ntok < 3 || !parse_digits(toks[1], lens[1], 18, &sid) ||
        !parse_digits(toks[ntok - 1], lens[ntok - 1], 9, &size)) {
        return 0;
    }
    Py_ssize_t line_len = (q + 2) - p;
    Py_ssize_t frame_len = line_len + size + 2;
    if (frame_len > avail || p[frame_len - 2] != '\r' || p[frame_len - 1] != '\n') {
        return 0;
    }
    f->subj = toks[0];
    f->subj_len = lens[0];
    f->sid = sid;
    f->reply = ntok == 4 ? toks[2] : NULL;
    f->reply_len = ntok == 4 ? lens[2] : 0;
    f->size_tok = toks[ntok - 1];
    f->size_len = lens[ntok - 1];
    f->line_len = line_len;
    f->size = (Py_ssize_t)size;
    return frame_len;
}

PyDoc_STRVAR(scan_msgs_doc,
"scan_msgs(buf, pos, max_control_line) -> int\n\n"
"Consume the complete plain MSG frames of buf from pos on, as nats-server writes them ('MSG <subject>\n"
"<sid> [reply] <size>\\r\\n' with single blanks (two for an empty reply), sid of 1-18 digits, size of 1-9, line <=\n"
"max_control_line, body ending in CRLF); return the position after the last one (pos if none).");

static PyObject *
scan_msgs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_msgs(buf: bytes, pos: int, max_control_line: int)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_line = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "scan_msgs(): pos out of range");
        return NULL;
    }
    msg_frame f;
    Py_ssize_t len;
    while ((len = parse_msg(buf + pos, n - pos, max_line, &f)) > 0) {
        pos += len;
    }
    return PyLong_FromSsize_t(pos);
}

static PyObject *out_name; /* interned "_out" */

/* policies.roles.ROLE_PREFIXES: a publish to such a subject has its role by the subject alone. */
static int
known_reply_prefix(const unsigned char *r, Py_ssize_t len)
{
    return (len >= 7 && memcmp(r, "_INBOX.", 7) == 0) || (len >= 8 && memcmp(r, "$JS.ACK.", 8) == 0) ||
           (len >= 7 && memcmp(r, "$JS.FC.", 7) == 0);
}

static int
add_delivered(PyObject *delivered, PyObject *sid, Py_ssize_t count)
{
    PyObject *old = PyDict_GetItemWithError(delivered, sid); /* borrowed */
    Py_ssize_t total = count;
    if (old != NULL) {
        Py_ssize_t before = PyLong_AsSsize_t(old);
        if (before == -1 && PyErr_Occurred()) {
            return -1;
        }
        total += before;
    }
    else if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *value = PyLong_FromSsize_t(total);
    if (value == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(delivered, sid, value);
    Py_DECREF(value);
    return rc;
}

PyDoc_STRVAR(route_msgs_doc,
"route_msgs(frames, pos, routes, delivered) -> int\n\n"
"For each plain MSG frame of frames from pos on (frames as scan_msgs takes them), while its sid is a\n"
"key of routes ({sid: ((client, client_sid), ...)}: the members of one upstream subscription): append\n"
"the frame with client_sid in place of the sid to each member's client._out (a bytearray), in the\n"
"order of the tuple, and add one to delivered[sid]. A frame whose reply subject has none of the\n"
"prefixes that name a role by themselves (_INBOX., $JS.ACK., $JS.FC.) is not routed: the caller\n"
"remembers it as a reply subject of each client. Return the position of the first frame not routed\n"
"(len(frames) when all were).");

/* One member of the route being written: its client's output buffer (owned) and its sid (borrowed). */
typedef struct {
    PyObject *out;
    const char *sid;
    Py_ssize_t sid_len;
} route_member;

#define ROUTE_STACK_MEMBERS 8

static void
release_members(route_member *members, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(members[i].out);
    }
}

/* Fill members (room for at least PyTuple_GET_SIZE(route)) from a route tuple; -1 with an exception set. */
static int
load_members(PyObject *route, route_member *members)
{
    Py_ssize_t n = PyTuple_GET_SIZE(route);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(route, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            release_members(members, i);
            PyErr_SetString(PyExc_TypeError,
                            "route_msgs(): a route is a tuple of (client, client_sid: bytes)");
            return -1;
        }
        PyObject *out = PyObject_GetAttr(PyTuple_GET_ITEM(pair, 0), out_name);
        if (out == NULL || !PyByteArray_CheckExact(out)) {
            Py_XDECREF(out);
            release_members(members, i);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "route_msgs(): client._out must be a bytearray");
            }
            return -1;
        }
        members[i].out = out;
        members[i].sid = PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 1));
        members[i].sid_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
    }
    return 0;
}

static PyObject *
route_msgs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[2]) ||
        !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "route_msgs(frames: bytes, pos: int, routes: dict, delivered: dict)");
        return NULL;
    }
    PyObject *routes = args[2];
    PyObject *delivered = args[3];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "route_msgs(): pos out of range");
        return NULL;
    }

    PyObject *cur_sid = NULL;  /* owned: the sid of the run being counted */
    PyObject *cur_route = NULL; /* owned: its route tuple (keeps the members' sids alive) */
    route_member stack_members[ROUTE_STACK_MEMBERS];
    route_member *members = stack_members; /* that route's members (PyMem_Malloc'ed when many) */
    Py_ssize_t nmembers = 0;
    Py_ssize_t count = 0;
    long long last_sid = -1;
    PyObject *result = NULL;

    msg_frame f;
    Py_ssize_t len;
    while ((len = parse_msg(buf + pos, n - pos, PY_SSIZE_T_MAX, &f)) > 0) {
        if (f.reply != NULL && !known_reply_prefix(f.reply, f.reply_len)) {
            break;
        }
        if (f.sid != last_sid) {
            PyObject *sid = PyLong_FromLongLong(f.sid);
            if (sid == NULL) {
                goto done;
            }
            PyObject *route = PyDict_GetItemWithError(routes, sid); /* borrowed */
            if (route == NULL) {
                Py_DECREF(sid);
                if (PyErr_Occurred()) {
                    goto done;
                }
                break; /* not ours to route: the caller handles this frame */
            }
            if (!PyTuple_CheckExact(route) || PyTuple_GET_SIZE(route) == 0) {
                Py_DECREF(sid);
                PyErr_SetString(PyExc_TypeError,
                                "route_msgs(): a route is a tuple of (client, client_sid: bytes)");
                goto done;
            }
            if (cur_sid != NULL && add_delivered(delivered, cur_sid, count) < 0) {
                Py_DECREF(sid);
                goto done;
            }
            release_members(members, nmembers);
            nmembers = 0;
            Py_ssize_t want = PyTuple_GET_SIZE(route);
            if (want > ROUTE_STACK_MEMBERS) {
                route_member *grown = members == stack_members
                                          ? PyMem_Malloc((size_t)want * sizeof(route_member))
                                          : PyMem_Realloc(members, (size_t)want * sizeof(route_member));
                if (grown == NULL) {
                    Py_DECREF(sid);
                    PyErr_NoMemory();
                    goto done;
                }
                members = grown;
            }
            if (load_members(route, members) < 0) {
                Py_DECREF(sid);
                goto done;
            }
            nmembers = want;
            Py_INCREF(route);
            Py_XDECREF(cur_route);
            cur_route = route;
            Py_XDECREF(cur_sid);
            cur_sid = sid;
            count = 0;
            last_sid = f.sid;
        }
        /* The line without its sid, in two pieces around it; CRLF, body, CRLF as received. */
        Py_ssize_t head = 4 + f.subj_len + 1;
        Py_ssize_t tail = (f.reply ? 1 + f.reply_len : 0) + 1 + f.size_len;
        for (Py_ssize_t i = 0; i < nmembers; i++) {
            route_member *m = &members[i];
            Py_ssize_t old = PyByteArray_GET_SIZE(m->out);
            if (PyByteArray_Resize(m->out, old + head + m->sid_len + tail + f.size + 4) < 0) {
                goto done;
            }
            char *d = PyByteArray_AS_STRING(m->out) + old;
            memcpy(d, "MSG ", 4);
            d += 4;
            memcpy(d, f.subj, (size_t)f.subj_len);
            d += f.subj_len;
            *d++ = ' ';
            memcpy(d, m->sid, (size_t)m->sid_len);
            d += m->sid_len;
            if (f.reply) {
                *d++ = ' ';
                memcpy(d, f.reply, (size_t)f.reply_len);
                d += f.reply_len;
            }
            *d++ = ' ';
            memcpy(d, f.size_tok, (size_t)f.size_len);
            d += f.size_len;
            memcpy(d, buf + pos + f.line_len - 2, (size_t)(f.size + 4));
        }
        count++;
        pos += len;
    }
    if (cur_sid != NULL && add_delivered(delivered, cur_sid, count) < 0) {
        goto done;
    }
    result = PyLong_FromSsize_t(pos);
done:
    release_members(members, nmembers);
    if (members != stack_members) {
        PyMem_Free(members);
    }
    Py_XDECREF(cur_route);
    Py_XDECREF(cur_sid);
    return result;
}

PyDoc_STRVAR(settle_acks_doc,
"settle_acks(frames, pos, line_prefix, sid, acks, entries) -> int\n\n"
"For each MSG frame of frames from pos on that starts with line_prefix ('MSG <ack subject prefix>'),\n"
"has the subscription id sid (bytes), no reply subject (one blank or two, as nats-server writes an\n"
"empty one) and a body JetStream writes for a stored message (starting {\"stream\": and without\n"
"\"error\"), and whose token (the rest of the subject, as str) is a key of acks: pop acks[token] and,\n"
"when entries is a list, append what was popped. Return the position of the first frame not settled\n"
"(pos if none).");

static PyObject *
settle_acks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[2]) || !PyBytes_CheckExact(args[3]) ||
        !PyDict_CheckExact(args[4]) || (args[5] != Py_None && !PyList_CheckExact(args[5]))) {
        PyErr_SetString(PyExc_TypeError,
                        "settle_acks(frames: bytes, pos: int, line_prefix: bytes, sid: bytes, acks: dict, entries)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    const char *prefix = PyBytes_AS_STRING(args[2]);
    Py_ssize_t plen = PyBytes_GET_SIZE(args[2]);
    const char *sid = PyBytes_AS_STRING(args[3]);
    Py_ssize_t sidlen = PyBytes_GET_SIZE(args[3]);
    PyObject *acks = args[4];
    PyObject *entries = args[5] == Py_None ? NULL : args[5];
    static const char ok[] = "{\"stream\":";
    const Py_ssize_t oklen = (Py_ssize_t)sizeof(ok) - 1;
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "settle_acks(): pos out of range");
        return NULL;
    }
    while (n - pos > plen && memcmp(buf + pos, prefix, (size_t)plen) == 0) {
        const unsigned char *t = buf + pos + plen;
        const unsigned char *end = buf + n;
        const unsigned char *q = t;
        while (q < end && *q > 0x20 && *q != 0x7f) {
            q++;
        }
        Py_ssize_t tlen = q - t;
        if (tlen == 0 || end - q < (Py_ssize_t)sidlen + 2 || *q != ' ' ||
            memcmp(q + 1, sid, (size_t)sidlen) != 0 || q[1 + sidlen] != ' ') {
            break;
        }
        q += 2 + sidlen;
        if (q < end && *q == ' ') {
            q++; /* the empty reply subject */
        }
        const unsigned char *d = q;
        while (q < end && *q >= '0' && *q <= '9') {
            q++;
        }
        long long size;
        if (!parse_digits(d, q - d, 9, &size) || end - q < 2 || q[0] != '\r' || q[1] != '\n') {
            break;
        }
        const unsigned char *body = q + 2;
        if (end - body < size + 2 || body[size] != '\r' || body[size + 1] != '\n') {
            break;
        }
        if (size < oklen || memcmp(body, ok, (size_t)oklen) != 0) {
            break;
        }
        int has_error = 0;
        for (Py_ssize_t k = 0; k + 7 <= size; k++) {
            if (body[k] == '"' && memcmp(body + k, "\"error\"", 7) == 0) {
                has_error = 1;
                break;
            }
        }
        if (has_error) {
            break;
        }
        PyObject *token = PyUnicode_DecodeUTF8((const char *)t, tlen, NULL);
        if (token == NULL) {
            PyErr_Clear();
            break;
        }
        PyObject *entry = PyDict_GetItemWithError(acks, token); /* borrowed */
        if (entry == NULL) {
            Py_DECREF(token);
            if (PyErr_Occurred()) {
                return NULL;
            }
            break; /* not awaited (a duplicate, another reader's token): the Python path decides */
        }
        Py_INCREF(entry);
        int rc = PyDict_DelItem(acks, token);
        if (rc == 0 && entries != NULL) {
            rc = PyList_Append(entries, entry);
        }
        Py_DECREF(entry);
        Py_DECREF(token);
        if (rc < 0) {
            return NULL;
        }
        pos = (body + size + 2) - buf;
    }
    return PyLong_FromSsize_t(pos);
}

/* ---- critical messages: each gets its Nats-Msg-Id (and the PubAck reply subject) ---- */

/* Is there a header line named Nats-Msg-Id (any case) in the block h? As header_value() finds one. */
static int
has_msg_id(const unsigned char *h, Py_ssize_t len)
{
    static const char key[] = "\r\nnats-msg-id:";
    return header_find(h, len, key, (Py_ssize_t)sizeof(key) - 1) >= 0;
}

PyDoc_STRVAR(stamp_critical_doc,
"stamp_critical(frames, id_prefix, first_id, ack_prefix, first_token, max_payload) -> list | None\n\n"
"The publishes of frames (PUB or HPUB without a reply subject, as a run holds them) as the critical path\n"
"writes them: an HPUB whose header block gains 'Nats-Msg-Id: <id_prefix><n>' (n from first_id on), with\n"
"the reply subject <ack_prefix><t> (t from first_token on) when ack_prefix is bytes. One (subject, frame,\n"
"size) per message, size being headers + payload; None when a frame has a reply subject or a\n"
"Nats-Msg-Id, a header block that does not end with an empty line, or a size over max_payload: the\n"
"Python path (publish.py, _critical_msg) decides those.");

static PyObject *
stamp_critical(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        (args[3] != Py_None && !PyBytes_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "stamp_critical(frames: bytes, id_prefix: bytes, first_id: int, "
                                         "ack_prefix: bytes | None, first_token: int, max_payload: int)");
        return NULL;
    }
    long long next_id = PyLong_AsLongLong(args[2]);
    long long next_token = PyLong_AsLongLong(args[4]);
    long long max_payload = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    const char *id_prefix = PyBytes_AS_STRING(args[1]);
    Py_ssize_t id_plen = PyBytes_GET_SIZE(args[1]);
    const char *ack_prefix = args[3] == Py_None ? NULL : PyBytes_AS_STRING(args[3]);
    Py_ssize_t ack_plen = args[3] == Py_None ? 0 : PyBytes_GET_SIZE(args[3]);
    static const char name[] = "Nats-Msg-Id: ";
    static const char head[] = "NATS/1.0\r\n";
    const Py_ssize_t name_len = (Py_ssize_t)sizeof(name) - 1;
    const Py_ssize_t head_len = (Py_ssize_t)sizeof(head) - 1;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    PyObject *subject = NULL; /* the last subject, shared by the messages that repeat it */
    Py_ssize_t pos = 0;
    while (pos < n) {
        const unsigned char *p = buf + pos;
        pub_frame f;
        if (!parse_pub(p, n - pos, &f) || f.ntok != 2 + f.hpub) {
            goto decline; /* not a frame of a run, or one with a reply subject */
        }
        const unsigned char *const *toks = f.toks;
        const Py_ssize_t *lens = f.lens;
        Py_ssize_t line_len = f.line_len, frame_len = f.frame_len;
        long long size = f.size, hdr = f.hpub ? f.hdr : 0;
        int hpub = f.hpub;
        const unsigned char *block = p + line_len;
        if (hpub) {
            if (hdr < 4 || memcmp(block + hdr - 4, "\r\n\r\n", 4) != 0 || has_msg_id(block, (Py_ssize_t)hdr)) {
                goto decline;
            }
        }
        char id[24], token[24], hdr_s[24], total_s[24];
        int id_len = snprintf(id, sizeof id, "%lld", next_id);
        /* The block less its final CRLF (or the version line), the new line, the final CRLF. */
        Py_ssize_t kept = hpub ? (Py_ssize_t)hdr - 2 : head_len;
        Py_ssize_t new_hdr = kept + name_len + id_plen + id_len + 4;
        Py_ssize_t payload = (Py_ssize_t)(size - hdr);
        Py_ssize_t total = new_hdr + payload;
        if (total > max_payload) {
            goto decline;
        }
        int token_len = ack_prefix != NULL ? snprintf(token, sizeof token, "%lld", next_token) : 0;
        int hdr_len = snprintf(hdr_s, sizeof hdr_s, "%zd", new_hdr);
        int total_len = snprintf(total_s, sizeof total_s, "%zd", total);
        Py_ssize_t line = 5 + lens[0] + 1 + (ack_prefix != NULL ? ack_plen + token_len + 1 : 0) + hdr_len + 1 +
                          total_len + 2;
        PyObject *frame = PyBytes_FromStringAndSize(NULL, line + total + 2);
        if (frame == NULL) {
            goto error;
        }
        char *d = PyBytes_AS_STRING(frame);
        memcpy(d, "HPUB ", 5);
        d += 5;
        memcpy(d, toks[0], (size_t)lens[0]);
        d += lens[0];
        *d++ = ' ';
        if (ack_prefix != NULL) {
            memcpy(d, ack_prefix, (size_t)ack_plen);
            d += ack_plen;
            memcpy(d, token, (size_t)token_len);
            d += token_len;
            *d++ = ' ';
        }
        memcpy(d, hdr_s, (size_t)hdr_len);
        d += hdr_len;
        *d++ = ' ';
        memcpy(d, total_s, (size_t)total_len);
        d += total_len;
        *d++ = '\r';
        *d++ = '\n';
        if (hpub) {
            memcpy(d, block, (size_t)kept);
        }
        else {
            memcpy(d, head, (size_t)head_len);
        }
        d += kept;
        memcpy(d, name, (size_t)name_len);
        d += name_len;
        memcpy(d, id_prefix, (size_t)id_plen);
        d += id_plen;
        memcpy(d, id, (size_t)id_len);
        d += id_len;
        memcpy(d, "\r\n\r\n", 4);
        d += 4;
        memcpy(d, block + hdr, (size_t)payload);
        d += payload;
        *d++ = '\r';
        *d++ = '\n';
        if (subject == NULL || PyBytes_GET_SIZE(subject) != lens[0] ||
            memcmp(PyBytes_AS_STRING(subject), toks[0], (size_t)lens[0]) != 0) {
            Py_XDECREF(subject);
            subject = PyBytes_FromStringAndSize((const char *)toks[0], lens[0]);
            if (subject == NULL) {
                Py_DECREF(frame);
                goto error;
            }
        }
        PyObject *item = Py_BuildValue("(ONn)", subject, frame, total);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
        next_id++;
        next_token++;
        pos += frame_len;
    }
    Py_XDECREF(subject);
    return out;
decline:
    Py_XDECREF(subject);
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_XDECREF(subject);
    Py_DECREF(out);
    return NULL;
}

/* ---- HTTP ingest: a batch of plain items framed as PUBs/HPUBs, with their answers ---------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} growbuf;

static int
gb_reserve(growbuf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    char *d = PyMem_Realloc(b->data, (size_t)cap);
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline void
gb_put(growbuf *b, const void *s, Py_ssize_t n)
{
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
}

static PyObject *name_subject, *name_data, *name_data_base64, *name_headers, *name_priority, *name_reply;

enum { F_SUBJECT, F_DATA, F_DATA_BASE64, F_HEADERS, F_PRIORITY, F_REPLY, N_FIELDS };

/* Where the fields of one Struct type live: the offsets of their slots (msgspec Structs keep fields as
 * member descriptors, as __slots__ do), or -1 where a field must be read with getattr. */
typedef struct {
    PyTypeObject *type;
    Py_ssize_t offset[N_FIELDS];
} item_fields;

static void
load_fields(item_fields *f, PyTypeObject *type)
{
    PyObject *names[N_FIELDS] = {name_subject, name_data, name_data_base64, name_headers, name_priority, name_reply};
    f->type = type;
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *descr = _PyType_Lookup(type, names[i]);
        f->offset[i] = -1;
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READ_RESTRICTED)) {
                f->offset[i] = m->offset;
            }
        }
    }
}

/* A new reference to field `i` of `item`, or NULL with an exception set. */
static inline PyObject *
get_field(item_fields *f, PyObject *item, int i)
{
    if (Py_TYPE(item) == f->type && f->offset[i] >= 0) {
        PyObject *value = *(PyObject **)((char *)item + f->offset[i]);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    static PyObject **const names[N_FIELDS] = {&name_subject, &name_data, &name_data_base64, &name_headers,
                                               &name_priority, &name_reply};
    return PyObject_GetAttr(item, *names[i]);
}

/* 1 when field `i` of `item` is None, 0 when it is not, -1 on error. */
static int
field_is_none(item_fields *f, PyObject *item, int i)
{
    PyObject *value = get_field(f, item, i);
    if (value == NULL) {
        return -1;
    }
    int none = value == Py_None;
    Py_DECREF(value);
    return none;
}

/* `v` (>= 0) in decimal at `d`; the number of digits. */
static inline Py_ssize_t
put_decimal(char *d, Py_ssize_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (int i = 0; i < n; i++) {
        d[i] = tmp[n - 1 - i];
    }
    return n;
}

static inline void
gb_decimal(growbuf *b, Py_ssize_t v)
{
    b->len += put_decimal(b->data + b->len, v);
}

/* 1 when a and b are both None or equal strings, 0 when not, -1 on error. */
static inline int
same_value(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (a == Py_None || b == Py_None) {
        return 0;
    }
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

static int
add_group(PyObject *groups, PyObject *group, Py_ssize_t count)
{
    PyObject *old = PyDict_GetItemWithError(groups, group);
    if (old == NULL && PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t total = count + (old != NULL ? PyLong_AsSsize_t(old) : 0);
    PyObject *value = PyLong_FromSsize_t(total);
    if (value == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(groups, group, value);
    Py_DECREF(value);
    return rc;
}

PyDoc_STRVAR(frame_items_doc,
             "frame_items(items: list, describe, max_payload: int) -> tuple[bytes, bytes, dict] | None\n\n"
             "proxy/ports/ingest_batch.frame_items_py in C: each plain item (no reply, headers or dataBase64) "
             "framed as a PUB, or an HPUB with the block describe(subject, priority) gives, its answer "
             "written, and the items counted per group; None when an item needs the per-item path.");

static PyObject *
frame_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "frame_items(items: list, describe, max_payload: int)");
        return NULL;
    }
    long long max_payload = PyLong_AsLongLong(args[2]);
    if (max_payload == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *items = args[0], *describe = args[1];
    PyObject *cache = PyDict_New(), *groups = PyDict_New(), *result = NULL;
    PyObject *last_subject = NULL, *last_priority = NULL;
    PyObject *group = NULL, *block = NULL, *subj = NULL, *head = NULL; /* borrowed from cache */
    growbuf frames = {NULL, 0, 0}, answers = {NULL, 0, 0};
    Py_ssize_t run = 0;
    if (cache == NULL || groups == NULL || gb_reserve(&answers, 1) < 0) {
        goto error;
    }
    gb_put(&answers, "[", 1);
    Py_ssize_t n = PyList_GET_SIZE(items);
    item_fields fields;
    fields.type = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (Py_TYPE(item) != fields.type) {
            load_fields(&fields, Py_TYPE(item));
        }
        int none;
        if ((none = field_is_none(&fields, item, F_REPLY)) != 1 ||
            (none = field_is_none(&fields, item, F_HEADERS)) != 1 ||
            (none = field_is_none(&fields, item, F_DATA_BASE64)) != 1) {
            if (none < 0) {
                goto error;
            }
            goto decline;
        }
        PyObject *subject = get_field(&fields, item, F_SUBJECT);
        if (subject == NULL) {
            goto error;
        }
        PyObject *priority = get_field(&fields, item, F_PRIORITY);
        if (priority == NULL) {
            Py_DECREF(subject);
            goto error;
        }
        int same = 0;
        if (last_subject != NULL) {
            same = same_value(subject, last_subject);
            if (same == 1) {
                same = same_value(priority, last_priority);
            }
            if (same < 0) {
                Py_DECREF(subject);
                Py_DECREF(priority);
                goto error;
            }
        }
        if (!same) {
            if (run > 0 && add_group(groups, group, run) < 0) {
                Py_DECREF(subject);
                Py_DECREF(priority);
                goto error;
            }
            run = 0;
            Py_XSETREF(last_subject, subject);
            Py_XSETREF(last_priority, priority);
            PyObject *key = PyTuple_Pack(2, subject, priority);
            if (key == NULL) {
                goto error;
            }
            PyObject *known = PyDict_GetItemWithError(cache, key);
            if (known == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(key);
                    goto error;
                }
                PyObject *made = PyObject_CallFunctionObjArgs(describe, subject, priority, NULL);
                if (made == NULL) {
                    Py_DECREF(key);
                    goto error;
                }
                if (made == Py_None) {
                    Py_DECREF(made);
                    Py_DECREF(key);
                    goto decline;
                }
                if (!PyTuple_CheckExact(made) || PyTuple_GET_SIZE(made) != 4 ||
                    (PyTuple_GET_ITEM(made, 1) != Py_None && !PyBytes_CheckExact(PyTuple_GET_ITEM(made, 1))) ||
                    !PyBytes_CheckExact(PyTuple_GET_ITEM(made, 2)) || !PyBytes_CheckExact(PyTuple_GET_ITEM(made, 3))) {
                    Py_DECREF(made);
                    Py_DECREF(key);
                    PyErr_SetString(PyExc_TypeError, "describe() returns (group, bytes | None, bytes, bytes) or None");
                    goto error;
                }
                int rc = PyDict_SetItem(cache, key, made);
                Py_DECREF(made); /* the cache holds it */
                if (rc < 0) {
                    Py_DECREF(key);
                    goto error;
                }
                known = made;
            }
            Py_DECREF(key);
            group = PyTuple_GET_ITEM(known, 0);
            block = PyTuple_GET_ITEM(known, 1);
            subj = PyTuple_GET_ITEM(known, 2);
            head = PyTuple_GET_ITEM(known, 3);
        }
        else {
            Py_DECREF(subject);
            Py_DECREF(priority);
        }
        PyObject *data = get_field(&fields, item, F_DATA);
        if (data == NULL) {
            goto error;
        }
        const char *payload = "";
        Py_ssize_t plen = 0;
        if (data != Py_None) {
            payload = PyUnicode_Check(data) ? PyUnicode_AsUTF8AndSize(data, &plen) : NULL;
            if (payload == NULL) { /* a lone surrogate: the per-item path encodes it its way */
                PyErr_Clear();
                Py_DECREF(data);
                goto decline;
            }
        }
        Py_ssize_t hdr = block != Py_None ? PyBytes_GET_SIZE(block) : 0;
        Py_ssize_t size = plen + hdr;
        if (size > max_payload) {
            Py_DECREF(data);
            goto decline;
        }
        Py_ssize_t slen = PyBytes_GET_SIZE(subj);
        if (gb_reserve(&frames, 64 + slen + size) < 0) {
            Py_DECREF(data);
            goto error;
        }
        if (block == Py_None) {
            gb_put(&frames, "PUB ", 4);
            gb_put(&frames, PyBytes_AS_STRING(subj), slen);
        }
        else {
            gb_put(&frames, "HPUB ", 5);
            gb_put(&frames, PyBytes_AS_STRING(subj), slen);
            gb_put(&frames, " ", 1);
            gb_decimal(&frames, hdr);
        }
        gb_put(&frames, " ", 1);
        gb_decimal(&frames, size);
        gb_put(&frames, "\r\n", 2);
        if (hdr > 0) {
            gb_put(&frames, PyBytes_AS_STRING(block), hdr);
        }
        gb_put(&frames, payload, plen);
        gb_put(&frames, "\r\n", 2);
        Py_DECREF(data);
        static const char tail[] = ",\"reason\":null,\"result\":\"forwarded\"}";
        Py_ssize_t hlen = PyBytes_GET_SIZE(head);
        if (gb_reserve(&answers, 128 + hlen + (Py_ssize_t)sizeof tail) < 0) {
            goto error;
        }
        static const char index_key[] = "{\"index\":", status_key[] = ",\"status\":202,", size_key[] = ",\"size\":";
        if (i > 0) {
            gb_put(&answers, ",", 1);
        }
        gb_put(&answers, index_key, (Py_ssize_t)sizeof index_key - 1);
        gb_decimal(&answers, i);
        gb_put(&answers, status_key, (Py_ssize_t)sizeof status_key - 1);
        gb_put(&answers, PyBytes_AS_STRING(head), hlen);
        gb_put(&answers, size_key, (Py_ssize_t)sizeof size_key - 1);
        gb_decimal(&answers, size);
        gb_put(&answers, tail, (Py_ssize_t)sizeof tail - 1);
        run++;
    }
    if (run > 0 && add_group(groups, group, run) < 0) {
        goto error;
    }
    if (gb_reserve(&answers, 1) < 0) {
        goto error;
    }
    gb_put(&answers, "]", 1);
    PyObject *frames_b = PyBytes_FromStringAndSize(frames.data, frames.len);
    PyObject *answers_b = frames_b != NULL ? PyBytes_FromStringAndSize(answers.data, answers.len) : NULL;
    if (answers_b == NULL) {
        Py_XDECREF(frames_b);
        goto error;
    }
    result = PyTuple_Pack(3, frames_b, answers_b, groups);
    Py_DECREF(frames_b);
    Py_DECREF(answers_b);
    goto done;
decline:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(last_subject);
    Py_XDECREF(last_priority);
    Py_XDECREF(cache);
    Py_XDECREF(groups);
    PyMem_Free(frames.data);
    PyMem_Free(answers.data);
    return result;
}

static inline int
ascii_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

PyDoc_STRVAR(ndjson_array_doc,
             "ndjson_array(text: bytes) -> tuple[bytes, int] | None\n\n"
             "proxy/ports/ingest_batch.ndjson_array_py in C: the non-blank lines of `text`, stripped, joined "
             "into one JSON array, and their number; None when a line does not start with '{' and end with "
             "'}'.");

static PyObject *
ndjson_array(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "ndjson_array(text: bytes)");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + 2);
    if (out == NULL) {
        return NULL;
    }
    char *d = PyBytes_AS_STRING(out);
    Py_ssize_t len = 0, count = 0, pos = 0;
    d[len++] = '[';
    while (pos < n) {
        const unsigned char *nl = memchr(buf + pos, '\n', (size_t)(n - pos));
        Py_ssize_t end = nl != NULL ? nl - buf : n;
        Py_ssize_t a = pos, b = end;
        while (a < b && ascii_space(buf[a])) {
            a++;
        }
        while (b > a && ascii_space(buf[b - 1])) {
            b--;
        }
        if (b > a) {
            if (buf[a] != '{' || buf[b - 1] != '}') {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            if (count > 0) {
                d[len++] = ',';
            }
            memcpy(d + len, buf + a, (size_t)(b - a));
            len += b - a;
            count++;
        }
        pos = end + 1;
    }
    d[len++] = ']';
    if (_PyBytes_Resize(&out, len) < 0) {
        return NULL;
    }
    return Py_BuildValue("(Nn)", out, count);
}

static PyMethodDef speedups_methods[] = {
    {"scan_pubs", (PyCFunction)(void (*)(void))scan_pubs, METH_FASTCALL, scan_pubs_doc},
    {"scan_msgs", (PyCFunction)(void (*)(void))scan_msgs, METH_FASTCALL, scan_msgs_doc},
    {"select_frames", (PyCFunction)(void (*)(void))select_frames, METH_FASTCALL, select_frames_doc},
    {"route_msgs", (PyCFunction)(void (*)(void))route_msgs, METH_FASTCALL, route_msgs_doc},
    {"settle_acks", (PyCFunction)(void (*)(void))settle_acks, METH_FASTCALL, settle_acks_doc},
    {"stamp_critical", (PyCFunction)(void (*)(void))stamp_critical, METH_FASTCALL, stamp_critical_doc},
    {"frame_items", (PyCFunction)(void (*)(void))frame_items, METH_FASTCALL, frame_items_doc},
    {"scan_groups", (PyCFunction)(void (*)(void))scan_groups, METH_FASTCALL, scan_groups_doc},
    {"ndjson_array", (PyCFunction)(void (*)(void))ndjson_array, METH_FASTCALL, ndjson_array_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "proxy.nats._speedups",
    "C accelerator for the NATS client parser (optional; see proxy/nats_protocol.py).",
    -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    out_name = PyUnicode_InternFromString("_out");
    name_subject = PyUnicode_InternFromString("subject");
    name_data = PyUnicode_InternFromString("data");
    name_data_base64 = PyUnicode_InternFromString("data_base64");
    name_headers = PyUnicode_InternFromString("headers");
    name_priority = PyUnicode_InternFromString("priority");
    name_reply = PyUnicode_InternFromString("reply");
    if (out_name == NULL || name_subject == NULL || name_data == NULL || name_data_base64 == NULL ||
        name_headers == NULL || name_priority == NULL || name_reply == NULL) {
        return NULL;
    }
    return PyModule_Create(&speedups_module);
}
