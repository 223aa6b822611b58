/* kpi-sidecar: optional C accelerator for the client parser's hot loop (proxy/nats_protocol.py).
 *
 * One function, scan_pubs(), that walks a run of plain PUB frames the way ClientParser._parse's fast
 * path does, without creating a Python object per frame. It only consumes frames it is sure about and
 * stops at the first byte it is not: the Python parser then handles that op exactly as it would have
 * without this module (same ops, same errors), so the two implementations are interchangeable and
 * tests run both (tests/protocol). Set KPI_SIDECAR_NO_EXTENSIONS=1 to run without it.
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

PyDoc_STRVAR(scan_pubs_doc,
"scan_pubs(buf, pos, counts, limit, max_control_line) -> int\n\n"
"Consume the complete plain PUB frames of buf from pos on ('PUB <subject> <size>\\r\\n' with blanks\n"
"between the tokens, a 1-9 digit size <= limit, line <= max_control_line, body ending in CRLF), adding one\n"
"per frame to counts[subject]; return the position after the last one (pos if none).");

static PyObject *
scan_pubs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_pubs() takes exactly 5 arguments");
        return NULL;
    }
    PyObject *bufobj = args[0];
    PyObject *counts = args[2];
    if (!PyBytes_CheckExact(bufobj) || !PyDict_CheckExact(counts)) {
        PyErr_SetString(PyExc_TypeError, "scan_pubs() needs bytes and a dict");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long long limit = PyLong_AsLongLong(args[3]);
    Py_ssize_t max_line = PyLong_AsSsize_t(args[4]);
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

    while (n - pos >= 11) { /* the shortest frame: "PUB a 0\r\n\r\n" */
        const unsigned char *p = buf + pos;
        if (p[0] != 'P' || p[1] != 'U' || p[2] != 'B' || (p[3] != ' ' && p[3] != '\t')) {
            break;
        }
        /* A control line longer than max_line is the Python parser's to reject: look no further. */
        const unsigned char *end = n - pos > max_line ? p + max_line : buf + n;
        const unsigned char *q = p + 4;
        while (q < end && (*q == ' ' || *q == '\t')) {
            q++;
        }
        const unsigned char *subj = q;
        while (q < end && *q > 0x20 && *q != 0x7f) {
            q++;
        }
        Py_ssize_t subj_len = q - subj;
        if (subj_len == 0 || q == end || (*q != ' ' && *q != '\t')) {
            break;
        }
        /* Blanks between the tokens, as nats-server splits them: nats-py writes "PUB subject  size". */
        while (q < end && (*q == ' ' || *q == '\t')) {
            q++;
        }
        long long size = 0;
        int digits = 0;
        while (q < end && *q >= '0' && *q <= '9' && digits < 10) {
            size = size * 10 + (*q - '0');
            q++;
            digits++;
        }
        if (digits == 0 || digits > 9 || end - q < 2 || q[0] != '\r' || q[1] != '\n') {
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
        if (run_count > 0 && subj_len == run_len && memcmp(subj, run_subject, (size_t)subj_len) == 0) {
            run_count++;
        }
        else {
            if (!subject_ok(subj, subj_len)) {
                break;
            }
            if (run_count > 0 && add_count(counts, (const char *)run_subject, run_len, run_count) < 0) {
                return NULL;
            }
            run_subject = subj;
            run_len = subj_len;
            run_count = 1;
        }
        pos = frame_end;
    }
    if (run_count > 0 && add_count(counts, (const char *)run_subject, run_len, run_count) < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(pos);
}

static PyMethodDef speedups_methods[] = {
    {"scan_pubs", (PyCFunction)(void (*)(void))scan_pubs, METH_FASTCALL, scan_pubs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "proxy._speedups",
    "C accelerator for the NATS client parser (optional; see proxy/nats_protocol.py).",
    -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
