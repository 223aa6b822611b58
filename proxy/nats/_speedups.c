/* kpi-sidecar: optional C accelerator for the NATS codec's hot loops (proxy/nats_protocol.py).
 *
 * scan_pubs() walks a run of PUB frames (and HPUBs not classified by a KPI-Priority header) the way
 * ClientParser._parse's fast path does, counting them per subject without a Python object per frame.
 * scan_msgs() does the same for the plain MSG frames the upstream sends, and route_msgs() writes each of
 * them into its application's output buffer with the application's sid. The scanners only consume frames
 * they are sure about and stop at the first byte they are not: the Python parser then handles that op
 * exactly as it would have without this module (same ops, same errors), so the two implementations are
 * interchangeable and the tests run both (tests/protocol). KPI_SIDECAR_NO_EXTENSIONS=1 runs without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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

/* Does the header block mention KPI-Priority (any case)? Such a message is classified by its header, so
 * it is not part of a run; the Python parser applies the same test (proxy/nats/parser.py, _mentions_priority). */
static int
mentions_priority(const unsigned char *h, Py_ssize_t len)
{
    static const char key[] = "kpi-priority";
    const Py_ssize_t klen = (Py_ssize_t)sizeof(key) - 1;
    for (Py_ssize_t i = 0; i + klen <= len; i++) {
        Py_ssize_t j = 0;
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
            return 1;
        }
    }
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
 * Between tokens, `runs` takes runs of spaces and tabs as nats-server's parser does for a client (and
 * blanks before the first), otherwise exactly one space, as nats-server writes. */
static int
split_args(const unsigned char *q, const unsigned char *end, int runs, const unsigned char **toks,
           Py_ssize_t *lens, const unsigned char **cr)
{
    int ntok = 0;
    for (;;) {
        while (runs && q < end && (*q == ' ' || *q == '\t')) {
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
        if (*q != ' ' && !(runs && *q == '\t')) {
            return 0;
        }
        q++;
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
"scan_pubs(buf, pos, counts, limit, max_control_line, headers[, requests]) -> int\n\n"
"Consume the complete PUB frames of buf from pos on ('PUB <subject> [reply] <size>\\r\\n' with blanks\n"
"between the tokens, a 1-9 digit size <= limit, line <= max_control_line, body ending in CRLF), and, when\n"
"headers is true, the HPUB frames whose header block does not mention KPI-Priority; add one per frame\n"
"to counts[subject], and one per frame with a reply subject to requests[subject] when requests is a\n"
"dict; return the position after the last one (pos if none).");

static PyObject *
scan_pubs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "scan_pubs() takes 6 or 7 arguments");
        return NULL;
    }
    PyObject *bufobj = args[0];
    PyObject *counts = args[2];
    PyObject *requests = nargs == 7 && args[6] != Py_None ? args[6] : NULL;
    if (!PyBytes_CheckExact(bufobj) || !PyDict_CheckExact(counts) ||
        (requests != NULL && !PyDict_CheckExact(requests))) {
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
        if (hpub && mentions_priority(p + line_len, (Py_ssize_t)hdr)) {
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
        pos = frame_end;
    }
    if (run_count > 0 && add_run(counts, requests, run_subject, run_len, run_count, run_requests) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(pos);
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
    int ntok = split_args(p + 4, end, 0, toks, lens, &q);
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
"<sid> [reply] <size>\\r\\n' with single blanks, sid of 1-18 digits, size of 1-9, line <=\n"
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
"key of routes ({sid: (client, client_sid)}): append the frame with client_sid in place of the sid to\n"
"client._out (a bytearray) and add one to delivered[sid]. A frame whose reply subject has none of the\n"
"prefixes that name a role by themselves (_INBOX., $JS.ACK., $JS.FC.) is not routed: the caller remembers\n"
"it as a reply subject of that client. Return the position of the first frame not routed (len(frames)\n"
"when all were).");

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

    PyObject *cur_sid = NULL; /* owned: the sid of the run being counted */
    PyObject *out = NULL;     /* owned: that route's client._out */
    const char *csid = NULL;  /* that route's client sid (borrowed from the routes dict's tuple) */
    Py_ssize_t csid_len = 0;
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
            if (!PyTuple_CheckExact(route) || PyTuple_GET_SIZE(route) != 2 ||
                !PyBytes_CheckExact(PyTuple_GET_ITEM(route, 1))) {
                Py_DECREF(sid);
                PyErr_SetString(PyExc_TypeError, "route_msgs(): a route is (client, client_sid: bytes)");
                goto done;
            }
            PyObject *new_out = PyObject_GetAttr(PyTuple_GET_ITEM(route, 0), out_name);
            if (new_out == NULL || !PyByteArray_CheckExact(new_out)) {
                Py_DECREF(sid);
                Py_XDECREF(new_out);
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_TypeError, "route_msgs(): client._out must be a bytearray");
                }
                goto done;
            }
            if (cur_sid != NULL && add_delivered(delivered, cur_sid, count) < 0) {
                Py_DECREF(sid);
                Py_DECREF(new_out);
                goto done;
            }
            Py_XDECREF(cur_sid);
            Py_XDECREF(out);
            cur_sid = sid;
            out = new_out;
            csid = PyBytes_AS_STRING(PyTuple_GET_ITEM(route, 1));
            csid_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(route, 1));
            count = 0;
            last_sid = f.sid;
        }
        Py_ssize_t need = 4 + f.subj_len + 1 + csid_len + (f.reply ? 1 + f.reply_len : 0) + 1 + f.size_len + 2 +
                          f.size + 2;
        Py_ssize_t old = PyByteArray_GET_SIZE(out);
        if (PyByteArray_Resize(out, old + need) < 0) {
            goto done;
        }
        char *d = PyByteArray_AS_STRING(out) + old;
        memcpy(d, "MSG ", 4);
        d += 4;
        memcpy(d, f.subj, (size_t)f.subj_len);
        d += f.subj_len;
        *d++ = ' ';
        memcpy(d, csid, (size_t)csid_len);
        d += csid_len;
        if (f.reply) {
            *d++ = ' ';
            memcpy(d, f.reply, (size_t)f.reply_len);
            d += f.reply_len;
        }
        *d++ = ' ';
        memcpy(d, f.size_tok, (size_t)f.size_len);
        d += f.size_len;
        /* CRLF, body, CRLF: as received */
        memcpy(d, buf + pos + f.line_len - 2, (size_t)(f.size + 4));
        count++;
        pos += len;
    }
    if (cur_sid != NULL && add_delivered(delivered, cur_sid, count) < 0) {
        goto done;
    }
    result = PyLong_FromSsize_t(pos);
done:
    Py_XDECREF(cur_sid);
    Py_XDECREF(out);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"scan_pubs", (PyCFunction)(void (*)(void))scan_pubs, METH_FASTCALL, scan_pubs_doc},
    {"scan_msgs", (PyCFunction)(void (*)(void))scan_msgs, METH_FASTCALL, scan_msgs_doc},
    {"route_msgs", (PyCFunction)(void (*)(void))route_msgs, METH_FASTCALL, route_msgs_doc},
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
    if (out_name == NULL) {
        return NULL;
    }
    return PyModule_Create(&speedups_module);
}
